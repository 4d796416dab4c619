"""Host-side fine-tuning augmentation: RandAugment and random erasing (numpy / Pillow, uint8 in, uint8 out).

Semantics follow timm's `rand_augment_transform` / `RandomErasing` as used by SlowFast for MaskFeat fine-tuning
(`slowfast/datasets/rand_augment.py`, `slowfast/datasets/random_erasing.py`), re-implemented on numpy
Generators so that a (seed, epoch, index)-seeded Generator reproduces the same augmentation after a resume:

RandAugment (`'rand-m7-mstd0.5-inc1'` video, `'rand-m9-mstd0.5-inc1'` images):
  - `num_layers` ops drawn uniformly *with* replacement from the 15-op list (the 'inc1' list uses the
    "increasing" variants whose severity grows with the magnitude); with a `w` weight set, weighted and
    without replacement, as timm.
  - each drawn op is applied with probability `p` (0.5); its magnitude ~ N(m, mstd) clipped to [0, mmax or 10];
    the level → argument maps divide by 10 (timm's `_LEVEL_DENOM`); signed ops are negated with probability 0.5.
  - geometric ops fill with `fill` (SlowFast video: (128,128,128); timm images: the dataset mean × 255) and
    resample with `interpolation` (SlowFast's AUG.INTERPOLATION = 'bicubic'; 'random' = bilinear or bicubic).
  - Video: everything sampled above (ops, apply/skip, magnitude, sign, interpolation) is drawn ONCE per clip
    and applied to every frame (SlowFast applies one `AugmentOp` call to the frame list). The only
    frame-dependent behaviour is what the official code also does per frame: AutoContrast and Equalize use each
    frame's own histogram.
  - Spec-string quirk fixed: timm enables the increasing list for any `inc<val>` (`bool('0')` is True); here
    `inc0` means off.

Random erasing (`mode='pixel'`, p = 0.25 in the recipes): area fraction ~ U(0.02, 1/3), aspect log-uniform in
[0.3, 1/0.3], h = round(sqrt(area·r)), w = round(sqrt(area/r)), accepted if h < H and w < W (100 tries for a
clip — SlowFast's "cube" mode — 10 for an image); the SAME box on all frames of a clip. The official code erases
the *normalised* tensor with N(0, 1) noise (independent per frame and pixel); in our uint8 space that is
`255·(mean + std·N(0, 1))`, rounded and clipped to [0, 255] — the rounding error is ≤ 0.5/255/std ≈ 0.009 in
normalised units; clipping only touches |z| > 2 (mean 0.45, std 0.225), i.e. ~2.3% of the noise values.

Host vs device: per clip, RandAugment costs about as much CPU as decoding the clip's JPEG frames, and erasing
far less (benchmarks/augment_bench.py; figures in BENCHMARKS.md, "Fine-tuning augmentation on the host"). So
the augmentation runs on the host, in the Grain workers that already decode: exact PIL semantics (bicubic
affine with fill, per-frame histograms for Equalize / AutoContrast) and no device time. It about doubles the
per-clip CPU cost of fine-tuning input; if a run is input-bound, that is the place to port ops to the device.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

LEVEL_DENOM = 10.0  # timm's _LEVEL_DENOM: magnitude M maps to the fraction M / 10 of each op's range
DEFAULT_FILL = (128, 128, 128)  # timm's _FILL; SlowFast's video RandAugment keeps it (no img_mean hparam)

RAND_TRANSFORMS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
    "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)
RAND_INCREASING_TRANSFORMS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
    "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
    "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)
# timm's weight set 0 (only used with a `w0` section); keyed by op name, normalised over the chosen list.
_CHOICE_WEIGHTS_0 = {
    "Rotate": 0.3, "ShearX": 0.2, "ShearY": 0.2, "TranslateXRel": 0.1, "TranslateYRel": 0.1,
    "Color": 0.025, "Sharpness": 0.025, "AutoContrast": 0.025, "Solarize": 0.005, "SolarizeAdd": 0.005,
    "Contrast": 0.005, "Brightness": 0.005, "Equalize": 0.005, "Posterize": 0.0, "Invert": 0.0,
}
_INTERPOLATIONS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


# --------------------------------------------------------------------------------------------------------
# Spec parsing
# --------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RandAugmentSpec:
  """A parsed timm RandAugment string."""
  magnitude: float = LEVEL_DENOM
  num_layers: int = 2
  magnitude_std: float = 0.0
  magnitude_max: Optional[float] = None
  increasing: bool = False
  prob: float = 0.5
  weight_idx: Optional[int] = None
  ops: tuple = ()  # a subset of the op list (config.augment.randaug_ops); () = the whole list

  @property
  def transforms(self) -> tuple:
    names = RAND_INCREASING_TRANSFORMS if self.increasing else RAND_TRANSFORMS
    return tuple(n for n in names if n.replace("Increasing", "") in self.ops) if self.ops else names


@functools.lru_cache(maxsize=64)
def parse_rand_augment_spec(spec: str, num_layers: int = 2, ops: tuple = ()) -> RandAugmentSpec:
  """Parses 'rand-m9-n2-mstd0.5-inc1[-mmax10][-p0.5][-w0]'; `n` in the string overrides `num_layers`.

  `ops` restricts the op list to these names (base names as in RAND_TRANSFORMS, e.g. 'Rotate', 'Color';
  with inc1 'Color' selects 'ColorIncreasing'); () keeps the official list.

  Raises:
    ValueError: naming the spec and the offending section.
  """
  parts = spec.split("-")
  if parts[0] != "rand":
    raise ValueError(f"augment.randaug={spec!r}: only timm 'rand-...' specs are supported "
                     "(e.g. 'rand-m7-mstd0.5-inc1').")
  kw = dict(num_layers=int(num_layers))
  for part in parts[1:]:
    m = re.fullmatch(r"([a-z]+)(\d.*)", part)
    if m is None:
      raise ValueError(f"augment.randaug={spec!r}: cannot parse section {part!r} (expected key+number).")
    key, val = m.groups()
    try:
      if key == "m":
        kw["magnitude"] = float(val)
      elif key == "n":
        kw["num_layers"] = int(val)
      elif key == "mstd":
        std = float(val)
        kw["magnitude_std"] = math.inf if std > 100 else std  # timm: mstd > 100 means uniform in [0, m]
      elif key == "mmax":
        kw["magnitude_max"] = float(val)
      elif key == "inc":
        kw["increasing"] = bool(int(val))
      elif key == "p":
        kw["prob"] = float(val)
      elif key == "w":
        kw["weight_idx"] = int(val)
      else:
        raise ValueError(f"augment.randaug={spec!r}: unknown section {part!r} "
                         "(known: m, n, mstd, mmax, inc, p, w).")
    except ValueError as e:
      if "augment.randaug" in str(e):
        raise
      raise ValueError(f"augment.randaug={spec!r}: bad value in section {part!r}: {e}") from None
  if kw.get("weight_idx") not in (None, 0):
    raise ValueError(f"augment.randaug={spec!r}: only weight set w0 exists, got w{kw['weight_idx']}.")
  if kw["num_layers"] < 0:
    raise ValueError(f"augment.randaug={spec!r}: num_layers must be >= 0, got {kw['num_layers']}.")
  ops = tuple(ops)
  unknown = sorted(set(ops) - set(RAND_TRANSFORMS))
  if unknown:
    raise ValueError(f"augment.randaug_ops: unknown op(s) {unknown}; known: {list(RAND_TRANSFORMS)}.")
  if ops and kw.get("weight_idx") is not None:
    raise ValueError(f"augment.randaug={spec!r} with augment.randaug_ops: the w0 weights are defined for the "
                     "whole op list; use one or the other.")
  return RandAugmentSpec(ops=ops, **kw)


# --------------------------------------------------------------------------------------------------------
# Sampling: everything random is drawn here, once per clip
# --------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SampledOp:
  """One op with all of its random parameters fixed (applied identically to every frame)."""
  name: str
  args: tuple
  resample: int


def _signed(rng: np.random.Generator, v: float) -> float:
  return -v if rng.random() > 0.5 else v  # timm's _randomly_negate


def _level_to_args(name: str, level: float, rng: np.random.Generator) -> tuple:
  """timm's LEVEL_TO_ARG maps (level = clipped magnitude, fraction = level / 10)."""
  f = level / LEVEL_DENOM
  if name in ("AutoContrast", "Equalize", "Invert"):
    return ()
  if name == "Rotate":
    return (_signed(rng, f * 30.0),)  # degrees in [-30, 30]
  if name in ("ShearX", "ShearY"):
    return (_signed(rng, f * 0.3),)
  if name in ("TranslateXRel", "TranslateYRel"):
    return (_signed(rng, f * 0.45),)  # fraction of the image size
  if name == "Posterize":
    return (int(f * 4),)
  if name == "PosterizeIncreasing":
    return (4 - int(f * 4),)  # bits kept: 4 … 0 as the magnitude grows
  if name == "Solarize":
    return (int(f * 256),)
  if name == "SolarizeIncreasing":
    return (256 - int(f * 256),)  # threshold: 256 (no-op) … 0 as the magnitude grows
  if name == "SolarizeAdd":
    return (int(f * 110),)
  if name in ("Color", "Contrast", "Brightness", "Sharpness"):
    return (f * 1.8 + 0.1,)
  if name.endswith("Increasing"):  # Color/Contrast/Brightness/SharpnessIncreasing: 1 ± 0.9·f, kept >= 0.1
    return (max(0.1, 1.0 + _signed(rng, f * 0.9)),)
  raise ValueError(f"Unknown RandAugment op {name!r}.")


