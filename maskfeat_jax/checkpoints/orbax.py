"""The one on-disk checkpoint layout: Orbax steps in WORKDIR/checkpoints/<step>/, beside WORKDIR/config.json.

Items per step: `state` (TrainState: params, optimizer state, step, RNG key; sharded arrays) and `data`
(the Grain iterator state, one JSON file per process). Saves are asynchronous; Orbax writes each step into a
temporary directory and renames it when complete, so a run killed at any moment (even mid-save) leaves only
complete step directories behind; `latest_step()` ignores the temporary ones. If the newest complete step
still fails to restore (e.g. a damaged file system), the previous one is tried; once an older step restores,
the damaged newer ones are renamed to `<step>.damaged-<n>` (kept for inspection, invisible to Orbax), so the
resumed run saves those steps again instead of Orbax skipping them as already saved.

Converted official weights (checkpoints/slowfast.py) use the same layout with a params-only `state` at step
0 (`save_params`), so `restore_params` reads a training run's workdir and a converted one alike.
"""
import inspect
import json
import signal
import threading
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from maskfeat_jax import paths


class _IteratorSnapshot:
  """The iterator state captured at save time (the live iterator moves on while an async save runs)."""

  def __init__(self, iterator):
    state = iterator.get_state()
    self._payload = state if isinstance(state, bytes) else json.dumps(state).encode()

  def get_state(self) -> bytes:
    return self._payload


class _IteratorStateSink:
  """Receives the restored iterator state as bytes (Grain's handler calls set_state + start_prefetch)."""
  payload: bytes | None = None

  def set_state(self, state: bytes):
    self.payload = state

  def start_prefetch(self):
    pass


def restore_iterator_state(iterator, payload: bytes):
  """Sets `payload` on the iterator in the form its get_state() uses (dict for DatasetIterator, or bytes)."""
  if isinstance(iterator.get_state(), bytes):
    iterator.set_state(payload)
  else:
    iterator.set_state(json.loads(payload))


def checkpoint_dir(workdir: str) -> str:
  """WORKDIR/checkpoints (a gs:// workdir: Orbax writes there through TensorStore's gcs driver)."""
  return paths.join(paths.resolve(workdir), "checkpoints")


