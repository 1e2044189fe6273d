"""plot_eval: a run's eval/<step>.json files -> the FVD/KVD curve PNG and Markdown table, with the
floor drawn where the results carry one; a workdir without results is a clear error."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from digan_jax import plot_eval
from digan_jax.errors import UserError

CARD = {"name": "proxy", "num_fake": 8, "num_real": 8, "num_trials": 1}


def _write_results(workdir, fvds, floor=300.0):
  (workdir / "eval").mkdir(parents=True)
  for step, fvd in fvds.items():
    result = {
      "protocol": "proxy",
      "card": CARD,
      "fvd": fvd,
      "fvd_std": 0.0,
      "kvd": fvd / 10,
      "floor": {"fvd": floor, "kvd": floor / 10},
    }
    record = {"step": step, "results": {"proxy": result}}
    (workdir / "eval" / f"{step}.json").write_text(json.dumps(record))
  (workdir / "eval" / "real_cache").mkdir()  # not a result


def test_curve_png_and_table(tmp_path):
  _write_results(tmp_path, {1000: 900.0, 0: 2000.0, 500: 1200.0})
  curve = plot_eval.read_curve(tmp_path)
  assert curve["steps"].tolist() == [0, 500, 1000]  # sorted by step, not by file name
  assert curve["fvd"].tolist() == [2000.0, 1200.0, 900.0]
  assert np.all(curve["floor_fvd"] == 300.0)
  out = tmp_path / "curve.png"
  proc = subprocess.run(
    [sys.executable, "-m", "digan_jax.plot_eval", f"--workdir={tmp_path}", f"--output={out}"],
    capture_output=True,
    text=True,
    check=True,
  )
  assert "| 500 | 1200.0 | 120.0 | 300.0 | 30.0 |" in proc.stdout
  img = np.asarray(Image.open(out).convert("RGB"))
  assert img.shape == (plot_eval._SIZE[1], 2 * plot_eval._SIZE[0], 3)
  for colour in (plot_eval._CURVE, plot_eval._FLOOR):  # curve and floor drawn in both panels
    hits = np.all(img == colour, axis=-1)
    assert hits[:, : img.shape[1] // 2].sum() > 50 and hits[:, img.shape[1] // 2 :].sum() > 50


def test_no_results_is_a_clear_error(tmp_path):
  with pytest.raises(UserError, match="no evaluation results in .*run with FVD evaluation"):
    plot_eval.read_curve(tmp_path)
  _write_results(tmp_path, {0: 10.0})
  with pytest.raises(UserError, match="no results of protocol 'digan'.*it has \\['proxy'\\]"):
    plot_eval.read_curve(tmp_path, "digan")
