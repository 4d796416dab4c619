"""The one training loop (pre-training and fine-tuning) and the dispatch on `config.mode`.

`run(config, workdir)` is what main.py calls:
  pretrain / finetune -> `train`      (sharded state, jitted step, checkpoints, metrics, guards)
  eval               -> `run_eval`    (multi-view evaluation of a checkpoint, maskfeat_jax.evaluate)
  probe              -> `run_probe`   (linear probe of a pre-training checkpoint, maskfeat_jax.probe)
  demo               -> `run_demo`    (pre-train, fine-tune, evaluate; and the same fine-tuning from scratch)

Everything that can be checked without compiling (mode / model type, mesh and batch divisibility, mask grid
against the token grid, dataset presence) is checked first, with messages that say what to change.
"""
import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging

from maskfeat_jax.train import checkpoint as ckpt_lib
from maskfeat_jax.train import metrics as metrics_lib
from maskfeat_jax.train import optim
from maskfeat_jax.train import state as state_lib
from maskfeat_jax.train import step as step_lib

MODES = ("pretrain", "finetune", "eval", "probe", "demo")
_MODEL_TYPE = {"pretrain": "maskfeat", "finetune": "classifier", "eval": "classifier", "probe": None}
_OFFICIAL_SUFFIXES = (".pyth", ".pth", ".npz")


@dataclasses.dataclass
class Hooks:
  """Replaceable collaborators (tests, notebooks): None = the project's model / data pipeline."""
  model: Any = None
  make_train_iterator: Callable | None = None  # (config, *, process_index, process_count) -> iterator
  dataset_info: Any = None
  stop_at_step: int | None = None  # save and return at this step (as if preempted)


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


# --------------------------------------------------------------------------------------------------------
# Config checks (before any compilation)


def _split_size(info, split: str) -> int | None:
  """Examples in `split` (a sliced split such as 'train[:25%]' counts its slice), or None if unknown."""
  from maskfeat_jax.data import tfds_video  # pylint: disable=g-import-not-at-top
  for attr in ("split_sizes", "splits", "num_examples"):
    sizes = getattr(info, attr, None)
    if isinstance(sizes, dict) and split.split("[")[0] in sizes:
      _, start, stop = tfds_video.resolve_split(split, sizes)
      return stop - start
  return None


def check_config(config, mesh=None, registry_model: bool = True):
  """Raises ValueError with what to change for configs that cannot work.

  Args:
    config: the full config tree.
    mesh: when given, batch divisibility by the data-parallel devices is checked too.
    registry_model: the model comes from config.model (not a Hooks model): check input and mask grid
      against it.
  """
  if config.mode not in MODES:
    raise ValueError(f"config.mode={config.mode!r}: expected one of {MODES}.")
  want = _MODEL_TYPE.get(config.mode)
  if want and config.model.type != want:
    raise ValueError(f"config.mode={config.mode!r} needs config.model.type={want!r}, got "
                     f"{config.model.type!r}; set --config.model.type={want} (and a matching model.name).")
  accum = int(config.optim.grad_accum_steps)
  if accum < 1:
    raise ValueError(f"config.optim.grad_accum_steps={accum}: must be >= 1.")
  pc = jax.process_count()
  if config.batch_size % pc:
    raise ValueError(f"config.batch_size={config.batch_size} is not divisible by the {pc} processes; "
                     f"use a multiple of {pc}.")
  if mesh is not None:
    dp = state_lib.data_parallel_size(config, mesh)
    need = dp * accum
    if config.batch_size % need:
      raise ValueError(
          f"config.batch_size={config.batch_size} must be divisible by the data-parallel devices ({dp}: "
          f"mesh axes {state_lib.batch_mesh_axes(config)} of config.mesh.shape={tuple(mesh.shape.values())})"
          f" x config.optim.grad_accum_steps ({accum}) = {need}; use a batch size that is a multiple of "
          f"{need} or change the mesh.")
  if registry_model and config.mode in ("pretrain", "finetune", "probe", "eval"):
    check_input_shapes(config)
  _check_augment(config.augment)


