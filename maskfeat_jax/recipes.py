"""Building blocks shared by the official recipe configs in `configs/` (spec §5.3-§5.4).

Each config file keeps its own optimiser, schedule and model values written out (they differ per
experiment and `tests/test_recipes.py` checks them against the spec table); the data and augmentation
settings that are the same across the Kinetics or the ImageNet recipes live here once.
"""


def kinetics_clips(c, rrc_scale, num_sample: int = 1) -> None:
  """Kinetics-400 loader: 16 frames at stride 4 (30 fps), short side 256, RRC to 224, flip."""
  d = c.data
  d.name = "kinetics400"
  d.num_frames, d.sampling_rate, d.target_fps = 16, 4, 30.0
  d.crop_size = 224
  d.train_jitter_scales = (256, 320)
  d.use_random_resized_crop = True
  d.rrc_scale = rrc_scale
  d.rrc_aspect = (0.75, 1.3333)
  d.random_flip = True
  d.test_short_side = 256
  d.num_sample = num_sample


def imagenet_images(c, rrc_scale) -> None:
  """ImageNet-1K loader: RRC to 224, flip; test resize 256 + centre crop (one view)."""
  d = c.data
  d.name = "imagenet2012"
  d.image_mode = True
  d.crop_size = 224
  d.use_random_resized_crop = True
  d.rrc_scale = rrc_scale
  d.rrc_aspect = (0.75, 1.3333)
  d.random_flip = True
  d.test_short_side = 256
  d.num_sample = 1
  c.eval.num_clips, c.eval.num_crops = 1, 1


def finetune_augment(c, randaug: str) -> None:
  """Fine-tuning augmentation: RandAugment, erasing 0.25, mixup 0.8 / cutmix 1.0, label smoothing 0.1."""
  a = c.augment
  a.randaug, a.randaug_num_layers = randaug, 2
  a.erase_prob = 0.25
  a.mixup_alpha, a.cutmix_alpha, a.mixup_prob, a.switch_prob = 0.8, 1.0, 1.0, 0.5
  a.label_smoothing = 0.1
