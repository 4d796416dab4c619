"""Tests for mixup / cutmix / label smoothing / soft cross-entropy (jnp)."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from maskfeat_jax.train import losses
from maskfeat_jax.train import mixup

K = 7


def _batch(b=6, t=3, h=16, w=20):
  # Example i is the constant i+1 everywhere, so every mixed pixel tells which example it came from.
  x = jnp.broadcast_to(jnp.arange(1, b + 1, dtype=jnp.uint8)[:, None, None, None, None], (b, t, h, w, 3))
  labels = jnp.array([0, 1, 2, 3, 4, 5][:b], jnp.int32)
  return x, labels


def _unsmooth(targets, s):
  return (np.asarray(targets) - s / K) / (1 - s)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cutmix_label_mass_matches_pasted_area(smoothing):
  x, labels = _batch()
  fn = jax.jit(functools.partial(mixup.mixup_cutmix, num_classes=K, mixup_alpha=0.0, cutmix_alpha=1.0,
                                 label_smoothing=smoothing))
  seen_partial = 0
  for seed in range(12):
    xm, soft = fn(jax.random.key(seed), x, labels)
    xm, soft = np.asarray(xm), np.asarray(soft)
    np.testing.assert_allclose(soft.sum(-1), 1.0, atol=1e-6)
    plain = _unsmooth(soft, smoothing)
    for i in range(6):
      j = 5 - i
      from_partner = (xm[i] == j + 1)
      assert np.all((xm[i] == i + 1) | from_partner)  # cutmix never blends pixels
      # Same box on every frame and channel.
      assert np.all(from_partner == from_partner[:1, :, :, :1])
      area = from_partner.mean()
      np.testing.assert_allclose(plain[i, labels[j]], area, atol=1e-5)
      np.testing.assert_allclose(plain[i, labels[i]], 1 - area, atol=1e-5)
      seen_partial += 0 < area < 1
  assert seen_partial > 10


def test_mixup_label_mass_matches_blend_weight():
  x, labels = _batch()
  fn = jax.jit(functools.partial(mixup.mixup_cutmix, num_classes=K, mixup_alpha=0.8, cutmix_alpha=0.0,
                                 label_smoothing=0.1))
  lams = []
  for seed in range(10):
    xm, soft = fn(jax.random.key(seed), x, labels)
    xm, soft = np.asarray(xm), np.asarray(soft)
    np.testing.assert_allclose(soft.sum(-1), 1.0, atol=1e-6)
    plain = _unsmooth(soft, 0.1)
    for i in range(6):
      a, b = i + 1, 6 - i  # own value and partner value
      lam = plain[i, labels[i]] if a != b else 1.0
      if a != b:
        np.testing.assert_allclose(xm[i], lam * a + (1 - lam) * b, rtol=1e-5)
        np.testing.assert_allclose(plain[i, labels[5 - i]], 1 - lam, atol=1e-5)
    lams.append(lam)
  assert np.std(lams) > 0.05  # lam is drawn per call


def test_switch_prob_and_prob():
  x, labels = _batch(h=32, w=32)
  fns = {}
  def kind(seed, **kw):
    key = tuple(sorted(kw.items()))
    if key not in fns:
      fns[key] = jax.jit(functools.partial(mixup.mixup_cutmix, num_classes=K, **kw))
    xm, _ = fns[key](jax.random.key(seed), x, labels)
    xm = np.asarray(xm[0])
    if np.all(xm == 1):
      return "none"
    return "cutmix" if np.all((xm == 1) | (xm == 6)) else "mixup"
  kinds = [kind(s, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5) for s in range(60)]
  n_cut = kinds.count("cutmix")
  assert 15 < n_cut < 45 and kinds.count("mixup") > 15
  assert {kind(s, mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.0) for s in range(5)} == {"none"}


def test_no_mixing_is_identity_with_smoothing():
  x, labels = _batch()
  xm, soft = mixup.mixup_cutmix(jax.random.key(0), x, labels, K, mixup_alpha=0.0, cutmix_alpha=0.0,
                                label_smoothing=0.1)
  np.testing.assert_array_equal(np.asarray(xm), np.asarray(x, np.float32))
  expect = np.full((6, K), 0.1 / K)
  expect[np.arange(6), np.asarray(labels)] += 0.9
  np.testing.assert_allclose(np.asarray(soft), expect, atol=1e-7)


def test_image_batches_work():
  x = jnp.arange(4 * 8 * 8 * 3, dtype=jnp.float32).reshape(4, 8, 8, 3)
  xm, soft = jax.jit(mixup.mixup_cutmix, static_argnums=3)(jax.random.key(1), x, jnp.arange(4), K)
  assert xm.shape == x.shape and soft.shape == (4, K)
  with pytest.raises(ValueError, match="labels"):
    mixup.mixup_cutmix(jax.random.key(1), x, jnp.arange(3), K)


def test_smooth_labels_and_soft_cross_entropy():
  t = losses.smooth_labels(jnp.array([2, 0]), 4, 0.2)
  np.testing.assert_allclose(np.asarray(t), [[0.05, 0.05, 0.85, 0.05], [0.85, 0.05, 0.05, 0.05]], atol=1e-7)
  logits = jnp.array([[1.0, 2.0, 3.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
  ref = -(np.asarray(t) * np.asarray(jax.nn.log_softmax(logits))).sum(-1)
  np.testing.assert_allclose(np.asarray(losses.soft_cross_entropy(logits, t, "none")), ref, rtol=1e-6)
  np.testing.assert_allclose(float(losses.soft_cross_entropy(logits, t)), ref.mean(), rtol=1e-6)
  # With one-hot targets it equals the integer-label cross-entropy.
  hard = losses.smooth_labels(jnp.array([2, 0]), 4, 0.0)
  ce = -np.asarray(jax.nn.log_softmax(logits))[[0, 1], [2, 0]]
  np.testing.assert_allclose(np.asarray(losses.soft_cross_entropy(logits, hard, "none")), ce, rtol=1e-6)


def test_arguments_from_config_augment():
  aug = ml_collections.ConfigDict(dict(mixup_alpha=0.0, cutmix_alpha=0.0, mixup_prob=1.0, switch_prob=0.5,
                                       label_smoothing=0.3))
  x, labels = _batch()
  xm, soft = mixup.mixup_cutmix(jax.random.key(0), x, labels, K, aug)
  np.testing.assert_array_equal(np.asarray(xm), np.asarray(x, np.float32))  # alphas 0 from the config
  np.testing.assert_allclose(np.asarray(soft).max(-1), 0.7 + 0.3 / K, atol=1e-6)
  # An explicit keyword wins over the config value.
  _, soft = mixup.mixup_cutmix(jax.random.key(0), x, labels, K, aug, label_smoothing=0.0)
  np.testing.assert_allclose(np.asarray(soft).max(-1), 1.0)
