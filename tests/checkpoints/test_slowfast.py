"""Checkpoint conversion: torch-free .pyth reader, cfg -> config, key mapping errors, PT -> FT, export, CLI."""
import io
import pickle
import zipfile

import flax.linen as nn
import jax
import numpy as np
import pytest
import yaml

from maskfeat_jax.checkpoints import pyth
from maskfeat_jax.checkpoints import slowfast
from maskfeat_jax.checkpoints import transfer
from maskfeat_jax.config import base_config
from maskfeat_jax.models import factory
from maskfeat_jax.models import layers
from maskfeat_jax.models import layouts

GOLDEN = ["maskmvit_tiny_pt", "mvit_tiny_ft", "mvitv2_tiny_ft_dim_mul_in_att", "vit_tiny_image_pt"]


@pytest.mark.parametrize("name", GOLDEN)
def test_pyth_reader_matches_state_dict_npz(golden_dir, name):
  ckpt = pyth.read_pyth(golden_dir / f"{name}.pyth")
  with np.load(golden_dir / f"{name}_state_dict.npz") as npz:
    want = {k: npz[k] for k in npz.files}
  got = ckpt["model_state"]
  assert list(got) == list(want)  # same keys, same (state-dict) order
  for k in want:
    assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  assert isinstance(ckpt["cfg"], str) and "MVIT" in ckpt["cfg"]
  assert "optimizer_state" not in ckpt  # never materialised


def test_npz_with_sibling_config_equals_pyth(golden_dir):
  c1, v1 = slowfast.load_official_checkpoint(golden_dir / "maskmvit_tiny_pt.pyth")
  c2, v2 = slowfast.load_official_checkpoint(golden_dir / "maskmvit_tiny_pt_state_dict.npz")
  assert c1.model.to_dict() == c2.model.to_dict()
  jax.tree_util.tree_map(np.testing.assert_array_equal, v1, v2)


def test_config_from_stored_cfg(golden_dir):
  pt, _ = slowfast.load_official_checkpoint(golden_dir / "maskmvit_tiny_pt.pyth")
  m = pt.model
  assert (m.type, m.depth, m.embed_dim, m.num_heads, m.input_size) == ("maskfeat", 5, 16, 1, (8, 64, 64))
  assert m.pretrain_depth == (4,) and m.pool_kv_stride_adaptive == (1, 4, 4)
  assert m.dim_mul == ((1, 2.0), (3, 2.0), (4, 2.0)) and not m.dim_mul_in_att
  assert tuple(pt.mask.grid) == (4, 2, 2) and pt.mask.type == "cube" and pt.target.type == "hog"
  assert (pt.data.num_frames, pt.data.crop_size) == (8, 64)
  vit, _ = slowfast.load_official_checkpoint(golden_dir / "vit_tiny_image_pt.pyth")
  assert vit.model.patch_2d and vit.model.patch_kernel == (1, 16, 16) and vit.model.use_abs_pos
  assert vit.model.pixel_mean == (0.485, 0.456, 0.406) and tuple(vit.mask.grid) == (4, 4)
  ft, _ = slowfast.load_official_checkpoint(golden_dir / "mvitv2_tiny_ft_dim_mul_in_att.pyth")
  assert (ft.model.type, ft.model.num_classes, ft.model.dim_mul_in_att) == ("classifier", 10, True)


def test_unsupported_cfg_settings_are_named(golden_dir):
  cfg = yaml.safe_load((golden_dir / "mvit_tiny_ft_config.yaml").read_text())
  cfg["MVIT"]["POOL_FIRST"] = True
  cfg["MVIT"]["SEPARATE_QKV"] = True
  with pytest.raises(ValueError, match=r"MVIT.POOL_FIRST.*MVIT.SEPARATE_QKV"):
    slowfast.config_from_cfg(cfg)


