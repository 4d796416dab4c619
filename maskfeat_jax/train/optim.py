"""Optimizer and learning-rate schedule as in the official SlowFast solver.

Mirrors `slowfast/models/optimizer.py::construct_optimizer` (weight-decay groups, layer decay) and
`slowfast/utils/lr_policy.py` (warmup + cosine, per iteration):

- AdamW (decoupled weight decay applied with the group lr, as `torch.optim.AdamW`).
- lr = base_lr x batch_size / reference_batch (start_lr and end_lr scaled the same way), linear warmup from
  start_lr, then cosine to end_lr, evaluated per step from the fractional epoch.
- No weight decay for 1-D params and biases (`zero_wd_1d`); cls/mask tokens, position embeddings and rel-pos
  tables DO get weight decay unless `zero_wd_pos_cls`.
- Layer-wise lr decay: layer_id 0 for cls_token / mask_token / pos_embed* / patch_embed, i+1 for blocks_i,
  depth+1 for the rest; factor = layer_decay ** (depth + 1 - layer_id).
- Global-norm clipping (0 = off) as `torch.nn.utils.clip_grad_norm_`, which the official train loop calls
  (`tools/train_net.py::train_epoch`). Gradient accumulation is done in the step (a scan over micro-batches), so
  one optimizer update = one train step = one schedule step.
"""
import dataclasses
import math
import re
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
from absl import logging
import jax.numpy as jnp
import optax

# Leaf names of parameters that are tokens or position tables (official `no_weight_decay()` names).
_POS_CLS_NAMES = ("cls_token", "mask_token", "pos_embed", "rel_pos")
_STEM_NAMES = ("cls_token", "mask_token", "pos_embed", "patch_embed")
_BLOCK_RE = re.compile(r"^blocks_(\d+)$")


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Resolved step counts and scaled learning rates of a run."""
  total_steps: int
  warmup_steps: float
  steps_per_epoch: float
  base_lr: float
  start_lr: float
  end_lr: float

  def __call__(self, step):
    return lr_at(step, self)


def steps_per_epoch(train_size: int, batch_size: int) -> int:
  """Iterations per epoch with drop_last batching (as the official loader); at least 1."""
  return max(1, int(train_size) // int(batch_size))


def resolve_schedule(config, train_size: int | None) -> Schedule:
  """Turns config.total_steps / epochs, optim.warmup_* and the lr scaling rule into step-based values.

  Args:
    config: the full config tree.
    train_size: examples in the training split (needed only when epochs or warmup_epochs are used).
  """
  o = config.optim
  uses_epochs = config.epochs > 0 or o.warmup_epochs > 0
  if uses_epochs and not train_size:
    raise ValueError(
        f"config.epochs={config.epochs} / config.optim.warmup_epochs={o.warmup_epochs} need the training "
        "split size, which is unknown; set config.total_steps and config.optim.warmup_steps instead.")
  # With repeated sampling (data.num_sample = k) a batch holds k clips of each video, so an epoch (every
  # video once) takes train_size / (batch_size / k) steps, as the official loader counts it.
  videos_per_step = max(1, config.batch_size // max(1, int(config.data.num_sample)))
  spe = float(steps_per_epoch(train_size, videos_per_step)) if train_size else 0.0
  total = int(math.ceil(config.epochs * spe)) if config.epochs > 0 else int(config.total_steps)
  warmup = o.warmup_epochs * spe if o.warmup_epochs > 0 else float(o.warmup_steps)
  if total <= 0:
    raise ValueError(f"config.total_steps={config.total_steps} (epochs={config.epochs}): must be > 0.")
  if warmup > total:
    logging.warning("Warmup (%g steps) is longer than the run (%d steps): the lr never reaches its peak.",
                    warmup, total)
  scale = config.batch_size / o.reference_batch
  return Schedule(total_steps=total, warmup_steps=warmup, steps_per_epoch=spe,
                  base_lr=o.base_lr * scale, start_lr=o.start_lr * scale, end_lr=o.end_lr * scale)


def lr_at(step, s: Schedule):
  """lr of update `step` (0-based): linear warmup from start_lr, then half-cosine to end_lr
  (`slowfast/utils/lr_policy.py`, cosine with linear warmup)."""
  step = jnp.asarray(step, jnp.float32)
  warm = s.start_lr + step * (s.base_lr - s.start_lr) / max(s.warmup_steps, 1e-12)
  decay_len = max(s.total_steps - s.warmup_steps, 1e-12)
  progress = jnp.clip((step - s.warmup_steps) / decay_len, 0.0, 1.0)
  cos = s.end_lr + (s.base_lr - s.end_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
  return jnp.where(step < s.warmup_steps, warm, cos)


def lr_table(s: Schedule) -> np.ndarray:
  """float32 [total_steps]: the lr of every update, computed once per run on the host's default device.

  The train step takes its lr as an argument (`scale_by_learning_rate_arg`) instead of computing it from the
  schedule's constants, so the run length is not part of the compiled program: a longer run, a resume with
  a new total_steps and the demo's phases reuse one compiled step. The table is `lr_at` with the constants
  folded in, exactly as the step used to compute it (a traced divisor would round differently).
  """
  return np.asarray(jax.jit(lambda steps: lr_at(steps, s))(np.arange(s.total_steps, dtype=np.int32)))


def scale_by_learning_rate_arg(default: Schedule) -> optax.GradientTransformationExtraArgs:
  """-lr x updates, lr = the `learning_rate` passed to `update` (the train step passes its lr-table entry),
  else lr_at(count, default). The state is optax.scale_by_learning_rate's (a count), so checkpoints match."""

  def init(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params=None, *, learning_rate=None, **extra):
    del params, extra
    lr = lr_at(state.count, default) if learning_rate is None else learning_rate
    step_size = -lr
    updates = jax.tree.map(lambda g: jnp.array(step_size, dtype=g.dtype) * g, updates)
    return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init, update)


