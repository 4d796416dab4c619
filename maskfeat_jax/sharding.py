"""Device mesh, logical-axis rules and every sharding of the run: parameters, optimizer state, batches.

The models name each weight's axes (`embed`, `mlp`, `heads`, `qkv`, ...) and each activation's (`act_batch`,
`act_tokens`, `act_embed`); `config.mesh.rules` maps those names to mesh axes. Batches are split along
their leading dim over the mesh axes of the `act_batch` rule (`config.batch_mesh_axes`), and `place_batch`
is the one place host batches become global arrays (training and evaluation).
"""
import contextlib
import math

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from maskfeat_jax.config import batch_mesh_axes, logical_rules


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
  """Mesh with Auto axis types (linen logical constraints need Auto, not Explicit, axes).

  The device order comes from `mesh_utils.create_device_mesh` (it follows the TPU / GPU topology); where
  that has no answer for this shape and device set it raises ValueError / NotImplementedError, and the
  devices are laid out in their listed order instead, with a warning saying so.
  """
  devices = jax.devices() if devices is None else devices
  axes = tuple(mesh_config.axes)
  shape = mesh_shape(mesh_config.shape, len(devices))
  if len(shape) != len(axes):
    raise ValueError(f"config.mesh.shape={tuple(mesh_config.shape)} and config.mesh.axes={axes} "
                     "must have the same length.")
  try:
    dev = mesh_utils.create_device_mesh(shape, devices)
  except (ValueError, NotImplementedError) as e:
    logging.warning("make_mesh: no topology-aware device order for mesh %s over %d %s devices (%s); "
                    "using the listed device order.", shape, len(devices), devices[0].platform, e)
    dev = np.asarray(devices).reshape(shape)
  return Mesh(dev, axes, axis_types=(jax.sharding.AxisType.Auto,) * len(axes))


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules):
  """Mesh + logical rules active while tracing (the model's logical constraints read both)."""
  with jax.set_mesh(mesh):
    with nn.logical_axis_rules(rules):
      yield


def config_mesh_context(config, mesh: Mesh):
  return mesh_context(mesh, logical_rules(config))


# ----------------------------------------------------------------------------------------------- batches
def batch_sharding(config, mesh: Mesh, ndim: int) -> NamedSharding:
  """Leading (batch) dim over the data-parallel mesh axes, the rest replicated."""
  axes = batch_mesh_axes(config)
  return NamedSharding(mesh, P(axes if axes else None, *([None] * (ndim - 1))))


def batch_shardings(config, mesh: Mesh, batch_shapes: dict) -> dict:
  """NamedSharding per batch entry (entry -> shape)."""
  return {k: batch_sharding(config, mesh, len(shape)) for k, shape in batch_shapes.items()}


def place_batch(batch: dict, keys, shardings: dict) -> dict:
  """This process's rows of `keys` -> global arrays sharded as `shardings` (training and evaluation)."""
  out = {}
  for k in keys:
    if k not in batch:
      raise KeyError(f"The data iterator's batch has no {k!r} entry (has {sorted(batch)}); "
                     f"config.mode / config.model.type expect it.")
    out[k] = jax.make_array_from_process_local_data(shardings[k], np.asarray(batch[k]))
  return out


# ----------------------------------------------------------------------------------------------- weights
# A weight this large (bytes) left whole on every device while some weight mesh axis splits others is
# warned about by name; smaller ones (rel-pos tables, depthwise pooling kernels) are summarised in one line.
LARGE_REPLICATED_BYTES = 1 << 20


def _fit_spec(spec: P, shape, mesh: Mesh, where: str, notes: list | None = None) -> P:
  """Drops mesh axes from dims they do not divide; that dim is replicated, with a warning naming it.

  `notes` (optional) collects one line per dropped axis (leaf, shape, dim, mesh axes) for the caller.
  """
  out = []
  for i, (dim, entry) in enumerate(zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)))):
    names = () if entry is None else (entry if isinstance(entry, tuple) else (entry,))
    if names and dim % math.prod(mesh.shape[n] for n in names):
      note = (f"{where}: shape {tuple(shape)}, dim {i} of size {dim} is not divisible by mesh axes {names} "
              f"(sizes {[mesh.shape[n] for n in names]}); replicating that dim")
      logging.warning("%s.", note)
      if notes is not None:
        notes.append(note)
      entry = None
    out.append(entry)
  return P(*out)


