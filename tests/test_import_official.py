"""Official-weight import: .npz of PyTorch state_dicts -> Orbax checkpoint -> EMA generator."""

import subprocess
import sys

import jax
import numpy as np
import pytest

from digan_jax import checkpointing
from digan_jax.import_official import import_npz
from digan_jax.models import Generator


def test_import_roundtrip_reproduces_official_video(fixtures_dir, tmp_path):
  npz = fixtures_dir / "official_digan_128.npz"
  gcfg, dcfg, _ = import_npz(npz, tmp_path / "ckpt", mbstd_group_size=2)
  assert dcfg.mbstd_group_size == 2 and gcfg.channel_base == 2048
  gcfg2, g_ema, step = checkpointing.restore_generator(tmp_path / "ckpt")
  assert step == 0 and gcfg2 == gcfg
  data = np.load(npz)
  with jax.default_matmul_precision("highest"):
    video = Generator(gcfg).apply(g_ema, data["in/z"], data["in/z_motion"], data["in/times_tfree"])
  ref = data["out/video_tfree"].transpose(0, 1, 3, 4, 2)
  assert np.abs(np.asarray(video) - ref).max() < 1e-4
  with pytest.raises(FileExistsError, match="already holds step 0"):
    import_npz(npz, tmp_path / "ckpt")


def test_import_keeps_g_and_g_ema_apart(official_npz_with_distinct_g_ema, tmp_path):
  """An export with both: the checkpoint's `g_ema` item (what sampling and evaluation restore) is
  the official G_ema and its `g` item the official G, never one copied over the other."""
  from digan_jax.models import official

  nets = official.split_networks(official.load_npz(official_npz_with_distinct_g_ema)[0])
  import_npz(official_npz_with_distinct_g_ema, tmp_path / "ckpt")
  _, g_ema, _ = checkpointing.restore_generator(tmp_path / "ckpt")
  g = checkpointing.restore_numpy(tmp_path / "ckpt", 0, "g")
  for restored, net in ((g_ema, "G_ema"), (g, "G")):
    want = official.convert_generator(nets[net])
    assert jax.tree.structure(restored) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(want)):
      np.testing.assert_array_equal(a, b)
  shifted = sum(
    int(not np.array_equal(a, b)) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ema))
  )
  assert shifted > 0  # the two really differ in this export (the toRGB biases)


def test_import_rejects_npz_without_generator(tmp_path):
  bad = tmp_path / "bad.npz"
  np.savez(bad, **{"X/foo": np.zeros(3)})
  with pytest.raises(ValueError, match="no generator tensors"):
    import_npz(bad, tmp_path / "out")
  assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_missing_file_message(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "digan_jax.import_official",
      f"--npz={tmp_path / 'nope.npz'}",
      f"--output={tmp_path / 'o'}",
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode != 0
  assert "export it from the official pickle" in proc.stderr


def test_restore_errors_name_the_problem(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    checkpointing.restore_generator(tmp_path / "missing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no checkpoint steps"):
    checkpointing.restore_generator(tmp_path / "empty")


def test_export_is_the_exact_inverse_of_import(fixtures_dir):
  """Our variables -> official state_dict names and layouts -> our variables, bit for bit; and the
  exported names and shapes are exactly the official ones (buffers aside)."""
  from digan_jax.models import official

  arrays, _ = official.load_npz(fixtures_dir / "official_digan_train_64.npz")
  nets = official.split_networks(arrays)
  for net, convert, export in (
    ("G", official.convert_generator, official.export_generator),
    ("D", official.convert_dual_discriminator, official.export_dual_discriminator),
  ):
    variables = convert(nets[net])
    exported = export(variables)
    expected = {k: v for k, v in nets[net].items() if not k.endswith("resample_filter")}
    assert sorted(exported) == sorted(expected), net
    for k, v in expected.items():
      np.testing.assert_array_equal(exported[k], v.astype(np.float32), err_msg=k)
    back = convert(exported)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(variables)):
      np.testing.assert_array_equal(a, b)
