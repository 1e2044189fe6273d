"""Prepare CLI: turns a folder of videos (or frame folders, or a recipe's source) into a TFDS dataset.

  python -m digan_jax.data.prepare --input=DIR --output=DATA_DIR --name=NAME --resolution=R \\
      [--layout=files|class_folders|frame_folders] [--splits=train,test | train:sub_a,test:sub_b] \\
      [--image_format=png|jpeg --jpeg_quality=95] [--resize_method=bilinear|lanczos] [--min_frames=16]
  python -m digan_jax.data.prepare --recipe=ucf101|taichi|sky|kinetics_food --input=DIR --output=DATA_DIR
  python -m digan_jax.data.prepare --recipe=synthetic_videos --output=DATA_DIR --resolution=32 [--num_videos=N]

Each frame is centre-cropped to its short side and resized to R×R (bilinear, half-pixel centres, no
antialias = the official loader; or PIL Lanczos), then stored encoded (PNG, or JPEG with a quality),
with the video's length, fps, label and source id. Videos are decoded in parallel worker processes.
Unreadable, corrupt, truncated, non-video and too-short sources are skipped, counted and listed in
`prepare_report.json` (inside the dataset; beside it as NAME.prepare_report.json when the build is
refused). An empty result (or an empty split) is refused.

Atomicity: everything is written under DATA_DIR/.incomplete-NAME-*/ and moved to DATA_DIR/NAME by
one rename when complete, so an interrupted build never leaves anything that loads.
"""

import json
import os
import shutil
import sys
import tempfile
import time

from absl import flags

from digan_jax import cli_flags, fileio
from digan_jax.data import image_ops
from digan_jax.data import parallel
from digan_jax.data import recipes
from digan_jax.data import video_io

REPORT_NAME = "prepare_report.json"


class EmptyDatasetError(RuntimeError):
  """Nothing (or a split with nothing) survived preparation."""


def process_source(job):
  """Worker: decode, crop, resize and encode one source. Returns (frames, fps) or (None, reason)."""
  path, resolution, resize_method, image_format, jpeg_quality, min_frames, max_frames, fps = job
  frames, rate = [], 0.0
  try:
    for rate, frame in video_io.iter_frames(path, fps):
      if frame.ndim != 3 or frame.shape[0] < 1 or frame.shape[1] < 1:
        raise video_io.VideoReadError(f"bad frame shape {frame.shape}")
      frame = image_ops.crop_and_resize(frame, resolution, resize_method)
      frames.append(image_ops.encode_image(frame, image_format, jpeg_quality))
      if max_frames and len(frames) >= max_frames:
        break
  except video_io.VideoReadError as e:
    return None, str(e)
  except Exception as e:  # pylint: disable=broad-except
    # A decoder crash on one bad file must not stop a long build; it is reported instead.
    return None, f"{type(e).__name__}: {e}"
  if len(frames) < min_frames:
    return None, f"too short: {len(frames)} frames < --min_frames={min_frames}"
  return frames, float(rate)


def _check_name(name):
  if (
    not name
    or "/" in name
    or name.startswith(".")
    or not name.replace("_", "").replace("-", "").isalnum()
  ):
    raise ValueError(f"Bad --name={name!r}: use letters, digits, '_' or '-' (e.g. ucf101_128).")


def _move_into_place(built_dir, final_dir, overwrite):
  """Renames the finished dataset into place (one atomic rename; the old copy is removed after).

  An object store has no rename: the files are uploaded with each version's dataset_info.json
  last, so readers (storage.find_dataset_dir) see either no dataset or a whole one.
  """
  if fileio.is_remote(final_dir):
    target = fileio.as_path(final_dir)
    if target.exists():
      if not overwrite:
        raise FileExistsError(f"{final_dir} exists; pass --overwrite to replace it.")
      target.rmtree()
    fileio.copy_tree(built_dir, target, last=("dataset_info.json",))
    return
  if os.path.exists(final_dir):
    if not overwrite:
      raise FileExistsError(f"{final_dir} exists; pass --overwrite to replace it.")
    trash = f"{final_dir}.old-{os.getpid()}"
    os.rename(final_dir, trash)
    os.rename(built_dir, final_dir)
    shutil.rmtree(trash, ignore_errors=True)
  else:
    os.rename(built_dir, final_dir)