def weight_mesh_axes(rules) -> set[str]:
  """Mesh axes that some weight (non-activation) logical name is mapped to by `rules`."""
  axes = set()
  for name, m in rules:
    if name.startswith("act_") or m is None:
      continue
    axes.update(m if isinstance(m, tuple) else (m,))
  return axes


def replicated_leaves(abstract_params, shardings, mesh: Mesh, rules) -> list[tuple[str, tuple, int]]:
  """(leaf path, shape, bytes) of every leaf that is whole on each device although the mesh splits
  weights (a weight mesh axis of size > 1); [] on a purely data-parallel mesh, where that is the intent."""
  split_axes = [a for a in weight_mesh_axes(rules) if mesh.shape.get(a, 1) > 1]
  if not split_axes:
    return []
  out = []
  leaves = jax.tree_util.tree_leaves_with_path(abstract_params)
  for (path, a), s in zip(leaves, jax.tree.leaves(shardings)):
    if tuple(s.shard_shape(a.shape)) != tuple(a.shape):
      continue
    nbytes = int(np.prod(a.shape, dtype=np.int64)) * np.dtype(a.dtype).itemsize
    out.append((jax.tree_util.keystr(path), tuple(a.shape), nbytes))
  return out


def param_shardings(boxed_abstract_params, mesh: Mesh, rules, notes: list | None = None):
  """NamedShardings of the (unboxed) params from the logical names on the boxed abstract params.

  Nothing is replicated silently on a mesh that splits weights: a dim whose mesh axes do not divide it
  is warned about by `_fit_spec` (leaf, shape, axis), every replicated leaf of LARGE_REPLICATED_BYTES or
  more is warned about by name with its logical axes, and the rest get one summary line. `notes`
  (optional) collects those lines.
  """
  specs = nn.get_partition_spec(boxed_abstract_params)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  abstract = nn.unbox(boxed_abstract_params)
  notes = [] if notes is None else notes
  out = jax.tree_util.tree_map_with_path(
      lambda path, s, a: NamedSharding(mesh, _fit_spec(s.spec, a.shape, mesh, jax.tree_util.keystr(path), notes)),
      shardings, abstract)
  replicated = replicated_leaves(abstract, out, mesh, rules)
  if replicated:
    names = {jax.tree_util.keystr(p): getattr(b, "names", None)
             for p, b in jax.tree_util.tree_leaves_with_path(
                 boxed_abstract_params, is_leaf=lambda x: isinstance(x, nn.Partitioned))}
    small = 0
    for path, shape, nbytes in replicated:
      if nbytes >= LARGE_REPLICATED_BYTES:
        note = (f"{path}: shape {shape} ({nbytes / 2**20:.1f} MiB) is replicated on every device: its logical "
                f"axes {names.get(path)} map to no mesh axis of size > 1 under config.mesh.rules")
        logging.warning("%s.", note)
        notes.append(note)
      else:
        small += nbytes
    total = sum(int(np.prod(a.shape, dtype=np.int64)) * np.dtype(a.dtype).itemsize
                for a in jax.tree.leaves(abstract))
    logging.info("param_shardings: %d of %d leaves replicated (%.2f of %.2f MiB; %.2f MiB in leaves under "
                 "%d KiB each).", len(replicated), len(jax.tree.leaves(abstract)),
                 sum(r[2] for r in replicated) / 2**20, total / 2**20, small / 2**20,
                 LARGE_REPLICATED_BYTES // 1024)
  return out


def opt_state_shardings(abstract_opt_state, abstract_params, p_shardings, mesh: Mesh):
  """Optimizer-state subtrees shaped like the params get the param shardings; the rest is replicated."""
  treedef = jax.tree.structure(abstract_params)
  replicated = NamedSharding(mesh, P())
  is_params = lambda x: jax.tree.structure(x) == treedef
  return jax.tree.map(lambda x: p_shardings if is_params(x) else replicated,
                      abstract_opt_state, is_leaf=is_params)
