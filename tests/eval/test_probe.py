"""Tests for the linear probe: the classifier learns a separable toy problem; features are view-averaged."""
import itertools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from maskfeat_jax.eval import probe
from maskfeat_jax.config import base_config
from maskfeat_jax.data import eval_pipeline
from maskfeat_jax.models import factory
from maskfeat_jax.models import layouts


def test_linear_classifier_learns_separable_blobs():
  rng = np.random.default_rng(0)
  centres = rng.normal(0, 3, (4, 8))
  y = rng.integers(0, 4, 400)
  x = centres[y] + rng.normal(0, 0.5, (400, 8))
  for batch_size in (0, 64):
    w, loss = probe.train_linear_classifier(x, y, 4, steps=150, lr=0.05, batch_size=batch_size)
    acc = np.mean(probe.predict_scores(w, x).argmax(1) == y)
    assert acc > 0.97 and loss < 0.3, (batch_size, acc, loss)


def test_linear_classifier_cannot_fit_random_labels_with_few_steps():
  # Guards against a probe that "learns" by leaking labels: random labels on noise stay near chance held-out.
  rng = np.random.default_rng(1)
  x = rng.normal(size=(600, 16))
  y = rng.integers(0, 4, 600)
  w, _ = probe.train_linear_classifier(x[:300], y[:300], 4, steps=100, lr=0.05)
  held_out = np.mean(probe.predict_scores(w, x[300:]).argmax(1) == y[300:])
  assert held_out < 0.4


class ColourFeatures(nn.Module):
  """features = per-channel mean colour; the class is which channel dominates (linearly separable)."""

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(3)(self.features(x))

  def features(self, x):
    return jnp.mean(x.astype(jnp.float32) / 255.0, axis=(1, 2, 3))


def _iterator(n, num_views, batch, seed):
  rng = np.random.default_rng(seed)
  rows = []
  for eid in range(n):
    lab = int(rng.integers(0, 3))
    for v in range(num_views):
      colour = rng.integers(0, 120, 3)
      colour[lab] += 100
      video = np.broadcast_to(colour, (2, 4, 4, 3)).astype(np.uint8)
      rows.append(dict(video=video, label=lab, example_id=eid, view=v, valid=True))
  while len(rows) % batch:
    rows.append(dict(rows[0], valid=False, example_id=-1))
  return [{k: np.stack([np.asarray(r[k]) for r in rows[s:s + batch]]) for k in rows[0]}
          for s in range(0, len(rows), batch)]


def test_linear_probe_end_to_end(tmp_path, capsys):
  config = base_config()
  config.mode = "probe"
  config.eval.batch_size = 8
  config.probe.num_clips = 2
  config.probe.steps = 200
  config.probe.lr = 0.05
  mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"),
              axis_types=(jax.sharding.AxisType.Auto,) * 2)
  model = ColourFeatures()
  params = model.init(jax.random.key(0), jnp.zeros((1, 2, 4, 4, 3), jnp.uint8))["params"]
  out = probe.linear_probe(config, model, params, mesh, workdir=str(tmp_path),
                           train_iterator=_iterator(60, 2, 8, 0), eval_iterator=_iterator(30, 2, 8, 1))
  assert out["num_train"] == 60 and out["num_eval"] == 30 and out["feature_dim"] == 3
  assert out["num_views"] == 2
  assert out["top1"] > 0.9 and out["train_top1"] > 0.9
  saved = json.load(open(tmp_path / "probe_test.json"))
  assert saved["top1"] == pytest.approx(out["top1"])
  printed = capsys.readouterr().out
  assert printed.count("2 views (2 clips x 1 crop)") == 3


def test_probe_config_uses_probe_views():
  config = base_config()
  config.eval.num_clips, config.probe.num_clips, config.probe.num_crops = 10, 2, 3
  c = probe.probe_config(config)
  assert (c.eval.num_clips, c.eval.num_crops) == (2, 3)
  assert config.eval.num_clips == 10  # the original is untouched


def test_linear_probe_tiny_maskfeat_with_real_eval_iterator():
  """The real tiny MaskFeat model's `features` on synthetic_motion through the real eval iterator."""
  config = base_config()
  config.mode = "probe"
  config.model = layouts.get_model_config("maskfeat_mvit_tiny")
  config.mask.grid = (8, 2, 2)
  config.data.crop_size, config.data.test_short_side, config.data.num_workers = 64, 64, 0
  config.eval.batch_size = 8
  config.probe.steps = 20
  model = factory.build_model(config)
  shapes = factory.param_shapes(config, model)  # jax.eval_shape of init on (1, 16, 64, 64, 3) and its mask
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(0.05 * rng.standard_normal(s.shape), s.dtype), shapes)
  mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"),
              axis_types=(jax.sharding.AxisType.Auto,) * 2)
  train = itertools.islice(eval_pipeline.make_eval_iterator(config, "train", batch_size=8), 3)
  test = itertools.islice(eval_pipeline.make_eval_iterator(config, "test", batch_size=8), 1)
  out = probe.linear_probe(config, model, params, mesh, train_iterator=train, eval_iterator=test, verbose=False)
  assert out["num_train"] == 24 and out["num_eval"] == 8 and out["num_views"] == 1
  assert out["feature_dim"] == model_width(config) and np.isfinite(out["final_loss"])
  assert 0.0 <= out["top1"] <= out["top5"] <= 1.0


def model_width(config):
  """Width of the last block: embed_dim doubled at every dim_mul stage."""
  w = config.model.embed_dim
  for _, mul in config.model.dim_mul:
    w = int(w * mul)
  return w
