"""Tests for multi-view evaluation: view aggregation, top-k, confusion matrix, evaluate() end to end."""
import itertools
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from maskfeat_jax.eval import multiview as ev
from maskfeat_jax.eval import report
from maskfeat_jax.config import base_config
from maskfeat_jax.data import eval_pipeline, pipeline
from maskfeat_jax.models import factory
from maskfeat_jax.models import layouts


# ------------------------------------------------------------------------------------------ pure helpers
def test_aggregate_views_averages_per_example_and_ignores_padding():
  probs = np.array([[0.6, 0.4], [0.2, 0.8], [0.9, 0.1], [0.0, 1.0], [0.5, 0.5]])
  ids = np.array([7, 3, 7, 3, 0])
  labels = np.array([0, 1, 0, 1, 0])
  valid = np.array([True, True, True, True, False])  # last row is padding (its id 0 never appears)
  r = ev.aggregate_views(probs, labels, ids, valid)
  np.testing.assert_array_equal(r.example_ids, [7, 3])
  np.testing.assert_allclose(r.values, [[0.75, 0.25], [0.1, 0.9]])
  np.testing.assert_array_equal(r.labels, [0, 1])
  np.testing.assert_array_equal(r.num_views, [2, 2])


def test_accumulator_streams_batches_like_one_call():
  rng = np.random.default_rng(0)
  n, views, c = 37, 3, 5
  probs = rng.random((n * views, c))
  ids = np.tile(np.arange(n) * 10 + 1, views)
  labels = np.tile(rng.integers(0, c, n), views)
  perm = rng.permutation(n * views)
  probs, ids, labels = probs[perm], ids[perm], labels[perm]
  acc = ev.ViewAccumulator()
  for s in range(0, n * views, 8):  # batches split views of an example across batches
    acc.add(probs[s:s + 8], labels[s:s + 8], ids[s:s + 8], np.ones(len(ids[s:s + 8]), bool))
  r = acc.result()
  whole = ev.aggregate_views(probs, labels, ids)
  order = np.argsort(r.example_ids)
  order_w = np.argsort(whole.example_ids)
  np.testing.assert_allclose(r.values[order], whole.values[order_w])
  assert (r.num_views == views).all()
  for i, eid in enumerate(r.example_ids):
    np.testing.assert_allclose(r.values[i], probs[ids == eid].mean(0))


def test_aggregate_rejects_inconsistent_labels():
  with pytest.raises(ValueError, match="example_id 4"):
    ev.aggregate_views(np.ones((2, 3)), [0, 1], [4, 4])


def test_topk_accuracy():
  scores = np.array([[0.1, 0.5, 0.2, 0.15, 0.05],
                     [0.3, 0.1, 0.2, 0.25, 0.15],
                     [0.2, 0.2, 0.2, 0.2, 0.2]])
  labels = np.array([1, 2, 4])
  acc = ev.topk_accuracy(scores, labels, (1, 2, 3, 5))
  assert acc[1] == pytest.approx(1 / 3)  # only row 0
  assert acc[2] == pytest.approx(1 / 3)  # row 1: class 2 ranks 3rd
  assert acc[3] == pytest.approx(2 / 3)
  assert acc[5] == pytest.approx(1.0)
  assert ev.topk_accuracy(scores[:, :3], np.array([1, 2, 0]), (5,))[5] == 1.0  # k capped at C


def test_confusion_matrix_and_per_class_accuracy():
  labels = np.array([0, 0, 1, 1, 1, 2])
  preds = np.array([0, 1, 1, 1, 0, 1])
  cm = report.confusion_matrix(labels, preds, 4)
  expect = np.zeros((4, 4), int)
  expect[0, 0] = expect[0, 1] = expect[1, 0] = expect[2, 1] = 1
  expect[1, 1] = 2
  np.testing.assert_array_equal(cm, expect)
  pca = report.per_class_accuracy(cm)
  np.testing.assert_allclose(pca[:3], [0.5, 2 / 3, 0.0])
  assert np.isnan(pca[3])  # no examples of class 3
  with pytest.raises(ValueError, match="predictions"):
    report.confusion_matrix(labels, preds + 5, 4)


# ------------------------------------------------------------------------------------------ evaluate()
class TinyClassifier(nn.Module):
  """Mean colour → linear logits; `features` = mean colour (the model contract's two methods)."""
  num_classes: int = 3

  def features(self, x):
    return jnp.mean(x.astype(jnp.float32) / 255.0, axis=tuple(range(1, x.ndim - 1)))

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(self.num_classes, name="head")(self.features(x))


def _config(num_clips=2, num_crops=1, batch=4):
  c = base_config()
  c.mode = "eval"
  c.eval.num_clips, c.eval.num_crops, c.eval.batch_size = num_clips, num_crops, batch
  return c


