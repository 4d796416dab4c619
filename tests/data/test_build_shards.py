"""Converter: PyAV-made videos -> TFDS array_record shards -> read back; bad inputs; resume; CLI."""
import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

from maskfeat_jax.data import build_shards
from maskfeat_jax.data import label_files
from maskfeat_jax.data import storage

REPO = pathlib.Path(__file__).resolve().parents[2]
CLASSES = ("blue", "green", "red")


def _colour(label: int, i: int) -> np.ndarray:
  base = np.zeros(3, np.float32)
  base[2 - label] = 200.0  # blue / green / red
  return base + 5.0 * i  # a per-video offset so frames identify their video


def make_video(path, label: int, i: int, num_frames: int = 20, width: int = 96, height: int = 64,
               fps: int = 30, codec: str = "libx264") -> None:
  """A flat-colour clip with a bright bar whose width grows with the frame index."""
  import av  # pylint: disable=g-import-not-at-top
  with av.open(str(path), "w") as container:
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    for t in range(num_frames):
      frame = np.empty((height, width, 3), np.uint8)
      frame[:] = _colour(label, i).astype(np.uint8)
      frame[:, :4 * t] = 255
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory):
  """6 good videos (2 per class, 3 containers) and one of each bad kind, with a `path,label` list."""
  root = tmp_path_factory.mktemp("videos")
  lines = ["path,label"]
  codecs = [("mp4", "libx264"), ("webm", "libvpx-vp9"), ("avi", "mpeg4")]
  for label, name in enumerate(CLASSES):
    for i in range(2):
      ext, codec = codecs[(label + i) % 3]
      rel = f"{name}/vid{label}{i}.{ext}"
      (root / name).mkdir(exist_ok=True)
      make_video(root / rel, label, i, codec=codec)
      lines.append(f"{rel},{name}")
  (root / "bad").mkdir()
  (root / "bad/empty.mp4").write_bytes(b"")
  good = (root / "blue/vid00.mp4").read_bytes()
  (root / "bad/truncated.mp4").write_bytes(good[:len(good) // 2])
  (root / "bad/text.mp4").write_text("this is not a video\n" * 50)
  lines += ["bad/empty.mp4,red", "bad/truncated.mp4,green", "bad/text.mp4,blue", "bad/missing.mp4,red"]
  (root / "list.csv").write_text("\n".join(lines) + "\n")
  return root


def _read_split(ds_dir, split):
  meta = storage.read_meta(ds_dir)
  source = storage.open_source(meta.files(split))
  return meta, [storage.parse_video_record(source[i]) for i in range(len(source))]


def test_round_trip_and_bad_input_report(video_folder, tmp_path):
  items = label_files.read_label_file(str(video_folder / "list.csv"), str(video_folder), "train")
  names = label_files.class_names_for(items)
  assert names == list(CLASSES)
  report = build_shards.convert(items, str(tmp_path), "toy", names, build_shards.Options(short_side=32, jpeg_quality=95),
                           examples_per_shard=4, progress=False)
  ds_dir = storage.dataset_dir(tmp_path, "toy")
  assert report["converted"] == 6 and report["skipped"] == 4
  on_disk = json.loads((ds_dir / build_shards.REPORT_FILE).read_text())
  assert on_disk == report
  reasons = {pathlib.Path(x["video_id"]).name: x["reason"] for x in on_disk["skipped_items"]}
  assert reasons["empty"] == "empty file (0 bytes)"
  assert reasons["missing"] == "missing file"
  assert reasons["truncated"].startswith("cannot decode") or reasons["truncated"].startswith("truncated")
  assert reasons["text"].startswith("cannot decode")
  # Shards: 10 rows -> 3 shards, named as TFDS expects, no temporary files left.
  files = sorted(p.name for p in ds_dir.iterdir() if p.is_file())
  assert [f for f in files if "array_record" in f] == [f"toy-train.array_record-0000{k}-of-00003" for k in range(3)]
  assert not [f for f in files if f.endswith(storage.TMP_SUFFIX)]
  meta, records = _read_split(ds_dir, "train")
  assert meta.class_names == CLASSES and meta.split_sizes == {"train": 6}
  by_id = {r["video_id"]: r for r in records}
  assert sorted(by_id) == sorted(f"{n}/vid{l}{i}" for l, n in enumerate(CLASSES) for i in range(2))
  for video_id, r in by_id.items():
    label, i = int(video_id[-2]), int(video_id[-1])
    assert r["label"] == label and CLASSES[label] in video_id
    assert len(r["frames"]) == 20 and r["fps"] == pytest.approx(30.0)
    frames = np.stack([storage.decode_image(f) for f in r["frames"]])
    assert frames.shape == (20, 32, 48, 3)  # short side 64 -> 32
    # The uncovered right part keeps the video's colour (codec + JPEG error only).
    np.testing.assert_allclose(frames[0, 8:24, 30:44].reshape(-1, 3).mean(0), _colour(label, i), atol=12)
    # The bar grows: frame t is bright up to column ~2t of 48.
    assert frames[10, 16, 15].min() > 200 and frames[10, 16, 24].min() < 220


def test_tfds_reads_converted_dataset_without_tensorflow(video_folder, tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  items = label_files.read_label_file(str(video_folder / "list.csv"), str(video_folder), "train")[:3]
  build_shards.convert(items, str(tmp_path), "toy", list(CLASSES), build_shards.Options(short_side=32), progress=False)
  source = tfds.data_source("toy", data_dir=str(tmp_path))["train"]
  assert len(source) == 3
  example = source[0]
  assert example["label"] == 0 and len(example["video"]) == 20
  assert "tensorflow" not in sys.modules


def test_resume_skips_finished_shards_and_ignores_partial(video_folder, tmp_path):
  items = label_files.read_label_file(str(video_folder / "list.csv"), str(video_folder), "train")[:6]
  opts = build_shards.Options(short_side=32)
  build_shards.convert(items, str(tmp_path), "toy", list(CLASSES), opts, examples_per_shard=2, progress=False)
  ds_dir = storage.dataset_dir(tmp_path, "toy")
  shards = sorted(ds_dir.glob("toy-train.array_record-*"))
  assert len(shards) == 3
  mtimes = {p.name: p.stat().st_mtime_ns for p in shards}
  # Simulate a crash while writing shard 1: its final file is gone, a partial temporary file remains.
  shards[1].rename(str(shards[1]) + storage.TMP_SUFFIX)
  report = build_shards.convert(items, str(tmp_path), "toy", list(CLASSES), opts, examples_per_shard=2,
                           progress=False)
  assert report["converted"] == 6
  after = {p.name: p.stat().st_mtime_ns for p in sorted(ds_dir.glob("toy-train.array_record-*"))
           if not p.name.endswith(storage.TMP_SUFFIX)}
  assert after.keys() == mtimes.keys()
  assert after[shards[0].name] == mtimes[shards[0].name] and after[shards[2].name] == mtimes[shards[2].name]
  assert after[shards[1].name] != mtimes[shards[1].name]
  # A different shard count for the same split is refused, naming the existing shard.
  with pytest.raises(ValueError, match="shards"):
    build_shards.convert(items, str(tmp_path), "toy", list(CLASSES), opts, examples_per_shard=3, progress=False)


def test_kinetics_csv_splits_and_fps_resampling(video_folder, tmp_path):
  vids = tmp_path / "k400"
  vids.mkdir()
  rows = ["label,youtube_id,time_start,time_end,split"]
  for n, (label, split) in enumerate([("red", "train"), ("blue", "train"), ("red", "val")]):
    yid = f"yt{n}abc"
    make_video(vids / f"{yid}_{n:06d}_{n + 10:06d}.mp4", CLASSES.index(label), n, num_frames=30)
    rows.append(f"{label},{yid},{n},{n + 10},{split}")
  rows.append("green,gone,0,10,val")
  (tmp_path / "k.csv").write_text("\n".join(rows) + "\n")
  items = label_files.read_label_file(str(tmp_path / "k.csv"), str(vids), "ignored")
  assert [it.split for it in items] == ["train", "train", "val", "val"]
  names = label_files.class_names_for(items)
  report = build_shards.convert(items, str(tmp_path / "out"), "k", names, build_shards.Options(short_side=0, fps=15.0),
                           progress=False)
  assert report["splits"]["train"]["converted"] == 2 and report["splits"]["val"]["converted"] == 1
  assert report["skipped_items"][0]["video_id"] == "gone_000000_000010"
  meta, records = _read_split(storage.dataset_dir(tmp_path / "out", "k"), "val")
  assert meta.split_sizes == {"train": 2, "val": 1}
  (rec,) = records
  assert rec["video_id"] == "yt2abc_000002_000012" and meta.class_names[rec["label"]] == "red"
  assert rec["fps"] == pytest.approx(15.0) and len(rec["frames"]) == 15  # 30 frames at 30 fps -> 1 s at 15
  frames = [storage.decode_image(f) for f in rec["frames"]]
  assert frames[0].shape == (64, 96, 3)  # short_side 0 keeps the size
  # Output frame k shows source frame 2k: its bar is 8k pixels wide.
  assert frames[5][30, 36].min() > 200 and frames[5][30, 44].max() < 240


def test_resample_fps_picks_frames_on_screen():
  frames = [np.full((1, 1, 3), i, np.uint8) for i in range(10)]
  times = [i / 10 for i in range(10)]
  up = build_shards.resample_fps(frames, times, 20.0, 10.0)
  assert [int(f[0, 0, 0]) for f in up] == [i // 2 for i in range(20)]
  down = build_shards.resample_fps(frames, times, 4.0, 10.0)
  assert [int(f[0, 0, 0]) for f in down] == [0, 2, 5, 7]


def test_ssv2_json(tmp_path):
  vids = tmp_path / "ssv2"
  vids.mkdir()
  make_video(vids / "101.webm", 0, 0, num_frames=6, codec="libvpx-vp9")
  entries = [{"id": "101", "template": "Pushing [something] left", "placeholders": ["cup"]}]
  (tmp_path / "train.json").write_text(json.dumps(entries))
  (tmp_path / "labels.json").write_text(json.dumps({"Pulling something": "0", "Pushing something left": "1"}))
  items = label_files.read_label_file(str(tmp_path / "train.json"), str(vids), "train")
  names = label_files.class_names_for(items, label_map_file=str(tmp_path / "labels.json"))
  assert names == ["Pulling something", "Pushing something left"]
  build_shards.convert(items, str(tmp_path / "out"), "ssv2", names, build_shards.Options(short_side=32), progress=False)
  _, (rec,) = _read_split(storage.dataset_dir(tmp_path / "out", "ssv2"), "train")
  assert rec["video_id"] == "101" and rec["label"] == 1 and len(rec["frames"]) == 6


@pytest.mark.slow
def test_cli_multiprocess(video_folder, tmp_path):
  """The absl CLI with 2 worker processes: completes, reports the skipped inputs, exit code 0."""
  cmd = [sys.executable, "-m", "maskfeat_jax.data.build_shards", f"--videos_dir={video_folder}",
         f"--labels={video_folder / 'list.csv'}", f"--output_dir={tmp_path}", "--name=toy", "--num_workers=2",
         "--short_side=32", "--examples_per_shard=3", "--noprogress"]
  result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=240, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Converted 6 videos" in result.stdout and "skipped 4" in result.stdout
  report = json.loads((storage.dataset_dir(tmp_path, "toy") / build_shards.REPORT_FILE).read_text())
  assert report["skipped"] == 4 and report["splits"]["train"] == {"converted": 6, "shards": 4, "skipped": 4}
  meta, records = _read_split(storage.dataset_dir(tmp_path, "toy"), "train")
  assert sorted(r["video_id"] for r in records) == sorted(
      f"{n}/vid{l}{i}" for l, n in enumerate(CLASSES) for i in range(2))


def test_bad_label_file_errors_name_the_line(tmp_path):
  (tmp_path / "l.txt").write_text("a.mp4,red\njustonefield\n")
  with pytest.raises(ValueError, match=r"l.txt:2"):
    label_files.read_label_file(str(tmp_path / "l.txt"), str(tmp_path), "train")
  with pytest.raises(FileNotFoundError, match="nope.csv"):
    label_files.read_label_file(str(tmp_path / "nope.csv"), str(tmp_path), "train")
  assert os.path.exists(tmp_path / "l.txt")


def _crash_on_request(item):
  """Worker function for the test below: dies like a segfault inside FFmpeg for ids containing 'crash'."""
  if "crash" in item.video_id:
    os.kill(os.getpid(), signal.SIGKILL)
  return "ok", item.video_id


@pytest.mark.slow
def test_worker_crash_skips_only_that_video_and_does_not_hang():
  """multiprocessing.Pool loses a dead worker's task and hangs; the converter's pool reports and goes on."""
  ids = ["a", "b", "crash1", "c", "d", "e", "crash2", "f", "g", "h"]
  items = [label_files.Item(i, f"/nowhere/{i}.mp4", "red", "train") for i in ids]
  run_workers = build_shards._run_workers  # pylint: disable=protected-access
  results = list(run_workers(items, ["red"], build_shards.Options(short_side=32), 2, fn=_crash_on_request))
  assert [r[1] if r[0] == "ok" else r[0] for r in results] == [
      "a", "b", "skip", "c", "d", "e", "skip", "f", "g", "h"]
  assert "worker process died" in results[2][1]


def test_trim_keeps_only_the_annotated_segment(tmp_path):
  """--trim (Kinetics untrimmed videos): frames with time in [time_start, time_end) only."""
  path = tmp_path / "long.mp4"
  make_video(path, 0, 0, num_frames=40, width=192)  # 30 fps; frame n shows a bar 4n pixels wide

  def bar_widths(frames):
    return [int((f.mean(axis=(0, 2)) > 240).sum()) for f in frames]

  full, fps = build_shards.decode_video(str(path), build_shards.Options(short_side=64))
  assert len(full) == 40 and fps == 30.0
  trimmed, _ = build_shards.decode_video(str(path), build_shards.Options(short_side=64, trim=True), 0.5, 1.0)
  assert len(trimmed) == 15  # frames 15..29
  np.testing.assert_allclose(bar_widths(trimmed), [4 * n for n in range(15, 30)], atol=3)
  # Without --trim the times are ignored (already-trimmed clips).
  assert len(build_shards.decode_video(str(path), build_shards.Options(short_side=64), 0.5, 1.0)[0]) == 40
