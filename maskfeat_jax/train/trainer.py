"""The one training loop (pre-training and fine-tuning): sharded state, compiled step, checkpoints, metrics.

`train(config, workdir, model, dataset, mesh, ...)` builds the sharded state, resumes from
WORKDIR/checkpoints when a run is there (or starts fine-tuning from `config.init_from`), compiles the step
once, and runs it, with a checkpoint every `checkpoint_every_steps`, on SIGTERM / preemption and at the end.
Evaluation is pluggable: `evaluator(params, workdir)` (built by run.py: multi-view eval for fine-tuning, the
linear probe for pre-training) runs every `eval_every_steps` and at the end; so does an optional
`visualizer(params, step, workdir, final)` (run.py: MaskFeat prediction pictures) every `viz_every_steps`.
"""
import contextlib
import copy
import dataclasses
import time
from typing import Any, Callable

import jax
import numpy as np

from maskfeat_jax import paths
from maskfeat_jax import sharding
from maskfeat_jax.checkpoints import init as init_lib
from maskfeat_jax.checkpoints import orbax as ckpt_lib
from maskfeat_jax.config import logical_rules, step_keys
from maskfeat_jax.data import splits
from maskfeat_jax.models import factory
from maskfeat_jax.train import logger
from maskfeat_jax.train import optim
from maskfeat_jax.train import state as state_lib
from maskfeat_jax.train import step as step_lib

# XLA:CPU with several devices can deadlock with too many queued steps: sync at least this often.
_MAX_UNSYNCED_STEPS = 8

Evaluator = Callable[[Any, str | None], dict | None]  # (params, workdir or None) -> scalars
Visualizer = Callable[[Any, int, str, bool], None]  # (params, step, workdir, final) -> writes pictures


@dataclasses.dataclass
class TrainResult:
  status: str  # 'done' | 'preempted' | 'stopped'
  step: int
  config: Any
  model: Any
  params: Any
  mesh: Any
  last_metrics: dict
  eval: dict | None = None
  steps_per_sec: float | None = None
  wall_s: float = 0.0
  start_step: int = 0  # > 0 when resumed from a checkpoint


def init_params_fn(config, model) -> Callable:
  """rng -> boxed params of `model` for inputs shaped as config's batches."""
  inputs = factory.example_inputs(config)

  def init(key):
    rngs = {"params": key, "dropout": jax.random.fold_in(key, 1)}
    return model.init(rngs, *inputs, train=False)["params"]
  return init


def param_shardings(config, model, mesh):
  """The model's param shardings on `mesh` (no memory: traced with eval_shape)."""
  rules = logical_rules(config)
  with sharding.mesh_context(mesh, rules):
    boxed = jax.eval_shape(init_params_fn(config, model), jax.random.PRNGKey(0))
  return sharding.param_shardings(boxed, mesh, rules)


@dataclasses.dataclass
class _Run:
  """What the loop works with (built by `train`)."""
  config: Any
  compiled: Any
  iterator: Any
  keys: tuple
  batch_shardings: dict
  ckpt: ckpt_lib.Checkpointer
  writer: logger.MetricsWriter
  preempt: ckpt_lib.PreemptionFlag
  total_steps: int
  lr_table: np.ndarray  # lr of every update: an argument of the compiled step (optim.lr_table)
  stop_at_step: int | None
  evaluator: Evaluator | None
  visualizer: Visualizer | None = None
  workdir: str = ""
  prefetch: bool = True  # place batch i+1 on the devices while step i runs (_Feeder)