def _mesh():
  return Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"),
              axis_types=(jax.sharding.AxisType.Auto,) * 2)


def _views_iterator(labels, num_views, batch, t=2, hw=4, seed=0):
  """Eval-iterator layout: one row per view, padded to full batches with valid = False."""
  rng = np.random.default_rng(seed)
  rows = []
  for eid, lab in enumerate(labels):
    for v in range(num_views):
      colour = np.zeros(3)
      colour[lab] = 200 + rng.integers(-40, 40)
      video = np.broadcast_to(colour, (t, hw, hw, 3)).astype(np.uint8)
      rows.append(dict(video=video, label=lab, example_id=eid * 3 + 11, view=v, valid=True))
  while len(rows) % batch:
    rows.append(dict(rows[0], valid=False, label=0, example_id=-1))
  for s in range(0, len(rows), batch):
    chunk = rows[s:s + batch]
    yield {k: np.stack([np.asarray(r[k]) for r in chunk]) for k in chunk[0]}


def _params(num_classes=3):
  # Logit of class k = 10 * (mean colour channel k): the right class wins unless a view is ambiguous.
  return {"head": {"kernel": jnp.eye(3, num_classes) * 10.0, "bias": jnp.zeros((num_classes,))}}


def test_evaluate_end_to_end_with_reports(tmp_path, capsys):
  labels = [0, 1, 2, 1, 0]
  config = _config(num_clips=3, num_crops=1, batch=4)
  out = ev.evaluate(config, TinyClassifier(), _params(), _mesh(), "test", workdir=str(tmp_path),
                    iterator=_views_iterator(labels, 3, 4))
  assert out["top1"] == 1.0 and out["top5"] == 1.0
  assert out["num_examples"] == 5 and out["num_views"] == 3 and out["min_views"] == out["max_views"] == 3
  assert out["per_class_accuracy"] == [1.0, 1.0, 1.0]
  printed = capsys.readouterr().out
  for line in printed.splitlines()[1:-1]:
    assert "3 views (3 clips x 1 crop)" in line  # every number carries the view count
  cm = json.load(open(tmp_path / "eval_test" / "confusion_matrix.json"))
  np.testing.assert_array_equal(cm["matrix"], np.diag([2, 2, 1]))
  assert os.path.getsize(tmp_path / "eval_test" / "confusion_matrix.png") > 1000
  metrics = json.load(open(tmp_path / "eval_test" / "metrics.json"))
  assert metrics["top1"] == 1.0 and metrics["views"].startswith("3 views")


def test_evaluate_averages_softmax_over_views():
  # Example 0 (label 0): view A says class 0 weakly, view B says class 1 strongly → the average picks 1.
  config = _config(num_clips=2, batch=2)
  va = np.zeros((1, 2, 4, 4, 3), np.uint8)
  va[..., 0], va[..., 1] = 60, 50
  vb = np.zeros((1, 2, 4, 4, 3), np.uint8)
  vb[..., 1] = 250
  batch = dict(video=np.concatenate([va, vb]), label=np.array([0, 0]), example_id=np.array([5, 5]),
               view=np.array([0, 1]), valid=np.array([True, True]))
  out = ev.evaluate(config, TinyClassifier(), _params(), _mesh(), "test", iterator=[batch], verbose=False)
  assert out["top1"] == 0.0 and out["top5"] == 1.0
  # Only view A: correct.
  single = {k: v[:1] for k, v in batch.items()}
  single = {k: np.concatenate([v, v]) for k, v in single.items()}
  single["valid"] = np.array([True, False])
  out = ev.evaluate(config, TinyClassifier(), _params(), _mesh(), "test", iterator=[single], verbose=False)
  assert out["top1"] == 1.0 and out["min_views"] == 1


def test_evaluate_batch_size_error_names_key():
  config = _config(batch=0)
  with pytest.raises(ValueError, match="config.eval.batch_size=0"):
    ev.evaluate(config, TinyClassifier(), _params(), _mesh(), "test", iterator=[])


# ------------------------------------------------------------------------------ with the real eval iterator
def _synthetic_config(num_clips=2, batch=8):
  c = _config(num_clips=num_clips, num_crops=1, batch=batch)
  c.data.name = "synthetic_motion"  # generated into config.data.data_dir on first use (~10 s, then cached)
  c.data.crop_size = 64
  c.data.test_short_side = 64
  c.data.num_workers = 0
  return c


