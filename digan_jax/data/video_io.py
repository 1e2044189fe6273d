"""Reading source videos for the prepare CLI: video containers through PyAV and frame folders
through PIL (no TensorFlow, no system ffmpeg).

It owns the decision of what counts as unreadable: any decoder error, no video stream, no frames, or
a container that declares more frames than can be decoded (a truncated file) raises
`VideoReadError` with a one-line reason that the prepare report lists.
"""

import os

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".webm", ".mkv", ".gif")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


class VideoReadError(Exception):
  """A source video that cannot be used (the message says why)."""


def is_video_file(path):
  return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


def is_image_file(path):
  return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def frame_files(folder):
  """Frame images of a frame folder, sorted by file name (as the official loader)."""
  return sorted(os.path.join(folder, f) for f in os.listdir(folder) if is_image_file(f))


def _iter_container_frames(path):
  """Yields uint8 RGB frames of a video container; returns (via StopIteration) nothing else."""
  import av  # pylint: disable=g-import-not-at-top

  try:
    container = av.open(path)
  except (av.FFmpegError, OSError, ValueError) as e:
    raise VideoReadError(f"cannot open container: {e}") from e
  with container:
    if not container.streams.video:
      raise VideoReadError("no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    declared = int(stream.frames or 0)
    count = 0
    try:
      for frame in container.decode(stream):
        count += 1
        yield fps, frame.to_ndarray(format="rgb24")
    except (av.FFmpegError, OSError, ValueError, MemoryError) as e:
      raise VideoReadError(f"decoding failed after {count} frames: {e}") from e
    # Headers that promise more frames than exist mean a truncated file. A small slack absorbs
    # containers whose declared count is approximate.
    if declared and count < declared - max(2, declared // 50):
      raise VideoReadError(f"truncated: decoded {count} of {declared} declared frames")


def iter_frames(path, fps=0.0):
  """Yields (fps, uint8 frame [H, W, 3]) for a video file or a frame folder.

  Frame folders have no native rate; `fps` (0 = unknown) is reported for them.
  """
  if os.path.isdir(path):
    from PIL import Image  # pylint: disable=g-import-not-at-top

    files = frame_files(path)
    if not files:
      raise VideoReadError("frame folder has no png/jpg frames")
    for file in files:
      try:
        with Image.open(file) as image:
          frame = np.asarray(image.convert("RGB"))
      except (OSError, ValueError, SyntaxError) as e:
        raise VideoReadError(f"unreadable frame {os.path.basename(file)}: {e}") from e
      yield float(fps), frame
    return
  if not is_video_file(path):
    raise VideoReadError(f"not a video file (extensions: {', '.join(VIDEO_EXTENSIONS)})")
  yield from _iter_container_frames(path)


def read_video(path) -> np.ndarray:
  """All frames of a video file (GIF included) or frame folder as uint8 [T, H, W, 3]."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"video file not found: {path}")
  frames = [frame for _, frame in iter_frames(os.fspath(path))]
  if not frames:
    raise VideoReadError(f"{path}: no frames")
  return np.stack(frames)
