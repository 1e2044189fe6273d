"""The whole run's remaining time: training at the measured step rate plus the evaluations and
sample sets still due, each at the duration it last took.

clu's progress report estimates the training steps alone; on a CPU the FVD evaluations after the
last step can take as long again, so the log line of `RunClock` counts them too.
"""

from __future__ import annotations

import contextlib

import time


def due_steps(every: int, start: int, end: int, at_end: bool) -> int:
  """Steps s in (start, end] with s % every == 0, plus the last step when `at_end` adds it."""
  periodic = end // every - start // every if every > 0 else 0
  return periodic + int(at_end and start < end and not (every > 0 and end % every == 0))


class RunClock:
  """Times the run's evaluations and sample sets and estimates what is left of the run."""

  def __init__(self, num_steps: int, sample_every: int, schedules=()):
    self.num_steps, self.sample_every, self.schedules = num_steps, sample_every, list(schedules)
    self.seconds: dict[str, float] = {}  # "samples" or a protocol name -> its last duration

  def timed(self, name: str, fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    self.seconds[name] = time.perf_counter() - start
    return out

  def record(self, name: str, seconds: float) -> None:
    self.seconds[name] = seconds

  def remaining(self, step: int, steps_per_sec: float) -> dict[str, float]:
    """{'train_s', 'eval_s', 'samples_s', 'total_s', 'evaluations', 'sample_sets'} after `step`;
    a protocol that has not run yet counts as 0 s (the next log line knows better)."""
    train_s = (self.num_steps - step) / max(steps_per_sec, 1e-9)
    evaluations, eval_s = 0, 0.0
    for s in self.schedules:
      n = due_steps(s.every_steps, step, self.num_steps, s.at_end)
      evaluations += n
      eval_s += n * self.seconds.get(s.protocol.name, 0.0)
    sample_sets = due_steps(self.sample_every, step, self.num_steps, self.sample_every > 0)
    samples_s = sample_sets * self.seconds.get("samples", 0.0)
    return dict(
      train_s=train_s,
      eval_s=eval_s,
      samples_s=samples_s,
      total_s=train_s + eval_s + samples_s,
      evaluations=evaluations,
      sample_sets=sample_sets,
    )

  def describe(self, step: int, steps_per_sec: float, compiling: bool = False) -> str:
    """The log line; `compiling`: the interval included the step's compilation, so its rate says
    nothing of the steps left (at the start a 500-step CPU demo read "21 min left", then 4)."""
    if compiling:
      return (
        f"step {step}/{self.num_steps}: the first steps of this start ran at "
        f"{steps_per_sec:.2f} steps/s including compilation; the time left is estimated from "
        "the next log interval"
      )
    r = self.remaining(step, steps_per_sec)
    parts = [f"training {_minutes(r['train_s'])} at {steps_per_sec:.2f} steps/s"]
    untimed = [s.protocol.name for s in self.schedules if s.protocol.name not in self.seconds]
    if r["evaluations"]:
      timed = len(untimed) < len(self.schedules)  # else "0 s" would read as a duration
      parts.append(
        f"{r['evaluations']} FVD evaluation(s) "
        + (_minutes(r["eval_s"]) if timed else "not timed yet")
        + (f", {'/'.join(untimed)} not timed yet" if untimed and timed else "")
      )
    if r["sample_sets"]:
      timed = "samples" in self.seconds
      parts.append(
        f"{r['sample_sets']} sample set(s) "
        + (_minutes(r["samples_s"]) if timed else "not timed yet")
      )
    return f"step {step}/{self.num_steps}: about {_minutes(r['total_s'])} left ({'; '.join(parts)})"


def _minutes(seconds: float) -> str:
  return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


class IntervalTimer:
  """Training seconds of a log interval: the time inside `excluded()` (samples and evaluations,
  which the RunClock times on its own) is left out, so steps/s after an evaluation is a training
  rate (with it, a 128-clip CPU evaluation read as 0.20 steps/s and "83 min left", not 9)."""

  def __init__(self, now=time.perf_counter):
    self._now = now
    self.reset()

  def reset(self) -> None:
    self._start, self._excluded = self._now(), 0.0

  @contextlib.contextmanager
  def excluded(self):
    start = self._now()
    try:
      yield
    finally:
      self._excluded += self._now() - start

  def seconds(self) -> float:
    return self._now() - self._start - self._excluded
