"""fileio: atomic local writes (nothing partial, the old file kept on failure), copy order."""

import os

import numpy as np
import pytest

from digan_jax import fileio


def test_paths_local_and_remote():
  assert fileio.is_remote("gs://bucket/x") and not fileio.is_remote("/tmp/x")
  assert os.fspath(fileio.as_path("gs://bucket/run/eval")) == "gs://bucket/run/eval"
  assert os.fspath(fileio.as_path("rel/dir")) == os.path.abspath("rel/dir")


def test_round_trips(tmp_path):
  fileio.write_json(tmp_path / "a" / "r.json", {"fvd": 1.5, "step": 3})
  assert fileio.read_json(tmp_path / "a" / "r.json") == {"fvd": 1.5, "step": 3}
  fileio.write_npz(tmp_path / "f.npz", x=np.arange(6).reshape(2, 3), meta=np.array("m"))
  data = fileio.read_npz(tmp_path / "f.npz")
  np.testing.assert_array_equal(data["x"], np.arange(6).reshape(2, 3))
  assert str(data["meta"]) == "m"
  assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "f.npz", "r.json"]  # no temp left


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
  target = tmp_path / "eval.json"
  fileio.write_json(target, {"old": True})

  def broken_replace(src, dst):
    raise OSError("disk full")

  monkeypatch.setattr(fileio.os, "replace", broken_replace)
  with pytest.raises(OSError, match="disk full"):
    fileio.write_json(target, {"new": True})
  assert fileio.read_json(target) == {"old": True}
  assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]


def test_local_file_uploads_only_on_success(tmp_path):
  with fileio.local_file(tmp_path / "v.gif", suffix=".gif") as local:
    assert local.endswith(".gif") and not local.startswith(os.fspath(tmp_path))
    with open(local, "wb") as f:
      f.write(b"GIF89a")
  assert (tmp_path / "v.gif").read_bytes() == b"GIF89a" and not os.path.exists(local)
  with pytest.raises(RuntimeError):
    with fileio.local_file(tmp_path / "w.mp4") as local:
      with open(local, "wb") as f:
        f.write(b"partial")
      raise RuntimeError("encoder crashed")
  assert not (tmp_path / "w.mp4").exists() and not os.path.exists(local)


def test_copy_tree_writes_the_completion_marker_last(tmp_path, monkeypatch):
  src = tmp_path / "src"
  for name in ("dataset_info.json", "a-train.array_record-00000-of-00001", "z/features.json"):
    (src / name).parent.mkdir(parents=True, exist_ok=True)
    (src / name).write_text(name)
  copied = []
  real_copy = fileio.shutil.copyfile
  monkeypatch.setattr(
    fileio.shutil, "copyfile", lambda a, b: (copied.append(os.path.basename(b)), real_copy(a, b))
  )
  fileio.copy_tree(src, tmp_path / "dst", last=("dataset_info.json",))
  assert copied[-1] == "dataset_info.json" and len(copied) == 3
  for name in ("dataset_info.json", "a-train.array_record-00000-of-00001", "z/features.json"):
    assert (tmp_path / "dst" / name).read_text() == name
