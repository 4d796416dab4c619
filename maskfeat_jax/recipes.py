"""Building blocks shared by the official recipe configs in `configs/`.

Each config file (one per dataset x stage: `k400_pretrain.py`, `k400_finetune.py`, `in1k_pretrain.py`,
`in1k_finetune.py`, `ssv2_finetune.py`) keeps its optimiser, schedule and model values written out per size, each with its
official SlowFast YAML file named (`tests/test_configs.py` checks them); what is the same across the
Kinetics or the ImageNet recipes lives here once: the loaders, the fine-tuning augmentation, the `,local`
variants and the parsing of the `SIZE[,local]` argument.
"""
from maskfeat_jax.models import layouts


def parse_arg(file: str, arg, sizes: tuple[str, ...]) -> tuple[str, bool]:
  """A recipe file's `get_config(arg)`: 'SIZE' or 'SIZE,local' -> (size, local); no arg = sizes[0].

  Raises ValueError naming `file` and the known args for anything else.
  """
  if arg is None or arg == "":
    return sizes[0], False
  known = tuple(sizes) + tuple(f"{s},local" for s in sizes)
  if arg not in known:
    raise ValueError(f"{file}:{arg}: unknown argument; known: {', '.join(known)} "
                     f"(no argument = {sizes[0]}).")
  size, _, local = arg.partition(",")
  return size, bool(local)


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


def ssv2_clips(c, num_frames: int, crop: int, jitter_scales: tuple[int, int]) -> None:
  """Something-Something v2 loader (`slowfast/datasets/ssv2.py`, configs/SSv2/MVITv2_*.yaml): one frame from each
  of num_frames equal segments, short-side jitter drawn inverse-uniformly (INV_UNIFORM_SAMPLE) + random crop, no
  flip (RANDOM_FLIP False: left/right is in the labels); test: short side = crop size, 1 clip x 3 crops."""
  d = c.data
  d.name = "ssv2"
  d.train_split, d.eval_split = "train", "validation"
  d.sampling = "segments"
  d.num_frames, d.sampling_rate, d.target_fps = num_frames, 1, 30.0  # rate / fps: unused by segments
  d.crop_size = crop
  d.train_jitter_scales = jitter_scales
  d.jitter_inverse_uniform = True
  d.use_random_resized_crop = False  # no TRAIN_JITTER_SCALES_RELATIVE in the SSv2 configs
  d.random_flip = False
  d.label_flip_map = ""
  d.test_short_side = crop  # Ssv2.__getitem__ test mode: min_scale = max_scale = crop_size = TEST_CROP_SIZE
  d.num_sample = 1
  c.eval.num_clips, c.eval.num_crops = 1, 3


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


# ---- `,local` variants: the recipe, shrunk to run on one host (a smoke run of the full path) ----
# The reference batch stays the recipe's, so the lr scales down linearly with the smaller batch.


def _local_schedule(c, batch_size: int, total_steps: int, warmup_steps: int) -> None:
  c.batch_size = batch_size
  c.epochs = 0.0
  c.total_steps = total_steps
  c.optim.warmup_epochs = 0.0
  c.optim.warmup_steps = warmup_steps
  c.log_every_steps = 20
  c.checkpoint_every_steps = 100


def kinetics_local(c, model: str) -> None:
  """Kinetics `,local`: the tiny MViT layout `model` on the embedded synthetic_motion clips (64x80; runs on a
  CPU), 16 frames at 64², batch 8 for 300 steps."""
  c.model = layouts.get_model_config(model)
  d = c.data
  d.name = "synthetic_motion"
  d.sampling_rate = 2  # 16 frames spanning the 32-frame synthetic clips
  d.crop_size = 64
  d.train_jitter_scales = (64, 80)
  d.test_short_side = 64
  d.num_workers = 0
  _local_schedule(c, batch_size=8, total_steps=300, warmup_steps=30)


def ssv2_local(c, model: str) -> None:
  """SSv2 `,local`: the tiny MViT layout `model` on synthetic_motion (its classes are directions of motion,
  so like SSv2 it is not flipped), 16 segments at 64², 1 clip x 3 crops at short side 64, batch 8, 300 steps."""
  c.model = layouts.get_model_config(model)
  d = c.data
  d.name = "synthetic_motion"
  d.eval_split = "test"
  d.num_frames = 16  # the tiny layout's input (L's 40 frames would not fit it)
  d.crop_size = 64
  d.train_jitter_scales = (64, 80)
  d.test_short_side = 64
  d.num_workers = 0
  c.eval.batch_size = 12  # 4 videos x 3 crops
  _local_schedule(c, batch_size=8, total_steps=300, warmup_steps=30)


# Width and heads of the 4-block ViT/16 (at 224², on the same data) standing in for each size.
IMAGENET_LOCAL_VIT = {"B": (192, 3), "L": (256, 4)}


def imagenet_local(c, size: str) -> None:
  """ImageNet `,local`: a 4-block ViT/16 (IMAGENET_LOCAL_VIT[size]) on the same data, batch 32, 200 steps."""
  width, heads = IMAGENET_LOCAL_VIT[size]
  c.model.embed_dim, c.model.depth, c.model.num_heads = width, 4, heads
  _local_schedule(c, batch_size=32, total_steps=200, warmup_steps=20)