def test_unmatched_missing_and_misshaped_keys_are_listed(golden_dir):
  config, _ = slowfast.load_official_checkpoint(golden_dir / "mvit_tiny_ft.pyth")
  with np.load(golden_dir / "mvit_tiny_ft_state_dict.npz") as npz:
    state = {k: npz[k] for k in npz.files}
  bad = dict(state)
  bad["blocks.0.attn.extra.weight"] = np.zeros((4, 4), np.float32)
  bad["decoder.fc.bias"] = np.zeros((3,), np.float32)
  del bad["blocks.1.mlp.fc1.bias"]
  del bad["head.projection.weight"]
  bad["blocks.2.attn.rel_pos_h"] = np.zeros((9, 16), np.float32)
  with pytest.raises(ValueError) as err:
    slowfast.convert_state_dict(bad, config)
  msg = str(err.value)
  for needle in ("2 checkpoint key(s) match no model parameter", "blocks.0.attn.extra.weight",
                 "decoder.fc.bias", "2 model parameter(s) missing", "blocks_1/mlp/fc1/bias",
                 "head/projection/kernel", "blocks.2.attn.rel_pos_h (9, 16)", "expects (15, 16)"):
    assert needle in msg, (needle, msg)
  # A fine-tuning state dict does not silently load into the pre-training layout.
  pt_config, _ = slowfast.load_official_checkpoint(golden_dir / "maskmvit_tiny_pt.pyth")
  with pytest.raises(ValueError, match=r"match no model parameter: norm.weight.*\n.*missing.*pred_head/"):
    slowfast.convert_state_dict(state | {"mask_token": np.zeros((1, 1, 16), np.float32)}, pt_config)


@pytest.mark.parametrize("name", GOLDEN)
def test_export_round_trips_to_the_official_state_dict(golden_dir, name):
  config, variables = slowfast.load_official_checkpoint(golden_dir / f"{name}.pyth")
  exported = slowfast.export_official(config, variables["params"])
  with np.load(golden_dir / f"{name}_state_dict.npz") as npz:
    assert sorted(exported) == sorted(npz.files)
    for k in npz.files:
      np.testing.assert_array_equal(exported[k], npz[k], err_msg=k)


def _ft_pair():
  """A depth-6 tiny MaskFeat PT layout whose FT layout shortens block 5's rel-pos tables (7 -> 3)."""
  c = base_config()
  c.model = layouts.get_model_config("maskfeat_mvit_tiny")
  c.model.depth = 6
  c.model.dim_mul = c.model.head_mul = ((1, 2.0), (3, 2.0), (4, 2.0))
  c.model.pool_q_stride = tuple((i, 1, 2, 2) if i in (1, 3) else (i, 1, 1, 1) for i in range(6))
  c.model.pretrain_depth = (5,)
  c.model.input_size = (4, 64, 64)
  c.mask.grid = (2, 2, 2)
  return c, transfer.finetune_config(c, num_classes=7)


def test_finetune_config_adds_the_last_stage_stride():
  pt, ft = _ft_pair()
  assert dict((e[0], e[1:]) for e in ft.model.pool_q_stride)[4] == (1, 2, 2)
  assert (ft.model.type, ft.model.num_classes) == ("classifier", 7)
  s = transfer.finetune_config(_s_pt(), 400)
  assert factory.count_params(factory.param_shapes(s)) == 36_475_120  # = the official MViT-S FT layout


def _s_pt():
  c = base_config()
  c.model = layouts.get_model_config("maskfeat_mvit_s_16x4_pt")
  return c


def test_pretrain_to_finetune_interpolates_rel_pos_and_keeps_head():
  pt_cfg, ft_cfg = _ft_pair()
  pt_model, ft_model = factory.build_model(pt_cfg), factory.build_model(ft_cfg)
  # Random values on the shapes (no init compile needed): the function only moves and resamples arrays.
  rng = np.random.default_rng(0)
  fill = lambda s: rng.normal(size=s.shape).astype(np.float32)  # pylint: disable=unnecessary-lambda-assignment
  pt = jax.tree_util.tree_map(fill, factory.param_shapes(pt_cfg, pt_model))
  ft_shapes = jax.eval_shape(lambda: ft_model.init(jax.random.key(1), *factory.example_inputs(ft_cfg)))
  ft_boxed = jax.tree_util.tree_map(fill, ft_shapes["params"])
  out = transfer.pretrain_to_finetune(pt, ft_boxed)
  # Same structure and logical boxing as the fine-tuning tree.
  assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(ft_boxed)
  out = nn.unbox(out)
  ft = nn.unbox(ft_boxed)
  assert pt["blocks_5"]["attn"]["rel_pos_h"].shape == (7, 16)
  assert out["blocks_5"]["attn"]["rel_pos_h"].shape == (3, 16)
  src = pt["blocks_5"]["attn"]["rel_pos_w"]
  pos = np.clip((np.arange(3) + 0.5) * 7 / 3 - 0.5, 0, None)
  want = np.stack([np.interp(pos, np.arange(7), src[:, c]) for c in range(16)], axis=1)
  # float32 resampling (as torch) vs a float64 reference.
  np.testing.assert_allclose(out["blocks_5"]["attn"]["rel_pos_w"], want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out["blocks_3"]["attn"]["qkv"]["kernel"], pt["blocks_3"]["attn"]["qkv"]["kernel"])
  np.testing.assert_array_equal(out["head"]["projection"]["kernel"], ft["head"]["projection"]["kernel"])
  assert "mask_token" not in out and "pred_head" not in out
  # Backbone params the fine-tuning model lacks or has in another shape are errors, not silent drops.
  broken = dict(pt)
  broken["blocks_2"] = dict(pt["blocks_2"], mlp={"fc1": pt["blocks_2"]["mlp"]["fc1"]})
  with pytest.raises(ValueError, match="blocks_2/mlp/fc2/kernel: missing"):
    transfer.pretrain_to_finetune(broken, ft)