def train(config, workdir: str, *, model, dataset, mesh, make_iterator: Callable,
          evaluator: Evaluator | None = None, stop_at_step: int | None = None,
          visualizer: Visualizer | None = None, prefetch: bool = True) -> TrainResult:
  """Pre-trains or fine-tunes (config.mode), resuming from WORKDIR/checkpoints if present.

  Args:
    config: the validated config (model.num_classes resolved).
    workdir: the run's directory (created if missing).
    model: the Flax module; dataset: what data.pipeline.prepare_dataset found (its split_sizes); mesh: devices.
    make_iterator: (config, *, process_index, process_count) -> train batch iterator (Grain).
    evaluator: see the module docstring; None = no evaluation.
    stop_at_step: save and return at this step as if preempted (tests).
    visualizer: see the module docstring; None = no pictures.
    prefetch: double buffering: batch i+1 is read and placed on the devices while step i runs (the
      checkpointed iterator state stays that of the batches consumed; results are unchanged).
  """
  t_start = time.perf_counter()
  rules = logical_rules(config)
  paths.makedirs(workdir)  # local or gs:// (maskfeat_jax/paths.py)
  schedule = optim.resolve_schedule(config, splits.split_size(dataset.split_sizes, config.data.train_split))
  primary = jax.process_index() == 0

  state, shardings, tx = state_lib.create_train_state(
      init_params_fn(config, model), lambda p: optim.make_optimizer(config, p, schedule),
      jax.random.PRNGKey(config.seed), mesh, rules)
  n_params = factory.count_params(state.params)
  iterator = make_iterator(config, process_index=jax.process_index(), process_count=jax.process_count())

  _all_processes_reach("train_state_created")  # the CheckpointManager set-up below is a collective
  ckpt = ckpt_lib.Checkpointer(workdir, keep=config.keep_checkpoints, async_save=config.checkpoint.async_save)
  abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                state, shardings)
  start_step, restored = ckpt.restore(abstract_state, iterator)
  if restored is not None:
    state = restored
    print(f"[{config.mode}] resumed from {ckpt.directory} at step {start_step}", flush=True)
  elif config.mode == "finetune" and config.init_from:
    params = init_lib.finetune_params(config, jax.device_get(state.params))
    state = state_lib.replace_params(state, params, shardings, tx)
    print(f"[{config.mode}] initialised from {config.init_from}", flush=True)
  start_step = int(start_step or 0)

  if primary:
    logger.write_config(workdir, config, {
        "param_count": n_params, "total_steps": schedule.total_steps, "warmup_steps": schedule.warmup_steps,
        "peak_lr": schedule.base_lr, "devices": jax.device_count(), "processes": jax.process_count(),
        "mesh": dict(mesh.shape), "resumed_from_step": start_step})
  print(f"[{config.mode}] {n_params:,} params | mesh {dict(mesh.shape)} | {schedule.total_steps} steps "
        f"(start {start_step}) | batch {config.batch_size} | peak lr {schedule.base_lr:.3e}", flush=True)

  compiled, keys, b_shard = _compile(config, model, tx, schedule, shardings, abstract_state, mesh)
  _all_processes_reach("train_step_compiled")
  writer = logger.MetricsWriter(
      workdir, total_steps=schedule.total_steps, batch_size=config.batch_size, start_step=start_step,
      primary=primary, tensorboard=config.log.tensorboard, prefix=f"[{config.mode}] ")
  run = _Run(config=config, compiled=compiled, iterator=iterator, keys=keys, batch_shardings=b_shard,
             ckpt=ckpt, writer=writer, preempt=ckpt_lib.PreemptionFlag().install(),
             total_steps=schedule.total_steps,
             lr_table=optim.lr_table(schedule),
             stop_at_step=stop_at_step, evaluator=evaluator, visualizer=visualizer, workdir=workdir,
             prefetch=prefetch)
  with contextlib.closing(writer):  # open until after the final evaluation, whose scalars it logs too
    try:
      status, step, state, last, sps = _loop(run, state, start_step)
    finally:
      run.preempt.uninstall()
      ckpt.close()
      if hasattr(iterator, "close"):
        iterator.close()
    result = TrainResult(status=status, step=step, config=config, model=model, params=state.params,
                         mesh=mesh, last_metrics=last, steps_per_sec=sps,
                         wall_s=time.perf_counter() - t_start, start_step=start_step)
    if status == "done" and evaluator is not None:
      result.eval = evaluator(state.params, workdir)
      writer.eval_scalars(step, result.eval, final=True)
    if status == "done" and visualizer is not None:
      visualizer(state.params, step, workdir, True)
  return result


def _compile(config, model, tx, schedule, shardings, abstract_state, mesh):
  """The jitted step, lowered for the global batch and compiled once."""
  keys = step_keys(config)
  ex = factory.example_batch(config, config.batch_size)
  b_shard = sharding.batch_shardings(config, mesh, {k: ex[k].shape for k in keys})
  step_fn = step_lib.make_step_fn(step_lib.loss_fn_for(config, model), tx, int(config.optim.grad_accum_steps))
  jstep = step_lib.jit_step(step_fn, shardings, b_shard, mesh)
  abstract_batch = {k: jax.ShapeDtypeStruct(ex[k].shape, ex[k].dtype, sharding=b_shard[k]) for k in keys}
  abstract_lr = jax.ShapeDtypeStruct((), np.float32)
  t0 = time.perf_counter()
  with sharding.config_mesh_context(config, mesh):
    compiled = jstep.lower(abstract_state, abstract_batch, abstract_lr).compile()
  print(f"[{config.mode}] train step compiled in {time.perf_counter() - t0:.1f}s", flush=True)
  return compiled, keys, b_shard