def _check_augment(a):
  """A bad augmentation setting fails here, not in a data worker after compilation."""
  from maskfeat_jax.data import augment  # pylint: disable=g-import-not-at-top
  if a.randaug:
    augment.parse_rand_augment_spec(str(a.randaug), int(a.randaug_num_layers), tuple(a.randaug_ops))
  if not 0.0 <= float(a.erase_prob) <= 1.0:
    raise ValueError(f"config.augment.erase_prob={a.erase_prob}: expected a probability in [0, 1].")


def check_input_shapes(config):
  """Clip / crop vs the model's input, and the mask grid vs its token and prediction grids (models.arch)."""
  from maskfeat_jax.models import arch
  d = config.data
  shapes = arch.io_shapes(config)
  image = d.image_mode
  if image != shapes.image:
    raise ValueError(f"config.data.image_mode={image} but config.model.patch_2d={config.model.patch_2d} "
                     f"({config.model.name}); image data needs a 2-D patch model and video a 3-D one.")
  have = (d.crop_size, d.crop_size, 3) if image else (d.num_frames, d.crop_size, d.crop_size, 3)
  if tuple(have) != shapes.pixels:
    raise ValueError(
        f"The loader makes clips of {have[:-1]} (config.data.num_frames / crop_size) but "
        f"config.model.input_size={tuple(config.model.input_size)} ({config.model.name}) takes "
        f"{shapes.pixels[:-1]}; make them equal.")
  arch.check_io(config, shapes)


def _prepare_data(config, hooks: Hooks):
  if hooks.dataset_info is not None:
    return hooks.dataset_info
  from maskfeat_jax.data import pipeline
  return pipeline.prepare_dataset(config)


def _build_model(config, hooks: Hooks):
  if hooks.model is not None:
    return hooks.model
  from maskfeat_jax.models import factory
  return factory.build_model(config)


def _with_num_classes(config, info):
  """Copy of config with model.num_classes from the dataset when a classifier leaves it at 0."""
  config = ml_collections.ConfigDict(config.to_dict())
  if config.model.type == "classifier" and config.model.num_classes <= 0:
    n = getattr(info, "num_classes", None)
    if not n:
      raise ValueError("config.model.num_classes=0 and the dataset does not say how many classes it has; "
                       "set --config.model.num_classes.")
    config.model.num_classes = int(n)
  return config


# --------------------------------------------------------------------------------------------------------
# Model / state construction


def example_batch(config, batch: int = 1) -> dict:
  """Zeros shaped like one loader batch (uint8 pixels, uint8 mask, int32 labels), from models.arch."""
  from maskfeat_jax.models import arch
  shapes = arch.io_shapes(config)
  out = {step_lib.input_key(config): np.zeros((batch,) + shapes.pixels, np.uint8),
         "label": np.zeros((batch,), np.int32)}
  if config.model.type == "maskfeat":
    out["mask"] = np.zeros((batch,) + shapes.mask_grid, np.uint8)
  return out


def step_keys(config) -> tuple[str, ...]:
  """Batch entries the train step reads."""
  key = step_lib.input_key(config)
  return (key, "mask") if config.model.type == "maskfeat" else (key, "label")


def init_params_fn(config, model) -> Callable:
  ex = example_batch(config)
  x = ex[step_lib.input_key(config)]

  def init(key):
    rngs = {"params": key, "dropout": jax.random.fold_in(key, 1)}
    if config.model.type == "maskfeat":
      return model.init(rngs, x, ex["mask"], train=False)["params"]
    return model.init(rngs, x, train=False)["params"]
  return init


def abstract_params_and_shardings(config, model, mesh):
  rules = state_lib.logical_rules(config)
  with state_lib.mesh_context(mesh, rules):
    boxed = jax.eval_shape(init_params_fn(config, model), jax.random.PRNGKey(0))
  return boxed, state_lib.param_shardings(boxed, mesh, rules)


