"""The platform a program is being compiled for, which is not always the host's.

Code that picks a platform-specific variant while tracing (the CPU-only polyphase down-conv and I3D
tap split) asks `platform()`, not `jax.default_backend()`: an ahead-of-time compile for TPU from a
CPU host (digan_jax.aot) must bake in the TPU variant. Outside `compiling_for`, the target is the
host's default backend, which is what every jit on real devices compiles for.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import jax

_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar(
  "digan_jax_compile_platform", default=None
)


def platform() -> str:
  """'cpu', 'gpu' or 'tpu': the platform of the program being traced now."""
  return _PLATFORM.get() or jax.default_backend()


@contextlib.contextmanager
def compiling_for(platform_name: str) -> Iterator[None]:
  """Traces inside this block pick the variants of `platform_name` (a jax platform name)."""
  name = {"cuda": "gpu", "rocm": "gpu"}.get(platform_name, platform_name)
  if name not in ("cpu", "gpu", "tpu"):
    raise ValueError(f"unknown compile platform {platform_name!r}; expected cpu, gpu or tpu")
  token = _PLATFORM.set(name)
  try:
    yield
  finally:
    _PLATFORM.reset(token)
