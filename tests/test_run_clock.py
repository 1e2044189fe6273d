"""run_clock: the whole run's remaining time counts the training steps, the evaluations and the
sample sets still due (each at its last measured duration), every due step once."""

import pytest

from digan_jax import run_clock
from digan_jax.evaluation import protocols
from digan_jax.evaluation.schedule import Schedule


@pytest.mark.parametrize(
  "every,start,end,at_end,want",
  [
    (250, 0, 500, True, 2),  # 250 and 500, the end counted once
    (300, 0, 500, True, 2),  # 300 and the end
    (300, 0, 500, False, 1),
    (0, 0, 500, True, 1),  # at the end only
    (0, 0, 500, False, 0),
    (250, 250, 500, True, 1),  # 250 itself is done
    (250, 500, 500, True, 0),
  ],
)
def test_due_steps(every, start, end, at_end, want):
  assert run_clock.due_steps(every, start, end, at_end) == want


def test_remaining_counts_training_evaluations_and_samples():
  proxy = protocols.get_protocol("proxy")
  digan = protocols.get_protocol("digan")
  clock = run_clock.RunClock(
    500, 250, [Schedule(proxy, every_steps=200, at_end=True), Schedule(digan, at_end=True)]
  )
  clock.record("proxy", 60.0)
  clock.record("samples", 5.0)
  r = clock.remaining(100, steps_per_sec=2.0)
  # 400 steps at 2/s; proxy at 200, 400 and 500 (3 x 60 s), digan not timed yet (0 s); samples
  # at 250 and 500.
  assert r == dict(
    train_s=200.0, eval_s=180.0, samples_s=10.0, total_s=390.0, evaluations=4, sample_sets=2
  )
  line = clock.describe(100, 2.0)
  assert line.startswith("step 100/500: about 6.5 min left (training 3.3 min at 2.00 steps/s")
  assert "4 FVD evaluation(s) 3.0 min, digan not timed yet" in line
  assert "2 sample set(s) 10 s" in line
  assert "1 sample set(s) not timed yet" in run_clock.RunClock(10, 10).describe(5, 1.0)
  # A resumed run has timed nothing yet: no "0 s" beside "not timed yet".
  resumed = run_clock.RunClock(2000, 1000, [Schedule(proxy, every_steps=1000, at_end=True)])
  assert "2 FVD evaluation(s) not timed yet;" in resumed.describe(800, 2.0)
  first = clock.describe(25, 0.38, compiling=True)
  assert "including compilation" in first and "left" not in first.split(";")[0]
  assert clock.timed("samples", lambda x: x + 1, 1) == 2 and clock.seconds["samples"] < 1.0


def test_interval_timer_leaves_evaluations_out_of_the_training_rate():
  now = [0.0]
  timer = run_clock.IntervalTimer(now=lambda: now[0])
  now[0] += 10.0  # 20 steps
  with timer.excluded():
    now[0] += 90.0  # a 128-clip CPU evaluation
  now[0] += 2.5  # 5 more steps
  assert timer.seconds() == 12.5  # 25 steps / 12.5 s = 2 steps/s, not 0.24
  timer.reset()
  now[0] += 3.0
  assert timer.seconds() == 3.0
