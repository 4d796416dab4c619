"""Models: golden parity with the official PyTorch code, parameter counts, gradients, options."""
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskfeat_jax.checkpoints import slowfast
from maskfeat_jax.models import factory
from maskfeat_jax.config import base_config
from maskfeat_jax.models import arch, layers
from maskfeat_jax.models import layouts

RTOL, ATOL = 1e-4, 1e-5  # golden/README.md: model outputs and losses


def _config(name, **model_overrides):
  c = base_config()
  c.model = layouts.get_model_config(name)
  for k, v in model_overrides.items():
    setattr(c.model, k, v)
  if c.model.patch_2d:
    c.mask.grid = (c.model.input_size[1] // 16, c.model.input_size[2] // 16)
  elif c.model.type == "maskfeat":
    c.mask.grid = (c.model.input_size[0] // c.model.patch_stride[0], 2, 2)
  return c


def _raw_from_golden(x, config):
  """Golden inputs are normalised NC(T)HW floats: back to raw 0-255 channels-last."""
  mean = np.asarray(config.model.pixel_mean, np.float32)
  std = np.asarray(config.model.pixel_std, np.float32)
  x = np.moveaxis(x, 1, -1)
  return x * 255 * std + 255 * mean


def _load_golden(golden_dir, name):
  config, variables = slowfast.load_official_checkpoint(golden_dir / f"{name}.pyth")
  io = dict(np.load(golden_dir / f"{name}_io.npz"))
  return config, variables, io


# ---- golden parity -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["maskmvit_tiny_pt", "vit_tiny_image_pt"])
def test_pretrain_parity(golden_dir, name):
  config, variables, io = _load_golden(golden_dir, name)
  model = factory.build_model(config)
  out = jax.jit(model.apply)(variables, _raw_from_golden(io["x"], config), io["mask"])
  token_mask = np.asarray(out["token_mask"])
  pred, target = np.asarray(out["pred"]), np.asarray(out["target"])
  assert token_mask.sum() == io["pred_masked"].shape[0]
  np.testing.assert_allclose(pred[token_mask], io["pred_masked"], rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(target[token_mask], io["target_masked"], rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(out["loss"], io["loss"], rtol=RTOL, atol=ATOL)
  if "pred_all" in io:
    np.testing.assert_allclose(pred, io["pred_all"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", ["mvit_tiny_ft", "mvitv2_tiny_ft_dim_mul_in_att"])
def test_classifier_parity(golden_dir, name):
  config, variables, io = _load_golden(golden_dir, name)
  model = factory.build_model(config)
  logits = jax.jit(model.apply)(variables, _raw_from_golden(io["x"], config))
  # The official TransformerBasicHead applies softmax in eval mode: the golden "logits" are probabilities.
  np.testing.assert_allclose(jax.nn.softmax(logits, axis=-1), io["logits"], rtol=RTOL, atol=ATOL)


# ---- parameter counts ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,count", [
    ("maskfeat_mvit_s_16x4_pt", 36_253_356),
    ("mvit_s_16x4_ft", 36_475_120),
    pytest.param("maskfeat_mvit_l_16x4_pt", 217_247_580, marks=pytest.mark.slow),  # 48 blocks: ~10 s to trace
    pytest.param("mvit_l_16x4_ft", 217_578_064, marks=pytest.mark.slow),
    ("maskfeat_vit_b_pt", 85_882_476),
    ("mvitv2_s_16x4", 34_537_744),  # supervised MViTv2-S (README: 34.5 M), DIM_MUL_IN_ATT layout
])
def test_param_counts(name, count):
  assert factory.count_params(factory.param_shapes(_config(name))) == count


def _listing_sections(path):
  """The official MViT-S state-dict listing -> {'pt': {key: shape}, 'ft': {key: shape}} (state-dict order).

  `path` is ../shared/spec/mvit_s_state_dict.txt: every key and shape of MaskMViT-S (PT) and MViT-S (FT).
  """
  sections, current = {}, None
  for line in path.read_text().splitlines():
    if line.startswith("# MaskMViT"):
      current = sections.setdefault("pt", {})
    elif line.startswith("# MViT"):
      current = sections.setdefault("ft", {})
    elif current is not None and "\t" in line and not line.startswith("#"):
      key, shape = line.split("\t")
      current[key] = tuple(int(v) for v in shape.strip("[]").split(",") if v.strip())
  return sections


@pytest.mark.parametrize("name,section", [("maskfeat_mvit_s_16x4_pt", "pt"), ("mvit_s_16x4_ft", "ft")])
def test_s_state_dict_listing_matches_spec(golden_dir, name, section):
  """Every key and shape of the official MViT-S state dicts (../shared/spec/mvit_s_state_dict.txt), in order,
  from our params (via export)."""
  listing = golden_dir.parent / "spec" / "mvit_s_state_dict.txt"
  if not listing.is_file():
    pytest.skip(f"{listing} not available")
  want = _listing_sections(listing)[section]
  assert len(want) == {"pt": 400, "ft": 397}[section]
  config = _config(name)
  zeros = jax.tree_util.tree_map(lambda s: np.broadcast_to(np.float32(0), s.shape), factory.param_shapes(config))
  exported = {k: tuple(v.shape) for k, v in slowfast.export_official(config, zeros).items()}
  assert exported == want


def test_registry_names_share_one_key_set_and_import_without_jax():
  keys = {name: set(layouts.get_model_config(name).keys()) for name in layouts.MODEL_NAMES}
  first = keys[layouts.MODEL_NAMES[0]]
  assert all(k == first for k in keys.values()), {n: k ^ first for n, k in keys.items() if k != first}
  assert set(base_config().model.keys()) == first
  code = ("import sys; from maskfeat_jax.models import layouts; from maskfeat_jax import config as config_lib; "
          "config_lib.base_config(); assert 'jax' not in sys.modules, 'jax imported'")
  subprocess.run([sys.executable, "-c", code], check=True)
  with pytest.raises(KeyError, match="maskfeat_mvit_tiny"):
    layouts.get_model_config("mvit_s")


def test_arch_spec_matches_spec_table():
  """MViT-S schedule of `slowfast/models/video_model_builder.py::MViT.__init__` (widths, heads, strides,
  rel-pos lengths) for PT and FT."""
  pt = arch.arch_spec(layouts.get_model_config("maskfeat_mvit_s_16x4_pt"))
  ft = arch.arch_spec(layouts.get_model_config("mvit_s_16x4_ft"))
  assert [(b.dim, b.dim_out, b.num_heads) for b in pt.blocks[:4]] == [
      (96, 192, 1), (192, 192, 2), (192, 384, 2), (384, 384, 4)]
  assert (pt.blocks[13].dim, pt.blocks[13].dim_out, pt.blocks[14].num_heads) == (384, 768, 8)
  assert [b.kv_stride for b in pt.blocks[:4]] == [(1, 8, 8), (1, 4, 4), (1, 4, 4), (1, 2, 2)]
  assert [b.rel_pos_hw_len for b in pt.blocks] == [111, 55, 55] + [27] * 13
  assert [b.rel_pos_hw_len for b in ft.blocks] == [111, 55, 55] + [27] * 12 + [13]
  assert ft.blocks[14].kv_stride == (1, 1, 1) and ft.blocks[14].kv_kernel == (3, 3, 3)
  assert pt.blocks[-1].out_thw == (8, 14, 14) and ft.blocks[-1].out_thw == (8, 7, 7)
  assert pt.feature_stride(15) == (2, 16, 16)


# ---- behaviour (on a 2-block "micro" MViT: 4x32x32 clips, every block feature, fast to compile) ---------
# Block 0 widens 16 -> 32 in its MLP (proj skip); block 1 has two heads, Q stride (1,2,2) with the pooled
# max-pool skip, KV stride (1,2,2), rel-pos between 4x4 queries and 2x2 keys.
MICRO = dict(depth=2, dim_mul=((1, 2.0),), head_mul=((1, 2.0),), input_size=(4, 32, 32),
             pool_q_stride=((0, 1, 1, 1), (1, 1, 2, 2)), pretrain_depth=(1,))


def _micro(name="maskfeat_mvit_tiny", **overrides):
  c = _config(name, **{**MICRO, **overrides})
  c.mask.grid = (2, 2, 2)
  return c


@pytest.fixture(scope="module")
def micro():
  """(config, model, unboxed variables, jitted apply, x uint8 [2,4,32,32,3], mask [2,2,2,2])."""
  config = _micro()
  model = factory.build_model(config)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)
  mask = np.array([[[[1, 0], [0, 1]], [[0, 0], [1, 1]]], [[[0, 1], [1, 1]], [[0, 0], [0, 0]]]], np.uint8)
  variables = nn.unbox(jax.jit(model.init)(jax.random.key(0), x, mask))
  return config, model, variables, jax.jit(model.apply), x, mask


@pytest.fixture(scope="module")
def micro_ft(micro):
  config = _micro("mvit_tiny_ft", dropout_rate=0.5)
  model = factory.build_model(config)
  variables = jax.jit(model.init)(jax.random.key(0), micro[4])
  return config, model, variables


@pytest.fixture(scope="module")
def micro_grads(micro):
  """(loss_fn(params), loss, grads) of the micro model (no remat, eval mode)."""
  config, model, variables, _, x, mask = micro

  def loss_fn(params):
    return model.apply({"params": params}, x, mask)["loss"]

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(variables["params"])
  return loss_fn, loss, grads


def test_maskfeat_outputs_and_loss_definition(micro):
  config, model, variables, apply, x, mask = micro
  out = apply(variables, x, mask)
  assert out["pred"].shape == out["target"].shape == (2, 2 * 4 * 4, 27)
  # Token mask = mask grid upsampled x2 spatially on the 4x4 prediction grid, (t,h,w) order.
  want = np.repeat(np.repeat(mask, 2, axis=2), 2, axis=3).reshape(2, -1).astype(bool)
  np.testing.assert_array_equal(out["token_mask"], want)
  pred, target = np.asarray(out["pred"]), np.asarray(out["target"])
  np.testing.assert_allclose(out["loss"], np.mean((pred[want] - target[want]) ** 2), rtol=1e-5)
  # HOG targets: unit-norm 9-bin histograms per (channel, cell) -> mean square 1/9 on random pixels.
  np.testing.assert_allclose(np.mean(target ** 2), 1 / 9, rtol=1e-3)
  # uint8 and float inputs on the 0-255 scale are the same thing.
  out_f = apply(variables, x.astype(np.float32), mask)
  np.testing.assert_array_equal(out_f["pred"], out["pred"])


def test_mask_token_replaces_masked_patches(micro):
  config, model, variables, apply, x, mask = micro
  all_masked = np.ones_like(mask)
  a = apply(variables, x, all_masked)["pred"]
  b = apply(variables, np.ascontiguousarray(x[::-1]), all_masked)["pred"]
  # With every patch embedding replaced by the mask token the pixels no longer reach the predictions.
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  none = apply(variables, x, np.zeros_like(mask))
  assert np.abs(np.asarray(none["pred"]) - np.asarray(a)).max() > 1e-4
  assert float(none["loss"]) == 0.0 and not np.any(none["token_mask"])


def test_loss_gradient_matches_finite_differences(micro, micro_grads):
  params = micro[2]["params"]
  loss_fn, _, grads = micro_grads
  for path in (("mask_token",), ("pred_head", "projections_0", "kernel"), ("patch_embed", "proj", "kernel"),
               ("blocks_0", "attn", "rel_pos_h"), ("blocks_1", "attn", "rel_pos_t"),
               ("blocks_1", "attn", "pool_k", "kernel"), ("blocks_0", "proj", "kernel"), ("cls_token",)):
    g = grads
    for k in path:
      g = g[k]
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, path
  # Directional derivative along a random direction vs a central difference.
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  direction = jax.tree_util.tree_unflatten(
      treedef, [jax.random.normal(k, l.shape) * 0.01 for k, l in zip(keys, leaves)])
  analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree_util.tree_leaves(grads),
                                                jax.tree_util.tree_leaves(direction)))
  # A 2e-5 step on params of scale 0.02: small against the curvature, large against float32 rounding
  # (the central difference converges to the analytic value: 0.05 -> 23% off, 0.01 -> 8%, 0.001 -> 0.5%).
  eps = 0.002
  shifted = jax.jit(jax.vmap(
      lambda s: loss_fn(jax.tree_util.tree_map(lambda p, d: p + s * d, params, direction))))
  lo, hi = shifted(jnp.array([-eps, eps]))
  np.testing.assert_allclose(analytic, (hi - lo) / (2 * eps), rtol=0.03)


def test_remat_policies_and_drop_path(micro, micro_grads):
  config, model, variables, apply, x, mask = micro
  _, base_loss, base_grads = micro_grads
  params = variables["params"]
  for policy in ("full", "dots"):
    m = factory.build_model(_micro(remat_policy=policy))
    loss, grads = jax.jit(jax.value_and_grad(lambda p: m.apply({"params": p}, x, mask)["loss"]))(params)
    np.testing.assert_allclose(loss, base_loss, rtol=1e-6)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), grads,
                           base_grads)
  # Drop path: a no-op unless train=True; with train=True it needs the 'dropout' rng and changes the loss.
  dp = factory.build_model(_micro(drop_path_rate=0.5))
  both = jax.jit(lambda v, r: (dp.apply(v, x, mask)["loss"],
                               dp.apply(v, x, mask, train=True, rngs={"dropout": r})["loss"]))
  eval_loss, train_loss = both(variables, jax.random.key(3))
  np.testing.assert_allclose(eval_loss, base_loss, rtol=1e-6)
  assert abs(float(train_loss) - float(base_loss)) > 1e-6
  with pytest.raises(Exception, match="dropout"):
    jax.eval_shape(lambda: dp.apply(variables, x, mask, train=True))