@pytest.mark.slow
def test_cli_writes_restorable_orbax_checkpoint(golden_dir, tmp_path):
  slowfast.main(["--input", str(golden_dir / "mvit_tiny_ft.pyth"), "--output", str(tmp_path / "ft"),
                "--export_npz", str(tmp_path / "ft.npz")])
  config, variables = slowfast.restore_converted(tmp_path / "ft")
  want_config, want = slowfast.load_official_checkpoint(golden_dir / "mvit_tiny_ft.pyth")
  assert config.to_dict() == want_config.to_dict()  # JSON round trip keeps the tuples
  jax.tree_util.tree_map(np.testing.assert_array_equal, variables, want)  # (parity: tests/models/test_mvit.py)
  with np.load(tmp_path / "ft.npz") as exported, np.load(golden_dir / "mvit_tiny_ft_state_dict.npz") as want:
    assert sorted(exported.files) == sorted(want.files)
  # Pre-training checkpoint into the fine-tuning layout.
  slowfast.main(["--input", str(golden_dir / "maskmvit_tiny_pt.pyth"), "--output", str(tmp_path / "pt2ft"),
                "--finetune_layout", "--num_classes", "5"])
  config, variables = slowfast.restore_converted(tmp_path / "pt2ft")
  assert (config.model.type, config.model.num_classes) == ("classifier", 5)
  shapes = factory.param_shapes(config)
  jax.tree_util.tree_map(lambda s, v: np.testing.assert_equal(tuple(s.shape), tuple(v.shape)), shapes,
                         variables["params"])
  _, pt = slowfast.load_official_checkpoint(golden_dir / "maskmvit_tiny_pt.pyth")
  np.testing.assert_array_equal(variables["params"]["blocks_4"]["mlp"]["fc1"]["kernel"],
                                pt["params"]["blocks_4"]["mlp"]["fc1"]["kernel"])


def test_reader_refuses_arbitrary_objects(tmp_path):
  class Evil:
    def __reduce__(self):
      return (print, ("pwned",))

  path = tmp_path / "evil.pyth"
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("evil/data.pkl", pickle.dumps({"model_state": Evil()}, protocol=2))
  with pytest.raises(pickle.UnpicklingError, match=r"refusing to unpickle (__builtin__|builtins).print"):
    pyth.read_pyth(path)
  not_zip = tmp_path / "legacy.pyth"
  not_zip.write_bytes(io.BytesIO(b"\x80\x02legacy").getvalue())
  with pytest.raises(ValueError, match="not a torch zip checkpoint"):
    pyth.read_pyth(not_zip)


def test_rel_pos_resize_is_identity_at_equal_length():
  table = np.arange(12, dtype=np.float32).reshape(6, 2)
  assert layers.resize_rel_pos(table, 6) is table
  # A linear ramp stays a ramp (away from the clamped edges) when resampled.
  ramp = np.linspace(0, 1, 27, dtype=np.float32)[:, None]
  out = layers.resize_rel_pos(ramp, 13)[:, 0]
  np.testing.assert_allclose(np.diff(out[1:-1]), np.diff(out[1:-1]).mean(), rtol=1e-4)
