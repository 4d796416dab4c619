"""Optimizer checks against the official solver: wd masks, layer-decay factors, lr schedule, AdamW update.

References: `slowfast/models/optimizer.py::construct_optimizer` (weight-decay groups, layer decay) and
`slowfast/utils/lr_policy.py` (warmup + cosine).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from maskfeat_jax.config import base_config
from maskfeat_jax.train import optim


def mvit_s_like_params(depth=16, pretrain=False):
  """A param tree with the MViT-S names (official state-dict names, Flax naming) and small stand-in shapes."""
  z = lambda *s: jnp.zeros(s, jnp.float32)
  blocks = {}
  for i in range(depth):
    blocks[f"blocks_{i}"] = {
        "norm1": {"scale": z(4), "bias": z(4)},
        "attn": {"rel_pos_h": z(7, 4), "rel_pos_w": z(7, 4), "rel_pos_t": z(3, 4),
                 "qkv": {"kernel": z(4, 12), "bias": z(12)}, "proj": {"kernel": z(4, 4), "bias": z(4)},
                 "pool_q": {"kernel": z(3, 3, 3, 1, 4)}, "norm_q": {"scale": z(4), "bias": z(4)}},
        "mlp": {"fc1": {"kernel": z(4, 16), "bias": z(16)}, "fc2": {"kernel": z(16, 4), "bias": z(4)}},
    }
  p = {"cls_token": z(1, 1, 4), "patch_embed": {"proj": {"kernel": z(3, 7, 7, 3, 4), "bias": z(4)}}, **blocks}
  if pretrain:
    p["mask_token"] = z(1, 1, 4)
    p["pred_head"] = {"norm": {"scale": z(4), "bias": z(4)}, "proj": {"kernel": z(4, 108), "bias": z(108)}}
  else:
    p["norm"] = {"scale": z(4), "bias": z(4)}
    p["head"] = {"projection": {"kernel": z(4, 400), "bias": z(400)}}
  return p


def test_weight_decay_mask_official_default():
  p = mvit_s_like_params(pretrain=True)
  m = optim.weight_decay_mask(p, zero_wd_1d=True, zero_wd_pos_cls=False)
  # Decayed: weights with ndim >= 2, including cls/mask tokens, rel-pos tables and pool convs (gotcha 13).
  assert m["cls_token"] and m["mask_token"]
  assert m["blocks_3"]["attn"]["rel_pos_h"] and m["blocks_3"]["attn"]["rel_pos_t"]
  assert m["blocks_3"]["attn"]["pool_q"]["kernel"] and m["blocks_3"]["attn"]["qkv"]["kernel"]
  assert m["patch_embed"]["proj"]["kernel"] and m["pred_head"]["proj"]["kernel"]
  # Not decayed: every bias and every 1-D param (LayerNorm scales).
  assert not m["blocks_3"]["attn"]["qkv"]["bias"] and not m["patch_embed"]["proj"]["bias"]
  assert not m["blocks_3"]["norm1"]["scale"] and not m["pred_head"]["norm"]["scale"]
  n_decayed = sum(jax.tree.leaves(m))
  # tokens (2), embed + head kernels (2); per block 3 rel-pos + qkv, proj, pool_q + fc1, fc2 = 8.
  assert n_decayed == 2 + 2 + 16 * 8


def test_weight_decay_mask_switches():
  p = mvit_s_like_params(pretrain=True)
  m = optim.weight_decay_mask(p, zero_wd_1d=True, zero_wd_pos_cls=True)
  assert not m["cls_token"] and not m["mask_token"] and not m["blocks_0"]["attn"]["rel_pos_w"]
  assert m["blocks_0"]["attn"]["qkv"]["kernel"]
  m = optim.weight_decay_mask(p, zero_wd_1d=False, zero_wd_pos_cls=False)
  assert all(jax.tree.leaves(m))


def test_layer_decay_factors_mvit_s():
  p = mvit_s_like_params(depth=16)
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


def test_clipping_is_global_norm():
  c = _cfg(total_steps=10, **{"optim.clip_grad_norm": 0.02, "optim.weight_decay": 0.0,
                              "optim.warmup_steps": 0})
  params = {"a": jnp.zeros((3,)), "b": jnp.zeros((4,))}
  g = {"a": jnp.full((3,), 1.0), "b": jnp.full((4,), 2.0)}
  tx = optim.make_optimizer(c, params, optim.resolve_schedule(c, None))
  clip = tx.init(params)  # the first element of the chain is the clipper
  del clip
  clipped, _ = optax.clip_by_global_norm(0.02).update(g, optax.EmptyState())
  assert float(optax.tree.norm(clipped)) == pytest.approx(0.02, rel=1e-5)
  # The chain starts with the clip (0 disables it: the chain is one element shorter).
  c0 = _cfg(total_steps=10, **{"optim.clip_grad_norm": 0.0, "optim.weight_decay": 0.0})
  n_with = len(tx.init(params))
  n_without = len(optim.make_optimizer(c0, params, optim.resolve_schedule(c0, None)).init(params))
  assert n_with == n_without + 1


def test_epochs_count_videos_with_repeated_sampling():
  from maskfeat_jax.config import base_config
  c = base_config()
  c.batch_size = 32
  c.epochs = 2.0
  c.data.num_sample = 2  # 16 videos x 2 clips per step
  sched = optim.resolve_schedule(c, train_size=1600)
  assert sched.steps_per_epoch == 100.0
  assert sched.total_steps == 200
  c.data.num_sample = 1
  assert optim.resolve_schedule(c, train_size=1600).steps_per_epoch == 50.0
