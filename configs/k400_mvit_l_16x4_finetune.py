r"""Fine-tuning of a MaskFeat MViT-L 16x4 on Kinetics-400 (official k400_MVITv2_L_16x4_FT.yaml; spec §5.3–§5.4).

  python -m maskfeat_jax.main --config=configs/k400_mvit_l_16x4_finetune.py \
      --config.init_from=/path/to/k400_MVIT_L_MaskFeat_PT_epoch_00800.pyth --workdir=/tmp/ft_l

Recipe (per 8-GPU node; lr = base_lr x batch_size / reference_batch): 16 clips per step (no repeated
augmentation), AdamW (0.9, 0.999) wd 0.05, base lr 6e-4 per 16 clips, 5 warmup epochs from 1e-8, cosine to
1e-5 over 75 epochs, layer decay 0.875, drop path 0.2, gradient clipping 5.0; RandAugment rand-m7-mstd0.5-inc1
(2 ops, same for all frames), random erasing p 0.25 (pixel, same box on all frames), mixup 0.8 / cutmix 1.0
(switch 0.5), label smoothing 0.1. 16 frames at stride 4, short side 256, RandomResizedCrop area (0.08, 1)
to 224, flip. Test: 10 temporal clips x 1 centre crop. README: 84.3% top-1 (10 x 1 views) from the
800-epoch pre-training.

`:local`: the recipe on the tiny MViT (16x64²) and synthetic_motion, batch 8, 2 clips x 1 crop at test.
"""
from maskfeat_jax import recipes
from maskfeat_jax.config_defaults import base_config
from maskfeat_jax.models import registry


def _local(c):
  """Tiny MViT on synthetic_motion (64x80 clips): runs on a CPU."""
  c.model = registry.get_model_config("mvit_tiny_ft")
  c.model.num_classes = 0  # taken from the dataset (synthetic_motion: 8)
  c.model.drop_path_rate = 0.2
  c.data.name = "synthetic_motion"
  c.data.sampling_rate = 2  # 16 frames spanning the 32-frame synthetic clips
  c.data.crop_size = 64
  c.data.train_jitter_scales = (64, 80)
  c.data.test_short_side = 64
  c.data.num_workers = 0
  c.batch_size = 8
  c.epochs = 0.0
  c.total_steps = 300
  c.optim.warmup_epochs = 0.0
  c.optim.warmup_steps = 30
  c.log_every_steps = 20
  c.checkpoint_every_steps = 100
  c.eval.num_clips, c.eval.num_crops, c.eval.batch_size = 2, 1, 8


def get_config(arg=None):
  c = base_config()
  c.mode = "finetune"
  c.model = registry.get_model_config("mvit_l_16x4_ft")
  c.model.num_classes = 400
  c.model.drop_path_rate = 0.2
  c.mask.type = "none"
  recipes.kinetics_clips(c, rrc_scale=(0.08, 1.0), num_sample=1)
  recipes.finetune_augment(c, "rand-m7-mstd0.5-inc1")
  c.batch_size = 16
  c.epochs = 75.0
  o = c.optim
  o.base_lr, o.reference_batch = 6e-4, 16
  o.warmup_epochs, o.start_lr, o.end_lr = 5.0, 1e-8, 1e-5
  o.weight_decay, o.b1, o.b2, o.eps = 0.05, 0.9, 0.999, 1e-8
  o.clip_grad_norm = 5.0
  o.layer_decay = 0.875
  o.zero_wd_1d, o.zero_wd_pos_cls = True, False
  c.eval.num_clips, c.eval.num_crops = 10, 1
  if arg == "local":
    _local(c)
  elif arg:
    raise ValueError(f"configs/k400_mvit_l_16x4_finetune.py:{arg}: unknown variant (known: '', 'local').")
  return c
