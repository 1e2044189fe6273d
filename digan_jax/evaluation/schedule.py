"""When each FVD protocol runs: `config.eval.protocol` parsed into schedules.

"proxy" runs every config.eval_every_steps (plus config.eval.at_start / at_end), "proxy@5000" every
5000 steps, "digan@end" / "digan@start" once; several protocols are separated by commas and the
first one keeps the best checkpoint.
"""

from __future__ import annotations

import dataclasses

from digan_jax.errors import ConfigError
from digan_jax.evaluation import protocols
from digan_jax.evaluation.protocols import Protocol


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When one protocol runs: every `every_steps` steps (0: never periodically), and/or at the
  start or end of the run."""

  protocol: Protocol
  every_steps: int = 0
  at_start: bool = False
  at_end: bool = False

  def due(self, step: int, *, start: bool = False, end: bool = False) -> bool:
    return (
      (start and self.at_start)
      or (end and self.at_end)
      or (not start and self.every_steps > 0 and step % self.every_steps == 0)
    )


def schedules(config) -> list[Schedule]:
  """The protocols of `config.eval.protocol` ("proxy", "proxy@5000,digan@end", ...), scaled by
  config.eval.num_videos / num_repeats when those are > 0 (the result cards record it)."""
  ev = config.eval
  overrides = {}
  if ev.num_videos > 0:
    overrides.update(num_fake=int(ev.num_videos), num_real=int(ev.num_videos))
  if ev.num_repeats > 0:
    overrides["num_trials"] = int(ev.num_repeats)
  if config.data.num_frames != protocols.TRAIN_CLIP_FRAMES:
    # t in [0, 1] spans the model's own training clip (128 frames for the long-video model).
    overrides["train_clip_frames"] = int(config.data.num_frames)
  if config.data.frame_stride != 1:
    # Real clips at the training stride (DIGAN evaluates TaiChi on its stride-4 clips).
    overrides["data_stride"] = int(config.data.frame_stride)
  out = []
  for entry in (e.strip() for e in str(ev.protocol).split(",")):
    name, _, when = entry.partition("@")
    try:
      protocol = protocols.get_protocol(name, **overrides)
    except ValueError as e:
      raise ConfigError(f"config.eval.protocol={ev.protocol!r}: {e}") from e
    if not when:
      out.append(
        Schedule(protocol, int(config.eval_every_steps), bool(ev.at_start), bool(ev.at_end))
      )
    elif when in ("start", "end"):
      out.append(Schedule(protocol, at_start=when == "start", at_end=when == "end"))
    elif when.isdigit() and int(when) > 0:
      out.append(Schedule(protocol, every_steps=int(when)))
    else:
      raise ConfigError(
        f"config.eval.protocol={ev.protocol!r}: {entry!r} has cadence {when!r}; "
        "write NAME, NAME@<steps>, NAME@start or NAME@end"
      )
  names = [s.protocol.name for s in out]
  if len(set(names)) != len(names):
    raise ConfigError(
      f"config.eval.protocol={ev.protocol!r}: lists a protocol twice; "
      "give each protocol once, with one cadence"
    )
  return out


def enabled(config) -> bool:
  return any(s.every_steps or s.at_start or s.at_end for s in schedules(config))
