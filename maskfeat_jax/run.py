"""`run(config, workdir)`: the one dispatch on `config.mode`, and what every mode is built from.

  pretrain / finetune -> train.trainer.train, with an evaluator (multi-view eval / linear probe)
  eval               -> eval.multiview.evaluate of config.init_from
  probe              -> eval.probe.linear_probe of config.init_from
  demo               -> demo.run_demo (pre-train, probe, fine-tune, evaluate; the same probe and fine-tuning
                        from a random init)

Every check that needs no compilation (config.validate: mode and model type, input and mask shapes, batch
divisibility; the dataset and every split the run will read) runs first, with messages that say what to
change.
"""
import dataclasses
import os
from typing import Any, Callable

from flax import linen as nn
import jax
import ml_collections

from maskfeat_jax import config as config_lib
from maskfeat_jax import demo
from maskfeat_jax import sharding
from maskfeat_jax.checkpoints import init as init_lib
from maskfeat_jax.data import ava
from maskfeat_jax.data import ava_pipeline
from maskfeat_jax.data import pipeline
from maskfeat_jax.data import splits
from maskfeat_jax.eval import ava_eval
from maskfeat_jax.eval import multiview
from maskfeat_jax.eval import probe
from maskfeat_jax.models import factory
from maskfeat_jax.train import trainer
from maskfeat_jax.viz import hook


@dataclasses.dataclass
class Components:
  """Parts of a run a caller may supply instead of the project's own (tests, notebooks): None = built from
  the config (model from config.model, data from config.data)."""
  model: Any = None
  make_train_iterator: Callable | None = None  # (config, *, process_index, process_count) -> iterator
  dataset_info: Any = None  # with .split_sizes, .num_classes, .class_names
  stop_at_step: int | None = None  # save and return at this step (as if preempted)


@dataclasses.dataclass
class _Prepared:
  config: Any
  dataset: Any
  mesh: Any
  model: Any


def _with_num_classes(config, info):
  """A locked copy of config with model.num_classes from the dataset when a classifier leaves it at 0."""
  if config.model.type not in ("classifier", "detection") or config.model.num_classes > 0:
    return config
  n = getattr(info, "num_classes", None)
  if not n:
    raise ValueError("config.model.num_classes=0 and the dataset does not say how many classes it has; "
                     "set --config.model.num_classes.")
  config = config_lib.locked_copy(config)
  config.model.num_classes = int(n)
  return config


def splits_read(config) -> dict[str, str]:
  """Every split this run will read, by the config key that names it (checked before compilation)."""
  out = {}
  if config.mode in ("pretrain", "finetune"):
    out["config.data.train_split"] = config.data.train_split
  if config.mode in ("finetune", "eval"):
    out["config.data.eval_split"] = config.data.eval_split
  if config.mode == "pretrain" and config.viz_every_steps > 0 and config.model.type == "maskfeat":
    out["config.data.eval_split"] = config.data.eval_split  # the prediction pictures' clip
  if config.mode == "probe" or (config.mode == "pretrain" and config.eval_every_steps > 0):
    out["config.probe.train_split"] = config.probe.train_split or config.data.train_split
    out["config.probe.eval_split"] = config.probe.eval_split or config.data.eval_split
  return out


def check_splits(config, dataset) -> None:
  """Each split the run reads exists in the dataset (a missing eval split must not surface after training)."""
  sizes = getattr(dataset, "split_sizes", None)
  if not isinstance(sizes, dict):
    return  # an injected dataset that does not list its splits
  where = f"dataset {config.data.name!r} (config.data.name, in {config.data.data_dir})"
  for key, split in splits_read(config).items():
    try:
      splits.resolve_split(split, sizes, where=where)
    except ValueError as e:
      raise ValueError(f"{key}={split!r}: {e}") from None


def _dataset_info(config):
  """The dataset's description: AVA (a 'detection' model, data/ava.py) or a classification dataset."""
  if config.model.type == "detection":
    return ava.load_meta(config)
  return pipeline.prepare_dataset(config)


def prepare(config, parts: Components | None = None) -> _Prepared:
  """Validates config (before any compilation), finds the dataset, builds the mesh and the model."""
  parts = parts or Components()
  config_lib.validate(config, process_count=jax.process_count(), model_from_config=parts.model is None)
  info = parts.dataset_info if parts.dataset_info is not None else _dataset_info(config)
  check_splits(config, info)
  config = _with_num_classes(config, info)
  mesh = sharding.make_mesh(config.mesh)
  config_lib.validate(config, mesh_shape=dict(mesh.shape), process_count=jax.process_count(),
                      model_from_config=False)
  model = parts.model if parts.model is not None else factory.build_model(config)
  return _Prepared(config=config, dataset=info, mesh=mesh, model=model)


