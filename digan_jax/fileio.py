"""One path API for every file the project reads or writes, local or in an object store (gs://).

`etils.epath` is the API (it routes gs:// through tf.io.gfile); `pathlib`, `os.path` and `open`
would turn "gs://b/x" into the local relative path "gs:/b/x" and write a pod's results onto one
host's disk. Writes are atomic in both worlds: locally a temporary file is renamed over the
target; in an object store the whole file is one object put, which readers see entirely or not at
all (an object store has no atomic rename).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import uuid
from typing import Any, Iterator

import numpy as np
from etils import epath

PathLike = str | os.PathLike


def as_path(path: PathLike) -> epath.Path:
  """An epath for `path`; local paths made absolute (Orbax refuses relative checkpoint paths)."""
  text = os.fspath(path)
  return epath.Path(text if is_remote(text) else os.path.abspath(text))


def is_remote(path: PathLike) -> bool:
  return "://" in os.fspath(path)


def write_bytes(path: PathLike, data: bytes) -> epath.Path:
  """Writes `data` so that no reader ever sees a partial file; creates the parent directory."""
  path = as_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(path):
    path.write_bytes(data)  # one object put
    return path
  tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
  try:
    tmp.write_bytes(data)
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  return path


def write_json(path: PathLike, obj: Any) -> epath.Path:
  return write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def read_json(path: PathLike) -> Any:
  return json.loads(as_path(path).read_text())


def write_npz(path: PathLike, **arrays) -> epath.Path:
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  return write_bytes(path, buf.getvalue())


def read_npz(path: PathLike) -> dict[str, np.ndarray]:
  with np.load(io.BytesIO(as_path(path).read_bytes()), allow_pickle=False) as data:
    return {k: data[k] for k in data.files}


@contextlib.contextmanager
def local_file(path: PathLike, suffix: str = "") -> Iterator[str]:
  """A local file name for writers that only take one (video encoders); on success its bytes are
  written to `path` atomically, on error nothing is written."""
  fd, tmp = tempfile.mkstemp(suffix=suffix, prefix="digan_")
  os.close(fd)
  try:
    yield tmp
    with open(tmp, "rb") as f:
      write_bytes(path, f.read())
  finally:
    os.unlink(tmp)


def list_files(root: PathLike) -> Iterator[epath.Path]:
  """Every file under `root`, recursively (epath's walk and rglob lose the gs:// prefix or refuse)."""
  for p in as_path(root).iterdir():
    if p.is_dir():
      yield from list_files(p)
    else:
      yield p


def copy_tree(src: PathLike, dst: PathLike, last: tuple[str, ...] = ()) -> None:
  """Copies a directory tree file by file (between local disk and an object store in either
  direction); files named in `last` are copied after all others, so a reader that checks for
  them (e.g. TFDS's dataset_info.json) never sees a partial tree."""
  src, dst = as_path(src), as_path(dst)
  files = sorted(list_files(src))
  files.sort(key=lambda p: p.name in last)
  for p in files:
    target = dst / os.fspath(p.relative_to(src))
    target.parent.mkdir(parents=True, exist_ok=True)
    if not is_remote(p) and not is_remote(target):
      shutil.copyfile(p, target)
    else:
      target.write_bytes(p.read_bytes())