def _names(path) -> list[str]:
  out = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        out.append(str(getattr(k, attr)))
        break
  return out


def _map_with_names(fn: Callable[[list[str], Any], Any], tree):
  return jax.tree_util.tree_map_with_path(lambda p, x: fn(_names(p), x), tree)


def weight_decay_mask(params, zero_wd_1d: bool = True, zero_wd_pos_cls: bool = False):
  """Tree of bools: True where weight decay applies (official ZERO_WD_1D_PARAM / ZERO_DECAY_POS_CLS)."""
  def decays(names, x):
    leaf = names[-1] if names else ""
    if zero_wd_1d and (x.ndim <= 1 or leaf == "bias"):
      return False
    if zero_wd_pos_cls and any(n.startswith(_POS_CLS_NAMES) for n in names):
      return False
    return True
  return _map_with_names(decays, params)


def model_depth(params) -> int:
  """Number of transformer blocks: 1 + the largest `blocks_<i>` index anywhere in the tree."""
  depth = 0
  def visit(names, _):
    nonlocal depth
    for n in names:
      m = _BLOCK_RE.match(n)
      if m:
        depth = max(depth, int(m.group(1)) + 1)
  _map_with_names(visit, params)
  return depth


def layer_id(names: list[str], depth: int) -> int:
  """Official `get_layer_id` on a Flax path: stem 0, blocks_i -> i+1, everything else depth+1."""
  for n in names:
    m = _BLOCK_RE.match(n)
    if m:
      return int(m.group(1)) + 1
  if any(n.startswith(_STEM_NAMES) for n in names):
    return 0
  return depth + 1


def layer_decay_factors(params, layer_decay: float, depth: int | None = None):
  """Tree of python floats layer_decay ** (depth + 1 - layer_id); all 1.0 when layer_decay == 1."""
  depth = model_depth(params) if depth is None else depth
  return _map_with_names(
      lambda names, _: float(layer_decay) ** (depth + 1 - layer_id(names, depth)), params)