def load_init_params(config, fresh_params):
  """Pre-trained backbone weights for fine-tuning from config.init_from, merged into `fresh_params`.

  Args:
    config: fine-tuning config (init_from = our workdir / checkpoint dir, or an official .pyth / .npz).
    fresh_params: host copy of the freshly initialised fine-tuning params (keeps the new head / norm).
  """
  path = os.path.expanduser(config.init_from)
  if not os.path.exists(path):
    raise FileNotFoundError(f"config.init_from={config.init_from}: no such file or directory.")
  from maskfeat_jax import convert
  if path.endswith(_OFFICIAL_SUFFIXES):
    _, variables = convert.load_official_checkpoint(path)
    pt_params = variables["params"] if "params" in variables else variables
  else:
    pt_params = ckpt_lib.restore_params(path)
  return convert.pretrain_to_finetune(pt_params, fresh_params)


def load_params_for_eval(config, model, mesh):
  """Params of config.init_from (ours or official), placed on the mesh with the model's shardings."""
  if not config.init_from:
    raise ValueError(f"config.mode={config.mode!r} needs config.init_from (a workdir, checkpoint dir or an "
                     "official .pyth/.npz).")
  path = os.path.expanduser(config.init_from)
  if not os.path.exists(path):
    raise FileNotFoundError(f"config.init_from={config.init_from}: no such file or directory.")
  boxed, shardings = abstract_params_and_shardings(config, model, mesh)
  if path.endswith(_OFFICIAL_SUFFIXES):
    from maskfeat_jax import convert
    _, variables = convert.load_official_checkpoint(path)
    params = variables["params"] if "params" in variables else variables
  else:
    params = ckpt_lib.restore_params(path)
  del boxed
  return jax.device_put(params, shardings)


# --------------------------------------------------------------------------------------------------------
# Training


def train(config, workdir: str, hooks: Hooks | None = None) -> TrainResult:
  """Pre-trains or fine-tunes (config.mode), resuming from WORKDIR/checkpoints if present."""
  hooks = hooks or Hooks()
  t_start = time.perf_counter()
  check_config(config, registry_model=hooks.model is None)
  info = _prepare_data(config, hooks)
  config = _with_num_classes(config, info)
  mesh = state_lib.make_mesh(config.mesh)
  check_config(config, mesh, registry_model=False)
  rules = state_lib.logical_rules(config)
  os.makedirs(workdir, exist_ok=True)
  schedule = optim.resolve_schedule(config, _split_size(info, config.data.train_split))
  model = _build_model(config, hooks)
  primary = jax.process_index() == 0

  rng = jax.random.PRNGKey(config.seed)
  state, shardings, tx = state_lib.create_train_state(
      init_params_fn(config, model), lambda p: optim.make_optimizer(config, p, schedule), rng, mesh, rules)
  from maskfeat_jax.models import factory
  n_params = factory.count_params(state.params)

  make_it = hooks.make_train_iterator
  if make_it is None:
    from maskfeat_jax.data import pipeline
    make_it = pipeline.make_train_iterator
  iterator = make_it(config, process_index=jax.process_index(), process_count=jax.process_count())

  ckpt = ckpt_lib.Checkpointer(workdir, keep=config.keep_checkpoints, async_save=config.checkpoint.async_save)
  abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                state, shardings)
  start_step, restored = ckpt.restore(abstract_state, iterator)
  if restored is not None:
    state = restored
    print(f"[{config.mode}] resumed from {ckpt.directory} at step {start_step}", flush=True)
  elif config.mode == "finetune" and config.init_from:
    params = load_init_params(config, jax.device_get(state.params))
    state = state_lib.replace_params(state, params, shardings, tx)
    print(f"[{config.mode}] initialised from {config.init_from}", flush=True)
  start_step = int(start_step or 0)

  if primary:
    metrics_lib.write_config(workdir, config, {
        "param_count": n_params, "total_steps": schedule.total_steps, "warmup_steps": schedule.warmup_steps,
        "peak_lr": schedule.base_lr, "devices": jax.device_count(), "processes": jax.process_count(),
        "mesh": dict(mesh.shape), "resumed_from_step": start_step})
  print(f"[{config.mode}] {n_params:,} params | mesh {dict(mesh.shape)} | {schedule.total_steps} steps "
        f"(start {start_step}) | batch {config.batch_size} | peak lr {schedule.base_lr:.3e}", flush=True)

  keys = step_keys(config)
  ex = example_batch(config, config.batch_size)
  b_shard = step_lib.batch_shardings(config, mesh, {k: ex[k].shape for k in keys})
  if config.model.type == "maskfeat":
    loss_fn = step_lib.pretrain_loss_fn(config, model)
  else:
    loss_fn = step_lib.finetune_loss_fn(config, model, config.model.num_classes)
  step_fn = step_lib.make_step_fn(loss_fn, tx, schedule, int(config.optim.grad_accum_steps))
  jstep = step_lib.jit_step(step_fn, shardings, b_shard, mesh)
  abstract_batch = {k: jax.ShapeDtypeStruct(ex[k].shape, ex[k].dtype, sharding=b_shard[k]) for k in keys}
  t0 = time.perf_counter()
  with state_lib.mesh_context(mesh, rules):
    compiled = jstep.lower(abstract_state, abstract_batch).compile()
  print(f"[{config.mode}] train step compiled in {time.perf_counter() - t0:.1f}s", flush=True)

  writer = metrics_lib.MetricsWriter(
      workdir, total_steps=schedule.total_steps, batch_size=config.batch_size, start_step=start_step,
      primary=primary, tensorboard=config.log.tensorboard, prefix=f"[{config.mode}] ")
  preempt = ckpt_lib.PreemptionFlag().install()
  try:
    result = _loop(config, workdir, state, compiled, iterator, keys, b_shard, ckpt, writer, preempt,
                   start_step, schedule.total_steps, hooks, model, mesh)
  finally:
    preempt.uninstall()
    writer.close()
    ckpt.close()
    if hasattr(iterator, "close"):
      iterator.close()
  result.wall_s = time.perf_counter() - t_start
  result.start_step = start_step
  if result.status == "done":
    result.eval = _final_eval(config, model, result.params, mesh, workdir)
  return result


