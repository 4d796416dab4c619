"""Run outputs: console progress, WORKDIR/metrics.jsonl, TensorBoard events, the resolved config.

Only process 0 writes. Scalars arrive as host numbers (the loop fetches them every few steps).

A run resumed from step N supersedes what the interrupted one logged after N (a kill after logging but
before the next checkpoint leaves such rows): metrics.jsonl keeps its rows up to N (rewritten atomically) and
TensorBoard events from N on are purged (a SessionLog.START at N), the rows at N being written again from
metrics.jsonl, so each logged step has exactly one row and one point. The final evaluation's row (marked
"final": true) is dropped too when resuming at its step, since the resumed run evaluates again.
"""
import json
import math
import os
import sys
import time
from typing import Any

import numpy as np
from absl import logging

from maskfeat_jax import paths


class TrainingDiverged(RuntimeError):
  """The loss became NaN/inf or exploded; the message names the step."""


def write_config(workdir: str, config, extra: dict | None = None):
  """WORKDIR/config.json (machine-readable, incl. `extra` such as the param count) and config.yaml."""
  d = config.to_dict()
  with paths.open(paths.join(workdir, "config.json"), "w") as f:
    json.dump({**d, **({"_run": extra} if extra else {})}, f, indent=2, default=str)
  with paths.open(paths.join(workdir, "config.yaml"), "w") as f:
    f.write(config.to_yaml() if hasattr(config, "to_yaml") else str(config))
    if extra:
      f.write("\n# run\n" + "".join(f"# {k}: {v}\n" for k, v in extra.items()))


def check_losses(losses: list[tuple[int, float]], reference: float | None, explode_factor: float):
  """Raises TrainingDiverged at the first non-finite or exploded loss.

  Args:
    losses: (step, loss) pairs in step order; step = the update that produced the loss (1-based).
    reference: the first loss of the run (None: not known yet, only finiteness is checked).
    explode_factor: loss > explode_factor * reference counts as exploded (0 = off).
  """
  for step, loss in losses:
    if not math.isfinite(loss):
      raise TrainingDiverged(
          f"Loss is {loss} at step {step}: training stopped. The last checkpoint before it is kept; "
          "lower config.optim.base_lr, enable clipping (config.optim.clip_grad_norm) or check the data.")
    if reference is not None and explode_factor > 0 and loss > explode_factor * max(reference, 1e-12):
      raise TrainingDiverged(
          f"Loss exploded at step {step}: {loss:.4g} > {explode_factor:g} x the first loss "
          f"{reference:.4g} (config.log.explode_factor). Training stopped; the last checkpoint before "
          "it is kept. Lower config.optim.base_lr or raise the factor (0 = off).")


def format_eta(seconds: float) -> str:
  if not math.isfinite(seconds) or seconds < 0:
    return "?"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h:d}:{m:02d}:{s:02d}"


