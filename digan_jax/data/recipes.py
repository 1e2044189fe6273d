"""Source enumeration for the prepare CLI: generic layouts and the paper's dataset recipes.

A *source* is one video to prepare: a container file or a frame folder, with its split, label and
source id (its path relative to the input). Layouts:
  files          every file under the split folder (recursively) is a video, and so is every folder
                 that directly holds png/jpg frames (a frame folder)
  class_folders  <split folder>/<class>/**/<video file>; label = index of the class in sorted order
  frame_folders  every folder that directly holds png/jpg frames is one video (frames sorted by name)
Non-video files are kept as sources so the report lists them as skipped, rather than silently ignored.

Recipes (see DATASETS.md): ucf101, taichi, sky, kinetics_food. A missing source folder gives an
error that says what to download and where to put it.
"""

import dataclasses
import os

from digan_jax.data import video_io

LAYOUTS = ("files", "class_folders", "frame_folders")
RECIPES = ("ucf101", "taichi", "sky", "kinetics_food", "synthetic_videos")

# Kinetics-600 classes of the official Kinetics-food subset (DIGAN's prepare_data/{train,val}.txt).
KINETICS_FOOD_CLASSES = (
  "baking cookies",
  "barbequing",
  "breading or breadcrumbing",
  "cooking egg",
  "cooking on campfire",
  "cooking sausages (not on barbeque)",
  "cooking scallops",
  "cutting apple",
  "cutting nails",
  "cutting orange",
  "cutting pineapple",
  "cutting watermelon",
  "flipping pancake",
  "chopping vegetables",
  "frying vegetables",
  "chopping meat",
  "grinding meat",
  "making a cake",
  "eating cake",
  "making a sandwich",
  "making pizza",
  "making sushi",
  "making tea",
  "peeling apples",
  "peeling potatoes",
  "picking fruit",
  "scrambling eggs",
  "separating eggs",
  "preparing salad",
)


class SourceError(ValueError):
  """The input folder is missing or does not have the expected layout (message says the fix)."""


@dataclasses.dataclass
class Source:
  path: str
  split: str
  label: int
  source_id: str


@dataclasses.dataclass
class Plan:
  """Everything a build needs to know about its inputs."""

  sources: list
  class_names: list
  splits: list
  notes: list = dataclasses.field(default_factory=list)
  settings: dict = dataclasses.field(default_factory=dict)


def _visible(name):
  return not name.startswith(".")


def _walk_files(root):
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if _visible(d))
    for f in sorted(filenames):
      if _visible(f):
        yield os.path.join(dirpath, f)


def _frame_folders(root):
  """Folders under root (root included) that directly contain frame images, sorted."""
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if _visible(d))
    if any(video_io.is_image_file(f) for f in filenames if _visible(f)):
      found.append(dirpath)
  return sorted(found)


def parse_splits(spec):
  """'train,test' or 'train:sky_train,test:sky_test' -> {split: subfolder}; '' -> {'train': ''}."""
  if not spec:
    return {"train": ""}
  splits = {}
  for item in spec.split(","):
    split, _, folder = item.strip().partition(":")
    if not split or not split.replace("_", "").isalnum():
      raise SourceError(
        f"Bad --splits entry {item!r}: use NAME or NAME:SUBFOLDER, e.g. train:sky_train"
      )
    splits[split] = folder or split
  return splits


def layout_plan(input_dir, layout="files", splits=None):
  """Sources of a generic input folder."""
  if layout not in LAYOUTS:
    raise SourceError(f"Unknown --layout={layout!r}; use one of {LAYOUTS}.")
  if not os.path.isdir(input_dir):
    raise SourceError(f"Input folder {input_dir!r} does not exist.")
  split_dirs = parse_splits(splits)
  for split, folder in split_dirs.items():
    if not os.path.isdir(os.path.join(input_dir, folder)):
      raise SourceError(
        f"Split {split!r} expects the folder {os.path.join(input_dir, folder)!r}, which "
        "does not exist (check --splits)."
      )
  class_names = ["video"]
  if layout == "class_folders":
    names = set()
    for folder in split_dirs.values():
      root = os.path.join(input_dir, folder)
      names.update(
        d for d in os.listdir(root) if _visible(d) and os.path.isdir(os.path.join(root, d))
      )
    if not names:
      raise SourceError(f"--layout=class_folders found no class folders in {input_dir!r}.")
    class_names = sorted(names)
  sources = []
  for split, folder in split_dirs.items():
    root = os.path.join(input_dir, folder)
    if layout == "files":
      folders = _frame_folders(root)
      inside = set(folders)
      paths = sorted(
        [(p, 0) for p in _walk_files(root) if os.path.dirname(p) not in inside]
        + [(p, 0) for p in folders]
      )
    elif layout == "class_folders":
      paths = []
      for label, name in enumerate(class_names):
        class_dir = os.path.join(root, name)
        if os.path.isdir(class_dir):
          paths += [(p, label) for p in _walk_files(class_dir)]
    else:
      paths = [(p, 0) for p in _frame_folders(root)]
    sources += [Source(p, split, label, os.path.relpath(p, input_dir)) for p, label in paths]
  return Plan(sources=sources, class_names=class_names, splits=list(split_dirs))


