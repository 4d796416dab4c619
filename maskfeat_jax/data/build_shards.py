r"""Converts a folder of videos + labels into the TFDS array_record format of `data/storage.py`.

  python -m maskfeat_jax.data.build_shards --videos_dir=/data/k400/videos --labels=/data/k400/train.csv \
      --output_dir=~/tensorflow_datasets --name=kinetics400 [--short_side=320] [--fps=0] [--jpeg_quality=90]

Label files:
  * Kinetics CSV with header `label,youtube_id,time_start,time_end,split`: files are found by name
    (`{youtube_id}_{time_start:06d}_{time_end:06d}.*` or `{youtube_id}.*`) anywhere under --videos_dir; the split
    column names the split; --trim cuts [time_start, time_end) out of untrimmed videos.
  * A `path,label` (or `path label`) list, optional header: paths relative to --videos_dir; labels are class names
    or integer indices; everything goes to --split.
  * SSv2-style JSON (a list of {"id", "template" | "label"}): `{id}.*` under --videos_dir; class = template
    without brackets; --ssv2_label_map (the labels JSON, name -> index) fixes the class order.

Each video is decoded with PyAV (mp4/webm/avi/mkv...), optionally resampled to --fps, resized so its short side is
--short_side (never upscaled) and stored as JPEG frames. Work runs in --num_workers processes (data/worker_pool.py:
a crashing worker skips only its video; workers exit when the converter dies); shard k of a split holds rows
k, k + N, k + 2N, ... of the label file (deterministic). A shard is written under a temporary name and renamed
when complete, together with a small sidecar (.convert/) saying what it holds: a rerun skips finished shards.
Bad inputs (missing, empty, truncated, not a video, undecodable) are skipped, counted and listed in
`conversion_report.json`; dataset_info.json / features.json are (re)written at the end for every finished split.

--output_dir=gs://BUCKET/PATH (any epath URL) writes straight to the bucket: each shard is written in a
local staging directory and uploaded when complete, the shard first and its sidecar last (a bucket has no
rename; the sidecar is what marks a shard finished), so a rerun finds finished shards on the bucket.
--videos_dir may be a URL too: the videos are listed there and each is copied to a temporary file to decode.
A gs:// path without credentials or emulator (STORAGE_EMULATOR_HOST) fails at once, before any decoding.

--runner=beam runs the same per-shard work as an Apache Beam pipeline (data/beam_pipeline.py; DirectRunner in
multi_processing mode by default, Dataflow / Flink / Spark through --beam_pipeline_options), for datasets
larger than one machine converts in reasonable time; the shards and report are the local runner's.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import sys
import tempfile
from typing import Any, Iterable, Sequence

import numpy as np
from absl import app
from absl import flags
from absl import logging
from tqdm import tqdm

from maskfeat_jax import paths
from maskfeat_jax.data import ava
from maskfeat_jax.data import ava_convert
from maskfeat_jax.data import ava_synthetic
from maskfeat_jax.data import storage
from maskfeat_jax.data import transforms
from maskfeat_jax.data import worker_pool
from maskfeat_jax.data.label_files import Item, class_names_for, label_index, read_label_file

STATE_DIR = ".convert"
REPORT_FILE = "conversion_report.json"


@dataclasses.dataclass(frozen=True)
class Options:
  short_side: int = 320
  fps: float = 0.0
  jpeg_quality: int = 90
  trim: bool = False


# ----------------------------------------------------------------------------------------------- decoding
def decode_video(path: str, options: Options, time_start: float = -1.0,
                 time_end: float = -1.0) -> tuple[list[np.ndarray], float]:
  """PyAV decode -> (list of uint8 [H,W,3] frames, fps of the returned frames). Raises on any problem."""
  import av  # pylint: disable=g-import-not-at-top
  with av.open(path) as container:
    if not container.streams.video:
      raise ValueError("no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    src_fps = float(stream.average_rate or stream.guessed_rate or 0.0)
    expected = int(stream.frames or 0)
    frames, times = [], []
    size = None
    for n, frame in enumerate(container.decode(stream)):
      t = frame.time if frame.time is not None else (n / src_fps if src_fps > 0 else float(n))
      if options.trim and time_start >= 0 and t < time_start:
        continue
      if options.trim and time_end > 0 and t >= time_end:
        break
      if size is None:
        size = transforms.downscaled_size(frame.width, frame.height, options.short_side)
      frames.append(frame.to_ndarray(width=size[0], height=size[1], format="rgb24", interpolation="AREA"))
      times.append(t)
  if not frames:
    raise ValueError("no decodable video frames")
  if not options.trim and expected > 0 and len(frames) < 0.9 * expected:
    raise ValueError(f"truncated: decoded {len(frames)} of the {expected} frames the header announces")
  if src_fps <= 0 and len(times) > 1 and times[-1] > times[0]:
    src_fps = (len(times) - 1) / (times[-1] - times[0])
  if options.fps > 0 and src_fps > 0:
    return resample_fps(frames, times, options.fps, src_fps), options.fps
  return frames, src_fps


def resample_fps(frames: list[np.ndarray], times: list[float], fps: float, src_fps: float) -> list[np.ndarray]:
  """Output frame k shows the source frame on screen at time t0 + k / fps (duplicates or drops frames)."""
  t0 = times[0]
  duration = times[-1] - t0 + 1.0 / src_fps
  num_out = max(1, int(math.floor(duration * fps + 1e-6)))
  out_times = t0 + np.arange(num_out) / fps
  # Index of the last source frame starting at or before each output time (small tolerance for rounding).
  idx = np.searchsorted(np.asarray(times), out_times + 1e-6, side="right") - 1
  return [frames[i] for i in np.clip(idx, 0, len(frames) - 1)]


# ----------------------------------------------------------------------------------------------- workers
_WORKER: dict[str, Any] = {}


def _init_worker(class_names: Sequence[str], options: Options) -> None:
  _WORKER["serializer"] = storage.VideoExampleSerializer(class_names)
  _WORKER["options"] = options
  _WORKER["lookup"] = {name: i for i, name in enumerate(class_names)}


def convert_one(item: Item) -> tuple[str, Any]:
  """Item -> ('ok', serialized record) or ('skip', reason). Never raises for bad input files."""
  serializer, options = _WORKER["serializer"], _WORKER["options"]
  try:
    label = label_index(item, serializer.class_names, _WORKER["lookup"])
  except ValueError as e:
    return "skip", str(e)
  if not paths.exists(item.path):
    return "skip", "missing file"
  if paths.getsize(item.path) == 0:
    return "skip", "empty file (0 bytes)"
  with _local_video(item.path) as local_path:
    try:
      frames, fps = decode_video(local_path, options, item.time_start, item.time_end)
    except Exception as e:  # pylint: disable=broad-except  (PyAV raises many types for bad media)
      # Named by the input, not by the temporary copy of a URL's video (which is gone after this).
      return "skip", f"cannot decode: {type(e).__name__}: {e}".replace(local_path, item.path)
  jpegs = [storage.encode_jpeg(f, options.jpeg_quality) for f in frames]
  return "ok", serializer(jpegs, label, item.video_id, fps)


@contextlib.contextmanager
def _local_video(path: str):
  """`path` itself, or for a URL (gs://...) a local copy removed afterwards: FFmpeg seeks through a
  container, which over a bucket would be one ranged request per seek."""
  if not paths.is_remote(path):
    yield path
    return
  with tempfile.TemporaryDirectory(prefix="maskfeat_video_") as tmp:
    local_path = os.path.join(tmp, path.rsplit("/", 1)[-1])
    paths.copy(path, local_path)
    yield local_path


# ----------------------------------------------------------------------------------------------- shards
def _fingerprint(items: Sequence[Item]) -> str:
  return hashlib.sha1("\n".join(f"{it.video_id}\t{it.label}" for it in items).encode()).hexdigest()


def _sidecar(ds_dir, name: str, split: str, shard: int, num_shards: int) -> str:
  return paths.join(os.fspath(ds_dir), STATE_DIR, storage.shard_filename(name, split, shard, num_shards) + ".json")


def _write_json_atomic(path, obj: Any) -> None:
  path, text = os.fspath(path), json.dumps(obj, indent=1)
  if paths.is_remote(path):
    # A bucket has no rename, and needs none: an object appears only once its upload has completed.
    with paths.open(path, "w") as f:
      f.write(text)
    return
  tmp = path + storage.TMP_SUFFIX
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def _read_json(path) -> Any:
  with paths.open(os.fspath(path)) as f:
    return json.load(f)


def _listing(directory) -> set[str]:
  """Names in `directory` (empty if it does not exist), listed afresh: on a bucket, what other processes
  (Beam workers, an earlier run) wrote may be newer than gcsfs's cached listing, and one listing is one
  request where a check per shard file would be two."""
  directory = os.fspath(directory)
  paths.refresh(directory)
  try:
    return set(paths.listdir(directory))
  except FileNotFoundError:
    return set()


def plan_shards(items: Sequence[Item], examples_per_shard: int) -> dict[str, list[list[Item]]]:
  """split -> shards (row k of a split goes to shard k % num_shards)."""
  by_split = collections.defaultdict(list)
  for it in items:
    by_split[it.split].append(it)
  plan = {}
  for split, rows in by_split.items():
    num_shards = max(1, math.ceil(len(rows) / examples_per_shard))
    plan[split] = [rows[k::num_shards] for k in range(num_shards)]
  return plan


def _check_existing_shards(ds_dir, name: str, split: str, num_shards: int, present: set[str]) -> None:
  pattern = re.compile(re.escape(f"{name}-{split}.{storage.FILE_FORMAT}-") + r"\d{5}-of-(\d{5})$")
  for filename in sorted(present):
    m = pattern.match(filename)
    if m and int(m.group(1)) != num_shards:
      p = paths.join(os.fspath(ds_dir), filename)
      raise ValueError(f"{p} was written with {int(m.group(1))} shards but this run plans {num_shards} for split "
                       f"{split!r}; rerun with the same --examples_per_shard and label file, or a new output dir.")


def _finished(ds_dir, name, split, shard, num_shards, rows, present: set[str], sidecars: set[str]) -> dict | None:
  """The sidecar of a finished shard (None if it must be (re)written); errors if the input changed.

  `present` / `sidecars`: the names in ds_dir / ds_dir/STATE_DIR (`_listing`).
  """
  filename = storage.shard_filename(name, split, shard, num_shards)
  path = paths.join(os.fspath(ds_dir), filename)
  if filename not in present or filename + ".json" not in sidecars:
    return None
  meta = _read_json(_sidecar(ds_dir, name, split, shard, num_shards))
  if meta.get("fingerprint") != _fingerprint(rows):
    raise ValueError(f"{path} was written from a different label list; use a new output dir or the same list.")
  return meta


def pending_shards(items: Sequence[Item], ds_dir, name: str,
                   examples_per_shard: int) -> list[tuple[str, int, int, list[Item]]]:
  """(split, shard, num_shards, rows) of every shard still to write (a finished one is skipped).

  `ds_dir` may be a URL (gs://...): finished shards are then found on the bucket.
  """
  plan = plan_shards(items, examples_per_shard)
  present = _listing(ds_dir)
  sidecars = _listing(paths.join(os.fspath(ds_dir), STATE_DIR))
  pending = []
  for split, shards in sorted(plan.items()):
    _check_existing_shards(ds_dir, name, split, len(shards), present)
    for k, rows in enumerate(shards):
      if _finished(ds_dir, name, split, k, len(shards), rows, present, sidecars) is None:
        pending.append((split, k, len(shards), rows))
      else:
        logging.info("Shard %d of split %s already written; skipping.", k, split)
  return pending


RUNNERS = ("local", "beam")


def convert(items: Sequence[Item], output_dir: str, name: str, class_names: Sequence[str], options: Options,
            *, examples_per_shard: int = 64, num_workers: int = 0, version: str = storage.DEFAULT_VERSION,
            progress: bool = True, runner: str = "local", beam_pipeline_options: str = "") -> dict[str, Any]:
  """Converts `items` into output_dir/name/version; returns the report (also written to REPORT_FILE).

  runner 'local': this machine's process pool (`num_workers` processes, 0 = in this process).
  runner 'beam': an Apache Beam pipeline (data/beam_pipeline.py) with `beam_pipeline_options`; each shard
  is one element, converted and written by a Beam worker with the same code as here, so the shards,
  sidecars and report are those of the local runner.
  """
  if runner not in RUNNERS:
    raise ValueError(f"--runner={runner!r}: expected one of {RUNNERS}.")
  ds_dir = os.fspath(storage.dataset_dir(output_dir, name, version))
  if paths.is_remote(ds_dir):
    paths.check_remote_dir(ds_dir)  # before any decoding: without credentials gcsfs would retry for a minute
  else:
    os.makedirs(os.path.join(ds_dir, STATE_DIR), exist_ok=True)  # a bucket needs no directories
  pending = pending_shards(items, ds_dir, name, examples_per_shard)
  if runner == "beam":
    try:  # apache-beam is an optional extra: imported only for this runner
      from maskfeat_jax.data import beam_pipeline  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise SystemExit(f"ERROR: --runner=beam needs apache-beam: pip install 'maskfeat_jax[beam]' ({e}).") from e
    beam_pipeline.run(pending, ds_dir, name, class_names, options, beam_pipeline_options,
                      num_workers=num_workers)
    return finish(ds_dir, name, class_names, version)
  total = sum(len(rows) for *_, rows in pending)
  results = iter(_run_workers([it for *_, rows in pending for it in rows], class_names, options, num_workers))
  bar = _progress(total, progress)
  try:
    for split, k, num_shards, rows in pending:
      _write_one_shard(ds_dir, name, split, k, num_shards, rows, results, bar)
  finally:
    if bar is not None:
      bar.close()
  return finish(ds_dir, name, class_names, version)


def convert_shard(ds_dir, name: str, split: str, k: int, num_shards: int, rows: Sequence[Item],
                  class_names: Sequence[str], options: Options, num_workers: int = 1) -> None:
  """Decodes, resizes, encodes and writes one shard (with its sidecar): the unit of work of a Beam worker.

  `ds_dir` may be a URL (gs://...): the shard is staged locally and uploaded (storage.ShardWriter).

  num_workers=1 decodes in one child process, so a decoder that crashes the process skips only its video
  (worker_pool.CrashSafePool) instead of failing the Beam bundle; 0 decodes in this process.
  """
  results = iter(_run_workers(list(rows), class_names, options, num_workers))
  _write_one_shard(ds_dir, name, split, k, num_shards, rows, results, None)


def _run_workers(work: list[Item], class_names, options, num_workers: int, fn=None) -> Iterable[tuple[str, Any]]:
  """(status, payload) for each item of `work`, in order. `fn` (default `convert_one`) runs in the workers."""
  fn = fn or convert_one
  if num_workers <= 0:
    _init_worker(class_names, options)
    return map(fn, work)
  return worker_pool.CrashSafePool(fn, work, num_workers, _init_worker, (list(class_names), options),
                                   describe=lambda it: f"{it.video_id} ({it.path})")


def _progress(total: int, enabled: bool):
  if not enabled or total == 0:
    return None
  return tqdm(total=total, unit="video", desc="converting", dynamic_ncols=True)


def _write_one_shard(ds_dir, name, split, k, num_shards, rows, results, bar) -> None:
  ds_dir = os.fspath(ds_dir)
  remote = paths.is_remote(ds_dir)
  sidecar = _sidecar(ds_dir, name, split, k, num_shards)
  if remote:
    # A sidecar left without its shard would mark the new shard finished the moment its upload completes,
    # before this run has written the sidecar that describes it.
    paths.remove(sidecar)
  writer = storage.ShardWriter(paths.join(ds_dir, storage.shard_filename(name, split, k, num_shards)))
  skipped = []
  try:
    for item in rows:
      status, payload = next(results)
      if status == "ok":
        writer.write(payload)
      else:
        skipped.append({"split": split, "video_id": item.video_id, "path": item.path, "reason": payload})
        logging.warning("Skipping %s (%s): %s", item.video_id, item.path, payload)
      if bar is not None:
        bar.update(1)
        bar.set_postfix(skipped=len(skipped))
  except BaseException:
    writer.abort()
    raise
  meta = {"count": writer.count, "skipped": skipped, "fingerprint": _fingerprint(rows)}
  if remote:
    # No rename on a bucket: the shard is uploaded first and the sidecar that marks it finished last, so
    # a kill between the two leaves a shard without sidecar, which a rerun converts again.
    writer.close()
    _write_json_atomic(sidecar, meta)
  else:
    # Sidecar first: a shard file under its final name always has one, so a rerun can trust it.
    _write_json_atomic(sidecar, meta)
    writer.close()


def finish(ds_dir, name: str, class_names: Sequence[str], version: str) -> dict[str, Any]:
  """Writes dataset_info for every split whose shards are all finished, and the report (on a bucket too)."""
  ds_dir = os.fspath(ds_dir)
  state_dir = paths.join(ds_dir, STATE_DIR)
  lengths = collections.defaultdict(dict)
  skipped = []
  pattern = re.compile(re.escape(f"{name}-") + r"(.+)\." + storage.FILE_FORMAT + r"-(\d{5})-of-(\d{5})\.json$")
  present = _listing(ds_dir)
  for side_name in sorted(_listing(state_dir)):
    m = pattern.match(side_name)
    if not m or side_name[:-len(".json")] not in present:
      continue
    split, k, n = m.group(1), int(m.group(2)), int(m.group(3))
    meta = _read_json(paths.join(state_dir, side_name))
    lengths[(split, n)][k] = meta["count"]
    skipped.extend(meta["skipped"])
  complete = {}
  for (split, n), shard_counts in lengths.items():
    if len(shard_counts) == n:
      complete[split] = [shard_counts[k] for k in range(n)]
    else:
      logging.warning("Split %s has %d of %d shards; rerun to finish it.", split, len(shard_counts), n)
  if complete:
    storage.write_dataset_info(ds_dir, name, class_names, complete,
                                  description=f"Converted by maskfeat_jax.data.convert ({len(class_names)} classes).",
                                  version=version)
  report = {
      "dataset_dir": os.fspath(ds_dir),
      "splits": {s: {"converted": sum(c), "shards": len(c),
                     "skipped": sum(1 for x in skipped if x["split"] == s)} for s, c in complete.items()},
      "converted": sum(sum(c) for c in complete.values()),
      "skipped": len(skipped),
      "skipped_items": skipped,
  }
  _write_json_atomic(paths.join(ds_dir, REPORT_FILE), report)
  return report


def _existing_class_names(output_dir: str, name: str, version: str) -> list[str] | None:
  ds_dir = storage.dataset_dir(output_dir, name, version)
  if paths.isfile(ds_dir / "dataset_info.json"):
    return list(storage.read_meta(ds_dir).class_names)
  return None


# ----------------------------------------------------------------------------------------------- CLI
FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_enum("mode", "videos", ["videos", "ava"],
                    "videos: classification datasets (label files); ava: AVA v2.2 keyframe clips with boxes "
                    "(data/ava_convert.py; --videos_dir, --ava_annotations, --output_dir, --name).")
  flags.DEFINE_string("ava_annotations", "", "AVA: folder with the official CSVs / pbtxt (data/ava.py FILES).")
  flags.DEFINE_string("ava_det_csv", "", "AVA: person-detector boxes of val (default: "
                      "ava_annotations/ava_detection_val_boxes_and_labels.csv).")
  flags.DEFINE_string("ava_synthetic", "", "AVA: write the AVA-like synthetic fixture (movies + annotation files) "
                      "into this folder and convert it (configs/ava_detection.py:S,local).")
  flags.DEFINE_integer("num_frames", 16, "AVA: frames per keyframe clip (config.data.num_frames).")
  flags.DEFINE_integer("sampling_rate", 4, "AVA: clip frame stride on the 30 fps timeline (config.data.sampling_rate).")
  flags.DEFINE_string("ava_valid_secs", "902,1798", "AVA: first,last keyframe second converted (official 902-1798).")
  flags.DEFINE_float("ava_time_offset", 0.0, "AVA: movie time at which the files start: 0 for the full movies, "
                     "900 for the official 15-minute cuts (ffmpeg -ss 900 -t 901).")
  flags.DEFINE_string("videos_dir", None, "Folder holding the videos (searched recursively).")
  flags.DEFINE_string("labels", None, "Kinetics CSV, `path,label` list or SSv2 JSON.")
  flags.DEFINE_string("output_dir", None, "TFDS data dir; the dataset goes to OUTPUT_DIR/NAME/VERSION.")
  flags.DEFINE_string("name", None, "Dataset name (config.data.name).")
  flags.DEFINE_string("split", "train", "Split for label files without a split column.")
  flags.DEFINE_string("version", storage.DEFAULT_VERSION, "Dataset version directory.")
  flags.DEFINE_string("class_names", "", "Optional file with one class name per line (fixes the label order).")
  flags.DEFINE_string("ssv2_label_map", "", "Optional SSv2 labels JSON (class name -> index).")
  flags.DEFINE_integer("short_side", 320, "Resize so the short side is this many pixels (0 = keep; no upscaling).")
  flags.DEFINE_float("fps", 0.0, "Resample to this frame rate (0 = keep the source rate).")
  flags.DEFINE_integer("jpeg_quality", 90, "JPEG quality of the stored frames.")
  flags.DEFINE_bool("trim", False, "Kinetics CSV: keep only [time_start, time_end) of each video.")
  flags.DEFINE_integer("examples_per_shard", 64, "Videos per shard (fixes the shard count).")
  flags.DEFINE_integer("num_workers", os.cpu_count() or 1, "Decoding processes (0 = in this process).")
  flags.DEFINE_bool("progress", True, "Show a progress bar.")
  flags.DEFINE_enum("runner", "local", list(RUNNERS),
                    "local: this machine's process pool; beam: an Apache Beam pipeline (pip install "
                    "'maskfeat_jax[beam]'), one shard per element, options from --beam_pipeline_options.")
  flags.DEFINE_string("beam_pipeline_options", "",
                      "Comma-separated Beam pipeline options, e.g. 'runner=DataflowRunner,project=P,region=R' "
                      "(a leading -- is optional). Default: DirectRunner in multi_processing mode with "
                      "--num_workers processes.")


def main_ava() -> int:
  """--mode=ava: the movies + official annotations (or the synthetic fixture) -> AVA keyframe shards."""
  if not FLAGS.output_dir or not FLAGS.name:
    raise app.UsageError("--output_dir and --name are required")
  first, last = (int(v) for v in FLAGS.ava_valid_secs.split(","))
  kwargs = dict(num_frames=FLAGS.num_frames, sampling_rate=FLAGS.sampling_rate, short_side=FLAGS.short_side,
                jpeg_quality=FLAGS.jpeg_quality, valid_secs=(first, last), version=FLAGS.version,
                progress=FLAGS.progress, time_offset=FLAGS.ava_time_offset, num_workers=FLAGS.num_workers)
  output_dir = os.path.expanduser(FLAGS.output_dir)
  if FLAGS.ava_synthetic:
    p = ava_synthetic.write_synthetic(os.path.expanduser(FLAGS.ava_synthetic))
    kwargs["valid_secs"] = (2, 9)  # the fixture's keyframes
    videos_dir, annotations = p["videos_dir"], os.path.dirname(p["train"])
  else:
    if not FLAGS.videos_dir or not FLAGS.ava_annotations:
      raise app.UsageError("--mode=ava needs --videos_dir and --ava_annotations (or --ava_synthetic)")
    videos_dir, annotations = os.path.expanduser(FLAGS.videos_dir), os.path.expanduser(FLAGS.ava_annotations)
    if not os.path.isdir(videos_dir):
      raise app.UsageError(f"--videos_dir {videos_dir} is not a directory")
  report = ava_convert.convert_from_annotation_dir(videos_dir, annotations, output_dir, FLAGS.name,
                                           det_csv=os.path.expanduser(FLAGS.ava_det_csv), **kwargs)
  print(f"Converted {report['converted']} keyframes into {report['dataset_dir']}; skipped {report['skipped']} "
        f"(movies and keyframes listed in {os.path.join(report['dataset_dir'], ava.REPORT_FILE)}).")
  for split, s in sorted(report["splits"].items()):
    print(f"  {split}: {s['keyframes']} keyframes in {s['shards']} shards, {s['skipped']} skipped")
  return 0


def _fail(message: str) -> None:
  """One line on stderr, exit status 2 (absl's UsageError would print the whole help text first)."""
  print(f"ERROR: {message}", file=sys.stderr)
  sys.exit(2)


def main(argv: Sequence[str]) -> int:
  del argv
  if FLAGS.mode == "ava":
    return main_ava()
  for flag in ("videos_dir", "labels", "output_dir", "name"):
    if not FLAGS[flag].value:
      raise app.UsageError(f"--{flag} is required")
  videos_dir = os.path.expanduser(FLAGS.videos_dir)
  output_dir = os.path.expanduser(FLAGS.output_dir)
  for flag, path in (("videos_dir", videos_dir), ("output_dir", output_dir)):
    if paths.is_remote(path):
      try:  # before reading the label file and decoding anything
        paths.check_remote_dir(path)
      except paths.RemotePathError as e:
        _fail(f"--{flag}={e}")
  if not paths.isdir(videos_dir):
    raise app.UsageError(f"--videos_dir {videos_dir} is not a directory")
  items = read_label_file(os.path.expanduser(FLAGS.labels), videos_dir, FLAGS.split)
  names = class_names_for(items, FLAGS.class_names, FLAGS.ssv2_label_map,
                          _existing_class_names(output_dir, FLAGS.name, FLAGS.version))
  options = Options(short_side=FLAGS.short_side, fps=FLAGS.fps, jpeg_quality=FLAGS.jpeg_quality, trim=FLAGS.trim)
  report = convert(items, output_dir, FLAGS.name, names, options, examples_per_shard=FLAGS.examples_per_shard,
                   num_workers=FLAGS.num_workers, version=FLAGS.version, progress=FLAGS.progress,
                   runner=FLAGS.runner, beam_pipeline_options=FLAGS.beam_pipeline_options)
  ds_dir = report["dataset_dir"]
  print(f"Converted {report['converted']} videos into {ds_dir}; skipped {report['skipped']} "
        f"(listed in {os.path.join(ds_dir, REPORT_FILE)}).")
  for split, s in sorted(report["splits"].items()):
    print(f"  {split}: {s['converted']} videos in {s['shards']} shards, {s['skipped']} skipped")
  return 0


if __name__ == "__main__":
  define_flags()
  sys.exit(app.run(main))