def test_bf16_compute_keeps_float32_params(micro):
  config, model, variables, apply, x, mask = micro
  m16 = factory.build_model(_micro(dtype="bfloat16"))
  shapes = jax.eval_shape(lambda: m16.init(jax.random.key(0), x, mask))
  assert {l.dtype for l in jax.tree_util.tree_leaves(nn.unbox(shapes))} == {jnp.dtype(jnp.float32)}
  out16 = jax.jit(m16.apply)(variables, x, mask)
  out32 = apply(variables, x, mask)
  assert out16["pred"].dtype == jnp.float32
  np.testing.assert_allclose(out16["loss"], out32["loss"], rtol=0.05)
  np.testing.assert_array_equal(out16["target"], out32["target"])  # HOG always from raw float32


def test_logical_axis_names_on_params():
  c = _micro("mvit_tiny_ft")
  model = factory.build_model(c)
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), *factory.example_inputs(c)))["params"]
  specs = nn.get_partition_spec(boxed)
  assert tuple(specs["blocks_1"]["attn"]["qkv"]["kernel"]) == ("embed", "qkv")
  assert tuple(specs["blocks_1"]["mlp"]["fc1"]["kernel"]) == ("embed", "mlp")
  assert tuple(specs["blocks_1"]["attn"]["rel_pos_h"]) == (None, "kv")
  assert tuple(specs["head"]["projection"]["kernel"]) == ("embed", "classes")
  assert tuple(specs["patch_embed"]["proj"]["kernel"]) == (None, None, None, None, "embed")
  # Every leaf is boxed (named), so sharding rules cover the whole tree.
  leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda l: isinstance(l, nn.Partitioned))
  assert all(isinstance(l, nn.Partitioned) for l in leaves)


