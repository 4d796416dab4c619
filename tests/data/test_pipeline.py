"""Grain pipeline over the embedded synthetic_motion dataset: batches, determinism, state, sharding, eval views,
corrupt records, image mode, and the dataset's own properties (deterministic; class = motion, not appearance)."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from maskfeat_jax.config import base_config
from maskfeat_jax.data import eval_pipeline
from maskfeat_jax.data import pipeline
from maskfeat_jax.data import synthetic
from maskfeat_jax.data import splits
from maskfeat_jax.data import storage
from maskfeat_jax.data import transforms


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("data")
  synthetic.generate(d)
  return d


def tiny_config(data_dir, mode="pretrain", **data):
  c = base_config()
  c.mode = mode
  c.batch_size = 4
  c.data.data_dir = str(data_dir)
  c.data.num_frames = 8
  c.data.sampling_rate = 4
  c.data.crop_size = 48
  c.data.train_jitter_scales = (48, 64)
  c.data.test_short_side = 56
  c.data.num_workers = 0
  c.mask.grid = (4, 3, 3)
  c.eval.batch_size = 5
  for k, v in data.items():
    setattr(c.data, k, v)
  return c


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ----------------------------------------------------------------------------------------------- dataset
def test_prepare_dataset_generates_synthetic_once(data_dir):
  info = pipeline.prepare_dataset(tiny_config(data_dir))
  assert info.num_classes == 8 and info.class_names == synthetic.CLASS_NAMES
  assert info.split_sizes == {"train": 400, "test": 160} and not info.image_mode
  assert "tensorflow" not in sys.modules
  with pytest.raises(FileNotFoundError, match="nonexistent"):
    pipeline.prepare_dataset(tiny_config(data_dir, name="nonexistent"))
  with pytest.raises(ValueError, match="image_mode"):
    pipeline.prepare_dataset(tiny_config(data_dir, image_mode=True))


def test_synthetic_is_deterministic_and_stored_as_rendered(data_dir):
  a = synthetic.render_clip(synthetic.clip_rng(0, "train", 17), 1)
  b = synthetic.render_clip(synthetic.clip_rng(0, "train", 17), 1)
  np.testing.assert_array_equal(a, b)
  assert a.shape == (32, 64, 80, 3) and a.dtype == np.uint8
  assert not np.array_equal(a, synthetic.render_clip(synthetic.clip_rng(1, "train", 17), 1))
  meta = storage.read_meta(storage.dataset_dir(data_dir, "synthetic_motion", synthetic.VERSION))
  source = storage.open_source(meta.files("train"))
  # Records are in clip-index order across the 4 shards (100 each): record i is clip i.
  rec = storage.parse_video_record(source[17])
  assert rec["video_id"] == "train_00017" and rec["label"] == synthetic.label_of(17) == 1
  assert storage.parse_video_record(source[250])["video_id"] == "train_00250"
  assert rec["fps"] == 30.0 and len(rec["frames"]) == 32
  stored = np.stack([storage.decode_image(f) for f in rec["frames"]]).astype(np.float32)
  assert np.abs(stored - a).mean() < 6.0  # JPEG error only


def _appearance_features(clips, rng):
  """One random frame per clip: 8x8 colour thumbnail + per-channel histograms."""
  frames = clips[np.arange(len(clips)), rng.integers(0, clips.shape[1], len(clips))].astype(np.float32)
  n, h, w, _ = frames.shape
  thumb = frames.reshape(n, 8, h // 8, 8, w // 8, 3).mean((2, 4)).reshape(n, -1) / 255
  hist = np.stack([np.histogram(f[..., c], bins=8, range=(0, 256))[0] for f in frames for c in range(3)])
  return np.concatenate([thumb, hist.reshape(n, -1) / (h * w)], 1)


def _motion_features(clips):
  """Normal-flow moments: mean flow (x, y), curl and divergence about the moving region's centroid."""
  g = clips.astype(np.float32).mean(-1)
  gy, gx = np.gradient(g, axis=(2, 3))
  gx, gy = 0.5 * (gx[:, 1:] + gx[:, :-1]), 0.5 * (gy[:, 1:] + gy[:, :-1])
  dt = g[:, 1:] - g[:, :-1]
  u, v, weight = -dt * gx, -dt * gy, np.abs(dt)
  yy, xx = np.mgrid[0:g.shape[2], 0:g.shape[3]].astype(np.float32)
  total = weight.sum((2, 3), keepdims=True) + 1e-6
  ry = yy - (weight * yy).sum((2, 3), keepdims=True) / total
  rx = xx - (weight * xx).sum((2, 3), keepdims=True) / total
  norm = (gx * gx + gy * gy).sum((2, 3)) + 1e-6
  moments = [u, v, rx * v - ry * u, rx * u + ry * v]
  return np.stack([m.sum((2, 3)) / norm for m in moments], -1).mean(1)


