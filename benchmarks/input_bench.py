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

  python benchmarks/input_bench.py --mode=loop [--loop_steps=20] [--loop_batch=2] [--loop_work=1536]

The training loop's data wait with and without host-to-device prefetch (train/trainer.py `_Feeder`, the
loop's own code): batches of --loop_batch clips read from the shards as above, a jitted stand-in step of
--loop_work-sized matmuls on the devices. It times (a) the step alone on one placed batch, then the loop
(b) without and (c) with prefetch; the data wait per step is (b) or (c) minus (a), and the saving is
(b) - (c). Prefetch can hide at most min(read time, step time) per step, and only where the host has a core
the step does not use.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from maskfeat_jax.config import base_config
from maskfeat_jax.data import build_shards
from maskfeat_jax.data import label_files
from maskfeat_jax.data import pipeline
from maskfeat_jax.data import storage
from maskfeat_jax.data import transforms
from maskfeat_jax.train import trainer

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_videos", 4, "Test videos to generate.")
flags.DEFINE_float("seconds", 5.0, "Length of each test video (30 fps).")
flags.DEFINE_integer("height", 360, "Test video height.")
flags.DEFINE_integer("width", 480, "Test video width.")
flags.DEFINE_integer("clips", 40, "Training clips per timed pass.")
flags.DEFINE_integer("repeats", 3, "Timed passes (median reported).")
flags.DEFINE_enum("mode", "clips", ["clips", "loop"], "clips: per-core clip rates; loop: data wait with and "
                  "without the training loop's prefetch.")
flags.DEFINE_integer("loop_steps", 20, "--mode=loop: timed steps per variant.")
flags.DEFINE_integer("loop_batch", 2, "--mode=loop: clips per batch.")
flags.DEFINE_integer("loop_work", 1536, "--mode=loop: matmul size of the stand-in step (sets its duration).")