def test_official_init_values(micro, micro_ft):
  p = nn.unbox(micro_ft[2])["params"]
  np.testing.assert_array_equal(p["blocks_0"]["attn"]["qkv"]["bias"], np.float32(0.02))  # Linear bias
  np.testing.assert_array_equal(p["blocks_0"]["norm1"]["bias"], np.float32(0.02))  # LayerNorm bias
  np.testing.assert_array_equal(p["blocks_0"]["norm1"]["scale"], 1.0)
  np.testing.assert_allclose(p["head"]["projection"]["bias"], 0.02 * 0.001)  # head init scale 0.001
  assert abs(np.std(p["blocks_1"]["mlp"]["fc1"]["kernel"]) - 0.02) < 0.002
  assert abs(np.std(p["blocks_1"]["attn"]["rel_pos_h"]) - 0.02) < 0.006
  assert abs(np.std(p["head"]["projection"]["kernel"]) - 0.02e-3) < 0.6e-5
  bound = 1 / np.sqrt(3 * 3 * 7 * 7)  # PyTorch's default conv bias init
  b = p["patch_embed"]["proj"]["bias"]
  assert np.all(np.abs(b) <= bound) and np.abs(b).max() > bound / 4
  pp = micro[2]["params"]
  np.testing.assert_array_equal(pp["pred_head"]["projections_0"]["bias"], 0.0)  # MSSeparateHead: bias 0
  np.testing.assert_array_equal(pp["pred_head"]["transforms_0"]["bias"], 0.0)
  assert abs(np.std(pp["mask_token"]) - 0.02) < 0.015


