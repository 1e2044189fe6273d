"""A run's FVD/KVD curve as a PNG (and a Markdown table), from its WORKDIR/eval/<step>.json files.

  python -m digan_jax.plot_eval --workdir=WORKDIR --output=docs/curve.png [--protocol=proxy]

One panel per metric against training steps, with the protocol's floor (two disjoint real sets of
the same sizes, `config.eval.floor_split`) as a dashed line where the results carry it. Drawn with
Pillow, which the project already needs, so plotting installs nothing.
"""

from __future__ import annotations

import math
import sys

import numpy as np
from absl import flags
from PIL import Image, ImageDraw, ImageFont

from digan_jax import cli_flags, fileio
from digan_jax.data import image_ops
from digan_jax.errors import UserError

_SIZE = (520, 360)  # one panel
_MARGIN = dict(left=78, right=18, top=36, bottom=52)
_CURVE, _FLOOR, _GRID = (31, 90, 180), (200, 60, 40), (225, 225, 225)


def read_curve(workdir, protocol: str | None = None) -> dict:
  """{'protocol', 'steps', 'fvd', 'fvd_std', 'kvd', 'floor_fvd', 'floor_kvd', 'card'} sorted by
  step, from WORKDIR/eval/*.json; floors are NaN where a result has none."""
  eval_dir = fileio.as_path(workdir) / "eval"
  files = sorted(eval_dir.glob("*.json")) if eval_dir.is_dir() else []
  records = [fileio.read_json(f) for f in files if f.stem.isdigit()]
  if not records:
    raise UserError(f"no evaluation results in {eval_dir}; run with FVD evaluation on first")
  names = [n for r in records for n in r.get("results", {})]
  protocol = protocol or names[0]
  rows = sorted(
    (r["step"], r["results"][protocol]) for r in records if protocol in r.get("results", {})
  )
  if not rows:
    raise UserError(
      f"no results of protocol {protocol!r} in {eval_dir}; it has {sorted(set(names))}"
    )
  floor = lambda res, key: (res.get("floor") or {}).get(key, math.nan)
  return {
    "protocol": protocol,
    "card": rows[-1][1]["card"],
    "steps": np.array([s for s, _ in rows]),
    "fvd": np.array([r["fvd"] for _, r in rows]),
    "fvd_std": np.array([r["fvd_std"] for _, r in rows]),
    "kvd": np.array([r["kvd"] for _, r in rows]),
    "floor_fvd": np.array([floor(r, "fvd") for _, r in rows]),
    "floor_kvd": np.array([floor(r, "kvd") for _, r in rows]),
  }


def _font(size: int):
  try:
    return ImageFont.load_default(size)
  except TypeError:  # Pillow < 10.1: the fixed bitmap font
    return ImageFont.load_default()


def _ticks(lo: float, hi: float, n: int = 5) -> np.ndarray:
  step = (hi - lo) / n if hi > lo else 1.0
  magnitude = 10 ** math.floor(math.log10(step))
  step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= step), default=step)
  return np.arange(math.ceil(lo / step) * step, hi + 1e-9 * step, step)