def _choose_ops(rng: np.random.Generator, spec: RandAugmentSpec) -> list:
  names = spec.transforms
  if spec.weight_idx is None:
    idx = rng.integers(0, len(names), size=spec.num_layers)
  else:  # weighted choice is without replacement in timm
    p = np.array([_CHOICE_WEIGHTS_0[n.replace("Increasing", "")] for n in names], np.float64)
    idx = rng.choice(len(names), size=spec.num_layers, replace=False, p=p / p.sum())
  return [names[i] for i in idx]


def sample_rand_augment(rng: np.random.Generator, spec: RandAugmentSpec,
                        interpolation: str = "bicubic") -> list:
  """Draws the ops of one RandAugment call (the per-clip randomness). Returns the applied `SampledOp`s."""
  ops = []
  for name in _choose_ops(rng, spec):
    if spec.prob < 1.0 and rng.random() > spec.prob:
      continue
    magnitude = spec.magnitude
    if spec.magnitude_std == math.inf:
      magnitude = rng.uniform(0.0, magnitude)
    elif spec.magnitude_std > 0:
      magnitude = rng.normal(magnitude, spec.magnitude_std)
    magnitude = max(0.0, min(magnitude, spec.magnitude_max or LEVEL_DENOM))
    args = _level_to_args(name, magnitude, rng)
    if interpolation == "random":
      resample = (Image.BILINEAR, Image.BICUBIC)[int(rng.integers(0, 2))]
    elif interpolation in _INTERPOLATIONS:
      resample = _INTERPOLATIONS[interpolation]
    else:
      raise ValueError(f"interpolation={interpolation!r}: expected one of "
                       f"{sorted(_INTERPOLATIONS) + ['random']}.")
    ops.append(SampledOp(name, args, resample))
  return ops


