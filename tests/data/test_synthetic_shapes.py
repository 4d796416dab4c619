"""synthetic_shapes (the demo's dataset): deterministic from its seed, class-balanced slices, labels = shape family,
nuisances independent of the class."""
import numpy as np
import pytest

from maskfeat_jax.config import base_config
from maskfeat_jax.data import pipeline
from maskfeat_jax.data import splits
from maskfeat_jax.data import storage
from maskfeat_jax.data import synthetic_shapes as shapes

SMALL = {"unlabeled": (24, 2), "train": (20, 2), "test": (8, 1)}  # a small copy: clips, shards


def _records(ds_dir, split):
  meta = storage.read_meta(ds_dir)
  src = storage.open_source(meta.files(split))
  return [storage.parse_video_record(src[i]) for i in range(len(src))]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  return shapes.generate(tmp_path_factory.mktemp("a"), splits=SMALL, workers=1)


def test_generated_splits_labels_and_frames(small):
  meta = storage.read_meta(small)
  assert meta.name == shapes.NAME and meta.class_names == shapes.CLASS_NAMES and not meta.image_mode
  assert meta.split_sizes == {s: n for s, (n, _) in SMALL.items()}
  recs = _records(small, "train")
  assert [r["video_id"] for r in recs] == [f"train_{i:05d}" for i in range(20)]  # index order over 2 shards
  assert [r["label"] for r in recs] == [i % 8 for i in range(20)]
  frames = [storage.decode_image(f) for f in recs[0]["frames"]]
  assert len(frames) == shapes.NUM_FRAMES and frames[0].shape == (shapes.HEIGHT, shapes.WIDTH, 3)
  assert recs[0]["fps"] == shapes.FPS


def test_every_multiple_of_8_slice_is_class_balanced():
  sizes = {s: n for s, (n, _) in shapes.SPLITS.items()}
  for split in ("unlabeled", "train", "test"):
    for n in (8, 80, 400):
      _, start, stop = splits.resolve_split(f"{split}[:{n}]", sizes)
      counts = np.bincount([shapes.label_of(i) for i in range(start, stop)], minlength=8)
      assert (counts == n // 8).all(), (split, n, counts)


def test_deterministic_from_seed_and_independent_of_workers(small, tmp_path):
  again = shapes.generate(tmp_path / "b", splits=SMALL, workers=2)  # two worker processes
  for split in SMALL:
    assert [r["frames"] for r in _records(again, split)] == [r["frames"] for r in _records(small, split)], split
  a = shapes.render_clip(shapes.clip_rng(0, "train", 3), 3)
  np.testing.assert_array_equal(a, shapes.render_clip(shapes.clip_rng(0, "train", 3), 3))
  assert not np.array_equal(a, shapes.render_clip(shapes.clip_rng(1, "train", 3), 3))  # the seed matters
  assert not np.array_equal(a, shapes.render_clip(shapes.clip_rng(0, "test", 3), 3))  # splits differ


def test_the_pipeline_generates_it_on_first_use(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setitem(pipeline.GENERATED, shapes.NAME,
                      lambda d: calls.append(d) or shapes.generate(d, splits=SMALL, workers=1))
  c = base_config()
  c.data.name, c.data.data_dir = shapes.NAME, str(tmp_path)
  info = pipeline.prepare_dataset(c)
  assert calls == [str(tmp_path)] and info.split_sizes["unlabeled"] == 24 and info.num_classes == 8


def test_shape_families_are_distinct_and_unknown_ones_fail():
  v, u = np.mgrid[-1.2:1.2:97j, -1.2:1.2:97j]
  masks = {f: shapes.shape_mask(f, u, v) for f in shapes.CLASS_NAMES}
  for f, m in masks.items():
    assert 0.15 < m.mean() < 0.6, f  # a solid object of about the foreground radius
  for i, f in enumerate(shapes.CLASS_NAMES):
    for g in shapes.CLASS_NAMES[i + 1:]:
      assert (masks[f] != masks[g]).mean() > 0.05, (f, g)
  with pytest.raises(KeyError, match="unknown shape family 'oval'"):
    shapes.shape_mask("oval", u, v)
  with pytest.raises(ValueError, match="unknown split 'validation'"):
    shapes.generate("/nonexistent", splits={"validation": (8, 1)})


def test_colour_does_not_give_the_class_away():
  """Clip-mean colour (a nuisance) predicts the class at about chance: the shape has to be recognised."""
  n = 160
  x = np.stack([shapes.render_clip(shapes.clip_rng(0, "unlabeled", i), shapes.label_of(i)).mean((0, 1, 2))
                for i in range(n)])
  y = np.array([shapes.label_of(i) for i in range(n)])
  train, test = np.arange(n) < n // 2, np.arange(n) >= n // 2
  centroids = np.stack([x[train & (y == k)].mean(0) for k in range(8)])
  pred = np.argmin(((x[test, None] - centroids[None]) ** 2).sum(-1), axis=1)
  assert (pred == y[test]).mean() < 0.3  # chance 0.125; 80 test clips
