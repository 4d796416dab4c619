"""RoIAlign (models/detection.py) against a loop-by-loop numpy reference written from the definition, and
against torchvision's pure-PyTorch `torchvision.ops.roi_align._roi_align` (aligned=True) when torch is there."""
import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskfeat_jax.models import detection

try:
  import torch
  from maskfeat_jax.checkpoints import torchvision as tv_ckpt
  tv_ckpt.import_torchvision()
  # the module (torchvision.ops re-exports a function of the same name)
  tv_roi_align_module = importlib.import_module("torchvision.ops.roi_align")
except ImportError:  # the torch extra is optional
  torch = None


def _bilinear(fmap, y, x):
  """One sample, the textbook rule: 0 beyond [-1, size]; clamp; interpolate the four neighbours."""
  h, w = fmap.shape[:2]
  if y < -1.0 or y > h or x < -1.0 or x > w:
    return np.zeros(fmap.shape[2], np.float64)
  y, x = max(y, 0.0), max(x, 0.0)
  y0, x0 = int(math.floor(y)), int(math.floor(x))
  if y0 >= h - 1:
    y0 = y1 = h - 1
    y = float(y0)
  else:
    y1 = y0 + 1
  if x0 >= w - 1:
    x0 = x1 = w - 1
    x = float(x0)
  else:
    x1 = x0 + 1
  ly, lx = y - y0, x - x0
  return ((1 - ly) * (1 - lx) * fmap[y0, x0] + (1 - ly) * lx * fmap[y0, x1]
          + ly * (1 - lx) * fmap[y1, x0] + ly * lx * fmap[y1, x1])


def _reference(fmap, box, out, scale, sampling_ratio, aligned):
  fmap = np.asarray(fmap, np.float64)
  off = 0.5 if aligned else 0.0
  x1, y1, x2, y2 = (float(v) * scale - off for v in box)
  rw, rh = x2 - x1, y2 - y1
  if not aligned:
    rw, rh = max(rw, 1.0), max(rh, 1.0)
  bh, bw = rh / out[0], rw / out[1]
  gh = sampling_ratio if sampling_ratio > 0 else int(math.ceil(rh / out[0]))
  gw = sampling_ratio if sampling_ratio > 0 else int(math.ceil(rw / out[1]))
  count = max(gh * gw, 1)
  res = np.zeros(out + (fmap.shape[2],))
  for ph in range(out[0]):
    for pw in range(out[1]):
      acc = np.zeros(fmap.shape[2])
      for iy in range(gh):
        y = y1 + ph * bh + (iy + 0.5) * bh / gh
        for ix in range(gw):
          x = x1 + pw * bw + (ix + 0.5) * bw / gw
          acc += _bilinear(fmap, y, x)
      res[ph, pw] = acc / count
  return res


# (box in input pixels with scale 1/4 on an 8x10 map, i.e. a 32x40 input)
CASES = {
    "interior": (5.0, 3.0, 29.0, 21.0),
    "full_image_edges": (0.0, 0.0, 40.0, 32.0),
    "on_pixel_edges": (4.0, 8.0, 12.0, 16.0),
    "sub_pixel": (10.3, 11.1, 11.2, 11.9),
    "degenerate_zero_size": (7.0, 7.0, 7.0, 7.0),
    "partly_outside": (-9.0, -5.0, 18.0, 40.0),  # samples beyond [-1, size]: they contribute 0
    "partly_outside_within_a_cell": (-3.0, -2.0, 18.0, 33.0),  # samples in [-1, 0): clamped to the edge
    "far_outside": (-40.0, -40.0, -20.0, -30.0),
}


@pytest.fixture(scope="module")
def fmap():
  return np.random.default_rng(0).normal(size=(8, 10, 3)).astype(np.float32)


@pytest.mark.parametrize("sampling_ratio", [0, 2, 3])
@pytest.mark.parametrize("aligned", [True, False])
def test_matches_numpy_reference(fmap, sampling_ratio, aligned):
  names = sorted(CASES)
  boxes = np.asarray([CASES[k] for k in names], np.float32)
  # Boxes larger than the map need an adaptive grid above the in-map default: pass one that covers them.
  grid = int(max(math.ceil(max((b[3] - b[1]) * 0.25 / 3, (b[2] - b[0]) * 0.25 / 4)) + 1 for b in boxes))
  got = np.asarray(detection.roi_align(jnp.asarray(fmap)[None], jnp.asarray(boxes)[None], (3, 4), 0.25,
                                       sampling_ratio, aligned, max_grid=grid))
  for i, name in enumerate(names):
    want = _reference(fmap, CASES[name], (3, 4), 0.25, sampling_ratio, aligned)
    np.testing.assert_allclose(got[0, i], want, rtol=1e-5, atol=1e-5, err_msg=name)