def test_features_and_classifier_dropout(micro, micro_ft):
  config, model, variables, apply, x, mask = micro
  feats = jax.jit(lambda v, x: model.apply(v, x, method="features"))(variables, x)
  assert feats.shape == (2, 32)
  c, clf, v = micro_ft
  assert jax.eval_shape(lambda: clf.apply(v, x, method="features")).shape == (2, 32)
  run = jax.jit(clf.apply, static_argnames="train")
  a = run(v, x)
  np.testing.assert_array_equal(a, run(v, x, rngs={"dropout": jax.random.key(0)}))  # eval: no dropout
  b = run(v, x, train=True, rngs={"dropout": jax.random.key(0)})
  assert a.shape == (2, 10) and np.abs(np.asarray(a) - np.asarray(b)).max() > 0


def test_shape_errors_name_the_config(micro):
  config, model, variables, apply, x, mask = micro
  with pytest.raises(ValueError, match="input_size"):
    jax.eval_shape(lambda: model.apply(variables, x[:, :, :16, :16], mask))
  with pytest.raises(ValueError, match=r"mask temporal size 1"):
    jax.eval_shape(lambda: model.apply(variables, x, mask[:, :1]))
  with pytest.raises(ValueError, match="pretrain_depth"):
    factory.build_model(_micro(pretrain_depth=(2, 1)))
  with pytest.raises(ValueError, match="pool_mode"):
    factory.build_model(_micro(pool_mode="lp"))