def prepare_dataset(
  output_dir,
  name,
  resolution,
  *,
  input_dir=None,
  layout="files",
  splits=None,
  plan=None,
  image_format="png",
  jpeg_quality=95,
  resize_method="bilinear",
  min_frames=16,
  max_frames=0,
  frame_folder_fps=0.0,
  num_workers=None,
  overwrite=False,
  progress=True,
  description="",
):
  """Builds DATA_DIR/NAME from `plan` (or from input_dir + layout + splits); returns the report dict.

  Raises EmptyDatasetError when nothing usable remains, recipes.SourceError for a bad input folder,
  FileExistsError when the dataset exists and overwrite is False.
  """
  _check_name(name)
  if image_format not in image_ops.IMAGE_FORMATS:
    raise ValueError(
      f"Unknown --image_format={image_format!r}; use one of {image_ops.IMAGE_FORMATS}."
    )
  if resize_method not in image_ops.RESIZE_METHODS:
    raise ValueError(
      f"Unknown --resize_method={resize_method!r}; use one of {image_ops.RESIZE_METHODS}."
    )
  if resolution < 4:
    raise ValueError(f"--resolution must be >= 4, got {resolution}.")
  remote = fileio.is_remote(output_dir)
  output_dir = os.fspath(output_dir) if remote else os.path.abspath(os.fspath(output_dir))
  final_dir = os.path.join(output_dir, name)
  if fileio.as_path(final_dir).exists() and not overwrite:
    raise FileExistsError(
      f"{final_dir} exists; pass --overwrite to replace it or choose another --name."
    )
  if plan is None:
    if input_dir is None:
      raise ValueError("Pass --input=DIR (or --recipe=...).")
    plan = recipes.layout_plan(input_dir, layout, splits)
  num_workers = num_workers or os.cpu_count() or 1
  fileio.as_path(output_dir).mkdir(parents=True, exist_ok=True)
  started = time.time()

  counts = {split: {"prepared": 0, "skipped": 0, "frames": 0} for split in plan.splits}
  skipped = []
  bar = None
  if progress:
    from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top

    bar = tqdm.tqdm(total=len(plan.sources), unit="video", desc=f"prepare {name}")

  def examples(split):
    sources = [s for s in plan.sources if s.split == split]
    jobs = [
      (
        s.path,
        resolution,
        resize_method,
        image_format,
        jpeg_quality,
        min_frames,
        max_frames,
        frame_folder_fps,
      )
      for s in sources
    ]
    for source, (frames, result) in zip(
      sources, parallel.ordered_map(process_source, jobs, num_workers)
    ):
      if bar is not None:
        bar.update(1)
      if frames is None:
        counts[split]["skipped"] += 1
        skipped.append({"source": source.source_id, "split": split, "reason": result})
        continue
      counts[split]["prepared"] += 1
      counts[split]["frames"] += len(frames)
      yield {
        "frames": frames,
        "length": len(frames),
        "fps": result,
        "label": source.label,
        "source_id": source.source_id,
      }

  report = {
    "name": name,
    "resolution": resolution,
    "image_format": image_format,
    "jpeg_quality": jpeg_quality if image_format == "jpeg" else None,
    "resize_method": resize_method,
    "crop": "centre crop to the short side",
    "min_frames": min_frames,
    "max_frames": max_frames,
    "class_names": plan.class_names,
    "notes": plan.notes,
    "counts": counts,
    "skipped": skipped,
  }
  # Beside the output for a same-filesystem rename; in the system temp dir for an object store.
  staging = tempfile.mkdtemp(prefix=f".incomplete-{name}-", dir=None if remote else output_dir)
  try:
    # Import TF only now: the worker processes above never need it.
    from digan_jax.data import storage  # pylint: disable=g-import-not-at-top
    from digan_jax.data.builders import prepared_videos  # pylint: disable=g-import-not-at-top

    builder = prepared_videos.PreparedVideos(
      name=name,
      resolution=resolution,
      image_format=image_format,
      class_names=plan.class_names,
      split_examples={split: examples(split) for split in plan.splits},
      description=description,
      data_dir=staging,
    )
    build_error = None
    try:
      builder.download_and_prepare()
    except Exception as e:  # pylint: disable=broad-except
      build_error = e
    empty = [split for split in plan.splits if counts[split]["prepared"] == 0]
    if empty or not plan.splits:
      report["seconds"] = round(time.time() - started, 2)
      report_path = os.path.join(output_dir, f"{name}.{REPORT_NAME}")
      fileio.write_json(report_path, report)
      reasons = sorted({s["reason"].split(":")[0] for s in skipped})[:5]
      raise EmptyDatasetError(
        f"Refusing to write dataset {name!r}: no usable videos in split(s) {empty or '(none)'} "
        f"({len(plan.sources)} sources, {len(skipped)} skipped; reasons include {reasons}). "
        f"See {report_path}; check --input, --layout, --splits and --min_frames."
      )
    if build_error is not None:
      raise build_error
    dataset_dir = os.fspath(builder.data_dir)
    for split in plan.splits:
      storage.write_video_index(
        dataset_dir, split, storage.VideoDataset.split_files(dataset_dir, split)
      )
    report["seconds"] = round(time.time() - started, 2)
    report["bytes"] = sum(
      os.path.getsize(os.path.join(dataset_dir, f)) for f in os.listdir(dataset_dir)
    )
    with open(os.path.join(dataset_dir, REPORT_NAME), "w") as f:
      json.dump(report, f, indent=2)
    version = os.path.basename(dataset_dir)
    _move_into_place(os.path.join(staging, name), final_dir, overwrite)
    report["dataset_dir"] = os.path.join(final_dir, version)
    return report
  finally:
    if bar is not None:
      bar.close()
    shutil.rmtree(staging, ignore_errors=True)