def test_default_grid_covers_boxes_inside_the_map(fmap):
  """Without max_grid the adaptive grid bound is ceil(map / out): exact for any box inside the input."""
  boxes = [CASES[k] for k in ("interior", "full_image_edges", "on_pixel_edges", "sub_pixel")]
  got = np.asarray(detection.roi_align(jnp.asarray(fmap)[None], jnp.asarray([boxes], jnp.float32), (3, 4), 0.25))
  for i, box in enumerate(boxes):
    np.testing.assert_allclose(got[0, i], _reference(fmap, box, (3, 4), 0.25, 0, True), rtol=1e-5, atol=1e-5)


def test_sampling_ratio_changes_the_result(fmap):
  """The sampling ratio is honoured (not a no-op): 1 and 4 samples per bin differ on a random map."""
  box = jnp.asarray([[CASES["interior"]]], jnp.float32)
  one = detection.roi_align(jnp.asarray(fmap)[None], box, (3, 4), 0.25, 1)
  four = detection.roi_align(jnp.asarray(fmap)[None], box, (3, 4), 0.25, 4)
  assert float(jnp.max(jnp.abs(one - four))) > 1e-3


def test_batched_boxes_use_their_own_example():
  """Example b's boxes read example b's map (a constant map per example gives that constant)."""
  maps = jnp.stack([jnp.full((6, 6, 2), float(v)) for v in (1.0, 5.0)])
  boxes = jnp.asarray([[[0, 0, 24, 24], [4, 4, 12, 20]], [[0, 0, 24, 24], [8, 2, 16, 9]]], jnp.float32)
  got = np.asarray(detection.roi_align(maps, boxes, (2, 2), 0.25))
  np.testing.assert_allclose(got[0], 1.0, rtol=1e-6)
  np.testing.assert_allclose(got[1], 5.0, rtol=1e-6)


def test_gradient_flows_to_features(fmap):
  box = jnp.asarray([[CASES["interior"]]], jnp.float32)
  g = jax.grad(lambda f: jnp.sum(detection.roi_align(f, box, (3, 4), 0.25)))(jnp.asarray(fmap)[None])
  # Each output bin's weights sum to 1 over the map (every sample inside): 12 bins x 3 channels.
  np.testing.assert_allclose(float(jnp.sum(g)), 12 * 3, rtol=1e-5)


def test_bad_shapes_are_one_line_errors():
  with pytest.raises(ValueError, match=r"boxes \(2, 4\)"):
    detection.roi_align(jnp.zeros((1, 4, 4, 2)), jnp.zeros((2, 4)), (2, 2), 1.0)


@pytest.mark.skipif(torch is None, reason="the torch extra is not installed")
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_matches_torchvision_aligned(fmap, sampling_ratio):
  # torchvision's Python fallback omits the compiled kernel's rule that a sample beyond [-1, size] counts 0
  # (detectron2's ROIAlign, which the official head uses, has it; the numpy reference above tests it), so
  # only boxes whose samples stay within one cell of the map are compared here.
  boxes = [CASES[k] for k in sorted(CASES) if k not in ("partly_outside", "far_outside")]
  feats = torch.from_numpy(np.transpose(fmap, (2, 0, 1))[None].astype(np.float64))
  rois = torch.tensor([[0.0] + list(b) for b in boxes], dtype=torch.float64)
  # torchvision's pure-PyTorch implementation (its compiled op does not load with the CPU torch build).
  want = tv_roi_align_module._roi_align(feats, rois, 0.25, 3, 4, sampling_ratio, True).numpy()
  got = np.asarray(detection.roi_align(jnp.asarray(fmap)[None], jnp.asarray([boxes], jnp.float32), (3, 4), 0.25,
                                       sampling_ratio, True))
  np.testing.assert_allclose(got[0], np.transpose(want, (0, 2, 3, 1)), rtol=1e-5, atol=1e-5)
