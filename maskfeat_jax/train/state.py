"""The train state and its sharded creation.

Parameters and optimizer state are created already sharded: the init function is traced with
`jax.eval_shape`, the logical axis names the model attached to each parameter are mapped to mesh axes by
`config.mesh.rules` (maskfeat_jax.sharding), and `jax.jit(init, out_shardings=...)` materialises every
array directly on its shards.
"""
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from maskfeat_jax import sharding


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes; all leaves are arrays (checkpointed as one pytree)."""
  step: jax.Array  # int32 scalar: optimizer updates done
  params: Any  # float32, unboxed
  opt_state: Any
  rng: jax.Array  # uint32[2] raw key; the step key is fold_in(rng, step)


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
  with sharding.mesh_context(mesh, rules):
    boxed = jax.eval_shape(init_params_fn, init_key)
  abstract_params = nn.unbox(boxed)
  p_shard = sharding.param_shardings(boxed, mesh, rules)
  tx = make_tx(abstract_params)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  replicated = NamedSharding(mesh, P())
  shardings = TrainState(step=replicated, params=p_shard,
                         opt_state=sharding.opt_state_shardings(abstract_opt, abstract_params, p_shard, mesh),
                         rng=replicated)

  def init(key):
    params = nn.unbox(init_params_fn(key))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=state_key)

  with sharding.mesh_context(mesh, rules):
    state = jax.jit(init, out_shardings=shardings)(init_key)
  return state, shardings, tx


def replace_params(state: TrainState, params, shardings: TrainState, tx) -> TrainState:
  """Puts host params (e.g. converted pre-trained weights) on their shards and resets the optimizer."""
  params = jax.device_put(params, shardings.params)
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  return state.replace(params=params, opt_state=opt_state)