class Checkpointer:
  """Owns the Orbax CheckpointManager of one run."""

  def __init__(self, workdir: str, *, keep: int, async_save: bool = True):
    self.directory = checkpoint_dir(workdir)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep if keep > 0 else None, create=True, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True)  # leftovers of a save killed midway are removed on start
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, iterator=None, *, force: bool = False) -> bool:
    items = {"state": ocp.args.StandardSave(state)}
    if iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(_IteratorSnapshot(iterator))
    saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
    if saved:
      logging.info("Saving checkpoint %d to %s", step, self.directory)
    return saved

  def restore(self, abstract_state, iterator=None, step: int | None = None):
    """Restores the newest complete step (or `step`); returns (step, state) or (None, None).

    Args:
      abstract_state: TrainState of jax.ShapeDtypeStruct with shardings (the restore target).
      iterator: the data iterator to set to the saved position (None: not restored).
      step: a specific step; by default the newest, falling back to older ones if it fails to load.
    """
    steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
    errors = []
    for s in steps:
      try:
        restored = self._restore_step(s, abstract_state, iterator)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("Checkpoint %d in %s could not be restored (%s); trying an older one.",
                        s, self.directory, _describe(e))
        errors.append((s, e))
        continue
      if errors:  # only once an older step restores: a failure of every step may be a config mismatch
        self._set_aside(errors, restored_step=s)
      return s, restored
    if errors:
      raise RuntimeError(f"No checkpoint in {self.directory} could be restored:\n" + "\n".join(
          f"  step {s}: {_describe(e)}" for s, e in errors))
    return None, None

  def _set_aside(self, damaged: list[tuple[int, Exception]], restored_step: int):
    """Renames the damaged step directories out of Orbax's sight, so this run saves those steps again."""
    if jax.process_index() == 0:
      for s, e in damaged:
        src = paths.join(self.directory, str(s))
        n = 1
        while paths.exists(f"{src}.damaged-{n}"):
          n += 1
        paths.replace(src, f"{src}.damaged-{n}")
        logging.warning("Checkpoint %d in %s is damaged (%s): resuming from step %d; moved the damaged "
                        "step to %s (nothing deleted), so this run saves step %d again.",
                        s, self.directory, _describe(e), restored_step, f"{src}.damaged-{n}", s)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("maskfeat_set_aside_damaged_checkpoints")
    self.manager.reload()  # forget the moved steps: otherwise save() skips them as already saved

  def _restore_step(self, step: int, abstract_state, iterator):
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    sink = _IteratorStateSink()
    has_data = iterator is not None and paths.isdir(paths.join(self.directory, str(step), "data"))
    if has_data:
      items["data"] = grain.checkpoint.CheckpointRestore(sink)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    if has_data:
      restore_iterator_state(iterator, sink.payload)
    return restored["state"]

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def restore_params(path: str) -> Any:
  """Params of one of our checkpoints (a workdir, its checkpoints/ dir or a step dir) as host numpy arrays.

  Used to initialise fine-tuning from a pre-training run, whose param tree differs from the fine-tuning one,
  so no restore target is given. Given a workdir or checkpoints/ dir, takes the newest step that restores
  (warning about any newer damaged one).
  """
  path = paths.resolve(path)
  if paths.isdir(paths.join(path, "checkpoints")):
    path = paths.join(path, "checkpoints")
  if paths.isdir(paths.join(path, "state")):  # a step directory
    try:
      return _restore_params_step(path)
    except Exception as e:  # pylint: disable=broad-except
      raise RuntimeError(f"config.init_from={path}: the checkpoint could not be restored: {_describe(e)}") \
          from e
  mngr = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(read_only=True),
                               item_handlers={"state": ocp.StandardCheckpointHandler()})
  steps = sorted(mngr.all_steps(), reverse=True)
  mngr.close()
  if not steps:
    raise FileNotFoundError(
        f"config.init_from={path}: no complete checkpoint found there; point it at a pre-training "
        "workdir, its checkpoints/ directory, or a step directory.")
  errors = []
  for step in steps:
    try:
      params = _restore_params_step(paths.join(path, str(step)))
    except Exception as e:  # pylint: disable=broad-except
      errors.append((step, e))
      continue
    for s, e in errors:
      logging.warning("config.init_from=%s: checkpoint %d is damaged (%s); using step %d, the newest that "
                      "restores.", path, s, _describe(e), step)
    return params
  raise RuntimeError(f"config.init_from={path}: no checkpoint there could be restored:\n" + "\n".join(
      f"  step {s}: {_describe(e)}" for s, e in errors))


def _describe(e: BaseException, limit: int = 500) -> str:
  """A restore error in one line: its root cause (Orbax wraps TensorStore's error in the whole array spec)."""
  while e.__cause__ is not None:
    e = e.__cause__
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def _restore_params_step(step_dir: str) -> Any:
  state_dir = paths.join(step_dir, "state")
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(state_dir)
    tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta
    # On this process's first device: the saving run's devices (e.g. another process's, of a multi-process
    # run) need not exist here, and Orbax would otherwise try to restore onto them.
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    as_target = lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here)  # pylint: disable=unnecessary-lambda-assignment
    if _supports_partial():
      restored = ckptr.restore(state_dir, {"params": jax.tree.map(as_target, tree["params"])},
                               partial_restore=True)
    else:  # this Orbax restores whole trees only: all of the state, on this device
      restored = ckptr.restore(state_dir, jax.tree.map(as_target, tree))
  return jax.tree.map(lambda x: jax.device_get(x), restored["params"])


def save_params(workdir: str, params, step: int = 0) -> str:
  """WORKDIR/checkpoints/<step>/state = {'params': params}: converted weights in the layout training writes
  (restore_params reads the params of either)."""
  directory = checkpoint_dir(workdir)
  with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=True),
                             item_handlers={"state": ocp.StandardCheckpointHandler()}) as mngr:
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params})), force=True)
    mngr.wait_until_finished()
  return paths.join(directory, str(step))


def _supports_partial() -> bool:
  try:
    return "partial_restore" in inspect.signature(ocp.StandardCheckpointer.restore).parameters
  except (TypeError, ValueError):
    return False


class PreemptionFlag:
  """Set by SIGTERM (single-process runs); the loop then saves and exits cleanly.

  In multi-process runs jax.distributed's preemption service owns SIGTERM and the loop asks
  `CheckpointManager.reached_preemption`, which all processes agree on.
  """

  def __init__(self):
    self._event = threading.Event()
    self._previous = None

  def install(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    return self

  def _handler(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint and exiting.")
    self._event.set()

  def is_set(self) -> bool:
    return self._event.is_set()

  def uninstall(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