def _first_dir(candidates):
  for path in candidates:
    if os.path.isdir(path):
      return path
  return None


def ucf101_plan(input_dir, fold=1):
  """UCF-101: class folders of .avi and the official split lists.

  Splits: 'train' = trainlist0<fold> (9,537 videos for fold 1), 'test' = testlist0<fold>;
  the paper's main "train+test" setting is split='train+test' at load time. Labels: the 101 class
  folders in sorted order.
  """
  how = (
    "Download UCF101.rar and UCF101TrainTestSplits-RecognitionTask.zip from "
    "https://www.crcv.ucf.edu/data/UCF101.php and extract both into the --input folder, so that "
    "INPUT/UCF-101/<Class>/v_*.avi and INPUT/ucfTrainTestlist/trainlist01.txt exist."
  )
  if not os.path.isdir(input_dir):
    raise SourceError(f"UCF-101 source folder {input_dir!r} does not exist. {how}")
  video_root = _first_dir(
    [os.path.join(input_dir, d) for d in ("UCF-101", "UCF101", "train")] + [input_dir]
  )
  list_dir = _first_dir(
    [os.path.join(input_dir, "ucfTrainTestlist"), os.path.join(video_root, "ucfTrainTestlist")]
  )
  class_names = sorted(
    d
    for d in os.listdir(video_root)
    if _visible(d) and d != "ucfTrainTestlist" and os.path.isdir(os.path.join(video_root, d))
  )
  if list_dir is None or not class_names:
    raise SourceError(
      f"{input_dir!r} does not look like UCF-101 (class folders: {len(class_names)}, "
      f"ucfTrainTestlist: {'found' if list_dir else 'missing'}). {how}"
    )
  notes = []
  if len(class_names) != 101:
    notes.append(f"expected 101 class folders, found {len(class_names)}")
  by_lower = {c.lower(): i for i, c in enumerate(class_names)}
  sources = []
  for split, list_name in (("train", f"trainlist0{fold}.txt"), ("test", f"testlist0{fold}.txt")):
    list_path = os.path.join(list_dir, list_name)
    if not os.path.isfile(list_path):
      raise SourceError(f"Missing split list {list_path!r}. {how}")
    with open(list_path) as f:
      for line in f:
        entry = line.split()
        if not entry:
          continue
        rel = entry[0].replace("\\", "/")
        class_name, _, file_name = rel.partition("/")
        label = by_lower.get(class_name.lower())
        path = os.path.join(video_root, rel)
        if label is not None and not os.path.exists(path):
          # The official lists and folders disagree in case for a few classes (HandStandPushups).
          path = os.path.join(video_root, class_names[label], file_name)
        sources.append(Source(path, split, label if label is not None else 0, rel))
  return Plan(
    sources=sources,
    class_names=class_names,
    splits=["train", "test"],
    notes=notes,
    settings={"resize_method": "bilinear"},
  )


def _split_folders_plan(input_dir, split_candidates, dataset, how):
  """Frame folders and/or video files per split, for TaiChi and Sky."""
  if not os.path.isdir(input_dir):
    raise SourceError(f"{dataset} source folder {input_dir!r} does not exist. {how}")
  sources, splits = [], []
  for split, names in split_candidates.items():
    root = _first_dir([os.path.join(input_dir, n) for n in names])
    if root is None:
      continue
    splits.append(split)
    for folder in _frame_folders(root):
      sources.append(Source(folder, split, 0, os.path.relpath(folder, input_dir)))
    for path in _walk_files(root):
      if video_io.is_video_file(path):
        sources.append(Source(path, split, 0, os.path.relpath(path, input_dir)))
  if not sources:
    wanted = " and ".join("/".join(n) for n in split_candidates.values())
    raise SourceError(f"No {dataset} videos under {input_dir!r} (looked in {wanted}). {how}")
  return Plan(sources=sources, class_names=["video"], splits=splits)


