"""`python -m digan_jax.benchmark`: see the package docstring."""

from digan_jax.benchmark.cli import main

if __name__ == "__main__":
  main()
