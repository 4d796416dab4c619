"""Optimizer checks against the official solver: wd masks, layer-decay factors, lr schedule, AdamW update.

References: `slowfast/models/optimizer.py::construct_optimizer` (weight-decay groups, layer decay) and
`slowfast/utils/lr_policy.py` (warmup + cosine).
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from maskfeat_jax import compiler
from maskfeat_jax.config import base_config
from maskfeat_jax.models import factory, layouts
from maskfeat_jax.train import optim


@functools.lru_cache(maxsize=None)
def real_params(name):
  """Parameter shapes of a real layout (models.factory.param_shapes: jax.eval_shape, no memory)."""
  c = base_config()
  c.model = layouts.get_model_config(name)
  if c.model.type == "maskfeat":
    c.mask.grid = (8, 2, 2) if name == "maskfeat_mvit_tiny" else (8, 7, 7)
  return factory.param_shapes(c)


def test_weight_decay_mask_official_default():
  p = real_params("maskfeat_mvit_s_16x4_pt")
  m = optim.weight_decay_mask(p, zero_wd_1d=True, zero_wd_pos_cls=False)
  # Decayed: weights with ndim >= 2, including cls/mask tokens, rel-pos tables and pool convs (gotcha 13).
  assert m["cls_token"] and m["mask_token"]
  assert m["blocks_3"]["attn"]["rel_pos_h"] and m["blocks_3"]["attn"]["rel_pos_t"]
  assert m["blocks_3"]["attn"]["pool_q"]["kernel"] and m["blocks_3"]["attn"]["qkv"]["kernel"]
  assert m["patch_embed"]["proj"]["kernel"] and m["pred_head"]["projections_0"]["kernel"]
  assert m["blocks_2"]["proj"]["kernel"]  # the block's dim-change projection
  # Not decayed: every bias and every 1-D param (LayerNorm scales).
  assert not m["blocks_3"]["attn"]["qkv"]["bias"] and not m["patch_embed"]["proj"]["bias"]
  assert not m["blocks_3"]["norm1"]["scale"] and not m["pred_head"]["transforms_0"]["scale"]
  assert not m["blocks_3"]["attn"]["norm_q"]["scale"] and not m["blocks_2"]["proj"]["bias"]
  n_decayed = sum(jax.tree.leaves(m))
  # tokens (2), embed + pred-head kernels (2); per block 3 rel-pos + 3 pool convs + qkv, attn proj, fc1, fc2
  # = 10; the dim-change projections of blocks 0, 2 and 13 (3).
  assert n_decayed == 2 + 2 + 16 * 10 + 3


def test_weight_decay_mask_switches():
  p = real_params("maskfeat_mvit_s_16x4_pt")
  m = optim.weight_decay_mask(p, zero_wd_1d=True, zero_wd_pos_cls=True)
  assert not m["cls_token"] and not m["mask_token"] and not m["blocks_0"]["attn"]["rel_pos_w"]
  assert m["blocks_0"]["attn"]["qkv"]["kernel"]
  m = optim.weight_decay_mask(p, zero_wd_1d=False, zero_wd_pos_cls=False)
  assert all(jax.tree.leaves(m))


def test_layer_decay_factors_mvit_s():
  p = real_params("mvit_s_16x4_ft")
  assert optim.model_depth(p) == 16
  f = optim.layer_decay_factors(p, 0.75)
  assert f["cls_token"] == pytest.approx(0.75 ** 17)
  assert f["patch_embed"]["proj"]["kernel"] == pytest.approx(0.75 ** 17)
  assert f["blocks_0"]["attn"]["qkv"]["kernel"] == pytest.approx(0.75 ** 16)
  assert f["blocks_15"]["mlp"]["fc2"]["bias"] == pytest.approx(0.75)
  assert f["head"]["projection"]["kernel"] == 1.0 and f["norm"]["scale"] == 1.0
  # Nested under a wrapper module the ids are the same.
  g = optim.layer_decay_factors({"backbone": p}, 0.75)
  assert g["backbone"]["blocks_15"]["attn"]["proj"]["kernel"] == pytest.approx(0.75)
  tiny = real_params("maskfeat_mvit_tiny")
  assert optim.model_depth(tiny) == 5
  t = optim.layer_decay_factors(tiny, 0.5)
  assert t["mask_token"] == pytest.approx(0.5 ** 6) and t["blocks_4"]["norm1"]["scale"] == pytest.approx(0.5)
  assert t["pred_head"]["projections_0"]["kernel"] == 1.0


def _cfg(**kw):
  c = base_config()
  for k, v in kw.items():
    node = c
    *path, last = k.split(".")
    for q in path:
      node = node[q]
    node[last] = v
  return c


def test_lr_schedule_values_and_batch_scaling():
  # Video FT S recipe: 6e-4 per 16 clips... here base 1e-4 per reference 32, batch 64 -> peak 2e-4.
  c = _cfg(batch_size=64, epochs=10.0, **{"optim.base_lr": 1e-4, "optim.reference_batch": 32,
                                          "optim.warmup_epochs": 2.0, "optim.start_lr": 1e-6,
                                          "optim.end_lr": 1e-6})
  s = optim.resolve_schedule(c, train_size=640)  # 10 steps per epoch
  assert s.steps_per_epoch == 10 and s.total_steps == 100 and s.warmup_steps == 20
  assert s.base_lr == pytest.approx(2e-4) and s.start_lr == pytest.approx(2e-6)
  assert s.end_lr == pytest.approx(2e-6)
  lr = lambda k: float(s(k))
  assert lr(0) == pytest.approx(2e-6)
  assert lr(10) == pytest.approx(2e-6 + 0.5 * (2e-4 - 2e-6), rel=1e-5)  # halfway through warmup
  assert lr(20) == pytest.approx(2e-4, rel=1e-5)  # peak
  assert lr(60) == pytest.approx(2e-6 + (2e-4 - 2e-6) * 0.5 * (1 + math.cos(math.pi * 0.5)), rel=1e-5)
  assert lr(100) == pytest.approx(2e-6, rel=1e-4)
  assert all(lr(k) >= lr(k + 1) for k in range(20, 99))  # monotone cosine


def test_epochs_need_dataset_size():
  with pytest.raises(ValueError, match="epochs"):
    optim.resolve_schedule(_cfg(epochs=3.0), train_size=None)


def test_adamw_update_matches_torch_formula():
  """One update of the chain = torch AdamW with group lr = lr * layer factor, wd on masked params only."""
  c = _cfg(batch_size=32, total_steps=10, **{"optim.base_lr": 1e-2, "optim.warmup_steps": 0,
                                             "optim.weight_decay": 0.05, "optim.clip_grad_norm": 0.0,
                                             "optim.layer_decay": 0.5})
  s = optim.resolve_schedule(c, None)
  params = {"blocks_0": {"w": jnp.full((2, 2), 2.0), "bias": jnp.full((2,), 2.0)}, "head": {"w": jnp.full((2, 2), 2.0)}}
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.3), params)
  tx = optim.make_optimizer(c, params, s)
  upd, _ = tx.update(grads, tx.init(params), params)
  lr0 = float(s(0))
  adam = 0.3 / (0.3 + 1e-8)  # first step: m_hat / (sqrt(v_hat) + eps) = g / (|g| + eps)
  # depth = 1: blocks_0 factor 0.5^(2-1) = 0.5, head 1.0.
  np.testing.assert_allclose(upd["blocks_0"]["w"], -lr0 * 0.5 * (adam + 0.05 * 2.0), rtol=1e-5)
  np.testing.assert_allclose(upd["blocks_0"]["bias"], -lr0 * 0.5 * adam, rtol=1e-5)
  np.testing.assert_allclose(upd["head"]["w"], -lr0 * (adam + 0.05 * 2.0), rtol=1e-5)


def test_clip_grad_norm_zero_disables_clipping():
  """clip_grad_norm > 0 clips the gradient before Adam; 0 leaves it out of make_optimizer's chain.

  Two updates with gradients g and 100 g: clipped to the same global norm they are equal, so the second Adam
  step is lr * 1; unclipped, the second step sees the jump (m_hat / sqrt(v_hat) of g, 100 g).
  """
  params = {"a": jnp.zeros((3,)), "b": jnp.zeros((4,))}
  g = {"a": jnp.full((3,), 1.0), "b": jnp.full((4,), -2.0)}  # global norm sqrt(19) >> 0.02

  def second_step_ratio(clip):
    c = _cfg(total_steps=10, **{"optim.clip_grad_norm": clip, "optim.weight_decay": 0.0,
                                "optim.warmup_steps": 0, "optim.layer_decay": 1.0})
    s = optim.resolve_schedule(c, None)
    tx = optim.make_optimizer(c, params, s)
    _, state = tx.update(g, tx.init(params), params)
    upd, _ = tx.update(jax.tree.map(lambda x: 100.0 * x, g), state, params)
    return jax.tree.map(lambda u, x: np.asarray(u / (-float(s(1)) * jnp.sign(x))), upd, g)

  for r in jax.tree.leaves(second_step_ratio(0.02)):
    np.testing.assert_allclose(r, 1.0, rtol=1e-4)
  m_hat = (0.1 * 0.9 + 0.1 * 100.0) / (1 - 0.9 ** 2)
  v_hat = (0.001 * 0.999 + 0.001 * 100.0 ** 2) / (1 - 0.999 ** 2)
  for r in jax.tree.leaves(second_step_ratio(0.0)):
    np.testing.assert_allclose(r, m_hat / math.sqrt(v_hat), rtol=1e-4)


def test_epochs_count_videos_with_repeated_sampling():
  c = base_config()
  c.batch_size = 32
  c.epochs = 2.0
  c.data.num_sample = 2  # 16 videos x 2 clips per step
  sched = optim.resolve_schedule(c, train_size=1600)
  assert sched.steps_per_epoch == 100.0
  assert sched.total_steps == 200
  c.data.num_sample = 1
  assert optim.resolve_schedule(c, train_size=1600).steps_per_epoch == 50.0


def test_global_norm_equals_optax_and_clip_is_torchs():
  """optim.global_norm (sums per shape) = optax.tree.norm; optim.clip_by_global_norm computes
  torch.nn.utils.clip_grad_norm_'s g * min(1, max / (norm + 1e-6)) (the official loop's clipping) on both
  sides of the threshold, with optax's (empty) state type, so checkpoints are unchanged."""
  rng = np.random.default_rng(0)
  tree = {f"blocks_{i}": {"w": jnp.asarray(rng.normal(size=(5, 7)), jnp.float32),
                          "b": jnp.asarray(rng.normal(size=(7,)), jnp.float32)} for i in range(4)}
  tree["head"] = {"w": jnp.asarray(rng.normal(size=(7, 3)), jnp.float32), "s": jnp.float32(3.0)}
  np.testing.assert_allclose(optim.global_norm(tree), optax.tree.norm(tree), rtol=1e-6)
  assert float(optim.global_norm({})) == 0.0
  leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]
  norm = float(np.sqrt(sum(np.sum(x * x) for x in leaves)))
  for max_norm in (norm / 10, norm * 10):
    tx = optim.clip_by_global_norm(max_norm)
    ours, ours_state = tx.update(tree, tx.init(tree))
    assert type(ours_state) is type(optax.clip_by_global_norm(max_norm).init(tree))
    coef = min(1.0, max_norm / (norm + 1e-6))
    for a, x in zip(jax.tree.leaves(ours), leaves):
      np.testing.assert_allclose(a, x * coef, rtol=1e-6)
  # Below the threshold the gradients are returned exactly (a multiply by 1.0).
  same, _ = optim.clip_by_global_norm(norm * 10).update(tree, optax.EmptyState())
  for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(tree)):
    np.testing.assert_array_equal(a, b)
  clipped, _ = optim.clip_by_global_norm(norm / 10).update(tree, optax.EmptyState())
  np.testing.assert_allclose(optax.tree.norm(clipped), norm / 10, rtol=1e-5)


