"""AVA action detection: RoIAlign in JAX and the MViT detector (backbone + RoI head).

The head is `slowfast/models/head_helper.py::ResNetRoIHead` as `slowfast/models/video_model_builder.py::MViT`
builds it with `DETECTION.ENABLE`: the last block's tokens, LayerNorm'd (`self.norm`), cls token dropped,
reshaped to [T', H', W', C], averaged over time (AvgPool3d over all T'), RoIAlign (`ROI_XFORM_RESOLUTION`
square, `spatial_scale = 1 / SPATIAL_SCALE_FACTOR`, `sampling_ratio=0`, `aligned=DETECTION.ALIGNED`),
max-pooled over the RoI grid (MaxPool2d(resolution)), dropout, Linear (`head/projection`), sigmoid (applied
by the caller: the model returns logits, the loss is BCE with logits, the evaluation takes the sigmoid).

Boxes come padded to a static count per clip ([B, N, 4], normalised x1, y1, x2, y2 in [0, 1] of the crop)
with a validity mask [B, N]; padded boxes produce logits that the loss and the evaluation ignore, so every
shape is static under jit.

`roi_align` is written from the RoIAlign definition (Mask R-CNN; detectron2 / torchvision `aligned=True`):
each output bin averages `grid_h x grid_w` bilinear samples at the centres of a regular sub-grid of the bin;
`sampling_ratio=0` means `grid = ceil(roi_size / output_size)` per box (adaptive). Bilinear sampling is
separable, so the whole operation is two interpolation matrices per box and one einsum against the feature
map: no gathers, differentiable in the features (the boxes are inputs, not learned).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskfeat_jax.models import layers
from maskfeat_jax.models import mvit


def default_max_grid(feature_size: int, output_size: int) -> int:
  """Adaptive sampling grid that covers every box inside the feature map: ceil(size / output)."""
  return max(1, -(-int(feature_size) // int(output_size)))


def _axis_weights(start, size, output_size: int, feature_size: int, grid, max_grid: int):
  """[..., output_size, feature_size] summed interpolation weights of one axis.

  start, size: [...] RoI start and extent on this axis (feature-map coordinates, alignment offset applied);
  grid: [...] int sub-samples per bin (<= max_grid; samples >= grid are masked out).
  The per-sample rule is detectron2/torchvision `bilinear_interpolate`: a sample beyond [-1, feature_size]
  contributes 0; otherwise its coordinate is clamped to [0, feature_size - 1] and split linearly between the
  two neighbouring cells, which is the hat function max(0, 1 - |c - i|) of the clamped coordinate.
  """
  bins = size / output_size  # [...]
  p = jnp.arange(output_size, dtype=jnp.float32)
  g = jnp.arange(max_grid, dtype=jnp.float32)
  grid_f = jnp.maximum(grid, 1).astype(jnp.float32)
  # sample coordinate of bin p, sub-sample g: start + p * bin + (g + 0.5) * bin / grid
  coords = (start[..., None, None] + p[:, None] * bins[..., None, None]
            + (g[None, :] + 0.5) * (bins / grid_f)[..., None, None])  # [..., P, G]
  valid = (g[None, :] < grid[..., None, None]) & (coords >= -1.0) & (coords <= feature_size)
  clamped = jnp.clip(coords, 0.0, feature_size - 1.0)
  cells = jnp.arange(feature_size, dtype=jnp.float32)
  hat = jnp.maximum(0.0, 1.0 - jnp.abs(clamped[..., None] - cells))  # [..., P, G, F]
  return jnp.sum(hat * valid[..., None].astype(jnp.float32), axis=-2)  # [..., P, F]


def roi_align(features: jax.Array, boxes: jax.Array, output_size: tuple[int, int], spatial_scale: float,
              sampling_ratio: int = 0, aligned: bool = True, max_grid: int | None = None) -> jax.Array:
  """RoIAlign of per-example boxes on a channels-last feature map.

  Args:
    features: [B, H, W, C].
    boxes: [B, N, 4] (x1, y1, x2, y2) in input coordinates (multiplied by `spatial_scale`).
    output_size: (out_h, out_w).
    spatial_scale: feature-map cells per input unit (1 / stride).
    sampling_ratio: samples per bin along each axis; 0 = adaptive, ceil(roi_size / out_size) per box.
    aligned: shift the box by -0.5 cell (pixel centres at half-integers) as detectron2 / torchvision
      `aligned=True`; False: the legacy rule (no shift, RoI extent at least 1 cell).
    max_grid: with sampling_ratio=0, the static bound on the adaptive grid (default: ceil(H / out_h) and
      ceil(W / out_w), enough for any box inside the map); an adaptive grid above it is capped at it.
  Returns:
    [B, N, out_h, out_w, C] in the features' dtype (accumulated in float32).
  """
  if features.ndim != 4 or boxes.ndim != 3 or boxes.shape[-1] != 4 or boxes.shape[0] != features.shape[0]:
    raise ValueError(f"roi_align: features {features.shape} must be [B,H,W,C] and boxes {boxes.shape} "
                     "[B,N,4] with the same B")
  out_h, out_w = (int(s) for s in output_size)
  h, w = features.shape[1], features.shape[2]
  b = boxes.astype(jnp.float32) * jnp.float32(spatial_scale)
  offset = 0.5 if aligned else 0.0
  x1, y1, x2, y2 = (b[..., i] - offset for i in range(4))
  roi_w, roi_h = x2 - x1, y2 - y1
  if not aligned:
    roi_w, roi_h = jnp.maximum(roi_w, 1.0), jnp.maximum(roi_h, 1.0)
  if sampling_ratio > 0:
    gh = gw = int(sampling_ratio)
    grid_h = jnp.full(roi_h.shape, gh, jnp.int32)
    grid_w = jnp.full(roi_w.shape, gw, jnp.int32)
  else:
    gh = int(max_grid) if max_grid else default_max_grid(h, out_h)
    gw = int(max_grid) if max_grid else default_max_grid(w, out_w)
    grid_h = jnp.clip(jnp.ceil(roi_h / out_h), 0, gh).astype(jnp.int32)
    grid_w = jnp.clip(jnp.ceil(roi_w / out_w), 0, gw).astype(jnp.int32)
  wy = _axis_weights(y1, roi_h, out_h, h, grid_h, gh)  # [B, N, out_h, H]
  wx = _axis_weights(x1, roi_w, out_w, w, grid_w, gw)  # [B, N, out_w, W]
  count = jnp.maximum(grid_h * grid_w, 1).astype(jnp.float32)
  out = jnp.einsum("bnph,bnqw,bhwc->bnpqc", wy, wx, features.astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST)
  return (out / count[..., None, None, None]).astype(features.dtype)


class RoIHead(nn.Module):
  """`ResNetRoIHead` for one pathway, after the temporal average: RoIAlign -> max -> dropout -> Linear."""
  num_classes: int
  resolution: int
  spatial_scale: float
  sampling_ratio: int
  aligned: bool
  dropout_rate: float
  dtype: Any

  def setup(self):
    # Official MViT._init_weights: Linear weight trunc-normal 0.02, bias 0.
    self.projection = layers.dense(self.num_classes, ("embed", "classes"), self.dtype,
                                   bias_init=nn.initializers.zeros)
    self.dropout = nn.Dropout(self.dropout_rate)

  def __call__(self, fmap, boxes_px, train: bool = False):
    """fmap [B, H', W', C], boxes_px [B, N, 4] in crop pixels -> logits [B, N, K] float32."""
    r = int(self.resolution)
    pooled = roi_align(fmap, boxes_px, (r, r), self.spatial_scale, self.sampling_ratio, self.aligned)
    x = jnp.max(pooled, axis=(2, 3))  # MaxPool2d(resolution, stride=1) on an r x r map: one value
    x = self.dropout(x, deterministic=not train)
    return self.projection(x).astype(jnp.float32)


class Detector(mvit.MViT):
  """MViT backbone + RoI head. apply(variables, x, boxes, train=False) -> logits [B, N, classes].

  x: raw pixels [B, T, H, W, 3]; boxes: [B, N, 4] normalised (x1, y1, x2, y2) of the crop.
  `features` (the probe's pooled vector) works as for the other models.
  """
  num_classes: int = 0
  roi_resolution: int = 7
  roi_scale_factor: float = 16.0
  roi_sampling_ratio: int = 0
  roi_aligned: bool = True
  dropout_rate: float = 0.0

  def setup(self):
    self._setup_backbone()
    dtype = layers.compute_dtype(self.spec)
    self.norm = layers.layer_norm(dtype)
    self.head = RoIHead(self.num_classes, self.roi_resolution, 1.0 / float(self.roi_scale_factor),
                        self.roi_sampling_ratio, self.roi_aligned, self.dropout_rate, dtype)

  def feature_map(self, x, train: bool = False):
    """[B, H', W', C] float32: the last block's normalised tokens averaged over time."""
    h = self.norm(self.backbone(x, train))
    if self.spec.cls_embed:
      h = h[:, 1:]
    t, gh, gw = self.spec.blocks[-1].q_thw
    b, n, c = h.shape
    if n != t * gh * gw:
      raise ValueError(f"Detector: {n} tokens do not form the last block's grid {(t, gh, gw)}")
    return jnp.mean(h.astype(jnp.float32).reshape(b, t, gh, gw, c), axis=1)

  def __call__(self, x, boxes, train: bool = False):
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or boxes.shape[0] != x.shape[0]:
      raise ValueError(f"Detector: boxes {boxes.shape} must be [B, N, 4] with B = {x.shape[0]}")
    fmap = self.feature_map(x, train)
    size = jnp.asarray([x.shape[3], x.shape[2], x.shape[3], x.shape[2]], jnp.float32)  # W, H, W, H
    return self.head(fmap.astype(layers.compute_dtype(self.spec)), boxes.astype(jnp.float32) * size, train)