def prepare_synthetic(
  output_dir,
  resolution,
  num_videos=None,
  num_test=None,
  min_length=None,
  max_length=None,
  seed=None,
  num_workers=None,
):
  """Builds synthetic_videos/<config> under output_dir; returns (name for the pipeline, seconds)."""
  from digan_jax.data.builders import synthetic_videos  # pylint: disable=g-import-not-at-top

  config = synthetic_videos.config_name(
    resolution, num_videos, num_test, min_length, max_length, seed
  )
  started = time.time()
  synthetic_videos.build(output_dir, config, num_workers=num_workers)
  return f"synthetic_videos/{config}", time.time() - started


def _define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  """The CLI's flags on `fv`: absl's FLAGS under `python -m`, a fresh FlagValues in run()."""
  flags.DEFINE_string(
    "input",
    None,
    "source folder (videos, class folders, frame folders or a recipe's download)",
    flag_values=fv,
  )
  flags.DEFINE_string(
    "output", None, "TFDS data dir to write DATA_DIR/NAME into (local or gs://)", flag_values=fv
  )
  flags.DEFINE_string("name", None, "dataset name (default: the recipe name)", flag_values=fv)
  flags.DEFINE_integer("resolution", 128, "output frame side (square)", flag_values=fv)
  flags.DEFINE_enum(
    "recipe", None, recipes.RECIPES, "a documented dataset recipe (DATASETS.md)", flag_values=fv
  )
  flags.DEFINE_enum(
    "layout",
    "files",
    recipes.LAYOUTS,
    "how the input folder holds its videos (DATASETS.md)",
    flag_values=fv,
  )
  flags.DEFINE_string(
    "splits",
    "",
    "'train,test' (subfolders) or 'train:sub_a,test:sub_b'; "
    "default: the whole input as split 'train'",
    flag_values=fv,
  )
  flags.DEFINE_integer(
    "fold", 1, "UCF-101 split fold", lower_bound=1, upper_bound=3, flag_values=fv
  )
  flags.DEFINE_enum(
    "image_format", "png", image_ops.IMAGE_FORMATS, "how frames are stored", flag_values=fv
  )
  flags.DEFINE_integer(
    "jpeg_quality", 95, "JPEG quality (with --image_format=jpeg)", flag_values=fv
  )
  flags.DEFINE_enum(
    "resize_method",
    None,
    image_ops.RESIZE_METHODS,
    "default bilinear (official loader); the kinetics_food recipe uses lanczos",
    flag_values=fv,
  )
  flags.DEFINE_integer("min_frames", 16, "shorter videos are skipped", flag_values=fv)
  flags.DEFINE_integer("max_frames", 0, "keep at most this many frames (0 = all)", flag_values=fv)
  flags.DEFINE_float("fps", 0.0, "frame rate recorded for frame folders", flag_values=fv)
  flags.DEFINE_integer("num_workers", 0, "decoding processes (0 = all cores)", flag_values=fv)
  flags.DEFINE_boolean("overwrite", False, "replace an existing DATA_DIR/NAME", flag_values=fv)
  flags.DEFINE_integer(
    "num_videos", None, "synthetic_videos: train videos (default 1024)", flag_values=fv
  )
  flags.DEFINE_integer(
    "num_test_videos", None, "synthetic_videos: test videos (default 256)", flag_values=fv
  )
  flags.DEFINE_integer("seed", None, "synthetic_videos: set seed (default 0)", flag_values=fv)
  flags.mark_flag_as_required("output", flag_values=fv)
  return fv