def test_clip_matches_torch_clip_grad_norm():
  """The same gradients through torch.nn.utils.clip_grad_norm_ (the torch extra) and ours."""
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(1)
  grads = [rng.normal(size=s).astype(np.float32) for s in ((5, 7), (7,), (3, 3, 3, 1, 4))]
  ours, _ = optim.clip_by_global_norm(0.5).update([jnp.asarray(g) for g in grads], optax.EmptyState())
  params = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads]
  for p, g in zip(params, grads):
    p.grad = torch.from_numpy(g.copy())
  torch.nn.utils.clip_grad_norm_(params, 0.5)
  for a, p in zip(ours, params):
    np.testing.assert_allclose(np.asarray(a), p.grad.numpy(), rtol=1e-6)


def test_layer_decay_factors_are_runtime_values_so_blocks_share_kernels():
  """The layer-decay factors sit in the optimizer state (one scalar per distinct value), not as constants in
  each leaf's update: same-shape leaves of different blocks compile to the same kernels, as without layer
  decay (XLA:CPU compiles every distinct kernel), and the updates are those of the factors."""
  params = {f"blocks_{i}": {"w": jnp.full((8, 16), 0.5 + i)} for i in range(6)}
  grads = jax.tree.map(jnp.cos, params)

  def compiled(layer_decay):
    c = _cfg(total_steps=10, **{"optim.layer_decay": layer_decay, "optim.weight_decay": 0.0,
                                "optim.warmup_steps": 0, "optim.clip_grad_norm": 0.0})
    tx = optim.make_optimizer(c, params, optim.resolve_schedule(c, None))
    fn = compiler.jit(lambda g, s, p: tx.update(g, s, p, learning_rate=jnp.float32(1e-3)))
    state = tx.init(params)
    text = fn.lower(grads, state, params).compile().as_text()
    return state, fn(grads, state, params)[0], text

  _, plain, plain_text = compiled(1.0)
  state, decayed, text = compiled(0.5)
  _, distinct = compiler.kernel_counts(text)
  assert distinct <= compiler.kernel_counts(plain_text)[1] + 1, (distinct, compiler.kernel_counts(plain_text))
  assert any(isinstance(s, optim.ScaleByTreeState) for s in state)
  factors = optim.layer_decay_factors(params, 0.5)
  for name in params:
    np.testing.assert_allclose(decayed[name]["w"], plain[name]["w"] * factors[name]["w"], rtol=1e-6)