# --------------------------------------------------------------------------------------------------------
# Applying one sampled op to one PIL frame
# --------------------------------------------------------------------------------------------------------
def _affine(img: Image.Image, coeffs: tuple, op: SampledOp, fill: tuple) -> Image.Image:
  return img.transform(img.size, Image.AFFINE, coeffs, resample=op.resample, fillcolor=fill)


def _solarize_add_lut(add: int, thresh: int = 128) -> list:
  lut = [min(255, i + add) if i < thresh else i for i in range(256)]
  return lut * 3  # one table per RGB channel


def apply_op(img: Image.Image, op: SampledOp, fill: tuple) -> Image.Image:
  """Applies a `SampledOp` to an RGB PIL image (the timm op definitions)."""
  name, a = op.name, op.args
  if name == "AutoContrast":
    return ImageOps.autocontrast(img)
  if name == "Equalize":
    return ImageOps.equalize(img)
  if name == "Invert":
    return ImageOps.invert(img)
  if name == "Rotate":
    return img.rotate(a[0], resample=op.resample, fillcolor=fill)
  if name.startswith("Posterize"):
    return img if a[0] >= 8 else ImageOps.posterize(img, a[0])
  if name.startswith("Solarize") and name != "SolarizeAdd":
    return ImageOps.solarize(img, a[0])
  if name == "SolarizeAdd":
    return img.point(_solarize_add_lut(a[0]))
  if name.startswith("Color"):
    return ImageEnhance.Color(img).enhance(a[0])
  if name.startswith("Contrast"):
    return ImageEnhance.Contrast(img).enhance(a[0])
  if name.startswith("Brightness"):
    return ImageEnhance.Brightness(img).enhance(a[0])
  if name.startswith("Sharpness"):
    return ImageEnhance.Sharpness(img).enhance(a[0])
  if name == "ShearX":
    return _affine(img, (1, a[0], 0, 0, 1, 0), op, fill)
  if name == "ShearY":
    return _affine(img, (1, 0, 0, a[0], 1, 0), op, fill)
  if name == "TranslateXRel":
    return _affine(img, (1, 0, a[0] * img.size[0], 0, 1, 0), op, fill)
  if name == "TranslateYRel":
    return _affine(img, (1, 0, 0, 0, 1, a[0] * img.size[1]), op, fill)
  raise ValueError(f"Unknown RandAugment op {name!r}.")


