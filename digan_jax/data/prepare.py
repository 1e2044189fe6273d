"""Prepare CLI: turns a folder of videos (or frame folders, or a recipe's source) into a TFDS dataset.

  python -m digan_jax.data.prepare --input=DIR --output=DATA_DIR --name=NAME --resolution=R \
      [--layout=files|class_folders|frame_folders] [--splits=train,test | train:sub_a,test:sub_b] \
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

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from digan_jax import fileio
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
  if not name or "/" in name or name.startswith(".") or not name.replace("_", "").replace("-", "").isalnum():
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


def prepare_dataset(output_dir, name, resolution, *, input_dir=None, layout="files", splits=None,
                    plan=None, image_format="png", jpeg_quality=95, resize_method="bilinear",
                    min_frames=16, max_frames=0, frame_folder_fps=0.0, num_workers=None,
                    overwrite=False, progress=True, description=""):
  """Builds DATA_DIR/NAME from `plan` (or from input_dir + layout + splits); returns the report dict.

  Raises EmptyDatasetError when nothing usable remains, recipes.SourceError for a bad input folder,
  FileExistsError when the dataset exists and overwrite is False.
  """
  _check_name(name)
  if image_format not in image_ops.IMAGE_FORMATS:
    raise ValueError(f"Unknown --image_format={image_format!r}; use one of {image_ops.IMAGE_FORMATS}.")
  if resize_method not in image_ops.RESIZE_METHODS:
    raise ValueError(f"Unknown --resize_method={resize_method!r}; use one of {image_ops.RESIZE_METHODS}.")
  if resolution < 4:
    raise ValueError(f"--resolution must be >= 4, got {resolution}.")
  remote = fileio.is_remote(output_dir)
  output_dir = os.fspath(output_dir) if remote else os.path.abspath(os.fspath(output_dir))
  final_dir = os.path.join(output_dir, name)
  if fileio.as_path(final_dir).exists() and not overwrite:
    raise FileExistsError(f"{final_dir} exists; pass --overwrite to replace it or choose another --name.")
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
    jobs = [(s.path, resolution, resize_method, image_format, jpeg_quality, min_frames, max_frames,
             frame_folder_fps) for s in sources]
    for source, (frames, result) in zip(sources, parallel.ordered_map(process_source, jobs, num_workers)):
      if bar is not None:
        bar.update(1)
      if frames is None:
        counts[split]["skipped"] += 1
        skipped.append({"source": source.source_id, "split": split, "reason": result})
        continue
      counts[split]["prepared"] += 1
      counts[split]["frames"] += len(frames)
      yield {"frames": frames, "length": len(frames), "fps": result, "label": source.label,
             "source_id": source.source_id}

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
        name=name, resolution=resolution, image_format=image_format, class_names=plan.class_names,
        split_examples={split: examples(split) for split in plan.splits}, description=description,
        data_dir=staging)
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
          f"See {report_path}; check --input, --layout, --splits and --min_frames.")
    if build_error is not None:
      raise build_error
    dataset_dir = os.fspath(builder.data_dir)
    for split in plan.splits:
      storage.write_video_index(dataset_dir, split, storage.VideoDataset.split_files(dataset_dir, split))
    report["seconds"] = round(time.time() - started, 2)
    report["bytes"] = sum(os.path.getsize(os.path.join(dataset_dir, f)) for f in os.listdir(dataset_dir))
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


def prepare_synthetic(output_dir, resolution, num_videos=None, num_test=None, min_length=None,
                      max_length=None, seed=None, num_workers=None):
  """Builds synthetic_videos/<config> under output_dir; returns (name for the pipeline, seconds)."""
  from digan_jax.data.builders import synthetic_videos  # pylint: disable=g-import-not-at-top

  config = synthetic_videos.config_name(resolution, num_videos, num_test, min_length, max_length, seed)
  started = time.time()
  synthetic_videos.build(output_dir, config, num_workers=num_workers)
  return f"synthetic_videos/{config}", time.time() - started


def _parser():
  parser = argparse.ArgumentParser(
      prog="python -m digan_jax.data.prepare", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--input", help="source folder (videos, class folders, frame folders or a recipe's download)")
  parser.add_argument("--output", required=True, help="TFDS data dir to write DATA_DIR/NAME into")
  parser.add_argument("--name", help="dataset name (default: the recipe name)")
  parser.add_argument("--resolution", type=int, default=128, help="output frame side (square)")
  parser.add_argument("--recipe", choices=recipes.RECIPES, help="a documented dataset recipe (DATASETS.md)")
  parser.add_argument("--layout", default="files", choices=recipes.LAYOUTS)
  parser.add_argument("--splits", default="", help="'train,test' (subfolders) or 'train:sub_a,test:sub_b'; "
                      "default: the whole input as split 'train'")
  parser.add_argument("--fold", type=int, default=1, choices=(1, 2, 3), help="UCF-101 split fold")
  parser.add_argument("--image_format", default="png", choices=image_ops.IMAGE_FORMATS)
  parser.add_argument("--jpeg_quality", type=int, default=95)
  parser.add_argument("--resize_method", choices=image_ops.RESIZE_METHODS,
                      help="default bilinear (official loader); the kinetics_food recipe uses lanczos")
  parser.add_argument("--min_frames", type=int, default=16, help="shorter videos are skipped")
  parser.add_argument("--max_frames", type=int, default=0, help="keep at most this many frames (0 = all)")
  parser.add_argument("--fps", type=float, default=0.0, help="frame rate recorded for frame folders")
  parser.add_argument("--num_workers", type=int, default=0, help="decoding processes (0 = all cores)")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing DATA_DIR/NAME")
  parser.add_argument("--num_videos", type=int, help="synthetic_videos: train videos (default 1024)")
  parser.add_argument("--num_test_videos", type=int, help="synthetic_videos: test videos (default 256)")
  parser.add_argument("--seed", type=int, help="synthetic_videos: set seed (default 0)")
  return parser


def main(argv=None):
  args = _parser().parse_args(argv)
  try:
    if args.recipe == "synthetic_videos":
      name, seconds = prepare_synthetic(args.output, args.resolution, args.num_videos, args.num_test_videos,
                                        seed=args.seed, num_workers=args.num_workers or None)
      print(f"Built {name} in {args.output} ({seconds:.1f} s). Train with --config.data.name={name}")
      return 0
    if args.recipe:
      if not args.input:
        raise recipes.SourceError(f"--recipe={args.recipe} needs --input=DIR (the downloaded source).")
      plan = recipes.recipe_plan(args.recipe, args.input, args.fold)
      name = args.name or args.recipe
    else:
      if not args.input or not args.name:
        raise recipes.SourceError("Pass --input=DIR and --name=NAME (or --recipe=...).")
      plan = recipes.layout_plan(args.input, args.layout, args.splits)
      name = args.name
    resize_method = args.resize_method or plan.settings.get("resize_method", "bilinear")
    report = prepare_dataset(
        args.output, name, args.resolution, plan=plan, image_format=args.image_format,
        jpeg_quality=args.jpeg_quality, resize_method=resize_method, min_frames=args.min_frames,
        max_frames=args.max_frames, frame_folder_fps=args.fps, num_workers=args.num_workers or None,
        overwrite=args.overwrite)
  except (recipes.SourceError, EmptyDatasetError, FileExistsError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for split, c in report["counts"].items():
    print(f"{split}: {c['prepared']} videos ({c['frames']} frames), {c['skipped']} skipped")
  for note in report["notes"]:
    print(f"note: {note}")
  print(f"Wrote {report['dataset_dir']} in {report['seconds']:.1f} s "
        f"({report['bytes'] / 2**20:.1f} MiB); report: {os.path.join(report['dataset_dir'], REPORT_NAME)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