def taichi_plan(input_dir):
  """TaiChi-HD as made by the first-order-model scripts: train/ and test/ of frame folders or mp4.
  DIGAN trains on all of it with stride-4 clips: load split='train+test', frame_stride=4."""
  how = (
    "Create it with the first-order-model TaiChi-HD scripts (github.com/AliaksandrSiarohin/"
    "first-order-model, data/taichi-loading, `python load_videos.py --out_folder INPUT "
    "--format .png`), so that INPUT/train/<video>/*.png and INPUT/test/<video>/*.png exist."
  )
  return _split_folders_plan(input_dir, {"train": ("train",), "test": ("test",)}, "TaiChi-HD", how)


def sky_plan(input_dir):
  """Sky Time-lapse (MDGAN frames): sky_train/ -> 'train', sky_test/ -> 'test' (or train/, test/ or
  val/); every folder of frames is one video."""
  how = (
    "Download sky_timelapse.zip from the MDGAN project (github.com/weixiong-ur/mdgan, "
    "'Sky Timelapse' dataset link) and extract it so that INPUT/sky_train/<video>/<clip>/*.jpg and "
    "INPUT/sky_test/... exist."
  )
  return _split_folders_plan(
    input_dir,
    {"train": ("sky_train", "train"), "test": ("sky_test", "test", "val")},
    "Sky Time-lapse",
    how,
  )


def kinetics_food_plan(input_dir):
  """Kinetics-food: the 29 food classes of Kinetics-600; INPUT/{train,val}/<class>/*.mp4 (also accepts
  train_vid/ and val_vid/ and class folders with '_' for spaces). val -> split 'test'. Resize is
  PIL Lanczos, as the official preprocessing."""
  how = (
    "Download the Kinetics-600 train and validation videos of the 29 food classes listed in "
    "digan_jax/data/DATASETS.md (e.g. with the kinetics-dataset download scripts) and place them as "
    "INPUT/train/<class name>/*.mp4 and INPUT/val/<class name>/*.mp4."
  )
  if not os.path.isdir(input_dir):
    raise SourceError(f"Kinetics-food source folder {input_dir!r} does not exist. {how}")
  wanted = {c.replace("_", " ").lower(): i for i, c in enumerate(KINETICS_FOOD_CLASSES)}
  sources, splits, notes = [], [], []
  for split, names in (("train", ("train", "train_vid")), ("test", ("val", "val_vid", "test"))):
    root = _first_dir([os.path.join(input_dir, n) for n in names])
    if root is None:
      continue
    splits.append(split)
    present = set()
    for folder in sorted(os.listdir(root)):
      label = wanted.get(folder.replace("_", " ").lower())
      if label is None or not os.path.isdir(os.path.join(root, folder)):
        continue
      present.add(label)
      for path in _walk_files(os.path.join(root, folder)):
        sources.append(Source(path, split, label, os.path.relpath(path, input_dir)))
    missing = [
      KINETICS_FOOD_CLASSES[i] for i in range(len(KINETICS_FOOD_CLASSES)) if i not in present
    ]
    if missing:
      notes.append(f"{split}: {len(missing)} food classes missing: {', '.join(missing)}")
  if not sources:
    raise SourceError(f"No Kinetics-food class folders under {input_dir!r}. {how}")
  return Plan(
    sources=sources,
    class_names=list(KINETICS_FOOD_CLASSES),
    splits=splits,
    notes=notes,
    settings={"resize_method": "lanczos"},
  )


def recipe_plan(recipe, input_dir, fold=1):
  if recipe == "ucf101":
    return ucf101_plan(input_dir, fold)
  if recipe == "taichi":
    return taichi_plan(input_dir)
  if recipe == "sky":
    return sky_plan(input_dir)
  if recipe == "kinetics_food":
    return kinetics_food_plan(input_dir)
  raise SourceError(f"Unknown --recipe={recipe!r}; use one of {RECIPES}.")