def _place(batch: dict, keys, shardings) -> dict:
  out = {}
  for k in keys:
    if k not in batch:
      raise KeyError(f"The data iterator's batch has no {k!r} entry (has {sorted(batch)}); "
                     f"config.mode / config.model.type expect it.")
    out[k] = jax.make_array_from_process_local_data(shardings[k], np.asarray(batch[k]))
  return out


def _window_mean(fetched: list[tuple[int, dict]]) -> dict:
  """Mean of each metric over the window; lr is the last value."""
  out = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[-1][1]}
  out["lr"] = float(fetched[-1][1]["lr"])
  return out


def _loop(config, workdir, state, compiled, iterator, keys, b_shard, ckpt, writer, preempt, start_step,
          total_steps, hooks, model, mesh) -> TrainResult:
  # XLA:CPU with several devices can deadlock with too many queued steps: sync at least every 8.
  sync_every = max(1, min(config.log_every_steps, 8))
  log_every = max(1, config.log_every_steps)
  ckpt_every = max(1, config.checkpoint_every_steps)
  pending: list[tuple[int, Any]] = []
  window: list[tuple[int, dict]] = []
  last: dict = {}
  reference = None
  t_run = None
  first_timed_step = None
  step = start_step
  status = "done"
  while step < total_steps:
    t0 = time.perf_counter()
    batch = _place(next(iterator), keys, b_shard)
    writer.add_data_time(time.perf_counter() - t0)
    state, m = compiled(state, batch)
    step += 1
    pending.append((step, m))
    stop = hooks.stop_at_step is not None and step >= hooks.stop_at_step
    preempted = preempt.is_set() or ckpt.reached_preemption(step)
    save_now = step % ckpt_every == 0 or step == total_steps or stop or preempted
    if len(pending) >= sync_every or step % log_every == 0 or save_now:
      fetched = [(s, {k: float(v) for k, v in jax.device_get(mm).items()}) for s, mm in pending]
      pending.clear()
      if reference is None:
        reference = fetched[0][1]["loss"]
      # Raises before this state can be checkpointed: the last good checkpoint stays.
      metrics_lib.check_losses([(s, mm["loss"]) for s, mm in fetched], reference,
                               config.log.explode_factor)
      window.extend(fetched)
      last = fetched[-1][1]
      if t_run is None:  # the first step includes compilation / warm-up: start the clock after it
        t_run, first_timed_step = time.perf_counter(), step
        writer.restart_clock(step)
      if step % log_every == 0 or step == total_steps or stop or preempted:
        writer.write(step, _window_mean(window))
        window.clear()
      _maybe_eval_during_training(config, model, state, mesh, workdir, step, total_steps, writer)
    if save_now:
      ckpt.save(step, state, iterator, force=stop or preempted)
    if stop or preempted:
      status = "preempted" if preempted else "stopped"
      ckpt.wait()
      print(f"[{config.mode}] {status} at step {step}; checkpoint saved in {ckpt.directory} "
            "(rerun the same command to resume)", flush=True)
      break
  sps = None
  if t_run is not None and step > first_timed_step:
    sps = (step - first_timed_step) / (time.perf_counter() - t_run)
  return TrainResult(status=status, step=step, config=config, model=model, params=state.params, mesh=mesh,
                     last_metrics=last, steps_per_sec=sps)


