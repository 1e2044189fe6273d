"""Ordered, bounded parallel map over worker processes (used to decode/encode videos).

Workers are started with 'spawn' so they never inherit a forked TensorFlow runtime; at most
`window` results wait in memory, so a slow consumer does not pile up decoded videos.
"""

import collections
import concurrent.futures
import multiprocessing


def ordered_map(fn, items, num_workers=1, window=None):
  """Yields fn(item) for each item, in order; `num_workers` <= 1 runs in this process."""
  if num_workers <= 1:
    for item in items:
      yield fn(item)
    return
  window = window or 4 * num_workers
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context) as executor:
    pending = collections.deque()
    try:
      for item in items:
        pending.append(executor.submit(fn, item))
        if len(pending) >= window:
          yield pending.popleft().result()
      while pending:
        yield pending.popleft().result()
    finally:
      for future in pending:
        future.cancel()
