"""The recipe configs carry the official values of spec §5.3–§5.4 (table transcribed below) and load cleanly."""
import importlib.util
import pathlib

import pytest

from maskfeat_jax.config_defaults import base_config
from maskfeat_jax.models import registry

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"

# Spec §5.3: batch per node (clips/images per step), base lr (per that batch), warmup epochs / start lr, epochs,
# cosine end lr, layer decay, drop path, grad clip (0 = none).
TABLE = {
    "k400_mvit_s_16x4_pretrain": dict(batch=32, lr=1e-4, warmup=10, start=1e-6, epochs=300, end=1e-6, ld=1.0,
                                      dp=0.0, clip=0.02, model="maskfeat_mvit_s_16x4_pt"),
    "k400_mvit_l_16x4_pretrain": dict(batch=32, lr=1e-4, warmup=10, start=1e-6, epochs=300, end=1e-6, ld=1.0,
                                      dp=0.0, clip=0.02, model="maskfeat_mvit_l_16x4_pt"),
    # 16 videos x 2 repeated clips = 32 clips per step at 6e-4.
    "k400_mvit_s_16x4_finetune": dict(batch=32, lr=6e-4, warmup=20, start=1e-6, epochs=100, end=1e-6, ld=0.75,
                                      dp=0.1, clip=5.0, model="mvit_s_16x4_ft", num_sample=2),
    "k400_mvit_l_16x4_finetune": dict(batch=16, lr=6e-4, warmup=5, start=1e-8, epochs=75, end=1e-5, ld=0.875,
                                      dp=0.2, clip=5.0, model="mvit_l_16x4_ft", num_sample=1),
    "in1k_vit_b_pretrain": dict(batch=256, lr=2e-4, warmup=30, start=1e-6, epochs=300, end=1e-6, ld=1.0, dp=0.0,
                                clip=0.02, model="maskfeat_vit_b_pt"),
    "in1k_vit_l_pretrain": dict(batch=256, lr=2e-4, warmup=30, start=1e-6, epochs=300, end=1e-6, ld=1.0, dp=0.0,
                                clip=0.02, model="maskfeat_vit_l_pt"),
    "in1k_vit_b_finetune": dict(batch=512, lr=2e-3, warmup=20, start=1e-8, epochs=100, end=1e-6, ld=0.65, dp=0.1,
                                clip=0.0, model="vit_b_ft"),
    "in1k_vit_l_finetune": dict(batch=256, lr=1e-3, warmup=5, start=1e-8, epochs=50, end=1e-6, ld=0.75, dp=0.1,
                                clip=0.0, model="vit_l_ft"),
}


