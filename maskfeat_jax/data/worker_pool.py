"""Ordered results from worker processes, robust to a worker dying and to the parent dying.

Used by the converter (data/build_shards.py): `CrashSafePool(fn, work, num_workers, initializer, initargs)`
yields `fn(item)` for each item of `work`, in order; `fn` returns (status, payload), and an item whose worker
dies gives ('skip', reason).
"""
from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Sequence

from absl import logging

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_PARENT_POLL_S = 1.0


def _exit_with_parent(parent_pid: int) -> None:
  """Makes this (worker) process exit when `parent_pid` dies, e.g. when the converter is SIGKILLed.

  Otherwise the workers, re-parented to PID 1, block forever on their task queue: they hold its write end
  themselves, so they never see end-of-file.
  """
  if sys.platform.startswith("linux"):
    # Fires when the thread that spawned this worker exits: the one iterating the pool (submit() spawns).
    try:
      libc = ctypes.CDLL(None, use_errno=True)
      libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no usable libc (static / unusual builds): the thread below covers it
      pass
  # The parent may have died before the prctl above (during this worker's start-up), and on other systems
  # there is no prctl: a watcher thread notices the re-parenting (os.getppid() changes).
  if os.getppid() != parent_pid:
    os._exit(1)  # pylint: disable=protected-access

  def watch():
    while os.getppid() == parent_pid:
      time.sleep(_PARENT_POLL_S)
    os._exit(1)  # pylint: disable=protected-access

  threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_worker(parent_pid: int, initializer: Callable[..., None] | None, initargs: Sequence[Any]) -> None:
  _exit_with_parent(parent_pid)
  if initializer is not None:
    initializer(*initargs)


class CrashSafePool:
  """Ordered results from worker processes that survives a worker dying (e.g. a segfault inside FFmpeg).

  multiprocessing.Pool silently loses the task of a worker that dies, so its results never arrive and the
  conversion hangs. concurrent.futures marks the pool broken instead; we then rerun each unfinished item
  alone in a fresh pool, so only the item that kills a worker is skipped (and reported), the rest convert.
  Workers exit when this process dies (see `_exit_with_parent`).
  """

  def __init__(self, fn, work: Sequence[Any], num_workers: int, initializer=None, initargs: Sequence[Any] = (),
               describe: Callable[[Any], str] = str):
    self.fn, self.work, self.num_workers, self.describe = fn, work, num_workers, describe
    self.initializer, self.initargs = initializer, tuple(initargs)
    self.window = 4 * num_workers  # items in flight: bounds memory, keeps order cheap

  def _executor(self, workers: int):
    # 'spawn': PyAV/FFmpeg and the absl/grain state of the parent are not fork-safe in general.
    return concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
        initargs=(os.getpid(), self.initializer, self.initargs))

  def _alone(self, item) -> tuple[str, Any]:
    ex = self._executor(1)
    try:
      return ex.submit(self.fn, item).result()
    except concurrent.futures.process.BrokenProcessPool:
      logging.warning("A worker process died while converting %s.", self.describe(item))
      return "skip", "worker process died while decoding (crash inside the decoder?)"
    finally:
      ex.shutdown(wait=True, cancel_futures=True)

  def __iter__(self):
    ex = self._executor(self.num_workers)
    pending = collections.deque()  # (item, future), in order
    nxt = 0
    try:
      while nxt < len(self.work) or pending:
        while nxt < len(self.work) and len(pending) < self.window:
          pending.append((self.work[nxt], ex.submit(self.fn, self.work[nxt])))
          nxt += 1
        item, fut = pending.popleft()
        try:
          yield fut.result()
          continue
        except concurrent.futures.process.BrokenProcessPool:
          pass
        # A worker died: every unfinished item failed with it. Rerun them one by one to find the culprit.
        ex.shutdown(wait=True, cancel_futures=True)
        for it in [item] + [i for i, _ in pending]:
          yield self._alone(it)
        pending.clear()
        ex = self._executor(self.num_workers)
    finally:
      ex.shutdown(wait=True, cancel_futures=True)