def _nearest_centroid_accuracy(train_x, train_y, test_x, test_y):
  mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
  train_x, test_x = (train_x - mu) / sd, (test_x - mu) / sd
  centroids = np.stack([train_x[train_y == k].mean(0) for k in range(8)])
  pred = ((test_x[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
  return float((pred == test_y).mean())


def test_synthetic_class_is_in_motion_not_appearance(data_dir):
  meta = storage.read_meta(storage.dataset_dir(data_dir, "synthetic_motion", synthetic.VERSION))

  def load(split):
    source = storage.open_source(meta.files(split))
    recs = [storage.parse_video_record(source[i]) for i in range(len(source))]
    # 12 of the 32 frames keep this cheap; the motion is constant over a clip.
    clips = np.stack([np.stack([storage.decode_image(f) for f in r["frames"][:12]]) for r in recs])
    return clips, np.array([r["label"] for r in recs])

  train_x, train_y = load("train")
  test_x, test_y = load("test")
  assert np.bincount(train_y).tolist() == [50] * 8 and np.bincount(test_y).tolist() == [20] * 8
  rng = np.random.default_rng(0)
  appearance = _nearest_centroid_accuracy(_appearance_features(train_x, rng), train_y,
                                          _appearance_features(test_x, rng), test_y)
  motion = _nearest_centroid_accuracy(_motion_features(train_x), train_y, _motion_features(test_x), test_y)
  # Chance is 0.125; measured 0.175 (appearance) vs 0.556 (motion) on synthetic_motion 2.0.0 (2.1.0: same clips)
  # (0.04 vs 0.575 on 1.0.0).
  assert appearance <= 0.25, appearance
  assert motion >= 0.4, motion


# ----------------------------------------------------------------------------------------------- training
def test_train_batches_shapes_dtypes_and_masks(data_dir):
  c = tiny_config(data_dir)
  it = pipeline.make_train_iterator(c, process_index=0, process_count=1)
  batch = next(it)
  assert set(batch) == {"video", "label", "mask"}
  assert batch["video"].shape == (4, 8, 48, 48, 3) and batch["video"].dtype == np.uint8
  assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
  assert batch["mask"].shape == (4, 4, 3, 3) and batch["mask"].dtype == np.uint8
  assert 0 < batch["mask"].mean() < 1
  c = tiny_config(data_dir, "finetune")
  batch = next(pipeline.make_train_iterator(c))
  assert set(batch) == {"video", "label"}


def test_train_iterator_is_deterministic(data_dir):
  c = tiny_config(data_dir)
  a = take(pipeline.make_train_iterator(c), 3)
  b = take(pipeline.make_train_iterator(c), 3)
  assert_batches_equal(a, b)
  c.seed = 1
  other = take(pipeline.make_train_iterator(c), 1)[0]
  assert not np.array_equal(other["video"], a[0]["video"])


def test_state_restore_gives_identical_next_batches(data_dir):
  c = tiny_config(data_dir)
  it = pipeline.make_train_iterator(c)
  take(it, 3)
  state = it.get_state()
  expected = take(it, 3)
  fresh = pipeline.make_train_iterator(c)
  fresh.set_state(state)
  assert_batches_equal(take(fresh, 3), expected)


@pytest.mark.slow
def test_state_restore_with_worker_processes(data_dir):
  c = tiny_config(data_dir, "finetune", num_workers=2)  # finetune: workers need not import the mask code
  it = pipeline.make_train_iterator(c)
  take(it, 2)
  state = it.get_state()
  expected = take(it, 2)
  fresh = pipeline.make_train_iterator(c)
  fresh.set_state(state)
  got = take(fresh, 2)
  assert_batches_equal(got, expected)
  for i in (it, fresh):
    i.close()


def test_reading_a_record_imports_nothing(data_dir):
  # A data worker hung on its first batch (reproduced 1 in ~30 worker starts): its two read threads both
  # imported TFDS on their first record and deadlocked in TFDS's lazy imports. Everything a read needs is
  # imported with the modules, before Grain starts threads.
  files = pipeline.load_meta(tiny_config(data_dir)).files("train")
  code = textwrap.dedent(f"""
      import sys
      from maskfeat_jax.data import pipeline, storage, ava
      before = set(sys.modules)
      example = storage.parse_video_record(pipeline.Records({tuple(files)!r})[0])
      storage.decode_image(example["frames"][0])
      print(sorted(set(sys.modules) - before))""")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
  assert out.strip() == "[]", out[:800]


def _stream(data_dir, process_count, batch, steps):
  """Each process's examples of `steps` local batches (of `batch` / process_count examples each)."""
  c = tiny_config(data_dir)
  local = batch // process_count
  out = []
  for p in range(process_count):
    fn = pipeline._TrainMap(pipeline.clip_spec(c, "train", True), None, 400, True, p, process_count,  # pylint: disable=protected-access
                            examples_per_batch=local)
    out.append(np.array([fn.example_at(i)[1] for i in range(steps * local)]).reshape(steps, local))
  return out


def test_process_sharding_keeps_the_global_batch_order():
  """P processes' local batches, concatenated in process order, are the 1-process batches, row for row
  (what make_array_from_process_local_data assembles): 2x2 devices train as 1x4; every epoch is a
  permutation of the 400 examples, covered once across the processes, also when P does not divide it."""
  one = _stream(None, 1, 8, 150)[0]  # 1,200 examples: 3 epochs
  for procs in (2, 4):
    np.testing.assert_array_equal(np.concatenate(_stream(None, procs, 8, 150), axis=1), one)
  flat = one.reshape(-1)
  for epoch in range(3):
    assert sorted(flat[epoch * 400:(epoch + 1) * 400].tolist()) == list(range(400))
  assert not np.array_equal(flat[:400], flat[400:800])  # a new epoch is a new permutation
  three = np.concatenate(_stream(None, 3, 6, 200), axis=1).reshape(-1)  # 3 processes, batch 6: 1,200
  np.testing.assert_array_equal(three, flat)  # batches straddle epoch ends as in one process


def test_per_process_batches_follow_the_shard(data_dir):
  """Process 1 of 2 yields the second half of each 1-process batch (same examples, same crops)."""
  c = tiny_config(data_dir, "finetune", shuffle=False)
  c.batch_size = 4
  local = take(pipeline.make_train_iterator(c, process_index=1, process_count=2), 2)  # 2 clips per batch
  single = take(pipeline.make_train_iterator(c, process_index=0, process_count=1), 2)
  # Unshuffled: process 1 of 2 gets examples 2, 3 | 6, 7; the single process batches are 0-3 | 4-7.
  for got, full in zip(local, single):
    np.testing.assert_array_equal(got["video"], full["video"][2:])
    np.testing.assert_array_equal(got["label"], full["label"][2:])


def test_repeated_sampling_draws_different_clips_of_one_video(data_dir):
  c = tiny_config(data_dir, "finetune", num_sample=2)
  batch = next(pipeline.make_train_iterator(c))
  assert batch["video"].shape[0] == 4
  assert batch["label"][0] == batch["label"][1] and batch["label"][2] == batch["label"][3]
  assert not np.array_equal(batch["video"][0], batch["video"][1])
  c.batch_size = 6
  with pytest.raises(ValueError, match="num_sample"):
    pipeline.make_train_iterator(c, process_count=2)


def test_sliced_splits_read_their_records_only(data_dir):
  """'train[:40]' trains on records 0-39 (class-balanced: labels cycle in record order) and one epoch covers
  exactly the slice; 'train[100:140]' starts at record 100; 'test[150:]' evaluates the last 10 records."""
  assert splits.resolve_split("train[:10%]", {"train": 400}) == ("train", 0, 40)
  assert splits.resolve_split("train[-8:]", {"train": 400}) == ("train", 392, 400)
  assert splits.split_tag("train[:10%]") == "train_0-10pct" and splits.split_tag("test") == "test"
  assert splits.split_tag("test[150:]") == "test_150-end"
  for bad, match in (("train[5:5]", "selects no records"), ("val[:10]", "not in"), ("train[a:]", "expected")):
    with pytest.raises(ValueError, match=match):
      splits.resolve_split(bad, {"train": 400})
  c = tiny_config(data_dir, "finetune", train_split="train[:40]")
  c.batch_size = 40
  batch = next(pipeline.make_train_iterator(c))
  assert np.bincount(batch["label"], minlength=8).tolist() == [5] * 8  # every record of the slice once
  meta = pipeline.load_meta(c)  # pylint: disable=protected-access
  fn = pipeline._TrainMap(pipeline.clip_spec(c, "train[100:140]", True), None, 40, True, 0, 1, offset=100)  # pylint: disable=protected-access
  assert sorted(fn.example_at(i)[1] for i in range(40)) == list(range(100, 140))
  assert meta.split_range("train[100:140]") == (100, 140)
  c.eval.num_clips, c.eval.num_crops = 1, 1
  ev = eval_pipeline.make_eval_iterator(c, "test[150:]", batch_size=4)
  ids = sorted(int(e) for b in ev for e, ok in zip(b["example_id"], b["valid"]) if ok)
  assert ids == list(range(150, 160)) and ev.num_batches == 3


# ----------------------------------------------------------------------------------------------- evaluation
def test_eval_views_padding_and_process_split(data_dir):
  c = tiny_config(data_dir, "finetune")
  c.eval.num_clips, c.eval.num_crops = 2, 3
  seen = {}
  num_batches = set()
  for p in range(3):
    it = eval_pipeline.make_eval_iterator(c, "test", process_index=p, process_count=3, batch_size=7)
    batches = list(it)
    assert len(batches) == it.num_batches
    num_batches.add(len(batches))
    for b in batches:
      assert b["video"].shape == (7, 8, 48, 48, 3) and b["video"].dtype == np.uint8
      for e, v, ok, label in zip(b["example_id"], b["view"], b["valid"], b["label"]):
        if ok:
          assert (int(e), int(v)) not in seen
          seen[(int(e), int(v))] = int(label)
          assert int(e) % 3 == p
        else:
          assert e == -1 and v == -1
  assert len(num_batches) == 1  # every process yields the same number of batches: ceil(54 * 6 / 7) = 47
  assert num_batches == {47}
  assert sorted(seen) == [(e, v) for e in range(160) for v in range(6)]
  assert all(seen[(e, v)] == synthetic.label_of(e) for e, v in seen)


def test_eval_views_are_the_official_positions(data_dir):
  """Views of one example: clips at starts k*floor(delta/(K-1)), crops left / centre / right."""
  c = tiny_config(data_dir, "finetune", num_frames=4, sampling_rate=2)
  c.eval.num_clips, c.eval.num_crops = 2, 3
  batch = next(iter(eval_pipeline.make_eval_iterator(c, "test", batch_size=6)))
  meta = storage.read_meta(storage.dataset_dir(data_dir, "synthetic_motion", synthetic.VERSION))
  rec = storage.parse_video_record(storage.open_source(meta.files("test"))[0])
  frames = np.stack([storage.decode_image(f) for f in rec["frames"]])  # 32 x 64 x 80
  # span 8 frames; delta 24: clip 0 = linspace(0, 7, 4) -> 0,2,4,7 ; clip 1 starts at 24 -> 24,26,28,31.
  resized = transforms.resize_crop(frames, (56, 70), (0, 0), (56, 70))
  for view in range(6):
    clip, crop = divmod(view, 3)
    idx = np.array([0, 2, 4, 7]) + 24 * clip
    x = {0: 0, 1: 11, 2: 22}[crop]  # width 70, crop 48: ceil(22/2) = 11
    np.testing.assert_array_equal(batch["video"][view], resized[idx, 4:52, x:x + 48])
  assert batch["view"].tolist() == list(range(6)) and batch["example_id"].tolist() == [0] * 6


# ----------------------------------------------------------------------------------------------- bad records
def _write_dataset(root, name, records, class_names=("a", "b"), image_mode=False):
  ds_dir = storage.dataset_dir(root, name)
  ds_dir.mkdir(parents=True)
  storage.write_shard(ds_dir / storage.shard_filename(name, "train", 0, 1), records)
  storage.write_dataset_info(ds_dir, name, class_names, {"train": [len(records)]}, image_mode=image_mode)
  return ds_dir


def _video_records(n, corrupt=()):
  ser = storage.VideoExampleSerializer(("a", "b"))
  out = []
  for i in range(n):
    frames = [storage.encode_jpeg(np.full((40, 50, 3), 10 * i + t, np.uint8)) for t in range(6)]
    if i in corrupt:
      frames = [b"\xff\xd8 truncated jpeg"] * 6
    out.append(b"not a tf.train.Example" if i in corrupt and i % 2 else ser(frames, i % 2, f"v{i}", 30.0))
  return out


def test_corrupt_records_are_skipped_and_logged(tmp_path, caplog):
  _write_dataset(tmp_path, "bad", _video_records(8, corrupt=(2, 5)))
  c = tiny_config(tmp_path, "finetune", name="bad", num_frames=2, sampling_rate=1, crop_size=32,
                  train_jitter_scales=(40, 40), test_short_side=40)
  c.batch_size = 2
  with caplog.at_level("WARNING"):
    batches = take(pipeline.make_train_iterator(c), 6)  # 2 epochs of the 6 good examples
  means = sorted(int(round(b["video"][i].mean())) // 10 for b in batches for i in range(2))
  assert means == sorted(2 * [0, 1, 3, 4, 6, 7])  # frame value 10 * i + t: examples 2 and 5 never appear
  assert "Skipping unreadable record 2" in caplog.text and "Skipping unreadable record 5" in caplog.text
  ev = list(eval_pipeline.make_eval_iterator(c, "train", batch_size=8))
  assert len(ev) == 1 and ev[0]["valid"].tolist() == [True, True, False, True, True, False, True, True]


def test_nothing_readable_fails(tmp_path):
  _write_dataset(tmp_path, "allbad", [b"garbage"] * 20)
  c = tiny_config(tmp_path, "finetune", name="allbad")
  with pytest.raises(RuntimeError, match="No record of split 'train' could be read"):
    next(pipeline.make_train_iterator(c))


# ----------------------------------------------------------------------------------------------- image mode
def test_image_mode(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  features = storage.image_features(("cat", "dog"))
  records = []
  for i in range(6):
    image = np.full((60, 90, 3), 40 * i, np.uint8)
    records.append(features.serialize_example(features.encode_example(
        {"image": storage.encode_jpeg(image), "label": i % 2})))
  _write_dataset(tmp_path, "imgs", records, ("cat", "dog"), image_mode=True)
  c = tiny_config(tmp_path, "pretrain", name="imgs", image_mode=True, crop_size=32, test_short_side=36)
  c.mask.type, c.mask.grid = "block", (4, 4)
  assert tfds.builder_from_directory(str(storage.dataset_dir(tmp_path, "imgs"))).info.features["label"].num_classes == 2
  batch = next(pipeline.make_train_iterator(c))
  assert batch["image"].shape == (4, 32, 32, 3) and batch["mask"].shape == (4, 4, 4)
  ev = list(eval_pipeline.make_eval_iterator(c, "train", batch_size=4))
  assert [b["valid"].sum() for b in ev] == [4, 2]
  assert ev[0]["image"].shape == (4, 32, 32, 3)
  np.testing.assert_array_equal(ev[0]["example_id"], [0, 1, 2, 3])
  assert abs(float(ev[0]["image"][3].mean()) - 120) < 3


def test_finetune_augmentations_are_applied_deterministically(data_dir):
  c = tiny_config(data_dir, "finetune")
  plain = next(pipeline.make_train_iterator(c))
  c.augment.randaug = "rand-m9-mstd0.5-inc1"
  c.augment.erase_prob = 1.0
  a = next(pipeline.make_train_iterator(c))
  b = next(pipeline.make_train_iterator(c))
  assert_batches_equal([a], [b])
  assert a["video"].shape == plain["video"].shape and a["video"].dtype == np.uint8
  np.testing.assert_array_equal(a["label"], plain["label"])
  assert not np.array_equal(a["video"], plain["video"])


def test_image_mode_finetune_augmentations(tmp_path):
  features = storage.image_features(("cat", "dog"))
  rng = np.random.default_rng(0)
  records = [features.serialize_example(features.encode_example(
      {"image": storage.encode_jpeg(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)), "label": i % 2}))
             for i in range(4)]
  _write_dataset(tmp_path, "imgs", records, ("cat", "dog"), image_mode=True)
  c = tiny_config(tmp_path, "finetune", name="imgs", image_mode=True, crop_size=32)
  c.augment.randaug, c.augment.erase_prob = "rand-m9-mstd0.5-inc1", 0.5
  batch = next(pipeline.make_train_iterator(c))
  assert set(batch) == {"image", "label"} and batch["image"].shape == (4, 32, 32, 3)
