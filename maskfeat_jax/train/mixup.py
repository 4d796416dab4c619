"""Mixup / CutMix with label smoothing, batch mode, in jnp (jittable; runs inside the fine-tuning step).

Semantics of timm's `Mixup` in batch mode, as SlowFast's `slowfast/datasets/mixup.py::MixUp` uses it (video
fine-tuning recipe: mixup 0.8, cutmix 1.0, switch 0.5, label smoothing 0.1, prob 1.0):
  - with probability `prob` the batch is mixed; then CutMix is chosen with probability `switch_prob` when both
    alphas are > 0 (only one of them > 0: always that one); lam ~ Beta(alpha, alpha) of the chosen method.
  - every example i is paired with example B−1−i (the batch flipped along axis 0).
  - Mixup: x = lam·x + (1−lam)·x_flipped.
  - CutMix: a box of cut_h = int(H·sqrt(1−lam)), cut_w = int(W·sqrt(1−lam)) centred at a uniform pixel and
    clipped to the image replaces x by x_flipped inside it, on ALL frames of a clip (the box spans only H, W);
    lam is then corrected to 1 − box_area / (H·W), so the label mass matches the pasted area.
  - targets = lam·smooth(y) + (1−lam)·smooth(y_flipped), smooth = (1−s)·one_hot + s/K; rows sum to 1.
The official flips each GPU's local batch; here the flip is over the global batch (a collective permute on a
sharded batch) — the same distribution of pairs.

Layout: channels last, x is `[B, H, W, C]` or `[B, T, H, W, C]`; raw uint8 pixels come out as float32 0–255
(normalisation is linear, so mixing raw pixels equals mixing normalised ones).
"""
from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from maskfeat_jax.train.losses import smooth_labels


def _cutmix_box(rng: jax.Array, lam: jax.Array, height: int, width: int) -> Tuple[jax.Array, jax.Array]:
  """timm's rand_bbox (margin 0) as a [H, W] bool mask, and the area-corrected lam."""
  ky, kx = jax.random.split(rng)
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)  # int() truncation of a positive value
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  cy = jax.random.randint(ky, (), 0, height)
  cx = jax.random.randint(kx, (), 0, width)
  yl = jnp.clip(cy - cut_h // 2, 0, height)
  yh = jnp.clip(cy + cut_h // 2, 0, height)
  xl = jnp.clip(cx - cut_w // 2, 0, width)
  xh = jnp.clip(cx + cut_w // 2, 0, width)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  box = (rows >= yl) & (rows < yh) & (cols >= xl) & (cols < xh)
  lam_corrected = 1.0 - ((yh - yl) * (xh - xl)).astype(jnp.float32) / (height * width)
  return box, lam_corrected


def sample_mix_params(rng: jax.Array, *, mixup_alpha: float, cutmix_alpha: float, prob: float,
                      switch_prob: float) -> Tuple[jax.Array, jax.Array]:
  """(lam, use_cutmix) for one batch; lam = 1 when the batch is not mixed."""
  k_apply, k_switch, k_mix, k_cut = jax.random.split(rng, 4)
  apply = jax.random.uniform(k_apply) < prob
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(k_switch) < switch_prob
  else:
    use_cutmix = jnp.asarray(cutmix_alpha > 0)
  lam_mix = jax.random.beta(k_mix, mixup_alpha, mixup_alpha) if mixup_alpha > 0 else jnp.float32(1.0)
  lam_cut = jax.random.beta(k_cut, cutmix_alpha, cutmix_alpha) if cutmix_alpha > 0 else jnp.float32(1.0)
  lam = jnp.where(use_cutmix, lam_cut, lam_mix)
  return jnp.where(apply, lam, 1.0).astype(jnp.float32), use_cutmix & apply


_OFFICIAL = dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1)
# config.augment key for each argument.
_CONFIG_KEYS = dict(mixup_alpha="mixup_alpha", cutmix_alpha="cutmix_alpha", prob="mixup_prob",
                    switch_prob="switch_prob", label_smoothing="label_smoothing")


def _resolve(augment_config, **given) -> dict:
  """Explicit keyword > config.augment value > the official recipe value."""
  out = {}
  for name, value in given.items():
    if value is None and augment_config is not None:
      value = augment_config[_CONFIG_KEYS[name]]
    out[name] = float(_OFFICIAL[name] if value is None else value)
  return out


def mixup_cutmix(rng: jax.Array, x: jax.Array, labels: jax.Array, num_classes: int, augment_config=None, *,
                 mixup_alpha: Optional[float] = None, cutmix_alpha: Optional[float] = None,
                 prob: Optional[float] = None, switch_prob: Optional[float] = None,
                 label_smoothing: Optional[float] = None,
                 correct_lam: bool = True) -> Tuple[jax.Array, jax.Array]:
  """Mixes a batch with its flipped self (mixup or cutmix) and returns (x_mixed float32, soft targets [B, K]).

  Args:
    rng: a PRNG key (fold in the step so every step draws anew).
    x: [B, H, W, C] or [B, T, H, W, C], any numeric dtype (uint8 raw pixels from the loader).
    labels: int [B].
    num_classes: K.
    augment_config: optional config.augment; supplies every argument below that is not given explicitly
      (keys mixup_alpha, cutmix_alpha, mixup_prob, switch_prob, label_smoothing). Arguments given neither
      way take the official recipe values (0.8, 1.0, 1.0, 0.5, 0.1).
    mixup_alpha, cutmix_alpha: Beta parameters; 0 disables that method (both 0: only label smoothing).
    prob: probability that a batch is mixed at all (config.augment.mixup_prob).
    switch_prob: probability of CutMix when both are enabled.
    label_smoothing: s (config.augment.label_smoothing).
    correct_lam: use the clipped box area for lam (timm default True).
  """
  p = _resolve(augment_config, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob,
               switch_prob=switch_prob, label_smoothing=label_smoothing)
  mixup_alpha, cutmix_alpha, prob, switch_prob, label_smoothing = (
      p["mixup_alpha"], p["cutmix_alpha"], p["prob"], p["switch_prob"], p["label_smoothing"])
  if x.ndim not in (4, 5):
    raise ValueError(f"mixup_cutmix: expected x of shape [B,H,W,C] or [B,T,H,W,C], got {x.shape}.")
  if labels.shape != x.shape[:1]:
    raise ValueError(f"mixup_cutmix: labels {labels.shape} do not match the batch of x {x.shape}.")
  targets = smooth_labels(labels, num_classes, label_smoothing)
  xf = x.astype(jnp.float32) if not jnp.issubdtype(x.dtype, jnp.floating) else x
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return xf, targets
  k_params, k_box = jax.random.split(rng)
  lam, use_cutmix = sample_mix_params(k_params, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                                      prob=prob, switch_prob=switch_prob)
  height, width = x.shape[-3], x.shape[-2]
  box, lam_box = _cutmix_box(k_box, lam, height, width)
  if correct_lam:
    lam = jnp.where(use_cutmix, lam_box, lam)
  # One per-pixel weight map for both methods: CutMix keeps x outside the box (weight 1, 0 inside), Mixup
  # keeps lam everywhere. Weights are exactly 0/1 for CutMix, so no pixel is blended.
  keep = jnp.where(use_cutmix, (~box).astype(jnp.float32), lam)[:, :, None]
  keep = keep.astype(xf.dtype)
  x_mixed = keep * xf + (1 - keep) * xf[::-1]
  soft = lam * targets + (1.0 - lam) * targets[::-1]
  return x_mixed, soft