def fill_from_mean(mean: Sequence[float]) -> tuple:
  """timm's `img_mean` fill for images: the normalisation mean (fractions of 255) as uint8 RGB."""
  return tuple(int(round(255 * m)) for m in mean)


# --------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------
def _check_uint8(x: np.ndarray, ndim: int, what: str) -> None:
  if x.dtype != np.uint8 or x.ndim != ndim or x.shape[-1] != 3:
    raise ValueError(f"{what}: expected uint8 of shape {'[T,H,W,3]' if ndim == 4 else '[H,W,3]'}, "
                     f"got {x.dtype} {x.shape}.")


def rand_augment_video(frames: np.ndarray, rng: np.random.Generator, spec: str, num_layers: int = 2, *,
                       fill: Sequence[int] = DEFAULT_FILL, interpolation: str = "bicubic",
                       ops: Sequence[str] = ()) -> np.ndarray:
  """RandAugment of a clip with the same sampled ops and op parameters on every frame.

  Args:
    frames: uint8 [T, H, W, 3].
    rng: numpy Generator (seed it per example for reproducibility).
    spec: timm string, e.g. 'rand-m7-mstd0.5-inc1'; its `n` section overrides `num_layers`.
    num_layers: ops per clip when the spec has no `n` (config.augment.randaug_num_layers).
    fill: RGB fill of geometric ops (SlowFast video: 128 grey).
    interpolation: 'bicubic' (SlowFast default), 'bilinear', 'nearest' or 'random'.
    ops: restrict the op list to these base names (config.augment.randaug_ops); () = the official list.

  Returns:
    uint8 [T, H, W, 3] (a new array; the input is not modified).
  """
  _check_uint8(frames, 4, "rand_augment_video(frames)")
  ops = sample_rand_augment(rng, parse_rand_augment_spec(spec, num_layers, tuple(ops)), interpolation)
  if not ops:
    return frames.copy()
  fill = tuple(int(v) for v in fill)
  out = np.empty_like(frames)
  for t in range(frames.shape[0]):
    img = Image.fromarray(frames[t])
    for op in ops:
      img = apply_op(img, op, fill)
    out[t] = np.asarray(img)
  return out


def rand_augment_image(image: np.ndarray, rng: np.random.Generator, spec: str, num_layers: int = 2, *,
                       fill: Sequence[int] = DEFAULT_FILL, interpolation: str = "bicubic",
                       ops: Sequence[str] = ()) -> np.ndarray:
  """RandAugment of one uint8 [H, W, 3] image (timm images: pass fill=fill_from_mean(pixel_mean))."""
  _check_uint8(image, 3, "rand_augment_image(image)")
  return rand_augment_video(image[None], rng, spec, num_layers, fill=fill, interpolation=interpolation,
                            ops=ops)[0]