def _keep_rows_through(path: str, step: int) -> list[dict]:
  """Drops the rows of `path` after `step` (and a final-eval row at it); returns the rows kept at `step`.

  The file is replaced atomically (a kill now leaves the old or the new file, never half of one: locally by a
  rename, on a bucket because an object upload is atomic); a torn last line (killed mid-write) is dropped.
  """
  if not paths.exists(path):
    return []
  with paths.open(path) as f:
    lines = [l for l in f.read().splitlines() if l.strip()]
  kept = []  # (line as written, row): kept lines are written back verbatim
  for line in lines:
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue
    if row["step"] < step or (row["step"] == step and not row.get("final")):
      kept.append((line, row))
  if len(kept) < len(lines):
    logging.info("%s: resuming at step %d, dropping %d rows logged after it.", path, step,
                 len(lines) - len(kept))
    text = "".join(line + "\n" for line, _ in kept)
    if paths.is_remote(path):
      with paths.open(path, "w") as f:
        f.write(text)
    else:
      with open(path + ".tmp", "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
      os.replace(path + ".tmp", path)
  return [row for _, row in kept if row["step"] == step]


class MetricsWriter:
  """Console + JSONL + TensorBoard for one run (a no-op on processes other than 0).

  `start_step`: the step the run starts from (the restored one, or 0); what was logged after it is superseded
  (see the module docstring).
  """

  def __init__(self, workdir: str, *, total_steps: int, batch_size: int, start_step: int = 0,
               primary: bool = True, tensorboard: bool = True, prefix: str = "", stream=None):
    self.workdir = workdir
    self.total_steps = total_steps
    self.batch_size = batch_size
    self.primary = primary
    self.prefix = prefix
    self.stream = stream or sys.stdout
    self._jsonl = self._tb = None
    if primary:
      path = paths.join(workdir, "metrics.jsonl")
      kept_at_start = _keep_rows_through(path, start_step)
      self._jsonl = paths.AppendFile(path)
      if tensorboard:
        from tensorboardX import SummaryWriter  # TensorFlow-free event writer (gs:// via google-cloud-storage)
        # tensorboardX names an event file by the second it was opened (and the host) and opens it with
        # "wb": a second writer in the same second (a finished run rerun at once, a quick resume) would
        # truncate the first's events. A nanosecond suffix makes every name unique and keeps them in time
        # order (TensorBoard and the purge at a restart read files in name order).
        self._tb = SummaryWriter(paths.join(workdir, "tb"), purge_step=start_step,
                                 filename_suffix=f".{time.time_ns()}")
        for row in kept_at_start:
          self._add_tb(start_step, {k: v for k, v in row.items() if k not in ("step", "time")})
    self._last_step = start_step
    self._last_time = time.perf_counter()
    self._data_time = 0.0

  def restart_clock(self, step: int):
    """Starts the throughput window at `step` now (e.g. after the first step's compilation)."""
    self._last_step, self._last_time, self._data_time = step, time.perf_counter(), 0.0

  def add_data_time(self, seconds: float):
    """Host time spent waiting for the next batch (and placing it on the devices)."""
    self._data_time += seconds

  def write(self, step: int, scalars: dict[str, Any], console: bool = True):
    """Logs scalars at `step`; adds clips/s, data-wait and ETA since the previous call."""
    if not self.primary:
      return
    now = time.perf_counter()
    steps = max(step - self._last_step, 0)
    elapsed = now - self._last_time
    rec = {k: float(v) for k, v in scalars.items()}
    if steps > 0 and elapsed > 0:
      rec["steps_per_sec"] = steps / elapsed
      rec["clips_per_sec"] = steps * self.batch_size / elapsed
      rec["data_wait_frac"] = self._data_time / elapsed
      rec["step_time_ms"] = 1e3 * elapsed / steps
      rec["data_time_ms"] = 1e3 * self._data_time / steps
    self._last_step, self._last_time = step, now
    self._data_time = 0.0
    self.scalars(step, rec)
    if console:
      self.console(step, rec)

  def scalars(self, step: int, rec: dict[str, float], final: bool = False):
    if not self.primary:
      return
    row = {"step": step, "time": time.time(), **({"final": True} if final else {}), **rec}
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    self._add_tb(step, rec)

  def eval_scalars(self, step: int, result: dict | None, final: bool = False):
    """The evaluator's scalars (top-1, top-5, ...) as eval/<name>; `final`: the end-of-training evaluation."""
    rec = {f"eval/{k}": float(v) for k, v in (result or {}).items() if np.isscalar(v)}
    if rec:
      self.scalars(step, rec, final=final)

  def _add_tb(self, step: int, rec: dict):
    if self._tb is not None:
      for k, v in rec.items():
        if k != "final":
          self._tb.add_scalar(k, v, step)

  def console(self, step: int, rec: dict[str, float]):
    parts = [f"{self.prefix}step {step}/{self.total_steps}"]
    for k in ("loss", "train_top1"):
      if k in rec:
        parts.append(f"{k} {rec[k]:.4f}")
    if "lr" in rec:
      parts.append(f"lr {rec['lr']:.3e}")
    if "grad_norm" in rec:
      parts.append(f"gnorm {rec['grad_norm']:.3g}")
    if "clips_per_sec" in rec:
      parts.append(f"{rec['clips_per_sec']:.1f} clips/s")
      parts.append(f"step {rec['step_time_ms']:.0f}ms (data {rec['data_time_ms']:.0f}ms)")
      parts.append(f"ETA {format_eta((self.total_steps - step) / rec['steps_per_sec'])}")
    line = " | ".join(parts)
    print(line, file=self.stream, flush=True)
    logging.info(line)

  def sync(self):
    """Everything logged so far reaches the workdir now (a bucket's metrics.jsonl is otherwise uploaded
    every 30 s): called before each checkpoint, so a run killed after one resumes with every row up to it."""
    if self._jsonl is not None:
      self._jsonl.flush(force=True)
    if self._tb is not None:
      self._tb.flush()

  def close(self):
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