def global_norm(tree) -> jax.Array:
  """The L2 norm of all leaves (`optax.tree.norm`), with the sums of squares taken per shape.

  Why not `optax.tree.norm`: XLA:CPU compiles each leaf's sum of squares as three kernels (square,
  reduce-window, reduce), ~1,200 for MViT-S's 398 leaves, which is most of the optimizer's compile time.
  Stacking the leaves of one shape first (the scanned blocks repeat every shape) leaves one reduction per
  distinct shape. The value is the same up to summation order.
  """
  groups = {}
  for x in jax.tree.leaves(tree):
    groups.setdefault((tuple(x.shape), jnp.dtype(x.dtype)), []).append(x)
  total = sum(jnp.sum(jnp.square(jnp.stack(g).astype(jnp.float32))) for g in groups.values())
  return jnp.sqrt(jnp.asarray(total, jnp.float32))


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """Global-norm clipping with `torch.nn.utils.clip_grad_norm_`'s arithmetic (what the official loop runs):
  every gradient times min(1, max_norm / (norm + 1e-6)), norm = `global_norm` of all of them.

  Why a scalar coefficient and not optax's `select(norm < max, g, g / norm * max)`: besides being the
  official formula, a multiply by a scalar fuses into each consumer (Adam's two moments), where XLA
  materialised optax's per-element divide as one more kernel per leaf (398 for MViT-S; BENCHMARKS.md,
  "Model step on CPU", fourth session). The state is optax's EmptyState, so checkpoints are unchanged.
  """
  def update(updates, state, params=None):
    del params
    coef = jnp.minimum(jnp.float32(max_norm) / (global_norm(updates) + jnp.float32(1e-6)), jnp.float32(1.0))
    return jax.tree.map(lambda t: t * coef.astype(t.dtype), updates), state
  return optax.GradientTransformation(optax.init_empty_state, update)


class ScaleByTreeState(NamedTuple):
  """The distinct factors of `scale_by_tree`, one float32 scalar each, as arrays of the state."""
  values: tuple


def scale_by_tree(factors) -> optax.GradientTransformation:
  """Multiplies each update by a fixed per-parameter factor (the layer-decay lr multiplier).

  Why the factors live in the state: a factor closed over by the jitted step is a constant inside each
  leaf's update kernel, so leaves of one shape in different blocks (different factors) get different
  kernels, and XLA:CPU compiles every distinct kernel (BENCHMARKS.md, "Model step on CPU", fourth session).
  Read from the state, each distinct factor value (depth + 2 of them) is a runtime scalar, and same-shape
  leaves share one kernel. They are set by `init` from the config, as before; a checkpoint restores them.
  """
  leaves, treedef = jax.tree.flatten(factors)
  values = sorted({float(f) for f in leaves})
  slot = [values.index(float(f)) for f in leaves]

  def init(params):
    del params
    return ScaleByTreeState(values=tuple(jnp.asarray(v, jnp.float32) for v in values))

  def update(updates, state, params=None):
    del params
    scale = jax.tree.unflatten(treedef, [state.values[k] for k in slot])
    return jax.tree.map(lambda u, f: u * f.astype(u.dtype), updates, scale), state
  return optax.GradientTransformation(init, update)


def make_optimizer(config, params, schedule: Schedule) -> optax.GradientTransformation:
  """AdamW + wd mask + layer decay + clipping, driven by `schedule` (params may be abstract shapes)."""
  o = config.optim
  parts = []
  if o.clip_grad_norm > 0:
    parts.append(clip_by_global_norm(o.clip_grad_norm))
  parts.append(optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps))
  if o.weight_decay > 0:
    parts.append(optax.add_decayed_weights(
        o.weight_decay, mask=weight_decay_mask(params, o.zero_wd_1d, o.zero_wd_pos_cls)))
  if o.layer_decay != 1.0:
    parts.append(scale_by_tree(layer_decay_factors(params, o.layer_decay)))
  parts.append(scale_by_learning_rate_arg(schedule))
  return optax.chain(*parts)