def evaluator_for(config, model, mesh, dataset) -> trainer.Evaluator | None:
  """Fine-tuning: multi-view evaluation on the eval split. Pre-training: the linear probe if asked for."""
  names = getattr(dataset, "class_names", None)
  if config.model.type == "detection":  # AVA: frame-level mAP of the detected boxes (eval/ava_eval.py)
    meta = dataset if isinstance(dataset, ava.AvaMeta) else None
    return lambda params, workdir: ava_eval.evaluate(config, model, params, mesh, config.data.eval_split,
                                                     workdir=workdir, meta=meta)
  if config.mode == "finetune":
    return lambda params, workdir: multiview.evaluate(config, model, params, mesh, config.data.eval_split,
                                                      workdir=workdir, class_names=names)
  if config.mode == "pretrain" and config.eval_every_steps > 0:
    return lambda params, workdir: probe.linear_probe(config, model, params, mesh, workdir=workdir)
  return None


def visualizer_for(config, model, mesh) -> trainer.Visualizer | None:
  """MaskFeat pre-training with viz_every_steps > 0: WORKDIR/pictures/ (viz/hook.py)."""
  if config.mode == "pretrain" and config.model.type == "maskfeat" and config.viz_every_steps > 0:
    return hook.make_visualizer(config, model, mesh)
  return None


def train(config, workdir: str, parts: Components | None = None) -> trainer.TrainResult:
  parts = parts or Components()
  p = prepare(config, parts)
  make_it = parts.make_train_iterator or (ava_pipeline.make_train_iterator if p.config.model.type == "detection"
                                          else pipeline.make_train_iterator)
  return trainer.train(p.config, workdir, model=p.model, dataset=p.dataset, mesh=p.mesh, make_iterator=make_it,
                       evaluator=evaluator_for(p.config, p.model, p.mesh, p.dataset),
                       stop_at_step=parts.stop_at_step, visualizer=visualizer_for(p.config, p.model, p.mesh))


def _frozen_params(p: _Prepared):
  return init_lib.params_on_mesh(p.config, trainer.param_shardings(p.config, p.model, p.mesh))


def run_eval(config, workdir: str, parts: Components | None = None) -> dict:
  p = prepare(config, parts)
  if p.config.model.type == "detection":
    return evaluator_for(p.config, p.model, p.mesh, p.dataset)(_frozen_params(p), workdir)
  return multiview.evaluate(p.config, p.model, _frozen_params(p), p.mesh, p.config.data.eval_split,
                            workdir=workdir, class_names=getattr(p.dataset, "class_names", None))


def _initial_params(p: _Prepared):
  """The model's params at its random init: the ones `trainer.train` starts from with this config's seed."""
  shardings = trainer.param_shardings(p.config, p.model, p.mesh)
  init_key, _ = jax.random.split(jax.random.PRNGKey(p.config.seed))  # as train.state.create_train_state
  init = trainer.init_params_fn(p.config, p.model)
  with sharding.mesh_context(p.mesh, config_lib.logical_rules(p.config)):
    return jax.jit(lambda k: nn.unbox(init(k)), out_shardings=shardings)(init_key)


def run_probe(config, workdir: str, parts: Components | None = None, random_init: bool = False) -> dict:
  """Linear probe of config.init_from, or (random_init, the demo's baseline) of the model's random init."""
  p = prepare(config, parts)
  params = _initial_params(p) if random_init else _frozen_params(p)
  return probe.linear_probe(p.config, p.model, params, p.mesh, workdir=workdir)


def _check_phase(config, parts: Components) -> None:
  """A demo phase's config and splits, checked before the first phase compiles anything."""
  config_lib.validate(config, process_count=jax.process_count(), model_from_config=parts.model is None)
  check_splits(config, parts.dataset_info if parts.dataset_info is not None else pipeline.prepare_dataset(config))


def setup_compilation_cache(config):
  """Turns on JAX's persistent compilation cache in config.compilation_cache_dir ('' = off)."""
  path = config.compilation_cache_dir
  if not path:
    return
  path = os.path.abspath(os.path.expanduser(path))
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def run(config: ml_collections.ConfigDict, workdir: str, parts: Components | None = None):
  """main.py's entry: dispatch on config.mode."""
  setup_compilation_cache(config)
  mode = config.mode
  if mode in ("pretrain", "finetune"):
    return train(config, workdir, parts)
  if mode == "eval":
    return run_eval(config, workdir, parts)
  if mode == "probe":
    return run_probe(config, workdir, parts)
  if mode == "demo":
    # The demo runs its phases through `train` (passed in: demo.py needs nothing of this module).
    return demo.run_demo(config, workdir, train_phase=lambda c, d: train(c, d, parts),
                         check=lambda c: _check_phase(c, parts or Components()),
                         probe_phase=lambda c, d: run_probe(c, d, parts, random_init=not c.init_from))
  raise ValueError(f"config.mode={mode!r}: expected one of {config_lib.MODES}.")