def natural_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """Smooth noise octaves (a 1/f-like spectrum, as natural images have): JPEG/H.264 sizes like real video."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  img = np.zeros((height, width, 3), np.float32)
  for cells, amplitude in ((8, 45), (16, 25), (32, 15), (64, 9), (128, 5)):
    small = rng.normal(0, 1, (cells * height // width + 2, cells + 2, 3)).astype(np.float32)
    img += amplitude * np.stack([np.asarray(Image.fromarray(small[..., c]).resize((width, height), Image.BICUBIC))
                                 for c in range(3)], -1)
  return np.clip(img + 128, 0, 255).astype(np.uint8)


def make_video(path: str, seconds: float, height: int, width: int, seed: int) -> None:
  """A natural-looking texture panning across the frame, with per-frame sensor noise (every frame differs)."""
  import av  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  canvas = natural_image(rng, 2 * height, 2 * width)
  with av.open(path, "w") as container:
    stream = container.add_stream("libx264", rate=30)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.bit_rate = 1_000_000  # ~1 Mbit/s and a keyframe every 2 s: typical of web video at this size
    stream.codec_context.gop_size = 60
    for t in range(int(seconds * 30)):
      dy, dx = t % height, (2 * t) % width
      frame = canvas[dy:dy + height, dx:dx + width].astype(np.int16) + rng.integers(-4, 5, (height, width, 3))
      frame = np.clip(frame, 0, 255).astype(np.uint8)
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def train_spec():
  c = base_config()
  c.mode = "finetune"  # no mask: time the video path only
  c.data.num_frames, c.data.sampling_rate, c.data.crop_size = 16, 4, 224
  return pipeline.clip_spec(c, "train", train=True)


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


def timed(fn, n: int, repeats: int) -> tuple[float, float]:
  """Median clips/s over `repeats` passes after a warm-up: (per wall second, per CPU second of this process).

  The CPU-time rate is the per-core figure even when other processes share the cores.
  """
  fn(0, max(2, n // 4))  # warm-up
  wall, cpu = [], []
  for r in range(repeats):
    w0, c0 = time.perf_counter(), time.process_time()
    fn(r + 1, n)
    wall.append(n / (time.perf_counter() - w0))
    cpu.append(n / (time.process_time() - c0))
  return statistics.median(wall), statistics.median(cpu)


class ShardBatches:
  """Training batches of `batch` clips read from the shards (the per-clip work timed above)."""

  def __init__(self, spec, source, batch: int):
    self.spec, self.source, self.batch, self.index = spec, source, batch, 0

  def __next__(self):
    rows = [clip_from_shards(self.spec, self.source, (self.index * self.batch + k) % len(self.source),
                             np.random.default_rng([self.index, k])) for k in range(self.batch)]
    self.index += 1
    return {"video": np.stack(rows)}

  def get_state(self):
    return {"index": self.index}

  def set_state(self, state):
    self.index = int(state["index"])


def loop_wait(spec, source) -> None:
  """Prints the loop's per-step time and data wait with and without prefetch (see the module docstring)."""
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
  shardings = {"video": NamedSharding(mesh, P("data"))}
  n = FLAGS.loop_work
  w = jnp.asarray(np.random.default_rng(0).normal(0, n ** -0.5, (n, n)), jnp.float32)

  @jax.jit
  def step(carry, batch):  # stand-in for the train step: device work that depends on the batch
    x = carry + jnp.mean(batch["video"].astype(jnp.float32)) * 1e-6
    for _ in range(8):
      x = jnp.tanh(x @ w)
    return x

  def run(prefetch: bool | None) -> float:
    """Seconds per step: prefetch None = the step alone on one placed batch."""
    it = ShardBatches(spec, source, FLAGS.loop_batch)
    feeder = trainer._Feeder(it, ("video",), shardings, bool(prefetch))  # pylint: disable=protected-access
    carry = jnp.zeros((8, n), jnp.float32)
    fixed = feeder.take()
    carry = step(carry, fixed).block_until_ready()  # compile + warm-up
    t0 = time.perf_counter()
    for i in range(FLAGS.loop_steps):
      batch = fixed if prefetch is None else feeder.take()
      carry = step(carry, batch)
      if prefetch is not None:
        feeder.prefetch()
      if (i + 1) % 4 == 0:  # the trainer syncs on its metrics every few steps
        carry.block_until_ready()
    carry.block_until_ready()
    return (time.perf_counter() - t0) / FLAGS.loop_steps

  compute = run(None)
  plain = run(False)
  ahead = run(True)
  print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores; "
        f"batch {FLAGS.loop_batch} clips of 16x224², {FLAGS.loop_steps} steps, {jax.devices()[0].platform}")
  print(f"step alone {1e3 * compute:.0f} ms | loop without prefetch {1e3 * plain:.0f} ms/step (data wait "
        f"{1e3 * (plain - compute):.0f} ms) | with prefetch {1e3 * ahead:.0f} ms/step (data wait "
        f"{1e3 * (ahead - compute):.0f} ms) | prefetch saves {1e3 * (plain - ahead):.0f} ms/step")


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
    items = [label_files.Item(f"v{i}", p, "a", "train") for i, p in enumerate(videos)]
    build_shards.convert(items, os.path.join(tmp, "out"), "bench", ["a"], build_shards.Options(short_side=320),
                    progress=False)
    meta = storage.read_meta(storage.dataset_dir(os.path.join(tmp, "out"), "bench"))
    source = storage.open_source(meta.files("train"))
    print(f"setup (generate + convert {FLAGS.num_videos} videos of {FLAGS.seconds:.0f} s at "
          f"{FLAGS.height}x{FLAGS.width}): {time.perf_counter() - t0:.1f} s")
    mp4_bytes = sum(os.path.getsize(v) for v in videos)
    shard_bytes = sum(os.path.getsize(f) for f in meta.files("train"))
    print(f"mp4 {mp4_bytes / 2**20:.1f} MiB, shards {shard_bytes / 2**20:.1f} MiB (short side 320, quality 90)")
    if FLAGS.mode == "loop":
      loop_wait(spec, source)
      return 0

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
  print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
  for what, i in (("wall second", 0), ("CPU second", 1)):
    print(f"16x224² training clips per {what}, one process: shards {shards[i]:.1f}, mp4 (PyAV) {mp4[i]:.1f}, "
          f"ratio {shards[i] / mp4[i]:.1f}x  (targets: >= 50 clips/s per core, >= 4x)")
  return 0


if __name__ == "__main__":
  sys.exit(app.run(main))