def _maybe_eval_during_training(config, model, state, mesh, workdir, step, total_steps, writer):
  every = config.eval_every_steps
  if every <= 0 or step % every or step == total_steps:
    return
  res = _final_eval(config, model, state.params, mesh, workdir=None)
  if res:
    writer.scalars(step, {f"eval/{k}": float(v) for k, v in res.items() if np.isscalar(v)})


def _final_eval(config, model, params, mesh, workdir):
  """Fine-tuning: multi-view evaluation on the eval split. Pre-training: the linear probe if asked for."""
  if config.mode == "finetune":
    from maskfeat_jax import evaluate
    return evaluate.evaluate(config, model, params, mesh, config.data.eval_split, workdir=workdir)
  if config.mode == "pretrain" and config.eval_every_steps > 0:
    from maskfeat_jax import probe
    return probe.linear_probe(config, model, params, mesh, workdir=workdir)
  return None


# --------------------------------------------------------------------------------------------------------
# eval / probe / demo


def run_eval(config, workdir: str, hooks: Hooks | None = None) -> dict:
  hooks = hooks or Hooks()
  check_config(config, registry_model=hooks.model is None)
  info = _prepare_data(config, hooks)
  config = _with_num_classes(config, info)
  mesh = state_lib.make_mesh(config.mesh)
  model = _build_model(config, hooks)
  params = load_params_for_eval(config, model, mesh)
  from maskfeat_jax import evaluate
  return evaluate.evaluate(config, model, params, mesh, config.data.eval_split, workdir=workdir)


def run_probe(config, workdir: str, hooks: Hooks | None = None) -> dict:
  hooks = hooks or Hooks()
  check_config(config, registry_model=hooks.model is None)
  info = _prepare_data(config, hooks)
  config = _with_num_classes(config, info)
  mesh = state_lib.make_mesh(config.mesh)
  model = _build_model(config, hooks)
  params = load_params_for_eval(config, model, mesh)
  from maskfeat_jax import probe
  return probe.linear_probe(config, model, params, mesh, workdir=workdir)


def _apply_overrides(config, overrides, where: str):
  """Recursively sets `overrides` (a ConfigDict) on `config`; unknown keys are an error naming them."""
  for k, v in overrides.items():
    if k not in config:
      raise KeyError(f"{where}.{k}: no such key in the config tree (see config_defaults.py).")
    if isinstance(v, ml_collections.ConfigDict):
      _apply_overrides(config[k], v, f"{where}.{k}")
    else:
      config[k] = v


def phase_config(config, phase: str, init_from: str = ""):
  """The demo's 'pretrain' / 'finetune' / 'scratch' config: the one config + config.demo.<phase> overrides.

  A different `model.name` in the overrides first loads that registry layout (the fine-tuning model is a
  different architecture), then the remaining overrides apply. 'scratch' is 'finetune' without init_from
  (same recipe, same budget).
  """
  from maskfeat_jax.models import registry
  c = ml_collections.ConfigDict(config.to_dict())
  key = "pretrain" if phase == "pretrain" else "finetune"
  overrides = config.demo[key]
  name = overrides.get("model", {}).get("name") if "model" in overrides else None
  if name and name != c.model.name:
    c.model = registry.get_model_config(name)
  _apply_overrides(c, overrides, f"config.demo.{key}")
  c.mode = key
  c.init_from = init_from if phase == "finetune" else ""
  return c


