"""`model.scan_blocks`: each run of identical blocks as one lax.scan, same function and gradients as the loop."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from maskfeat_jax.config import base_config
from maskfeat_jax.models import arch, factory, layouts

# Blocks 2-3 and 4-5 repeat; block 3 is a prediction depth, so it ends its run.
SCAN_MICRO = dict(depth=6, dim_mul=((1, 2.0),), head_mul=((1, 2.0),), input_size=(4, 32, 32),
                  pool_q_stride=((0, 1, 1, 1), (1, 1, 2, 2), (2, 1, 1, 1), (3, 1, 1, 1), (4, 1, 1, 1),
                                 (5, 1, 1, 1)),
                  pretrain_depth=(3, 5))


def _config(**overrides):
  c = base_config()
  c.model = layouts.get_model_config("maskfeat_mvit_tiny")
  for k, v in {**SCAN_MICRO, **overrides}.items():
    setattr(c.model, k, v)
  c.mask.grid = (2, 2, 2)
  return c


@pytest.fixture(scope="module")
def setup():
  config = _config(scan_blocks=False)
  model = factory.build_model(config)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)
  mask = (rng.random((2, 2, 2, 2)) < 0.5).astype(np.uint8)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), x, mask))["params"]
  return model, params, x, mask


def _loss_and_grads(model, params, x, mask, train=False, rng=None):
  def loss(p):
    kwargs = {"train": True, "rngs": {"dropout": rng}} if train else {}
    return model.apply({"params": p}, x, mask, **kwargs)["loss"]
  return jax.jit(jax.value_and_grad(loss))(params)


def test_scan_groups_follow_identical_blocks_and_prediction_depths():
  spec = arch.model_spec(_config().model)
  assert arch.scan_groups(spec.blocks, (3, 5)) == [[0], [1], [2, 3], [4, 5]]
  assert arch.scan_groups(spec.blocks, ()) == [[0], [1], [2, 3, 4, 5]]
  s = arch.model_spec(layouts.get_model_config("maskfeat_mvit_s_16x4_pt"))
  assert [len(g) for g in arch.scan_groups(s.blocks, (15,))] == [1, 1, 1, 1, 9, 1, 2]
  # Params keep the per-block official names whatever the execution.
  assert set(factory.param_shapes(_config(), factory.build_model(_config()))) >= {f"blocks_{i}" for i in range(6)}


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_scanned_blocks_equal_the_loop(setup, remat):
  model, params, x, mask = setup
  loss0, grads0 = _loss_and_grads(model, params, x, mask)
  assert float(loss0) > 0
  scanned = factory.build_model(_config(scan_blocks=True, remat_policy=remat))
  loss, grads = _loss_and_grads(scanned, params, x, mask)
  np.testing.assert_allclose(loss, loss0, rtol=1e-6)
  assert jax.tree.structure(grads) == jax.tree.structure(grads0)
  # Some leaves are zero up to rounding (~1e-10, e.g. a bias a LayerNorm cancels): atol on the global scale.
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads0))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * scale), grads, grads0)
  out = scanned.apply({"params": params}, x, mask)
  out0 = model.apply({"params": params}, x, mask)
  for a, b in zip(out["pred"], out0["pred"]):  # both prediction depths
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_scanned_drop_path_draws_per_block_and_is_seeded(setup):
  _, params, x, mask = setup
  model = factory.build_model(_config(scan_blocks=True, drop_path_rate=0.5))
  eval_loss, _ = _loss_and_grads(model, params, x, mask)
  a, _ = _loss_and_grads(model, params, x, mask, train=True, rng=jax.random.key(3))
  b, _ = _loss_and_grads(model, params, x, mask, train=True, rng=jax.random.key(3))
  c, _ = _loss_and_grads(model, params, x, mask, train=True, rng=jax.random.key(4))
  assert float(a) == float(b)
  assert float(a) != float(eval_loss) and float(a) != float(c)


def test_flash_attention_impl_equals_xla(setup):
  model, params, x, mask = setup
  loss0, grads0 = _loss_and_grads(model, params, x, mask)
  flash = factory.build_model(_config(scan_blocks=False, attention_impl="flash"))
  loss, grads = _loss_and_grads(flash, params, x, mask)
  np.testing.assert_allclose(loss, loss0, rtol=1e-5)
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads0))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * scale), grads, grads0)
