r"""Input pipeline throughput: training clips/s in ONE process from JPEG shards vs from mp4 with PyAV.

  python benchmarks/input_bench.py [--num_videos=4] [--seconds=5] [--height=360] [--width=480] [--clips=40]

Generates its own test videos with PyAV (textured content moving every frame, H.264) in a temporary directory,
converts them with the project's converter (short side 320, JPEG quality 90), then times the work one Grain worker
process does per training clip (16 frames x sampling rate 4 at 30 fps, random-resized-crop to 224², flip, uint8):

  shards: read the record, decode the 16 sampled JPEG frames, crop + resize.
  mp4:    open the mp4, seek to the clip start, decode up to the clip's last frame (only the span, which favours
          mp4 over decoding whole videos), convert to RGB, then the same sampling, crop + resize.

Both run single-threaded in this process (PyAV's codec threads are disabled), i.e. per CPU core. Prints the median
of --repeats timed passes after a warm-up pass, and the ratio. Targets: >= 50 clips/s per core from shards and
>= 4x the mp4 path.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from maskfeat_jax.config_defaults import base_config
from maskfeat_jax.data import convert
from maskfeat_jax.data import pipeline
from maskfeat_jax.data import tfds_video
from maskfeat_jax.data import transforms

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_videos", 4, "Test videos to generate.")
flags.DEFINE_float("seconds", 5.0, "Length of each test video (30 fps).")
flags.DEFINE_integer("height", 360, "Test video height.")
flags.DEFINE_integer("width", 480, "Test video width.")
flags.DEFINE_integer("clips", 40, "Training clips per timed pass.")
flags.DEFINE_integer("repeats", 3, "Timed passes (median reported).")


def make_video(path: str, seconds: float, height: int, width: int, seed: int) -> None:
  """A smooth random texture panning and brightening over time (so every frame differs, like real video)."""
  import av  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  big = rng.integers(0, 256, size=(height // 4 + 40, width // 4 + 80, 3), dtype=np.uint8)
  big = np.repeat(np.repeat(big, 4, 0), 4, 1)  # blocky texture: realistic JPEG / H.264 sizes
  with av.open(path, "w") as container:
    stream = container.add_stream("libx264", rate=30)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    for t in range(int(seconds * 30)):
      dy, dx = t % 120, (2 * t) % 300
      frame = big[dy:dy + height, dx:dx + width]
      for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def train_spec():
  c = base_config()
  c.mode = "finetune"  # no mask: time the video path only
  c.data.num_frames, c.data.sampling_rate, c.data.crop_size = 16, 4, 224
  return pipeline._spec(c, "train", train=True)  # pylint: disable=protected-access


def spatial(spec, clip, rng):
  return transforms.train_spatial(clip, rng, crop_size=spec.crop_size, use_rrc=spec.use_rrc,
                                  rrc_scale=spec.rrc_scale, rrc_aspect=spec.rrc_aspect,
                                  jitter_scales=spec.jitter_scales, random_flip=spec.random_flip)


def clip_from_shards(spec, source, index: int, rng) -> np.ndarray:
  return pipeline._video_train(spec, source[index], rng)["video"][0]  # pylint: disable=protected-access


def clip_from_mp4(spec, path: str, rng) -> np.ndarray:
  import av  # pylint: disable=g-import-not-at-top
  with av.open(path) as container:
    stream = container.streams.video[0]
    stream.thread_type = "SLICE"
    stream.codec_context.thread_count = 1  # one core, like one loader worker
    fps = float(stream.average_rate)
    num = int(stream.frames)
    idx = transforms.temporal_indices(num, fps, spec.num_frames, spec.sampling_rate, spec.target_fps, rng=rng)
    first, last = int(idx[0]), int(idx[-1])
    container.seek(int(first / fps / stream.time_base), stream=stream, backward=True, any_frame=False)
    frames = {}
    for frame in container.decode(stream):
      n = int(round(frame.time * fps))
      if n > last:
        break
      if n >= first:
        frames[n] = frame.to_ndarray(format="rgb24")
  clip = np.stack([frames[min(frames, key=lambda k: abs(k - i))] for i in idx])  # pylint: disable=cell-var-from-loop
  return spatial(spec, clip, rng)


def timed(fn, n: int, repeats: int) -> float:
  fn(0, max(2, n // 4))  # warm-up
  rates = []
  for r in range(repeats):
    start = time.perf_counter()
    fn(r + 1, n)
    rates.append(n / (time.perf_counter() - start))
  return statistics.median(rates)


def main(argv):
  del argv
  os.environ.setdefault("OMP_NUM_THREADS", "1")
  spec = train_spec()
  with tempfile.TemporaryDirectory() as tmp:
    videos = []
    t0 = time.perf_counter()
    for i in range(FLAGS.num_videos):
      path = os.path.join(tmp, f"v{i}.mp4")
      make_video(path, FLAGS.seconds, FLAGS.height, FLAGS.width, i)
      videos.append(path)
    items = [convert.Item(f"v{i}", p, "a", "train") for i, p in enumerate(videos)]
    convert.convert(items, os.path.join(tmp, "out"), "bench", ["a"], convert.Options(short_side=320),
                    progress=False)
    meta = tfds_video.read_meta(tfds_video.dataset_dir(os.path.join(tmp, "out"), "bench"))
    source = tfds_video.open_source(meta.files("train"))
    print(f"setup (generate + convert {FLAGS.num_videos} videos of {FLAGS.seconds:.0f} s at "
          f"{FLAGS.height}x{FLAGS.width}): {time.perf_counter() - t0:.1f} s")
    mp4_bytes = sum(os.path.getsize(v) for v in videos)
    shard_bytes = sum(os.path.getsize(f) for f in meta.files("train"))
    print(f"mp4 {mp4_bytes / 2**20:.1f} MiB, shards {shard_bytes / 2**20:.1f} MiB (short side 320, quality 90)")

    def run_shards(r, n):
      for k in range(n):
        out = clip_from_shards(spec, source, k % len(source), np.random.default_rng([r, k]))
      assert out.shape == (16, 224, 224, 3)

    def run_mp4(r, n):
      for k in range(n):
        out = clip_from_mp4(spec, videos[k % len(videos)], np.random.default_rng([r, k]))
      assert out.shape == (16, 224, 224, 3)

    shards = timed(run_shards, FLAGS.clips, FLAGS.repeats)
    mp4 = timed(run_mp4, max(4, FLAGS.clips // 4), FLAGS.repeats)
  print(f"16x224² training clips per second, one process: shards {shards:.1f}, mp4 (PyAV) {mp4:.1f}, "
        f"ratio {shards / mp4:.1f}x  (targets: >= 50 clips/s, >= 4x)")
  return 0


if __name__ == "__main__":
  sys.exit(app.run(main))