def run_demo(config, workdir: str, hooks: Hooks | None = None) -> dict:
  """Pre-train -> fine-tune -> evaluate, and the same fine-tuning from scratch; prints both accuracies."""
  t0 = time.perf_counter()
  if hooks is None or hooks.model is None:  # both phases' configs fail now, not after pre-training
    for phase in ("pretrain", "finetune"):
      check_config(phase_config(config, phase))
  pt_dir, ft_dir, sc_dir = (os.path.join(workdir, n) for n in ("pretrain", "finetune", "scratch"))
  results = {}
  pt = train(phase_config(config, "pretrain"), pt_dir, hooks)
  results["pretrain"] = {"final_loss": pt.last_metrics.get("loss"), "steps": pt.step,
                         "steps_per_sec": pt.steps_per_sec, "wall_s": pt.wall_s}
  if pt.status != "done":
    return results
  for name, d, init in (("finetune", ft_dir, pt_dir), ("scratch", sc_dir, "")):
    r = train(phase_config(config, "finetune", init_from=init), d, hooks)
    results[name] = {"eval": _scalars(r.eval), "steps": r.step, "steps_per_sec": r.steps_per_sec,
                     "wall_s": r.wall_s, "final_loss": r.last_metrics.get("loss")}
    if r.status != "done":
      return results
  results["wall_s"] = time.perf_counter() - t0
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "demo_results.json"), "w") as f:
      json.dump(results, f, indent=2)
    print(format_demo(results), flush=True)
  return results


def _scalars(d):
  if not d:
    return {}
  return {k: (float(v) if np.isscalar(v) else v) for k, v in d.items()
          if np.isscalar(v) or isinstance(v, str)}


def _fmt(v, spec: str) -> str:
  return "n/a" if v is None else format(v, spec)


def format_demo(results: dict) -> str:
  """Side-by-side table of the pre-trained vs from-scratch fine-tuned accuracies."""
  ft, sc = results["finetune"]["eval"], results["scratch"]["eval"]
  views = (f"{int(ft['num_views'])} ({int(ft.get('num_clips', 0))} clips x {int(ft.get('num_crops', 0))} crops)"
           if "num_views" in ft else "?")
  lines = ["", f"MaskFeat demo ({results['wall_s']:.0f}s total)",
           f"{'fine-tuned from':<24}{'top-1':>8}{'top-5':>8}   views",
           f"{'MaskFeat pre-training':<24}{100 * ft.get('top1', float('nan')):>7.1f}%"
           f"{100 * ft.get('top5', float('nan')):>7.1f}%   {views}",
           f"{'scratch (same budget)':<24}{100 * sc.get('top1', float('nan')):>7.1f}%"
           f"{100 * sc.get('top5', float('nan')):>7.1f}%   {views}",
           f"pre-training: {results['pretrain']['steps']} steps, final loss "
           f"{_fmt(results['pretrain']['final_loss'], '.4f')}, {results['pretrain']['wall_s']:.0f}s"]
  return "\n".join(lines)


def setup_compilation_cache(config):
  """Turns on JAX's persistent compilation cache in config.compilation_cache_dir ('' = off)."""
  path = config.compilation_cache_dir
  if not path:
    return
  path = os.path.abspath(os.path.expanduser(path))
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def run(config, workdir: str, hooks: Hooks | None = None):
  """main.py's entry: dispatch on config.mode."""
  setup_compilation_cache(config)
  mode = config.mode
  if mode in ("pretrain", "finetune"):
    return train(config, workdir, hooks)
  if mode == "eval":
    return run_eval(config, workdir, hooks)
  if mode == "probe":
    return run_probe(config, workdir, hooks)
  if mode == "demo":
    return run_demo(config, workdir, hooks)
  raise ValueError(f"config.mode={mode!r}: expected one of {MODES}.")
