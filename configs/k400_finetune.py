r"""Fine-tuning of a MaskFeat MViTv2 16x4 on Kinetics-400: size S or L (official SlowFast
configs/masked_ssl/k400_MVITv2_S_16x4_FT.yaml, configs/masked_ssl/k400_MVITv2_L_16x4_FT.yaml).

  python -m maskfeat_jax.main --config=configs/k400_finetune.py:S \
      --config.init_from=/path/to/pretrain_workdir_or_k400_MVIT_S_MaskFeat_PT_epoch_00300.pyth --workdir=/tmp/ft_s
  python -m maskfeat_jax.main --config=configs/k400_finetune.py:L \
      --config.init_from=/path/to/k400_MVIT_L_MaskFeat_PT_epoch_00800.pyth --workdir=/tmp/ft_l
  python -m maskfeat_jax.main --config=configs/k400_finetune.py:S,local \
      --config.init_from=/tmp/pt_s_local --workdir=/tmp/ft_s_local

Args: `S` (the default), `L`, `S,local`, `L,local`.

Recipe (per 8-GPU node; lr = base_lr x batch_size / reference_batch): AdamW (0.9, 0.999) wd 0.05, cosine
schedule, gradient clipping 5.0; RandAugment rand-m7-mstd0.5-inc1 (2 ops, same for all frames), random erasing
p 0.25 (pixel mode, same box on all frames), mixup 0.8 / cutmix 1.0 (switch 0.5, always applied), label
smoothing 0.1, soft-target cross-entropy. 16 frames at stride 4, short side 256, RandomResizedCrop area
(0.08, 1) aspect (3/4, 4/3) to 224, flip. Test: 10 temporal clips x 1 centre crop (short side 256, crop 224),
softmax averaged. Per size:
  S: 16 videos x 2 clips each (repeated augmentation, `data.num_sample` = 2) = 32 clips per step, base lr 6e-4
     per 32 clips, 20 warmup epochs from 1e-6, cosine to 1e-6 over 100 epochs, layer decay 0.75, drop path
     0.1. README: 82.2% top-1 (10 x 1 views) from the 300-epoch pre-training. (Issue #627: the paper's run
     used 200 epochs / 5 warmup epochs; this is the config's 100 / 20.) An epoch is one pass over the videos:
     with num_sample = 2 each video gives 2 of the 32 clips of a step.
  L: 16 clips per step (no repeated augmentation), base lr 6e-4 per 16 clips, 5 warmup epochs from 1e-8,
     cosine to 1e-5 over 75 epochs, layer decay 0.875, drop path 0.2. README: 84.3% top-1 (10 x 1 views)
     from the 800-epoch pre-training.

`,local`: the recipe on the tiny MViT (16x64²) and synthetic_motion (8 classes), batch 8 clips (S: 4 videos x
2), evaluated with 2 clips x 1 crop.
"""
from maskfeat_jax import recipes
from maskfeat_jax.config import base_config
from maskfeat_jax.models import layouts

SIZES = ("S", "L")
# batch_size = reference_batch (clips per step per node); local_drop_path: the `,local` tiny model's (S keeps
# the tiny layout's 0.0, L the recipe's 0.2).
RECIPES = {
    # configs/masked_ssl/k400_MVITv2_S_16x4_FT.yaml (TRAIN.BATCH_SIZE 16 videos x AUG.NUM_SAMPLE 2 = 32 clips)
    "S": dict(model="mvit_s_16x4_ft", drop_path=0.1, num_sample=2, batch_size=32, base_lr=6e-4,
              warmup_epochs=20.0, start_lr=1e-6, end_lr=1e-6, epochs=100.0, layer_decay=0.75,
              local_drop_path=0.0),
    # configs/masked_ssl/k400_MVITv2_L_16x4_FT.yaml
    "L": dict(model="mvit_l_16x4_ft", drop_path=0.2, num_sample=1, batch_size=16, base_lr=6e-4,
              warmup_epochs=5.0, start_lr=1e-8, end_lr=1e-5, epochs=75.0, layer_decay=0.875,
              local_drop_path=0.2),
}


def get_config(arg=None):
  size, local = recipes.parse_arg("configs/k400_finetune.py", arg, SIZES)
  r = RECIPES[size]
  c = base_config()
  c.mode = "finetune"
  c.model = layouts.get_model_config(r["model"])
  c.model.num_classes = 400
  c.model.drop_path_rate = r["drop_path"]
  c.mask.type = "none"
  # Values below: configs/masked_ssl/k400_MVITv2_{S,L}_16x4_FT.yaml (the same in both).
  recipes.kinetics_clips(c, rrc_scale=(0.08, 1.0), num_sample=r["num_sample"])
  recipes.finetune_augment(c, "rand-m7-mstd0.5-inc1")
  c.batch_size = r["batch_size"]
  c.epochs = r["epochs"]
  o = c.optim
  o.base_lr, o.reference_batch = r["base_lr"], r["batch_size"]
  o.warmup_epochs, o.start_lr, o.end_lr = r["warmup_epochs"], r["start_lr"], r["end_lr"]
  o.weight_decay, o.b1, o.b2, o.eps = 0.05, 0.9, 0.999, 1e-8
  o.clip_grad_norm = 5.0
  o.layer_decay = r["layer_decay"]
  o.zero_wd_1d, o.zero_wd_pos_cls = True, False
  c.eval.num_clips, c.eval.num_crops = 10, 1
  if local:
    recipes.kinetics_local(c, "mvit_tiny_ft")  # batch 8 clips (S: 4 videos x num_sample 2)
    c.model.num_classes = 0  # taken from the dataset (synthetic_motion: 8)
    c.model.drop_path_rate = r["local_drop_path"]
    c.eval.num_clips, c.eval.num_crops, c.eval.batch_size = 2, 1, 8
  return c
