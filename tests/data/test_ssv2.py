"""Something-Something v2: segment sampling as `slowfast/datasets/ssv2.py`, no flip unless a label-flip map says
how labels mirror, 1 clip x 3 crops testing, the recipe configs, and a tiny SSv2-format dataset (videos named by
id, labels.json, train.json / validation.json with `[something]` templates) converted, fine-tuned and evaluated."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from maskfeat_jax import config as config_lib
from maskfeat_jax.config import base_config
from maskfeat_jax.config import load_config
from maskfeat_jax.data import eval_pipeline
from maskfeat_jax.data import label_flip
from maskfeat_jax.data import pipeline
from maskfeat_jax.data import storage
from maskfeat_jax.data import transforms

REPO = pathlib.Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------- sampling
def _official_test_indices(video_length, num_frames):
  """`Ssv2.get_seq_frames` in test mode, transcribed loop by loop."""
  seg_size = float(video_length - 1) / num_frames
  seq = []
  for i in range(num_frames):
    start = int(np.round(seg_size * i))
    end = int(np.round(seg_size * (i + 1)))
    seq.append((start + end) // 2)
  return seq


def _official_segments(video_length, num_frames):
  seg_size = float(video_length - 1) / num_frames
  return [(int(np.round(seg_size * i)), int(np.round(seg_size * (i + 1)))) for i in range(num_frames)]


@pytest.mark.parametrize("length, frames", [(60, 16), (17, 16), (5, 16), (1, 4), (121, 40), (48, 8)])
def test_segment_test_indices_match_official_formula(length, frames):
  got = transforms.segment_indices(length, frames)
  assert got.tolist() == _official_test_indices(length, frames)
  assert got.min() >= 0 and got.max() <= length - 1


def test_segment_train_indices_stay_in_their_segments_and_cover_them():
  length, frames = 47, 8
  segments = _official_segments(length, frames)
  rng = np.random.default_rng(0)
  draws = np.stack([transforms.segment_indices(length, frames, rng=rng) for _ in range(400)])
  for i, (start, end) in enumerate(segments):
    assert draws[:, i].min() == start and draws[:, i].max() == end  # both ends inclusive (random.randint)
  again = transforms.segment_indices(length, frames, rng=np.random.default_rng(0))
  np.testing.assert_array_equal(again, draws[0])  # the draw comes from the rng alone
  with pytest.raises(ValueError, match="no frames"):
    transforms.segment_indices(0, 8)


def test_inverse_uniform_jitter_draws_the_reciprocal_short_side():
  frames = (np.arange(2 * 40 * 60 * 3) % 251).astype(np.uint8).reshape(2, 40, 60, 3)
  kw = dict(crop_size=32, use_rrc=False, rrc_scale=(0.5, 1.0), rrc_aspect=(0.75, 1.33), jitter_scales=(32, 48),
            random_flip=False)
  got = transforms.train_spatial(frames, np.random.default_rng(3), inverse_uniform=True, **kw)
  rng = np.random.default_rng(3)  # the same draws, by the official formula
  short = int(round(1.0 / rng.uniform(1.0 / 48, 1.0 / 32)))
  rh, rw = transforms.short_side_size(40, 60, short)
  y, x = int(rng.integers(0, rh - 32 + 1)), int(rng.integers(0, rw - 32 + 1))
  np.testing.assert_array_equal(got, transforms.resize_crop(frames, (rh, rw), (y, x), 32))
  plain = transforms.train_spatial(frames, np.random.default_rng(3), **kw)
  assert not np.array_equal(plain, got)  # the default draws U(min, max): another short side for this seed


# ----------------------------------------------------------------------------------------------- label flip
CLASSES = ("Pushing something from left to right", "Pushing something from right to left",
           "Lifting something up", "Turning the camera left while filming something")


def test_left_right_table_pairs_mirrored_names_and_pins_unmatched_ones():
  assert label_flip.flip_table("left_right", CLASSES) == (1, 0, 2, -1)
  assert label_flip.flip_table("", CLASSES) == ()


def test_json_flip_map_pairs_and_errors(tmp_path):
  good = tmp_path / "pairs.json"
  good.write_text(json.dumps([[CLASSES[0], CLASSES[1]]]))
  assert label_flip.flip_table(str(good), CLASSES) == (1, 0, 2, 3)
  as_dict = tmp_path / "dict.json"
  as_dict.write_text(json.dumps({CLASSES[2]: CLASSES[3]}))
  assert label_flip.flip_table(str(as_dict), CLASSES) == (0, 1, 3, 2)
  unknown = tmp_path / "unknown.json"
  unknown.write_text(json.dumps([[CLASSES[0], "Pushing something sideways"]]))
  with pytest.raises(ValueError, match="'Pushing something sideways' is not one of the dataset's 4 classes"):
    label_flip.flip_table(str(unknown), CLASSES)
  clash = tmp_path / "clash.json"
  clash.write_text(json.dumps([[CLASSES[0], CLASSES[1]], [CLASSES[0], CLASSES[2]]]))
  with pytest.raises(ValueError, match="mapped to both"):
    label_flip.check_flip_map(str(clash))
  (tmp_path / "bad.json").write_text("{not json")
  with pytest.raises(ValueError, match="cannot read a JSON label-flip map"):
    label_flip.check_flip_map(str(tmp_path / "bad.json"))


def _ft_config(**data):
  c = base_config()
  c.mode = "finetune"
  c.model.type = "classifier"
  for k, v in data.items():
    setattr(c.data, k, v)
  return c


@pytest.mark.parametrize("data, evals, match", [
    (dict(sampling="frames"), {}, r"config.data.sampling='frames': expected one of \('stride', 'segments'\)"),
    (dict(sampling="segments"), dict(num_clips=3), r"config.eval.num_clips=3: .* set config.eval.num_clips=1"),
    (dict(name="ssv2", random_flip=True), {}, r"config.data.random_flip=True on 'ssv2'"),
    (dict(name="something_something_v2", random_flip=True), {}, r"random_flip=True on 'something_something_v2'"),
    (dict(random_flip=False, label_flip_map="left_right"), {}, r"but config.data.random_flip=False"),
    (dict(label_flip_map="/nonexistent/map.json"), {}, r"cannot read a JSON label-flip map"),
])
def test_validate_rejects_bad_sampling_and_flip_settings(data, evals, match):
  c = _ft_config(**data)
  for k, v in evals.items():
    setattr(c.eval, k, v)
  with pytest.raises(ValueError, match=match):
    config_lib.check_sampling(c)


def test_validate_accepts_ssv2_with_a_flip_map_or_without_flip():
  config_lib.check_sampling(_ft_config(name="ssv2", random_flip=True, label_flip_map="left_right"))
  config_lib.check_sampling(_ft_config(name="ssv2", random_flip=False, sampling="segments"))


# ----------------------------------------------------------------------------------------------- pipeline
FRAMES, HEIGHT, WIDTH = 48, 40, 50


def _write_ssv2_like(root, name="ssv2_frames", num_videos=8):
  """Video v, frame t: left half 2 v (dark), right half 4 t + 40 (bright); video and frame index read back from
  the pixels, and a flip shows as the bright side on the left. Video v has class v % 4."""
  ser = storage.VideoExampleSerializer(CLASSES)
  records = []
  for v in range(num_videos):
    jpegs = []
    for t in range(FRAMES):
      frame = np.full((HEIGHT, WIDTH, 3), 2 * v, np.uint8)
      frame[:, WIDTH // 2:] = 4 * t + 40
      jpegs.append(storage.encode_jpeg(frame, quality=100))
    records.append(ser(jpegs, v % len(CLASSES), f"{v}", 30.0))
  ds_dir = storage.dataset_dir(root, name)
  ds_dir.mkdir(parents=True)
  for split in ("train", "validation"):
    storage.write_shard(ds_dir / storage.shard_filename(name, split, 0, 1), records)
  storage.write_dataset_info(ds_dir, name, CLASSES, {"train": [num_videos], "validation": [num_videos]})
  return name


def _segments_config(root, name, **data):
  c = _ft_config(name=name, data_dir=str(root), sampling="segments", num_frames=8, crop_size=32,
                 train_jitter_scales=(32, 40), use_random_resized_crop=False, test_short_side=32, num_workers=0,
                 random_flip=False, eval_split="validation")
  c.batch_size = 8
  c.eval.num_clips, c.eval.num_crops = 1, 3
  for k, v in data.items():
    setattr(c.data, k, v)
  return c


def _frame_index(clips):
  """[..., T, H, W, 3] -> the frame index of each frame (from its bright half), [..., T]."""
  bright = clips.reshape(clips.shape[:-3] + (-1,)).max(-1).astype(np.float64)
  return np.rint((bright - 40) / 4).astype(int)


def _video_index(clips):
  """[b, T, H, W, 3] -> the video each clip came from (its dark half)."""
  return np.rint(clips.reshape(len(clips), -1).min(-1) / 2.0).astype(int)


def test_train_clips_take_one_frame_per_segment(tmp_path):
  name = _write_ssv2_like(tmp_path)
  it = pipeline.make_train_iterator(_segments_config(tmp_path, name))
  segments = _official_segments(FRAMES, 8)
  seen = set()
  for _ in range(4):
    batch = next(it)
    idx = _frame_index(batch["video"])
    for i, (start, end) in enumerate(segments):
      assert ((idx[:, i] >= start) & (idx[:, i] <= end)).all(), (i, idx[:, i], start, end)
    seen |= {tuple(r) for r in idx}
    np.testing.assert_array_equal(batch["label"], _video_index(batch["video"]) % len(CLASSES))  # no flip
  assert len(seen) > 8  # the frames within segments are drawn, not fixed


def test_eval_views_are_one_middle_clip_times_three_crops(tmp_path):
  name = _write_ssv2_like(tmp_path)
  c = _segments_config(tmp_path, name)
  batch = next(iter(eval_pipeline.make_eval_iterator(c, "validation", batch_size=6)))
  assert batch["view"].tolist() == [0, 1, 2, 0, 1, 2] and batch["example_id"].tolist() == [0, 0, 0, 1, 1, 1]
  middle = _official_test_indices(FRAMES, 8)
  np.testing.assert_array_equal(_frame_index(batch["video"]), [middle] * 6)
  # Short side 40 -> 32 (as the official test: short side = crop size), 40 wide; crops left / centre / right.
  first = batch["video"][:3, 0, 16].astype(int)  # one row of frame 0 of each crop
  dark = [(row < 30).sum() for row in first]
  assert dark[0] > dark[1] > dark[2]  # the dark left half leaves the view as the crop moves right
  c.eval.num_clips = 2
  with pytest.raises(ValueError, match="one test clip"):
    next(iter(eval_pipeline.make_eval_iterator(c, "validation", batch_size=6)))


def test_flip_map_swaps_labels_of_flipped_clips_only(tmp_path):
  name = _write_ssv2_like(tmp_path, num_videos=12)
  c = _segments_config(tmp_path, name, random_flip=True, label_flip_map="left_right")
  c.batch_size = 12
  it = pipeline.make_train_iterator(c)
  flipped_by_class = {k: [] for k in range(len(CLASSES))}
  for _ in range(6):
    batch = next(it)
    frame0 = batch["video"][:, 0].astype(int)  # [b, H, W, 3]
    flipped = frame0[:, :, :8].mean((1, 2, 3)) > frame0[:, :, -8:].mean((1, 2, 3))  # bright side on the left
    for label, f, v in zip(batch["label"].tolist(), flipped.tolist(), _video_index(batch["video"])):
      flipped_by_class[v % len(CLASSES)].append((f, label))
  assert {f for f, _ in flipped_by_class[0]} == {True, False}  # flips happen ...
  assert all(label == (1 if f else 0) for f, label in flipped_by_class[0])  # ... and swap left <-> right
  assert all(label == (0 if f else 1) for f, label in flipped_by_class[1])
  assert {f for f, _ in flipped_by_class[2]} == {True, False}
  assert all(label == 2 for _, label in flipped_by_class[2])  # no left/right in the name: label kept
  assert flipped_by_class[3] and not any(f for f, _ in flipped_by_class[3])  # no mirror class: never flipped


# ----------------------------------------------------------------------------------------------- recipes
@pytest.mark.parametrize("arg", ["S", "L", "S,local", "L,local"])
def test_recipe_configs_validate(arg):
  c = load_config(f"configs/ssv2_finetune.py:{arg}")
  config_lib.validate(c)
  d = c.data
  assert d.sampling == "segments" and not d.random_flip and d.jitter_inverse_uniform
  assert (c.eval.num_clips, c.eval.num_crops) == (1, 3) and d.test_short_side == d.crop_size
  assert c.augment.randaug == "rand-m7-n4-mstd0.5-inc1" and c.augment.erase_prob == 0.25
  assert c.model.dropout_rate == 0.5 and c.mode == "finetune"


def test_recipe_values():
  """configs/SSv2/MVITv2_{S_16x4,L_40x3}.yaml (data, aug, schedule) + masked_ssl k400 FT yamls (optimiser)."""
  s, l = load_config("configs/ssv2_finetune.py:S"), load_config("configs/ssv2_finetune.py:L")
  assert s.model.name == "mvit_s_16x4_ft" and l.model.name == "mvit_l_16x4_ft"
  assert s.model.num_classes == l.model.num_classes == 174
  assert tuple(s.model.input_size) == (16, 224, 224) and tuple(l.model.input_size) == (40, 312, 312)
  assert tuple(s.data.train_jitter_scales) == (256, 320) and tuple(l.data.train_jitter_scales) == (356, 446)
  assert (s.model.drop_path_rate, l.model.drop_path_rate) == (0.4, 0.75)
  assert (s.batch_size, l.batch_size, s.epochs, l.epochs) == (16, 8, 100, 40)
  assert (s.augment.mixup_prob, l.augment.mixup_prob) == (1.0, 0.0) and s.augment.label_smoothing == 0.1
  assert s.optim.warmup_epochs == l.optim.warmup_epochs == 3 and s.optim.end_lr == l.optim.end_lr == 1e-6
  assert (s.optim.base_lr, s.optim.reference_batch, l.optim.reference_batch) == (6e-4, 32, 16)
  assert (s.optim.layer_decay, l.optim.layer_decay, s.optim.clip_grad_norm) == (0.75, 0.875, 5.0)
  assert l.model.remat_policy == "full"


# ----------------------------------------------------------------------------------------------- end to end
TINY_CLASSES = ("Moving [something] from left to right", "Moving [something] from right to left",
                "Moving [something] up")


def _make_video(path, label, seed, num_frames=24, width=96, height=72, fps=12, codec="libx264"):
  """A bright square moving right, left or up over a noisy background (SSv2 videos are 12 fps)."""
  import av  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  background = rng.integers(0, 80, size=(height, width, 3)).astype(np.uint8)
  y0, x0 = int(rng.integers(20, 30)), int(rng.integers(30, 50))
  with av.open(str(path), "w") as container:
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    for t in range(num_frames):
      frame = background.copy()
      dx, dy = [(2 * t - 24, 0), (24 - 2 * t, 0), (0, 12 - t)][label]
      y, x = y0 + dy, x0 + dx
      frame[max(y, 0):max(y + 16, 0), max(x, 0):max(x + 16, 0)] = 255
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def make_ssv2_fixture(root, per_class=(6, 2)):
  """Videos named by id (mp4 and webm), labels.json, train.json and validation.json in the SSv2 format."""
  videos = root / "20bn-something-something-v2"
  videos.mkdir(parents=True)
  (root / "labels.json").write_text(json.dumps({t.replace("[", "").replace("]", ""): str(i)
                                                for i, t in enumerate(TINY_CLASSES)}))
  next_id = 1000
  for split, count in zip(("train", "validation"), per_class):
    entries = []
    for label, template in enumerate(TINY_CLASSES):
      for _ in range(count):
        vid = str(next_id)
        next_id += 1
        webm = next_id % 3 == 0
        _make_video(videos / f"{vid}.{'webm' if webm else 'mp4'}", label, next_id,
                    codec="libvpx-vp9" if webm else "libx264")
        entries.append({"id": vid, "label": template.replace("[something]", "a box"), "template": template,
                        "placeholders": ["a box"]})
    (root / f"{split}.json").write_text(json.dumps(entries))
  return root, videos


def _convert(root, videos, out, split, labels_file):
  cmd = [sys.executable, "-m", "maskfeat_jax.data.build_shards", f"--videos_dir={videos}",
         f"--labels={root / labels_file}", f"--output_dir={out}", "--name=ssv2", f"--split={split}",
         f"--ssv2_label_map={root / 'labels.json'}", "--fps=30", "--short_side=64", "--num_workers=0",
         "--examples_per_shard=8", "--noprogress"]
  p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
  return p.stdout


@pytest.mark.slow
def test_ssv2_convert_finetune_and_1x3_eval(tmp_path):
  """The README commands on a tiny SSv2-format dataset: convert both splits, fine-tune the `S,local` recipe a
  few steps on them, evaluate the validation split with 1 clip x 3 crops."""
  from maskfeat_jax import run  # pylint: disable=g-import-not-at-top  (JAX only for this test)
  root, videos = make_ssv2_fixture(tmp_path / "ssv2")
  out = tmp_path / "tfds"
  assert "train: 18 videos" in _convert(root, videos, out, "train", "train.json")
  assert "validation: 6 videos" in _convert(root, videos, out, "validation", "validation.json")
  meta = storage.read_meta(storage.find_dataset_dir(str(out), "ssv2"))
  assert list(meta.class_names) == [t.replace("[", "").replace("]", "") for t in TINY_CLASSES]
  rec = storage.parse_video_record(storage.open_source(meta.files("validation"))[0])
  assert rec["fps"] == pytest.approx(30.0) and len(rec["frames"]) == 60  # 2 s at 12 fps, resampled to 30

  c = load_config("configs/ssv2_finetune.py:S,local", lock=False)
  c.data.name, c.data.data_dir, c.data.eval_split = "ssv2", str(out), "validation"
  # The recipe's data, augmentation and optimiser on a 2-block MViT at 8x32²: the compiles (train step and
  # eval forward) are most of this test's time, and they grow with the distinct blocks.
  m = c.model
  m.depth, m.dim_mul, m.head_mul = 2, ((1, 2.0),), ((1, 2.0),)
  m.pool_q_stride = ((0, 1, 1, 1), (1, 1, 2, 2))
  m.input_size = (8, 32, 32)
  c.data.num_frames, c.data.crop_size, c.data.train_jitter_scales, c.data.test_short_side = 8, 32, (32, 40), 32
  c.total_steps, c.optim.warmup_steps, c.log_every_steps = 6, 1, 3
  c.batch_size, c.eval.batch_size = 6, 18  # one eval batch: 6 videos x 3 crops
  c.compilation_cache_dir = ""
  c.lock()
  result = run.train(c, str(tmp_path / "work"))
  assert result.status == "done" and result.step == 6
  ev = result.eval
  assert ev["num_examples"] == 6 and ev["num_views"] == 3 and ev["min_views"] == 3
  assert 0.0 <= ev["top1"] <= ev["top5"] <= 1.0 and np.isfinite(ev["nll"])
  metrics = json.loads((tmp_path / "work" / "eval_validation" / "metrics.json").read_text())
  assert metrics["top1"] == pytest.approx(ev["top1"])
  print(f"SSv2 tiny end to end: 1x3 top1 {ev['top1']:.3f} top5 {ev['top5']:.3f} on {ev['num_examples']} videos")