def test_multi_depth_heads(micro):
  _, _, _, _, x, mask = micro
  # Patch stride 8: block 0 predicts at stride 8 (one HOG cell per token: 27-d), block 1 at 16 (108-d).
  c = _micro(pretrain_depth=(0, 1), patch_stride=(2, 8, 8))
  model = factory.build_model(c)
  out, _ = jax.jit(model.init_with_output)(jax.random.key(0), x, mask)
  assert out["preds"][0].shape == (2, 2 * 4 * 4, 27) and out["pred"].shape == (2, 2 * 2 * 2, 108)
  assert out["token_masks"][0].sum() == 4 * out["token_mask"].sum()
  np.testing.assert_allclose(out["loss"], out["losses"][0] + out["losses"][1], rtol=1e-6)


@pytest.mark.parametrize("overrides,absent,present", [
    (dict(pool_mode="max"), "pool_q", None),
    (dict(pool_mode="avg", rel_pos_temporal=False), "rel_pos_t", None),
    (dict(use_abs_pos=True, sep_pos_embed=True), None, "pos_embed_temporal"),
    (dict(use_abs_pos=True, cls_embed=False, use_mean_pooling=False), "cls_token", "pos_embed"),
    (dict(dim_mul_in_att=True, residual_pooling=False), None, None),
])
def test_architecture_variants_build_and_run(micro, overrides, absent, present):
  x = micro[4]
  c = _micro("mvit_tiny_ft", **overrides)
  m = factory.build_model(c)
  v = jax.eval_shape(lambda: m.init(jax.random.key(0), x))["params"]
  names = set(v) | set(v["blocks_1"]["attn"])
  assert absent is None or absent not in names
  assert present is None or present in names
  assert jax.eval_shape(lambda p: m.apply({"params": p}, x), v).shape == (2, 10)


def test_pooling_primitives_match_pytorch_semantics():
  x = -1.0 - np.random.default_rng(0).random((1, 1, 4, 4, 1)).astype(np.float32)
  # MaxPool3d pads with -inf: an all-negative input never picks a padded 0.
  got = np.asarray(layers.max_pool3d((1, 3, 3), (1, 2, 2))(x))
  want = np.array([[x[0, 0, max(0, 2 * i - 1):2 * i + 2, max(0, 2 * j - 1):2 * j + 2, 0].max()
                    for j in range(2)] for i in range(2)])
  np.testing.assert_allclose(got[0, 0, :, :, 0], want)
  # AvgPool3d counts the zero padding (count_include_pad=True).
  ones = np.ones((1, 1, 4, 4, 1), np.float32)
  np.testing.assert_allclose(np.asarray(layers.avg_pool3d((1, 3, 3), (1, 2, 2))(ones))[0, 0, 0, 0, 0], 4 / 9)
  # Rel-pos distances: truncating float32 arithmetic of cal_rel_pos_spatial.
  np.testing.assert_array_equal(layers.rel_pos_distance(4, 2), [[2, 0], [3, 1], [4, 2], [5, 3]])
  np.testing.assert_array_equal(layers.rel_pos_distance(3, 2)[:, 0], [1, 2, 3])  # 1.5 ratios truncate
  # Linear resize, align_corners=False with edge clamping == np.interp at the half-pixel sources.
  table = np.random.default_rng(1).normal(size=(27, 3)).astype(np.float32)
  src = np.clip((np.arange(13) + 0.5) * 27 / 13 - 0.5, 0, None)
  want = np.stack([np.interp(src, np.arange(27), table[:, c]) for c in range(3)], axis=1)
  np.testing.assert_allclose(layers.resize_rel_pos(table, 13), want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(layers.resize_rel_pos(jnp.asarray(table), 13), want, rtol=1e-5, atol=1e-6)
