"""The README's main job: a small MaskFeat MViT on the embedded synthetic motion dataset, on a CPU.

  python -m maskfeat_jax.main --config=configs/demo.py --workdir=/tmp/maskfeat_demo

Pre-trains `maskfeat_mvit_tiny` with HOG targets, fine-tunes `mvit_tiny_ft` from it and evaluates it
(multi-view), then runs the same fine-tuning from scratch (same recipe, same step budget) and prints both
accuracies side by side. One config tree: `config.demo.pretrain` / `config.demo.finetune` hold what the two
phases change (maskfeat_jax.demo.phase_config derives the phase configs from it).

Variants: `configs/demo.py` (the full demo, <= 10 minutes on a 2-core CPU) and `configs/demo.py:tiny`
(a few steps of each phase: a smoke test of the whole path).
"""
import ml_collections

from maskfeat_jax.config import base_config


def get_config(arg=None):
  c = base_config()
  c.mode = "demo"
  c.seed = 0

  # Data: synthetic_motion (32 frames of 64x80, 8 motion classes, 400 train / 160 test clips), read as
  # 8 frames (every 4th: the whole clip) at 32x32 -- the size a 2-core CPU trains in minutes.
  c.data.name = "synthetic_motion"
  c.data.num_frames = 8
  c.data.sampling_rate = 4
  c.data.crop_size = 32
  c.data.train_jitter_scales = (32, 40)
  c.data.test_short_side = 32
  c.data.rrc_scale = (0.5, 1.0)
  # The classes are motion directions: a horizontal flip would turn move_right into move_left (and
  # clockwise into counter-clockwise), so this dataset is trained without flips.
  c.data.random_flip = False
  c.data.num_workers = 0
  c.eval.num_clips = 2
  c.eval.num_crops = 1
  c.eval.batch_size = 16

  # The tiny MaskMViT (depth 5, width 16) on 8x32x32 clips: token grid 4x8x8, prediction grid 4x2x2 at
  # stride 16; cube masks on a 4x2x2 grid (16-pixel units: one prediction token each).
  small = dict(input_size=(8, 32, 32))
  c.model.update(small)
  c.mask.grid = (4, 2, 2)
  c.mask.ratio = 0.4

  c.batch_size = 8
  c.log_every_steps = 100
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 1
  c.log.tensorboard = True

  # Phase 1: MaskFeat pre-training: the official video recipe (SlowFast
  # configs/masked_ssl/k400_MVITv2_S_16x4_MaskFeat_PT.yaml: AdamW, wd 0.05, clip 0.02), scaled down.
  # lr 5e-4: a larger lr flattens the HOG loss early and the features transfer worse to fine-tuning
  # (trials: BENCHMARKS.md, "Demo recipe trials").
  pt = ml_collections.ConfigDict()
  pt.total_steps = 1500
  pt.viz_every_steps = 500  # WORKDIR/pretrain/pictures/prediction_<step>.png + curves.png (reads params only)
  pt.optim = ml_collections.ConfigDict(dict(
      base_lr=5e-4, reference_batch=8, warmup_steps=100, start_lr=1e-5, end_lr=1e-5,
      clip_grad_norm=0.02, weight_decay=0.05, layer_decay=1.0))
  c.demo.pretrain = pt

  # Phase 2: fine-tuning: the official video recipe (configs/masked_ssl/k400_MVITv2_S_16x4_FT.yaml) scaled
  # to a depth-5 model on this dataset; used both from the pre-trained weights and from scratch, same recipe
  # and budget (trials behind the values: BENCHMARKS.md, "Demo recipe trials"):
  #  - 1,600 steps: fewer leave fine-tuning unconverged (its accuracy then swings widely across seeds).
  #  - layer decay 0.9 (0.75 over 16 blocks officially), drop path 0.1, label smoothing 0.1, clip 5,
  #    head init scale 1.0 (0.001 officially: the tiny head then needs far more steps), lr 3e-4 (larger
  #    lrs learn worse).
  #  - RandAugment m3 (m7 officially), 1 op per clip (2), the same op on every frame; only the geometric and
  #    colour ops (augment.randaug_ops): the histogram ops (AutoContrast, Equalize, Invert, Posterize,
  #    Solarize, SolarizeAdd) turn these dark frames' faint ground into full-range noise or flip the bright
  #    shapes, which destroys the motion signal.
  #  - random erasing 0.1 (0.25), mixup 0.8 / cutmix 1.0 at batch probability 0.1 (1.0), switch 0.5.
  #  The tiny model underfits, so these regularising augmentations do not help it; they are on so that the
  #  demo runs the whole recipe.
  ft = ml_collections.ConfigDict()
  ft.total_steps = 1600
  ft.model = ml_collections.ConfigDict(dict(name="mvit_tiny_ft", num_classes=8, drop_path_rate=0.1,
                                            head_init_scale=1.0, **small))
  ft.optim = ml_collections.ConfigDict(dict(
      base_lr=3e-4, reference_batch=8, warmup_steps=50, start_lr=1e-5, end_lr=1e-5,
      clip_grad_norm=5.0, weight_decay=0.05, layer_decay=0.9))
  ft.augment = ml_collections.ConfigDict(dict(
      randaug="rand-m3-mstd0.5-inc1", randaug_num_layers=1,
      randaug_ops=("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
                   "Color", "Contrast", "Brightness", "Sharpness"),
      erase_prob=0.1, mixup_alpha=0.8, cutmix_alpha=1.0, mixup_prob=0.1, switch_prob=0.5,
      label_smoothing=0.1))
  c.demo.finetune = ft

  if arg == "tiny":  # smoke test of the whole path: a few steps per phase
    c.batch_size = 4
    c.log_every_steps = 2
    c.checkpoint_every_steps = 3
    c.eval.num_clips = 1
    c.eval.batch_size = 8
    pt.total_steps = 3
    pt.optim.warmup_steps = 1
    pt.viz_every_steps = 0  # no pictures in the smoke test (tests/test_visualize.py runs the hook)
    ft.total_steps = 3
    ft.optim.warmup_steps = 1
  elif arg not in (None, ""):
    raise ValueError(f"configs/demo.py: unknown variant {arg!r}; use configs/demo.py or configs/demo.py:tiny.")
  return c
