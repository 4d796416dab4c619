"""HOG / pixel targets: parity with the official HOGLayerC outputs, exactness, geometry, jit."""
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from maskfeat_jax import targets

GOLDEN_CASES = [  # (input key, output key, gaussian_window)
    ("x_64x96", "hog_64x96", 0),
    ("x_224", "hog_224", 0),
    ("x_224", "hog_224_gauss16", 16),
    ("x_pattern", "hog_pattern", 0),
]


@pytest.fixture(scope="module")
def golden_hog(golden_dir):
  with np.load(golden_dir / "hog.npz") as f:
    return {k: f[k] for k in f.files}


def _reference_hog(img: np.ndarray, nbins: int = 9, cell: int = 8) -> np.ndarray:
  """Independent float64 numpy port of the official HOGLayerC (conv kernels + atan2) on [H, W, C]."""
  p = np.pad(img.astype(np.float64), ((1, 1), (1, 1), (0, 0)), mode="reflect")
  kx = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float64)
  h, w, c = img.shape
  gx = sum(kx[i, j] * p[i:i + h, j:j + w] for i in range(3) for j in range(3))
  gy = sum(kx.T[i, j] * p[i:i + h, j:j + w] for i in range(3) for j in range(3))
  mag = np.hypot(gx, gy)
  bins = np.mod(np.floor(np.arctan2(gx, gy) / np.pi * nbins), nbins).astype(int)
  hist = np.zeros((h // cell, w // cell, c, nbins))
  for y in range(h // cell * cell):
    for x in range(w // cell * cell):
      for ch in range(c):
        hist[y // cell, x // cell, ch, bins[y, x, ch]] += mag[y, x, ch]
  return hist / np.maximum(np.linalg.norm(hist, axis=-1, keepdims=True), 1e-12)


@pytest.mark.parametrize("xkey,hkey,gauss", GOLDEN_CASES)
def test_hog_matches_official(golden_hog, xkey, hkey, gauss):
  x = np.transpose(golden_hog[xkey], (0, 2, 3, 1))  # NCHW -> NHWC
  want = np.transpose(golden_hog[hkey], (0, 3, 4, 1, 2))  # [N, RGB, bin, r, c] -> [N, r, c, RGB, bin]
  got = np.asarray(targets.hog(x, gaussian_window=gauss))
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_gaussian_window_changes_output(golden_hog):
  # Guards the parametrised Gaussian case against silently ignoring the window.
  x = np.transpose(golden_hog["x_224"], (0, 2, 3, 1))
  plain, gauss = targets.hog(x), targets.hog(x, gaussian_window=16)
  assert float(jnp.abs(plain - gauss).max()) > 1e-2


@pytest.mark.parametrize("image_fn,expected_bin", [
    (lambda r, c: c, 4),  # horizontal ramp
    (lambda r, c: r, 0),  # vertical ramp
    (lambda r, c: r + c, 2),
    (lambda r, c: c - r + 40, 6),
])
def test_ramp_sanity_vectors(image_fn, expected_bin):
  r, c = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
  img = np.repeat(image_fn(r, c)[..., None], 3, axis=-1).astype(np.uint8)
  out = np.asarray(targets.hog(img))
  want = np.zeros(9, np.float32)
  want[expected_bin] = 1.0
  for ch in range(3):
    # One-hot up to the rounding of x / ||x|| (0.99999994 for some magnitudes).
    np.testing.assert_allclose(out[1:3, 1:3, ch], np.broadcast_to(want, (2, 2, 9)), rtol=0, atol=1e-6)


def test_ramp_border_has_zero_gradient_across_reflection():
  # Reflect padding: the 1-px border of a horizontal ramp has no x-gradient, so a 2-px-wide image
  # column pair at the border contributes nothing; a 16x16 ramp still gives bin 4 in every cell.
  img = np.tile(np.arange(16, dtype=np.uint8)[None, :, None], (16, 1, 3))
  out = np.asarray(targets.hog(img, cell_size=8))
  np.testing.assert_array_equal(np.argmax(out, -1), np.full((2, 2, 3), 4))


def test_flat_image_gives_all_zero_target():
  img = np.full((2, 32, 48, 3), 117, np.uint8)
  np.testing.assert_array_equal(np.asarray(targets.hog(img)), 0.0)
  np.testing.assert_array_equal(np.asarray(targets.hog_token_targets(img)), 0.0)


def test_raw_uint8_is_exact_against_float64_reference():
  rng = np.random.default_rng(0)
  # Blocky image: flat regions, horizontal/vertical edges (exact orientation boundaries) and noise.
  img = np.kron(rng.integers(0, 4, (5, 6, 3)), np.ones((8, 8, 1))) * 60
  img[16:32, 16:40] = rng.integers(0, 256, (16, 24, 3))
  img = img.astype(np.uint8)
  got = np.asarray(targets.hog(img))
  want = _reference_hog(img)
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
  # Same values given as float32 0-255 give the identical result.
  np.testing.assert_array_equal(got, np.asarray(targets.hog(img.astype(np.float32))))


def test_jit_matches_eager_and_batch_dims():
  rng = np.random.default_rng(1)
  x = rng.integers(0, 256, (2, 3, 16, 24, 3), dtype=np.uint8)
  with jax.disable_jit():  # op by op
    eager = np.asarray(targets.hog(x))
  jitted = np.asarray(jax.jit(lambda v: targets.hog(v) * 1.0)(x))
  assert jitted.shape == (2, 3, 2, 3, 3, 9)
  np.testing.assert_allclose(jitted, eager, atol=1e-6)
  # Leading dims are independent images.
  np.testing.assert_allclose(jitted[1, 2], np.asarray(targets.hog(x[1, 2])), atol=1e-6)


def test_no_gradient_flows():
  x = jnp.asarray(np.random.default_rng(2).uniform(0, 255, (16, 16, 3)), jnp.float32)
  g = jax.grad(lambda v: jnp.sum(targets.hog(v) ** 2 * jnp.arange(9)))(x)
  np.testing.assert_array_equal(np.asarray(g), 0.0)


def _token_vector_from_hog(cells: np.ndarray, i: int, j: int, u: int) -> np.ndarray:
  """Vector of token (i, j) from per-cell HOG [hc, wc, 3, 9], order (channel, bin, cell_row, cell_col)."""
  block = cells[i * u:(i + 1) * u, j * u:(j + 1) * u]  # [cy, cx, c, bin]
  return np.transpose(block, (2, 3, 0, 1)).reshape(-1)


def test_video_token_targets_geometry_and_frame_selection():
  rng = np.random.default_rng(3)
  x = rng.integers(0, 256, (2, 6, 32, 48, 3), dtype=np.uint8)
  out = np.asarray(targets.hog_token_targets(x, feature_stride=16, temporal_stride=2))
  assert out.shape == (2, 3, 2, 3, 108)
  for b in range(2):
    for t in range(3):
      cells = np.asarray(targets.hog(x[b, 2 * t]))  # frames 0, 2, 4
      for i in range(2):
        for j in range(3):
          np.testing.assert_array_equal(out[b, t, i, j], _token_vector_from_hog(cells, i, j, 2))
  # Odd frames are not used.
  x2 = x.copy()
  x2[:, 1::2] = 0
  np.testing.assert_array_equal(np.asarray(targets.hog_token_targets(x2)), out)
  # Odd T: ceil(T/2) frames, as the official x[:, :, ::2] (and as many temporal tokens as the patch embedding).
  np.testing.assert_array_equal(np.asarray(targets.hog_token_targets(x[:, :5], temporal_stride=2)), out)


@pytest.mark.parametrize("stride,dim", [(8, 27), (16, 108), (32, 432)])
def test_image_token_targets_geometry(stride, dim):
  rng = np.random.default_rng(4)
  x = rng.integers(0, 256, (2, 64, 32, 3), dtype=np.uint8)
  out = np.asarray(targets.hog_token_targets(x, feature_stride=stride))
  u = stride // 8
  assert out.shape == (2, 64 // stride, 32 // stride, dim)
  cells = np.asarray(targets.hog(x[1]))
  np.testing.assert_array_equal(out[1, 1, 0], _token_vector_from_hog(cells, 1, 0, u))
  cfg = ml_collections.ConfigDict(dict(type="hog", nbins=9, cell_size=8, gaussian_window=0))
  assert targets.target_dim(cfg, stride) == dim
  np.testing.assert_array_equal(np.asarray(targets.token_targets(x, cfg, stride, 2)), out)


@pytest.mark.parametrize("call,shape", [
    (lambda x: targets.hog(x), (16, 16, 4)),  # not RGB
    (lambda x: targets.hog(x, gaussian_window=16), (24, 24, 3)),  # window does not divide
    (lambda x: targets.hog_token_targets(x), (1, 24, 32, 3)),  # H not a multiple of the stride
    (lambda x: targets.hog_token_targets(x, feature_stride=12), (1, 48, 48, 3)),  # not whole cells
    (lambda x: targets.pixel_token_targets(x), (32, 32, 3)),  # no batch dim
])
def test_bad_inputs_raise(call, shape):
  with pytest.raises(ValueError):
    call(np.zeros(shape, np.uint8))


def test_pixel_targets_order_and_normalisation():
  rng = np.random.default_rng(5)
  video = rng.integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)
  out = np.asarray(targets.pixel_token_targets(video, feature_stride=16, temporal_stride=2))
  assert out.shape == (2, 2, 2, 2, 768)
  patch = video[1, 2, 16:32, 0:16].astype(np.float64)  # frame 2 = temporal token 1; token (1, 0)
  v = patch.reshape(-1)  # (row, col, channel), channel fastest
  want = (v - v.mean()) / np.sqrt(v.var(ddof=1) + 1e-6)
  np.testing.assert_allclose(out[1, 1, 1, 0], want, atol=1e-5)
  np.testing.assert_allclose(out.mean(-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(out.var(-1, ddof=1), 1.0, atol=1e-4)

  image = video[:, 0]
  out2 = np.asarray(targets.pixel_token_targets(image, feature_stride=16))
  assert out2.shape == (2, 2, 2, 768)
  v2 = np.transpose(image[0, 0:16, 16:32].astype(np.float64), (2, 0, 1)).reshape(-1)  # (c, row, col)
  np.testing.assert_allclose(out2[0, 0, 1], (v2 - v2.mean()) / np.sqrt(v2.var(ddof=1) + 1e-6), atol=1e-5)
  # A flat patch normalises to zeros, not NaN.
  np.testing.assert_array_equal(np.asarray(targets.pixel_token_targets(np.zeros((1, 16, 16, 3)))), 0.0)


def test_token_targets_dispatch_and_dims():
  cfg = ml_collections.ConfigDict(dict(type="pixel", nbins=9, cell_size=8, gaussian_window=0))
  x = np.random.default_rng(6).integers(0, 256, (1, 2, 32, 32, 3), dtype=np.uint8)
  out = targets.token_targets(x, cfg, 16, 2)
  assert out.shape[-1] == targets.target_dim(cfg, 16) == 768
  cfg.type = "dvae"
  with pytest.raises(ValueError, match="dvae"):
    targets.token_targets(x, cfg, 16, 2)
  with pytest.raises(ValueError, match="dvae"):
    targets.target_dim(cfg, 16)


def test_gaussian_weights_formula():
  w = targets.gaussian_weights(4, 8, 4)
  n = (np.arange(4) - 1.5) / 2
  k = np.outer(np.exp(-0.5 * n**2), np.exp(-0.5 * n**2))
  k /= k.sum()
  np.testing.assert_allclose(w, np.tile(k, (2, 1)), rtol=1e-6)
  assert math.isclose(float(w[:4].sum()), 1.0, rel_tol=1e-6)


def test_works_with_jax_enable_x64(tmp_path):
  """Users who turn on x64 (e.g. for float64 checks) still get float32 targets, equal to the default ones."""
  code = ("import numpy as np; from maskfeat_jax import targets\n"
          "x = np.random.default_rng(0).integers(0, 256, (1, 4, 32, 32, 3), dtype=np.uint8)\n"
          f"np.save({str(tmp_path / 'x64.npy')!r}, np.asarray(targets.hog_token_targets(x)))\n")
  env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, timeout=120, check=False)
  assert out.returncode == 0, out.stderr.decode()[-2000:]
  got = np.load(tmp_path / "x64.npy")
  x = np.random.default_rng(0).integers(0, 256, (1, 4, 32, 32, 3), dtype=np.uint8)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, np.asarray(targets.hog_token_targets(x)), rtol=0, atol=1e-6)