def main(argv, fv: flags.FlagValues = flags.FLAGS):
  cli_flags.reject_positional(argv)
  try:
    if fv.recipe == "synthetic_videos":
      name, seconds = prepare_synthetic(
        fv.output,
        fv.resolution,
        fv.num_videos,
        fv.num_test_videos,
        seed=fv.seed,
        num_workers=fv.num_workers or None,
      )
      print(f"Built {name} in {fv.output} ({seconds:.1f} s). Train with --config.data.name={name}")
      return 0
    if fv.recipe:
      if not fv.input:
        raise recipes.SourceError(
          f"--recipe={fv.recipe} needs --input=DIR (the downloaded source)."
        )
      plan = recipes.recipe_plan(fv.recipe, fv.input, fv.fold)
      name = fv.name or fv.recipe
    else:
      if not fv.input or not fv.name:
        raise recipes.SourceError("Pass --input=DIR and --name=NAME (or --recipe=...).")
      plan = recipes.layout_plan(fv.input, fv.layout, fv.splits)
      name = fv.name
    resize_method = fv.resize_method or plan.settings.get("resize_method", "bilinear")
    report = prepare_dataset(
      fv.output,
      name,
      fv.resolution,
      plan=plan,
      image_format=fv.image_format,
      jpeg_quality=fv.jpeg_quality,
      resize_method=resize_method,
      min_frames=fv.min_frames,
      max_frames=fv.max_frames,
      frame_folder_fps=fv.fps,
      num_workers=fv.num_workers or None,
      overwrite=fv.overwrite,
    )
  except (recipes.SourceError, EmptyDatasetError, FileExistsError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for split, c in report["counts"].items():
    print(f"{split}: {c['prepared']} videos ({c['frames']} frames), {c['skipped']} skipped")
  for note in report["notes"]:
    print(f"note: {note}")
  print(
    f"Wrote {report['dataset_dir']} in {report['seconds']:.1f} s "
    f"({report['bytes'] / 2**20:.1f} MiB); report: {os.path.join(report['dataset_dir'], REPORT_NAME)}"
  )
  return 0


def run(argv) -> int:
  """The tool in this process (program name first in argv); returns the exit code."""
  return cli_flags.run_in_process(_define_flags, main, argv)


if __name__ == "__main__":
  cli_flags.run_as_program(_define_flags, main)
