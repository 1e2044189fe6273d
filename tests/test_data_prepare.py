"""Prepare CLI on small video files written here: several containers and a frame folder, plus broken
sources that must be skipped and reported; atomic builds; refusal of empty results; recipes' errors."""

import json
import os
import subprocess
import sys
import time

import av
import numpy as np
import pytest
from PIL import Image

from digan_jax.data import image_ops
from digan_jax.data import prepare
from digan_jax.data import recipes
from digan_jax.data import storage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _frames(num_frames, height=24, width=32, seed=0):
  """A moving gradient with a bright square: easy to check after crop and resize."""
  rng = np.random.default_rng(seed)
  base = rng.integers(0, 200, size=3)
  yy, xx = np.mgrid[:height, :width]
  frames = []
  for t in range(num_frames):
    frame = np.zeros((height, width, 3), np.uint8)
    frame[...] = base
    frame[..., 0] = (xx * 6 + t * 5) % 256
    frame[(yy // 6 == t % 4) & (xx // 6 == 2)] = 255
    frames.append(frame)
  return frames


def write_video(path, frames, codec, fps=10):
  with av.open(path, "w") as container:
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
    stream.pix_fmt = {"gif": "rgb8", "mjpeg": "yuvj420p"}.get(codec, "yuv420p")
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def write_frame_folder(folder, frames):
  os.makedirs(folder)
  for i, frame in enumerate(frames):
    Image.fromarray(frame).save(os.path.join(folder, f"frame{i:05d}.png"))


@pytest.fixture(scope="module")
def video_tree(tmp_path_factory):
  """train/: mp4, avi, gif, webm, a frame folder and broken sources; test/: one avi."""
  root = tmp_path_factory.mktemp("videos")
  train = root / "train"
  os.makedirs(train / "nested")
  write_video(str(train / "a.mp4"), _frames(20, seed=1), "libx264")
  write_video(str(train / "b.avi"), _frames(18, seed=2), "mpeg4")
  write_video(str(train / "nested" / "c.gif"), _frames(17, seed=3), "gif")
  write_video(str(train / "d.webm"), _frames(16, seed=4), "libvpx")
  write_frame_folder(str(train / "e_frames"), _frames(19, seed=5))
  write_video(str(train / "short.mp4"), _frames(5, seed=6), "libx264")
  # Truncated: half of an mp4 whose index (moov) is written last.
  write_video(str(root / "full.mp4"), _frames(30, seed=7), "libx264")
  data = (root / "full.mp4").read_bytes()
  (train / "truncated.mp4").write_bytes(data[: len(data) // 2])
  os.remove(root / "full.mp4")
  # Truncated AVI: opens, but its header promises more frames than remain.
  write_video(str(root / "full.avi"), _frames(40, 96, 128, seed=9), "mpeg4")
  data = (root / "full.avi").read_bytes()
  (train / "truncated.avi").write_bytes(data[: len(data) // 2])
  os.remove(root / "full.avi")
  (train / "notes.txt").write_text("not a video")
  (train / "fake.avi").write_bytes(os.urandom(4000))
  os.makedirs(root / "test")
  write_video(str(root / "test" / "t.avi"), _frames(16, seed=8), "mjpeg")
  return root


@pytest.fixture(scope="module")
def prepared(video_tree, tmp_path_factory):
  out = tmp_path_factory.mktemp("data")
  report = prepare.prepare_dataset(
    out,
    "mini",
    16,
    input_dir=str(video_tree),
    layout="files",
    splits="train,test",
    num_workers=2,
    progress=False,
  )
  return out, report


# ------------------------------------------------------------------- coded videos (exact checks)
# Lossless frame folders whose pixel values encode where they come from, so that the prepared
# frames can be checked against NumPy expectations written from the official rules, not image_ops.

PAIR_LENGTHS = (10, 11, 12, 13)  # train split: square 16x16 videos, video v has 10 + v frames


def _pair_frame(v, t):
  """Square video v, frame t: R = 8·col + 4 (left-right asymmetric, so a flip shows), G = 12·t + 6,
  B = 50·v + 2·row + 10 (top-bottom asymmetric)."""
  rows, cols = np.mgrid[:16, :16]
  return np.stack(
    [8 * cols + 4, np.full((16, 16), 12 * t + 6), 50 * v + 2 * rows + 10], axis=-1
  ).astype(np.uint8)


# test split: (height, width) and frame count (distinct counts identify the stored videos).
CROP_VIDEOS = {
  "wide_16x24": ((16, 24), 4),
  "tall_26x16": ((26, 16), 5),
  "odd_16x21": ((16, 21), 6),
  "resize_32x48": ((32, 48), 7),
  "odd_16x23": ((16, 23), 8),
}


def _crop_source_frame(height, width, t):
  """R = 4·row + 2, G = 4·col + 2 of the source pixel, B = 20·t + 10 (the frame's position)."""
  rows, cols = np.mgrid[:height, :width]
  return np.stack(
    [4 * rows + 2, 4 * cols + 2, np.full((height, width), 20 * t + 10)], axis=-1
  ).astype(np.uint8)


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
  root = tmp_path_factory.mktemp("coded_src")
  for v, length in enumerate(PAIR_LENGTHS):
    write_frame_folder(str(root / "train" / f"v{v}"), [_pair_frame(v, t) for t in range(length)])
  for name, ((height, width), length) in CROP_VIDEOS.items():
    write_frame_folder(
      str(root / "test" / name), [_crop_source_frame(height, width, t) for t in range(length)]
    )
  out = tmp_path_factory.mktemp("coded_data")
  report = prepare.prepare_dataset(
    out,
    "coded",
    16,
    input_dir=str(root),
    layout="frame_folders",
    splits="train,test",
    min_frames=4,
    num_workers=1,
    progress=False,
  )
  assert report["counts"]["train"]["prepared"] == 4 and report["counts"]["test"]["prepared"] == 5
  return out


def test_builds_good_videos_and_reports_bad_ones(prepared):
  out, report = prepared
  counts = report["counts"]
  assert counts["train"]["prepared"] == 5 and counts["test"]["prepared"] == 1
  reasons = {s["source"]: s["reason"] for s in report["skipped"]}
  assert set(reasons) == {
    "train/short.mp4",
    "train/truncated.mp4",
    "train/truncated.avi",
    "train/notes.txt",
    "train/fake.avi",
  }
  assert "too short" in reasons["train/short.mp4"]
  assert "truncated" in reasons["train/truncated.avi"]
  assert "not a video" in reasons["train/notes.txt"]
  with open(os.path.join(report["dataset_dir"], prepare.REPORT_NAME)) as f:
    assert json.load(f)["counts"]["train"]["skipped"] == 5
  # Nothing of the staging area is left behind.
  assert sorted(os.listdir(out)) == ["mini"]


def test_prepared_frames_lengths_and_metadata(prepared, video_tree):
  out, _ = prepared
  dataset = storage.open_dataset(out, "mini", "train")
  assert dataset.resolution == 16 and len(dataset) == 5
  assert sorted(dataset.lengths.tolist()) == [16, 17, 18, 19, 20]
  # The lossless frame folder must equal our own crop + bilinear resize of its frames.
  ids = [i for i in range(len(dataset)) if dataset.lengths[i] == 19]
  encoded = dataset.fetch(ids, [[0, 18]])[0]
  expected = [image_ops.crop_and_resize(f, 16) for f in _frames(19, seed=5)]
  np.testing.assert_array_equal(image_ops.decode_image(encoded[0]), expected[0])
  np.testing.assert_array_equal(image_ops.decode_image(encoded[1]), expected[18])
  # Lossy containers: close to the source after the same preprocessing.
  ids = [i for i in range(len(dataset)) if dataset.lengths[i] == 18]
  decoded = image_ops.decode_image(dataset.fetch(ids, [[3]])[0, 0]).astype(float)
  reference = image_ops.crop_and_resize(_frames(18, seed=2)[3], 16).astype(float)
  assert np.abs(decoded - reference).mean() < 12


@pytest.mark.parametrize(
  "name", ["wide_16x24", "tall_26x16", "odd_16x21", "resize_32x48", "odd_16x23"]
)
def test_centre_crop_window_is_the_official_one(coded, name):
  """Every prepared pixel comes from the official centre window (`resize_crop` in official
  src/training/dataset.py: top = (h − s) // 2, left = (w − s) // 2, s = min(h, w)), frames in
  source order.

  The expectation is NumPy from that rule alone: with no resize the stored pixel (i, j) of frame t
  is source (top + i, left + j); for 32x48 -> 16 (crop 32x32 at left 8, then bilinear 2x down with
  half-pixel centres) it is the mean of source rows/cols 2i + top, 2i + 1 + top, which is exact in
  the coding (4·(2i + 0.5 + top) + 2). A window one pixel off changes a value by 4 (by 8 after the
  resize).
  """
  (height, width), length = CROP_VIDEOS[name]
  dataset = storage.open_dataset(coded, "coded", "test")
  (video,) = [i for i in range(len(dataset)) if dataset.lengths[i] == length]
  encoded = dataset.fetch([video], [list(range(length))])[0]
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  step = side / 16  # source pixels per output pixel (1, or 2 for the resize case)
  src_rows = top + step * np.arange(16) + (step - 1) / 2  # centre of the source pixels averaged
  src_cols = left + step * np.arange(16) + (step - 1) / 2
  for t in range(length):
    expected = np.stack(
      np.broadcast_arrays(
        4 * src_rows[:, None] + 2, 4 * src_cols[None, :] + 2, np.float64(20 * t + 10)
      ),
      axis=-1,
    )
    got = image_ops.decode_image(encoded[t])
    assert got.shape == (16, 16, 3)
    if t == 0:
      print(
        f"{name}: top-left source pixel ({(got[0, 0, 0] - 2) / 4 - (step - 1) / 2:g}, "
        f"{(got[0, 0, 1] - 2) / 4 - (step - 1) / 2:g}), official ({top}, {left})"
      )
    np.testing.assert_array_equal(got, expected.astype(np.uint8), err_msg=f"{name} frame {t}")


def test_frame_pairs_from_prepared_data(prepared, coded):
  """Training pairs are exactly the planned frames of the right videos: content, frame order within
  the pair, channel order and flips checked against the coded source frames, not image_ops."""
  from digan_jax.data import pipeline
  from digan_jax.data import clip_plans

  out, _ = prepared
  batch = next(pipeline.make_train_iterator(out, "mini", "train+test", 4, num_frames=16, seed=0))
  assert batch["frames"].shape == (4, 2, 16, 16, 3)
  assert batch["frames"].min() >= -1 and batch["frames"].max() <= 1

  num_frames, batch_size, num_steps = 6, 8, 4
  dataset = storage.open_dataset(coded, "coded", "train")
  source = dataset.lengths - PAIR_LENGTHS[0]  # stored video -> source video v
  assert sorted(source.tolist()) == [0, 1, 2, 3]
  index = clip_plans.ClipIndex(dataset.lengths, num_frames)
  iterator = pipeline.make_train_iterator(
    coded, "coded", "train", batch_size, num_frames=num_frames, seed=3, dataset=dataset
  )
  flips, gaps = [], []
  for step in range(num_steps):
    batch = next(iterator)
    plan = clip_plans.train_plan(index, seed=3, step=step, batch_size_per_process=batch_size)
    assert (
      batch["frames"].shape == (batch_size, 2, 16, 16, 3) and batch["frames"].dtype == np.float32
    )
    np.testing.assert_array_equal(batch["label"], 0)
    np.testing.assert_allclose(batch["times"], plan.times)
    np.testing.assert_allclose(batch["delta_t"], plan.delta_t)
    for b in range(batch_size):
      v = int(source[plan.video[b]])
      f_lo, f_hi = (int(f) for f in plan.frames[b])
      expected = np.stack([_pair_frame(v, f_lo), _pair_frame(v, f_hi)]).astype(np.float32)
      if plan.flip[b]:
        expected = expected[:, :, ::-1]
      np.testing.assert_allclose(
        batch["frames"][b],
        expected / 127.5 - 1,
        rtol=0,
        atol=1e-6,
        err_msg=f"step {step} row {b}: video {v} frames {f_lo}, {f_hi}",
      )
      # The same facts read off the pixels alone (independent of the plan).
      pixels = np.rint((batch["frames"][b] + 1) * 127.5).astype(int)
      t_lo, t_hi = (pixels[:, 0, 0, 1] - 6) // 12
      assert t_lo <= t_hi and t_hi - t_lo <= num_frames - 1
      np.testing.assert_allclose(batch["delta_t"][b], (t_hi - t_lo) / (num_frames - 1), rtol=1e-6)
      np.testing.assert_allclose(
        batch["times"][b, 1] - batch["times"][b, 0], batch["delta_t"][b], atol=1e-6
      )
      start = t_lo - batch["times"][b, 0] * (num_frames - 1)
      assert abs(start - round(start)) < 1e-4 and 0 <= round(start) <= PAIR_LENGTHS[v] - num_frames
      flipped = pixels[:, 0, 0, 0] > pixels[:, 0, -1, 0]  # R falls to the right after a flip
      assert flipped[0] == flipped[1] == plan.flip[b]
      flips.append(bool(flipped[0]))
      gaps.append(int(t_hi - t_lo))
  assert 0 < sum(flips) < len(flips) and max(gaps) > 0  # both orientations and real gaps occurred


def test_class_folders_labels_and_jpeg(tmp_path):
  src = tmp_path / "src"
  for name, seed in (("zebra", 1), ("apple", 2), ("mango", 3)):
    os.makedirs(src / name)
    write_video(str(src / name / f"{name}.avi"), _frames(16, seed=seed), "mjpeg")
  report = prepare.prepare_dataset(
    tmp_path / "data",
    "cls",
    8,
    input_dir=str(src),
    layout="class_folders",
    image_format="jpeg",
    jpeg_quality=80,
    num_workers=1,
    progress=False,
  )
  assert report["class_names"] == ["apple", "mango", "zebra"]
  dataset = storage.open_dataset(tmp_path / "data", "cls", "train")
  assert dataset.image_format == "jpeg" and dataset.num_classes == 3
  assert sorted(dataset.labels.tolist()) == [0, 1, 2]


def test_empty_result_is_refused(tmp_path):
  src = tmp_path / "src"
  os.makedirs(src)
  (src / "readme.txt").write_text("no videos here")
  write_video(str(src / "tiny.mp4"), _frames(3), "libx264")
  with pytest.raises(prepare.EmptyDatasetError, match="no usable videos"):
    prepare.prepare_dataset(
      tmp_path / "data", "empty", 16, input_dir=str(src), num_workers=1, progress=False
    )
  assert sorted(os.listdir(tmp_path / "data")) == ["empty.prepare_report.json"]
  with pytest.raises(storage.DatasetNotFoundError, match="prepare"):
    storage.open_dataset(tmp_path / "data", "empty", "train")


def test_existing_dataset_needs_overwrite(prepared, video_tree):
  out, _ = prepared
  with pytest.raises(FileExistsError, match="--overwrite"):
    prepare.prepare_dataset(
      out, "mini", 16, input_dir=str(video_tree), num_workers=1, progress=False
    )


def test_killed_build_leaves_nothing_that_loads(tmp_path):
  src = tmp_path / "src"
  write_frame_folder(str(src / "v0"), _frames(16, 96, 128))
  for i in range(1, 400):  # Enough work that the build is still running when it is killed.
    os.symlink(src / "v0", src / f"v{i}")
  out = tmp_path / "data"
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "digan_jax.data.prepare",
      f"--input={src}",
      f"--output={out}",
      "--name=killed",
      "--layout=frame_folders",
      "--resolution=16",
      "--num_workers=1",
    ],
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  # Kill it once TFDS has started writing records inside the staging folder.
  deadline = time.time() + 60
  while time.time() < deadline and not list(out.glob(".incomplete-killed-*/killed/*")):
    time.sleep(0.02)
  assert proc.poll() is None, "the build finished before it could be interrupted"
  proc.kill()
  proc.wait()
  assert not (out / "killed").exists()
  with pytest.raises(storage.DatasetNotFoundError):
    storage.open_dataset(out, "killed", "train")


def test_cli_errors_name_the_fix(tmp_path, capsys):
  def cli(*flags):
    return prepare.run(["prepare", "--output", str(tmp_path), *flags])

  assert cli(f"--input={tmp_path}/nothing", "--recipe=ucf101") == 2
  assert "crcv.ucf.edu" in capsys.readouterr().err
  assert cli(f"--input={tmp_path}", "--recipe=taichi") == 2
  assert "first-order-model" in capsys.readouterr().err
  assert cli(f"--input={tmp_path}", "--recipe=kinetics_food", "--name=food") == 2
  assert "food classes" in capsys.readouterr().err
  assert cli(f"--input={tmp_path}/nothing", "--recipe=sky") == 2
  assert "MDGAN" in capsys.readouterr().err
  # Each run parses into fresh flags: --name and --recipe from the runs above are gone.
  assert cli(f"--input={tmp_path}") == 2
  assert "--name=NAME" in capsys.readouterr().err


def test_cli_modules_register_no_global_flags():
  """The CLIs define their absl flags on the global FLAGS only when run as __main__, so importing
  several in one process cannot collide (prepare, sampling and import_official all have --output)."""
  from absl import flags

  from digan_jax import import_official, plot_eval, real_vs_fake, sampling
  from digan_jax.evaluation import classify

  for module in (prepare, sampling, import_official, classify, plot_eval, real_vs_fake):
    names = set(module._define_flags(flags.FlagValues()))
    # Another module (digan_jax.main, imported by other tests in this worker) may own a global flag of
    # the same name; what must not exist is a global flag this module defined at import.
    owned = {
      n
      for n in names
      if n in flags.FLAGS and flags.FLAGS.find_module_defining_flag(n) == module.__name__
    }
    assert names and not owned, (module.__name__, owned)


def test_ucf101_recipe_splits_and_sorted_labels(tmp_path):
  root = tmp_path / "ucf"
  classes = ["PlayingGuitar", "ApplyEyeMakeup", "HandstandPushups"]
  for c in classes:
    os.makedirs(root / "UCF-101" / c)
  os.makedirs(root / "ucfTrainTestlist")
  (root / "ucfTrainTestlist" / "trainlist01.txt").write_text(
    "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nPlayingGuitar/v_PlayingGuitar_g08_c01.avi 2\n"
  )
  (root / "ucfTrainTestlist" / "testlist01.txt").write_text(
    "HandStandPushups/v_HandStandPushups_g01_c01.avi\n"
  )
  plan = recipes.ucf101_plan(str(root))
  assert plan.class_names == sorted(classes)
  assert [(s.split, s.label) for s in plan.sources] == [("train", 0), ("train", 2), ("test", 1)]
  assert plan.sources[2].path.endswith(
    os.path.join("HandstandPushups", "v_HandStandPushups_g01_c01.avi")
  )
  assert any("101" in note for note in plan.notes)


def test_kinetics_food_recipe_filters_classes(tmp_path):
  root = tmp_path / "k"
  for split, c in (("train", "making_tea"), ("train", "playing guitar"), ("val", "baking cookies")):
    os.makedirs(root / split / c)
    (root / split / c / "x.mp4").write_bytes(b"")
  plan = recipes.kinetics_food_plan(str(root))
  labels = {(s.split, recipes.KINETICS_FOOD_CLASSES[s.label]) for s in plan.sources}
  assert labels == {("train", "making tea"), ("test", "baking cookies")}
  assert len(plan.class_names) == 29 and plan.settings["resize_method"] == "lanczos"
