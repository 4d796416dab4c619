"""Device mesh, logical-axis rules, the train state and its sharded creation.

Parameters and optimizer state are created already sharded: the init function is traced with
`jax.eval_shape`, the logical axis names the model attached to each parameter are mapped to mesh axes by
`config.mesh.rules`, and `jax.jit(init, out_shardings=...)` materialises every array directly on its shards.
"""
import contextlib
import math
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes; all leaves are arrays (checkpointed as one pytree)."""
  step: jax.Array  # int32 scalar: optimizer updates done
  params: Any  # float32, unboxed
  opt_state: Any
  rng: jax.Array  # uint32[2] raw key; the step key is fold_in(rng, step)


def mesh_shape(shape, num_devices: int) -> tuple[int, ...]:
  """Resolves one -1 entry in config.mesh.shape to the remaining devices."""
  shape = tuple(int(s) for s in shape)
  if shape.count(-1) > 1:
    raise ValueError(f"config.mesh.shape={shape}: at most one entry may be -1.")
  known = math.prod(s for s in shape if s != -1)
  if known <= 0 or num_devices % known:
    raise ValueError(
        f"config.mesh.shape={shape} does not fit {num_devices} devices: the fixed entries multiply to "
        f"{known}, which must divide the device count.")
  shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise ValueError(
        f"config.mesh.shape={shape} uses {math.prod(shape)} devices but {num_devices} are present; "
        "use -1 for one axis to take the rest.")
  return shape


def make_mesh(mesh_config, devices=None) -> Mesh:
  """Mesh with Auto axis types (linen logical constraints need Auto, not Explicit, axes)."""
  devices = jax.devices() if devices is None else devices
  axes = tuple(mesh_config.axes)
  shape = mesh_shape(mesh_config.shape, len(devices))
  if len(shape) != len(axes):
    raise ValueError(f"config.mesh.shape={tuple(mesh_config.shape)} and config.mesh.axes={axes} "
                     "must have the same length.")
  try:
    from jax.experimental import mesh_utils  # topology-aware device order on TPU/GPU
    dev = mesh_utils.create_device_mesh(shape, devices)
  except Exception:  # pylint: disable=broad-except
    dev = np.asarray(devices).reshape(shape)
  return Mesh(dev, axes, axis_types=(jax.sharding.AxisType.Auto,) * len(axes))


def logical_rules(config) -> tuple:
  return tuple((name, tuple(m) if isinstance(m, (list, tuple)) else m) for name, m in config.mesh.rules)


def batch_mesh_axes(config) -> tuple[str, ...]:
  """Mesh axes the 'batch' logical axis is split over (data parallelism)."""
  for name, m in logical_rules(config):
    if name == "batch":
      if m is None:
        return ()
      return tuple(m) if isinstance(m, tuple) else (m,)
  return ()


def data_parallel_size(config, mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in batch_mesh_axes(config))


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules):
  """Mesh + logical rules active while tracing (the model's logical constraints read both)."""
  with jax.set_mesh(mesh):
    with nn.logical_axis_rules(rules):
      yield


def batch_sharding(config, mesh: Mesh, ndim: int) -> NamedSharding:
  axes = batch_mesh_axes(config)
  return NamedSharding(mesh, P(axes if axes else None, *([None] * (ndim - 1))))


def _fit_spec(spec: P, shape, mesh: Mesh) -> P:
  """Drops mesh axes from dims they do not divide (that dim is replicated instead of failing)."""
  out = []
  for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = () if entry is None else (entry if isinstance(entry, tuple) else (entry,))
    if names and dim % math.prod(mesh.shape[n] for n in names):
      logging.warning("Replicating a dim of size %d instead of sharding it over %s.", dim, names)
      entry = None
    out.append(entry)
  return P(*out)


def param_shardings(boxed_abstract_params, mesh: Mesh, rules):
  """NamedShardings of the (unboxed) params from the logical names on the boxed abstract params."""
  specs = nn.get_partition_spec(boxed_abstract_params)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  abstract = nn.unbox(boxed_abstract_params)
  return jax.tree.map(lambda s, a: NamedSharding(mesh, _fit_spec(s.spec, a.shape, mesh)),
                      shardings, abstract)


def _opt_state_shardings(abstract_opt_state, abstract_params, p_shardings, mesh: Mesh):
  """Optimizer-state subtrees shaped like the params get the param shardings; the rest is replicated."""
  treedef = jax.tree.structure(abstract_params)
  replicated = NamedSharding(mesh, P())
  is_params = lambda x: jax.tree.structure(x) == treedef
  return jax.tree.map(lambda x: p_shardings if is_params(x) else replicated,
                      abstract_opt_state, is_leaf=is_params)


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def create_train_state(init_params_fn: Callable[[jax.Array], Any], make_tx: Callable[[Any], Any],
                       rng: jax.Array, mesh: Mesh, rules):
  """Creates the sharded TrainState.

  Args:
    init_params_fn: rng -> boxed params (the 'params' collection of `model.init`).
    make_tx: abstract unboxed params -> optax transformation (masks depend on the param tree).
    rng: the run key; split into an init key and the state key.
    mesh, rules: where and how to shard.

  Returns:
    (state, state_shardings, tx).
  """
  init_key, state_key = jax.random.split(rng)
  with mesh_context(mesh, rules):
    boxed = jax.eval_shape(init_params_fn, init_key)
  abstract_params = nn.unbox(boxed)
  p_shard = param_shardings(boxed, mesh, rules)
  tx = make_tx(abstract_params)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  replicated = NamedSharding(mesh, P())
  shardings = TrainState(step=replicated, params=p_shard,
                         opt_state=_opt_state_shardings(abstract_opt, abstract_params, p_shard, mesh),
                         rng=replicated)

  def init(key):
    params = nn.unbox(init_params_fn(key))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=state_key)

  with mesh_context(mesh, rules):
    state = jax.jit(init, out_shardings=shardings)(init_key)
  return state, shardings, tx


def replace_params(state: TrainState, params, shardings: TrainState, tx) -> TrainState:
  """Puts host params (e.g. converted pre-trained weights) on their shards and resets the optimizer."""
  params = jax.device_put(params, shardings.params)
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  return state.replace(params=params, opt_state=opt_state)
