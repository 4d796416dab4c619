"""The recipe configs carry the official SlowFast values (table transcribed below) and load cleanly."""
import re

import pytest

from maskfeat_jax.config import base_config
from maskfeat_jax.config import load_config
from maskfeat_jax.data import augment
from maskfeat_jax.models import layouts
from maskfeat_jax.train import optim

# The recipe files, their sizes (the first is the default) and the `,local` variant of each size.
SIZES = {
    "configs/k400_pretrain.py": ("S", "L"),
    "configs/k400_finetune.py": ("S", "L"),
    "configs/in1k_pretrain.py": ("B", "L"),
    "configs/in1k_finetune.py": ("B", "L"),
}
ALL_ARGS = [(f, s + local) for f, sizes in SIZES.items() for s in sizes for local in ("", ",local")]

# Official SlowFast configs/masked_ssl/*.yaml: batch per node (clips/images per step), base lr (per that
# batch), warmup epochs / start lr, epochs, cosine end lr, layer decay, drop path, grad clip (0 = none).
TABLE = {
    # k400_MVITv2_S_16x4_MaskFeat_PT.yaml
    "configs/k400_pretrain.py:S": dict(batch=32, lr=1e-4, warmup=10, start=1e-6, epochs=300, end=1e-6, ld=1.0,
                                       dp=0.0, clip=0.02, model="maskfeat_mvit_s_16x4_pt"),
    # k400_MVITv2_L_16x4_MaskFeat_PT.yaml
    "configs/k400_pretrain.py:L": dict(batch=32, lr=1e-4, warmup=10, start=1e-6, epochs=300, end=1e-6, ld=1.0,
                                       dp=0.0, clip=0.02, model="maskfeat_mvit_l_16x4_pt"),
    # k400_MVITv2_S_16x4_FT.yaml: 16 videos x 2 repeated clips = 32 clips per step at 6e-4.
    "configs/k400_finetune.py:S": dict(batch=32, lr=6e-4, warmup=20, start=1e-6, epochs=100, end=1e-6, ld=0.75,
                                       dp=0.1, clip=5.0, model="mvit_s_16x4_ft", num_sample=2),
    # k400_MVITv2_L_16x4_FT.yaml
    "configs/k400_finetune.py:L": dict(batch=16, lr=6e-4, warmup=5, start=1e-8, epochs=75, end=1e-5, ld=0.875,
                                       dp=0.2, clip=5.0, model="mvit_l_16x4_ft", num_sample=1),
    # in1k_VIT_B_MaskFeat_PT.yaml
    "configs/in1k_pretrain.py:B": dict(batch=256, lr=2e-4, warmup=30, start=1e-6, epochs=300, end=1e-6, ld=1.0,
                                       dp=0.0, clip=0.02, model="maskfeat_vit_b_pt"),
    # in1k_VIT_L_MaskFeat_PT.yaml
    "configs/in1k_pretrain.py:L": dict(batch=256, lr=2e-4, warmup=30, start=1e-6, epochs=300, end=1e-6, ld=1.0,
                                       dp=0.0, clip=0.02, model="maskfeat_vit_l_pt"),
    # in1k_VIT_B_MaskFeat_FT.yaml
    "configs/in1k_finetune.py:B": dict(batch=512, lr=2e-3, warmup=20, start=1e-8, epochs=100, end=1e-6, ld=0.65,
                                       dp=0.1, clip=0.0, model="vit_b_ft"),
    # in1k_VIT_L_MaskFeat_FT.yaml
    "configs/in1k_finetune.py:L": dict(batch=256, lr=1e-3, warmup=5, start=1e-8, epochs=50, end=1e-6, ld=0.75,
                                       dp=0.1, clip=0.0, model="vit_l_ft"),
}


def _keys(d, prefix=""):
  out = set()
  for k, v in d.items():
    out.add(prefix + k)
    if isinstance(v, dict):
      out |= _keys(v, prefix + k + ".")
  return out


def test_table_covers_every_size():
  assert sorted(TABLE) == sorted(f"{f}:{s}" for f, sizes in SIZES.items() for s in sizes)


@pytest.mark.parametrize("spec", sorted(TABLE))
def test_recipe_matches_official_table(spec):
  t = TABLE[spec]
  c = load_config(spec)
  o = c.optim
  assert c.batch_size == t["batch"] and o.reference_batch == t["batch"]
  assert o.base_lr == pytest.approx(t["lr"])  # at the reference batch the lr is the table's
  assert o.warmup_epochs == t["warmup"] and o.start_lr == pytest.approx(t["start"])
  assert c.epochs == t["epochs"] and o.end_lr == pytest.approx(t["end"])
  assert o.layer_decay == t["ld"] and c.model.drop_path_rate == t["dp"]
  assert o.clip_grad_norm == t["clip"]
  assert (o.weight_decay, o.b1, o.b2, o.eps) == (0.05, 0.9, 0.999, 1e-8)
  assert o.zero_wd_1d and not o.zero_wd_pos_cls  # ZERO_DECAY_POS_CLS False: cls/mask tokens and rel-pos get wd
  assert c.model.name == t["model"]
  pretrain = "_pretrain.py" in spec
  assert c.mode == ("pretrain" if pretrain else "finetune")
  assert c.model.type == ("maskfeat" if pretrain else "classifier")


@pytest.mark.parametrize("spec", sorted(TABLE))
def test_recipe_data_mask_and_augment(spec):
  c = load_config(spec)
  video = spec.startswith("configs/k400")
  pretrain = "_pretrain.py" in spec
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
    assert tuple(c.model.pixel_mean) == layouts.IMAGENET_MEAN
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
      assert d.num_sample == TABLE[spec]["num_sample"]


@pytest.mark.parametrize("file,arg", ALL_ARGS)
def test_recipe_is_consistent_and_complete(file, arg):
  """Every size x local combination loads, has the full key set, and its model fits its data and mask."""
  c = load_config(f"{file}:{arg}")
  base = base_config().to_dict()
  base_keys = {k for k in _keys(base) if not k.startswith("model.")}
  keys = _keys(c.to_dict())
  assert base_keys <= keys and not {k for k in keys - base_keys if not k.startswith("model.")}
  assert _keys(c.model.to_dict()) == _keys(layouts.model_schema().to_dict())
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
    augment.parse_rand_augment_spec(c.augment.randaug, c.augment.randaug_num_layers)


@pytest.mark.parametrize("file", sorted(SIZES))
def test_no_arg_is_the_first_size(file):
  assert load_config(file).to_dict() == load_config(f"{file}:{SIZES[file][0]}").to_dict()


def test_linear_scaling_gives_the_table_lr():
  c = load_config("configs/k400_finetune.py:S")
  s = optim.resolve_schedule(c, train_size=240_000)
  assert s.base_lr == pytest.approx(6e-4)
  c.batch_size = 64  # two nodes
  assert optim.resolve_schedule(c, train_size=240_000).base_lr == pytest.approx(1.2e-3)


@pytest.mark.parametrize("file", sorted(SIZES))
@pytest.mark.parametrize("arg", ["huge", "local", "s", "S,L", ",local", "L,local,local"])
def test_unknown_arg_is_an_error(file, arg):
  sizes = SIZES[file]
  known = ", ".join(list(sizes) + [f"{s},local" for s in sizes])  # the message names the file and the known args
  with pytest.raises(ValueError, match=re.escape(f"{file}:{arg}") + ".*" + re.escape(known)):
    load_config(f"{file}:{arg}")