def _panel(steps, values, floor, label: str, title: str) -> Image.Image:
  img = Image.new("RGB", _SIZE, "white")
  draw = ImageDraw.Draw(img)
  font, small = _font(15), _font(12)
  x0, x1 = _MARGIN["left"], _SIZE[0] - _MARGIN["right"]
  y0, y1 = _MARGIN["top"], _SIZE[1] - _MARGIN["bottom"]
  known = np.concatenate([values, floor[np.isfinite(floor)]])
  lo, hi = 0.0, float(known.max()) * 1.08
  s_hi = float(max(steps.max(), 1))
  px = lambda s: x0 + (x1 - x0) * s / s_hi
  py = lambda v: y1 - (y1 - y0) * (v - lo) / (hi - lo)
  for v in _ticks(lo, hi):
    draw.line([(x0, py(v)), (x1, py(v))], fill=_GRID)
    draw.text((x0 - 6, py(v)), f"{v:g}", fill="black", font=small, anchor="rm")
  for s in _ticks(0, s_hi):
    draw.line([(px(s), y1), (px(s), y1 + 4)], fill="black")
    draw.text((px(s), y1 + 6), f"{s:g}", fill="black", font=small, anchor="ma")
  draw.rectangle([x0, y0, x1, y1], outline="black")
  if np.isfinite(floor).any():
    f = float(np.nanmean(floor))
    for a in np.arange(x0, x1, 12):
      draw.line([(a, py(f)), (min(a + 6, x1), py(f))], fill=_FLOOR, width=2)
    draw.text((x1 - 4, py(f) - 4), f"floor {f:.4g}", fill=_FLOOR, font=small, anchor="rd")
  points = [(px(s), py(v)) for s, v in zip(steps, values)]
  draw.line(points, fill=_CURVE, width=2)
  for x, y in points:
    draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=_CURVE)
  draw.text(((x0 + x1) / 2, 8), title, fill="black", font=font, anchor="ma")
  draw.text(((x0 + x1) / 2, _SIZE[1] - 20), "training step", fill="black", font=small, anchor="ma")
  draw.text((8, (y0 + y1) / 2), label, fill="black", font=font, anchor="lm")
  return img


def plot(curve: dict, path, title: str = "") -> None:
  """Writes FVD and KVD panels side by side as one PNG."""
  card = curve["card"]
  sizes = f"{curve['protocol']}, {card['num_fake']} vs {card['num_real']} clips"
  panels = [
    _panel(curve["steps"], curve["fvd"], curve["floor_fvd"], "FVD", f"FVD ({sizes})"),
    _panel(curve["steps"], curve["kvd"], curve["floor_kvd"], "KVD", f"KVD ({sizes})"),
  ]
  head = 28 if title else 0
  out = Image.new("RGB", (2 * _SIZE[0], _SIZE[1] + head), "white")
  for i, p in enumerate(panels):
    out.paste(p, (i * _SIZE[0], head))
  if title:
    ImageDraw.Draw(out).text((out.width / 2, 6), title, fill="black", font=_font(16), anchor="ma")
  fileio.write_bytes(path, image_ops.encode_image(np.asarray(out), "png"))


def markdown_table(curve: dict) -> str:
  lines = ["| step | FVD | KVD | floor FVD | floor KVD |", "|---:|---:|---:|---:|---:|"]
  for i, s in enumerate(curve["steps"]):
    lines.append(
      f"| {s} | {curve['fvd'][i]:.1f} | {curve['kvd'][i]:.1f} | "
      f"{curve['floor_fvd'][i]:.1f} | {curve['floor_kvd'][i]:.1f} |"
    )
  return "\n".join(lines)


def _define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  flags.DEFINE_string(
    "workdir", None, "the run's workdir (reads WORKDIR/eval/*.json)", flag_values=fv
  )
  flags.DEFINE_string("output", None, "PNG to write (local or gs://)", flag_values=fv)
  flags.DEFINE_string(
    "protocol", None, "protocol to plot (default: the first found)", flag_values=fv
  )
  flags.DEFINE_string("title", "", "title above the panels", flag_values=fv)
  flags.mark_flags_as_required(["workdir", "output"], flag_values=fv)
  return fv


def main(argv, fv: flags.FlagValues = flags.FLAGS) -> int:
  cli_flags.reject_positional(argv)
  try:
    curve = read_curve(fv.workdir, fv.protocol)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  plot(curve, fv.output, fv.title)
  print(markdown_table(curve))
  print(f"wrote {fv.output}")
  return 0


def run(argv) -> int:
  """The tool in this process (program name first in argv); returns the exit code."""
  return cli_flags.run_in_process(_define_flags, main, argv)


if __name__ == "__main__":
  cli_flags.run_as_program(_define_flags, main)