def load(name, arg=None):
  spec = importlib.util.spec_from_file_location(f"cfg_{name}", CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _keys(d, prefix=""):
  out = set()
  for k, v in d.items():
    out.add(prefix + k)
    if isinstance(v, dict):
      out |= _keys(v, prefix + k + ".")
  return out


@pytest.mark.parametrize("name", sorted(TABLE))
def test_recipe_matches_spec_table(name):
  t = TABLE[name]
  c = load(name)
  o = c.optim
  assert c.batch_size == t["batch"] and o.reference_batch == t["batch"]
  assert o.base_lr == pytest.approx(t["lr"])  # at the reference batch the lr is the table's
  assert o.warmup_epochs == t["warmup"] and o.start_lr == pytest.approx(t["start"])
  assert c.epochs == t["epochs"] and o.end_lr == pytest.approx(t["end"])
  assert o.layer_decay == t["ld"] and c.model.drop_path_rate == t["dp"]
  assert o.clip_grad_norm == t["clip"]
  assert (o.weight_decay, o.b1, o.b2, o.eps) == (0.05, 0.9, 0.999, 1e-8)
  assert o.zero_wd_1d and not o.zero_wd_pos_cls  # spec §5.2: cls/mask tokens and rel-pos get wd
  assert c.model.name == t["model"]
  pretrain = name.endswith("pretrain")
  assert c.mode == ("pretrain" if pretrain else "finetune")
  assert c.model.type == ("maskfeat" if pretrain else "classifier")


@pytest.mark.parametrize("name", sorted(TABLE))
def test_recipe_data_mask_and_augment(name):
  c = load(name)
  video = name.startswith("k400")
  pretrain = name.endswith("pretrain")
  d, a = c.data, c.augment
  assert d.crop_size == 224 and d.test_short_side == 256 and d.random_flip and d.use_random_resized_crop
  assert tuple(d.rrc_aspect) == (0.75, 1.3333)
  assert tuple(d.rrc_scale) == ((0.5, 1.0) if pretrain else (0.08, 1.0))
  if video:
    assert (d.name, d.image_mode, d.num_frames, d.sampling_rate, d.target_fps) == ("kinetics400", False, 16, 4, 30)
    assert tuple(d.train_jitter_scales) == (256, 320)
    assert tuple(c.model.pixel_mean) == (0.45,) * 3 and tuple(c.model.pixel_std) == (0.225,) * 3
  else:
    assert d.name == "imagenet2012" and d.image_mode
    assert tuple(c.model.pixel_mean) == registry.IMAGENET_MEAN
  if pretrain:
    assert (c.target.type, c.target.nbins, c.target.cell_size, c.target.gaussian_window) == ("hog", 9, 8, 0)
    expect_mask = ("cube", (8, 7, 7)) if video else ("block", (14, 14))
    assert (c.mask.type, tuple(c.mask.grid), c.mask.ratio) == expect_mask + (0.4,)
    assert not a.randaug and a.erase_prob == 0 and a.mixup_alpha == 0 and a.cutmix_alpha == 0
    assert d.num_sample == 1
  else:
    assert c.mask.type == "none"
    assert a.randaug == ("rand-m7-mstd0.5-inc1" if video else "rand-m9-mstd0.5-inc1")
    assert a.randaug_num_layers == 2 and a.erase_prob == 0.25
    assert (a.mixup_alpha, a.cutmix_alpha, a.mixup_prob, a.switch_prob, a.label_smoothing) == (
        0.8, 1.0, 1.0, 0.5, 0.1)
    assert c.model.num_classes == (400 if video else 1000)
    assert (c.eval.num_clips, c.eval.num_crops) == ((10, 1) if video else (1, 1))
    if video:
      assert d.num_sample == TABLE[name]["num_sample"]


@pytest.mark.parametrize("name", sorted(TABLE))
@pytest.mark.parametrize("arg", [None, "local"])
def test_recipe_is_consistent_and_complete(name, arg):
  c = load(name, arg)
  base = base_config().to_dict()
  base_keys = {k for k in _keys(base) if not k.startswith("model.")}
  keys = _keys(c.to_dict())
  assert base_keys <= keys and not {k for k in keys - base_keys if not k.startswith("model.")}
  assert _keys(c.model.to_dict()) == _keys(registry.model_schema().to_dict())
  # The model is built for the data it is fed.
  frames = 1 if c.data.image_mode else c.data.num_frames
  assert tuple(c.model.input_size) == (frames, c.data.crop_size, c.data.crop_size)
  if c.mode == "pretrain":
    patch = c.model.patch_stride
    token_grid = tuple(n // s for n, s in zip(c.model.input_size, patch))
    grid = tuple(c.mask.grid)
    if c.data.image_mode:
      assert grid == token_grid[1:]
    else:
      assert grid[0] == token_grid[0] and all(t % g == 0 for t, g in zip(token_grid[1:], grid[1:]))
  assert c.data.num_sample >= 1 and c.batch_size % c.data.num_sample == 0
  if c.augment.randaug:
    from maskfeat_jax.data import augment
    augment.parse_rand_augment_spec(c.augment.randaug, c.augment.randaug_num_layers)


def test_linear_scaling_gives_the_table_lr():
  from maskfeat_jax.train import optim
  c = load("k400_mvit_s_16x4_finetune")
  s = optim.resolve_schedule(c, train_size=240_000)
  assert s.base_lr == pytest.approx(6e-4)
  c.batch_size = 64  # two nodes
  assert optim.resolve_schedule(c, train_size=240_000).base_lr == pytest.approx(1.2e-3)


def test_unknown_variant_is_an_error():
  with pytest.raises(ValueError, match="k400_mvit_s_16x4_finetune.py:huge"):
    load("k400_mvit_s_16x4_finetune", "huge")