class TinyConvNet(nn.Module):
  """A throwaway video classifier: strided conv over (t, h, w), mean pool, linear head."""
  num_classes: int = 8

  def features(self, x):
    x = x.astype(jnp.float32) / 255.0
    x = nn.Conv(8, (2, 8, 8), strides=(2, 8, 8), name="conv")(x)
    return jnp.mean(nn.relu(x), axis=(1, 2, 3))

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(self.num_classes, name="head")(self.features(x))


def test_evaluate_with_real_eval_iterator_matches_plain_loop(tmp_path):
  config = _synthetic_config(num_clips=2, batch=8)
  model = TinyConvNet()
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16, 64, 64, 3), jnp.uint8))["params"]
  info = pipeline.prepare_dataset(config)
  out = ev.evaluate(config, model, params, _mesh(), "test", workdir=str(tmp_path), verbose=False,
                    class_names=info.class_names)
  assert out["num_examples"] == info.split_sizes["test"] == 160
  assert out["num_views"] == out["min_views"] == out["max_views"] == 2
  cm = json.load(open(tmp_path / "eval_test" / "confusion_matrix.json"))
  assert np.sum(cm["matrix"]) == 160 and cm["class_names"] == list(info.class_names)
  # Reference: a plain per-view loop over the same iterator, softmax averaged per example in numpy.
  apply = jax.jit(lambda x: jax.nn.softmax(model.apply({"params": params}, x)))
  sums, labels = {}, {}
  for batch in eval_pipeline.make_eval_iterator(config, "test", batch_size=8):
    probs = np.asarray(apply(batch["video"]))
    for p, lab, eid, ok in zip(probs, batch["label"], batch["example_id"], batch["valid"]):
      if ok:
        sums[int(eid)] = sums.get(int(eid), 0) + p / 2
        labels[int(eid)] = int(lab)
  ids = sorted(sums)
  ref = ev.topk_accuracy(np.stack([sums[i] for i in ids]), np.array([labels[i] for i in ids]), (1, 5))
  assert out["top1"] == pytest.approx(ref[1]) and out["top5"] == pytest.approx(ref[5])


def test_evaluate_tiny_mvit_with_real_eval_iterator(tmp_path):
  """The real tiny MViT classifier (layout 'mvit_tiny_ft') end to end: 1 clip x 1 crop on synthetic_motion."""
  config = _synthetic_config(num_clips=1, batch=8)
  config.model = layouts.get_model_config("mvit_tiny_ft")
  config.model.num_classes = 8
  config.mask.type = "none"
  model = factory.build_model(config)
  # Shapes from eval_shape (no init compile); random values suffice to exercise the real forward.
  shapes = factory.param_shapes(config, model)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(0.05 * rng.standard_normal(s.shape), s.dtype), shapes)
  batches = itertools.islice(eval_pipeline.make_eval_iterator(config, "test", batch_size=8), 2)  # 16 of 160 examples
  out = ev.evaluate(config, model, params, _mesh(), "test", workdir=str(tmp_path), iterator=batches)
  assert out["num_examples"] == 16 and out["num_views"] == 1 and out["min_views"] == 1
  assert 0.0 <= out["top1"] <= out["top5"] <= 1.0 and np.isfinite(out["nll"])
  assert (tmp_path / "eval_test" / "confusion_matrix.png").is_file()


_SHARDED_SCRIPT = r"""
import json, sys
import numpy as np, jax, jax.numpy as jnp
from jax.sharding import Mesh
from tests.eval import test_multiview as t
from maskfeat_jax.eval import multiview as ev
from maskfeat_jax.eval import report
assert jax.device_count() == 4, jax.devices()
mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "fsdp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
labels = [0, 1, 2, 2, 1, 0, 1]
config = t._config(num_clips=3, num_crops=1, batch=8)
out = ev.evaluate(config, t.TinyClassifier(), t._params(), mesh, "test",
                  iterator=t._views_iterator(labels, 3, 8, seed=3), verbose=False)
print(json.dumps({k: out[k] for k in ("top1", "top5", "num_examples", "min_views", "nll")}))
"""


@pytest.mark.slow
def test_evaluate_sharded_over_four_devices_equals_one_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], env=env, capture_output=True, text=True,
                        timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  assert proc.returncode == 0, proc.stderr[-3000:]
  sharded = json.loads(proc.stdout.strip().splitlines()[-1])
  labels = [0, 1, 2, 2, 1, 0, 1]
  single = ev.evaluate(_config(num_clips=3, num_crops=1, batch=8), TinyClassifier(), _params(), _mesh(), "test",
                       iterator=_views_iterator(labels, 3, 8, seed=3), verbose=False)
  assert sharded["num_examples"] == 7 and sharded["min_views"] == 3
  for k in ("top1", "top5", "nll"):
    assert sharded[k] == pytest.approx(single[k], rel=1e-5), k