def _all_processes_reach(name: str, timeout_s: int = 3600):
  """Multi-process runs: wait for every process here before the next cross-process collective.

  Processes may compile minutes apart (one hits the persistent cache, another does not: JAX writes cache
  entries from process 0 only, and another process's key can differ), and on CPU a collective's gloo
  set-up gives up after 30 s (`Gloo context initialization failed: ... GetKeyValue() timed out`); a
  coordination-service barrier waits as long as needed. Needed before the first collective after any
  compilation: Orbax's CheckpointManager set-up (after the train-state init compiled) and the first step.
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # pylint: disable=g-import-not-at-top  (the client jax.distributed made)
  _BARRIERS[name] = _BARRIERS.get(name, 0) + 1  # a barrier id serves once (the demo trains three times)
  distributed.global_state.client.wait_at_barrier(f"maskfeat_{name}_{_BARRIERS[name]}",
                                                  timeout_in_ms=timeout_s * 1000)


_BARRIERS: dict[str, int] = {}


def _window_mean(fetched: list[tuple[int, dict]]) -> dict:
  """Mean of each metric over the window; lr is the last value."""
  out = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[-1][1]}
  out["lr"] = float(fetched[-1][1]["lr"])
  return out


class _Feeder:
  """Global batches for the loop, with optional double buffering (host-to-device prefetch).

  `take()` hands out the next placed batch; `prefetch()`, called right after a step is dispatched (JAX
  dispatch is asynchronous), reads and places the following batch while that step runs, so the device does
  not wait for the host's read + copy. The data iterator is then one batch ahead of the batches consumed:
  `get_state()` (what checkpoints save) is the iterator's state from before that read, so a resumed run
  reads the prefetched batch again and the saved Grain state is that of the batches actually consumed.
  """

  def __init__(self, iterator, keys, shardings: dict, prefetch: bool):
    self.iterator, self.keys, self.shardings, self.enabled = iterator, keys, shardings, prefetch
    self._ahead = None  # (placed batch, iterator state before it was read)
    self.seconds = 0.0  # host time spent reading and placing batches since the last `pop_seconds`

  def _read(self):
    t0 = time.perf_counter()
    before = copy.deepcopy(self.iterator.get_state()) if self.enabled else None
    batch = sharding.place_batch(next(self.iterator), self.keys, self.shardings)
    self.seconds += time.perf_counter() - t0
    return batch, before

  def take(self):
    if self._ahead is None:
      return self._read()[0]
    batch, self._ahead = self._ahead[0], None
    return batch

  def prefetch(self):
    if self.enabled and self._ahead is None:
      self._ahead = self._read()

  def pop_seconds(self) -> float:
    s, self.seconds = self.seconds, 0.0
    return s

  def get_state(self):
    return self._ahead[1] if self._ahead is not None else self.iterator.get_state()

  def set_state(self, state):
    self._ahead = None
    self.iterator.set_state(state)


def _loop(run: _Run, state, start_step: int):
  """Steps until total_steps (or a stop / preemption); returns (status, step, state, last metrics, steps/s)."""
  config = run.config
  sync_every = max(1, min(config.log_every_steps, _MAX_UNSYNCED_STEPS))
  log_every = max(1, config.log_every_steps)
  ckpt_every = max(1, config.checkpoint_every_steps)
  pending: list[tuple[int, Any]] = []
  window: list[tuple[int, dict]] = []
  last: dict = {}
  reference = None
  t_run = first_timed_step = None
  step, status = start_step, "done"
  feeder = _Feeder(run.iterator, run.keys, run.batch_shardings, run.prefetch)
  while step < run.total_steps:
    batch = feeder.take()
    state, m = run.compiled(state, batch, run.lr_table[step])
    step += 1
    pending.append((step, m))
    stop = run.stop_at_step is not None and step >= run.stop_at_step
    if step < run.total_steps and not stop:
      feeder.prefetch()  # while the step just dispatched runs
    run.writer.add_data_time(feeder.pop_seconds())
    preempted = run.preempt.is_set() or run.ckpt.reached_preemption(step)
    save_now = step % ckpt_every == 0 or step == run.total_steps or stop or preempted
    if len(pending) >= sync_every or step % log_every == 0 or save_now:
      fetched = [(s, {k: float(v) for k, v in jax.device_get(mm).items()}) for s, mm in pending]
      pending.clear()
      if reference is None:
        reference = fetched[0][1]["loss"]
      # Raises before this state can be checkpointed: the last good checkpoint stays.
      logger.check_losses([(s, mm["loss"]) for s, mm in fetched], reference, config.log.explode_factor)
      window.extend(fetched)
      last = fetched[-1][1]
      if t_run is None:  # the first step includes compilation / warm-up: start the clock after it
        t_run, first_timed_step = time.perf_counter(), step
        run.writer.restart_clock(step)
      if step % log_every == 0 or step == run.total_steps or stop or preempted:
        run.writer.write(step, _window_mean(window))
        window.clear()
      _maybe_eval(run, state, step)
    if run.visualizer is not None and config.viz_every_steps > 0 and step % config.viz_every_steps == 0:
      run.visualizer(state.params, step, run.workdir, False)
    if save_now:
      run.writer.sync()  # the rows up to this checkpoint are in the workdir before it is
      run.ckpt.save(step, state, feeder, force=stop or preempted)  # the consumed batches' state
    if stop or preempted:
      status = "preempted" if preempted else "stopped"
      run.ckpt.wait()
      print(f"[{config.mode}] {status} at step {step}; checkpoint saved in {run.ckpt.directory} "
            "(rerun the same command to resume)", flush=True)
      break
  sps = None
  if t_run is not None and step > first_timed_step:
    sps = (step - first_timed_step) / (time.perf_counter() - t_run)
  return status, step, state, last, sps


def _maybe_eval(run: _Run, state, step: int):
  every = run.config.eval_every_steps
  if run.evaluator is None or every <= 0 or step % every or step == run.total_steps:
    return
  run.writer.eval_scalars(step, run.evaluator(state.params, None))