def sample_erasing_box(rng: np.random.Generator, height: int, width: int, *, min_area: float = 0.02,
                       max_area: float = 1 / 3, min_aspect: float = 0.3, max_aspect: Optional[float] = None,
                       scale: float = 1.0, attempts: int = 100) -> Optional[tuple]:
  """One erasing box (top, left, h, w), or None when no try fits (the official then erases nothing).

  `scale` = 1/count (timm divides the area by the box count when several boxes are drawn).
  """
  log_aspect = (math.log(min_aspect), math.log(max_aspect or 1.0 / min_aspect))
  area = height * width
  for _ in range(attempts):
    target_area = rng.uniform(min_area, max_area) * area * scale
    aspect = math.exp(rng.uniform(*log_aspect))
    h = int(round(math.sqrt(target_area * aspect)))
    w = int(round(math.sqrt(target_area / aspect)))
    if w < width and h < height:
      top = int(rng.integers(0, height - h + 1))  # inclusive upper bound, as random.randint
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  return None


def _erase_values(rng: np.random.Generator, mode: str, shape: tuple, mean: np.ndarray,
                  std: np.ndarray) -> np.ndarray:
  """uint8 fill for one frame's box: normalised-space value v becomes 255·(mean + std·v)."""
  if mode == "pixel":
    z = rng.standard_normal(shape, dtype=np.float32)
  elif mode == "rand":
    z = rng.standard_normal((1, 1, 3), dtype=np.float32)
  else:  # 'const': zero in normalised space = the mean colour
    z = np.zeros((1, 1, 3), np.float32)
  v = 255.0 * (mean + std * z)
  return np.broadcast_to(np.clip(np.rint(v), 0, 255).astype(np.uint8), shape)


def random_erasing(frames: np.ndarray, rng: np.random.Generator, prob: float, mode: str = "pixel", *,
                   min_area: float = 0.02, max_area: float = 1 / 3, min_aspect: float = 0.3,
                   max_aspect: Optional[float] = None, min_count: int = 1, max_count: Optional[int] = None,
                   mean: Sequence[float] = (0.45, 0.45, 0.45),
                   std: Sequence[float] = (0.225, 0.225, 0.225)) -> np.ndarray:
  """Random erasing of a clip [T,H,W,3] (same box on all frames) or an image [H,W,3], in uint8 space.

  Args:
    frames: uint8 [T, H, W, 3] or [H, W, 3].
    rng: numpy Generator.
    prob: probability of erasing (config.augment.erase_prob; 0.25 in the recipes).
    mode: 'pixel' (per-pixel N(0,1) in normalised space; the recipes), 'rand' (one random colour per box
      and frame) or 'const' (the mean colour).
    min_area, max_area, min_aspect, max_aspect: official ranges (0.02–1/3, 0.3–1/0.3).
    min_count, max_count: boxes per clip (official RE_COUNT = 1).
    mean, std: config.model.pixel_mean / pixel_std (fractions of 255), to map normalised noise to uint8.

  Returns:
    uint8 array of the input's shape (a copy).
  """
  if mode not in ("pixel", "rand", "const"):
    raise ValueError(f"random_erasing mode={mode!r}: expected 'pixel', 'rand' or 'const'.")
  if not 0.0 <= prob <= 1.0:
    raise ValueError(f"augment.erase_prob={prob}: expected a probability in [0, 1].")
  is_image = frames.ndim == 3
  clip = frames[None] if is_image else frames
  _check_uint8(clip, 4, "random_erasing(frames)")
  out = clip.copy()
  if rng.random() > prob:
    return out[0] if is_image else out
  max_count = max_count or min_count
  count = min_count if min_count == max_count else int(rng.integers(min_count, max_count + 1))
  mean_a = np.asarray(mean, np.float32).reshape(1, 1, 3)
  std_a = np.asarray(std, np.float32).reshape(1, 1, 3)
  _, height, width, _ = clip.shape
  for _ in range(count):
    # SlowFast's clip ("cube") mode tries 100 boxes, timm's single image 10.
    box = sample_erasing_box(rng, height, width, min_area=min_area, max_area=max_area,
                             min_aspect=min_aspect, max_aspect=max_aspect, scale=1.0 / count,
                             attempts=10 if is_image else 100)
    if box is None:
      continue
    top, left, h, w = box
    for t in range(out.shape[0]):  # same box, fresh noise per frame (as the official)
      out[t, top:top + h, left:left + w] = _erase_values(rng, mode, (h, w, 3), mean_a, std_a)
  return out[0] if is_image else out
