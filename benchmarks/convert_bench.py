r"""Dataset conversion rate (videos/s per core) of `build_shards`, local process pool or Apache Beam.

  python benchmarks/convert_bench.py [--runner=local|beam] [--num_videos=8] [--seconds=10] \
      [--height=240] [--width=320] [--num_workers=2] [--short_side=320]

Generates --num_videos H.264 test videos of Kinetics-like size (input_bench.make_video: a textured pan with
per-frame noise, 30 fps; Kinetics-400 clips are 10 s, most at 240p-360p after the usual downscale) and
converts them with the converter's --runner (short side 320, JPEG quality 90, the CLI defaults). Prints
wall time, videos/s, and videos per CPU-second of the converter and its children (the per-core rate,
meaningful even when other work shares the cores), with the machine's load average.
"""
from __future__ import annotations

import os
import resource
import sys
import tempfile
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import input_bench  # pylint: disable=g-import-not-at-top,wrong-import-position

from maskfeat_jax.data import build_shards  # pylint: disable=wrong-import-position
from maskfeat_jax.data import label_files  # pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_enum("runner", "local", list(build_shards.RUNNERS), "Converter runner.")
flags.DEFINE_integer("num_workers", 2, "Decoding processes (local) / DirectRunner workers (beam).")
flags.DEFINE_integer("short_side", 320, "Converter --short_side.")
flags.DEFINE_integer("examples_per_shard", 2, "Converter --examples_per_shard (beam: one shard per element).")


def _cpu_seconds() -> float:
  own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    items = []
    for i in range(FLAGS.num_videos):
      path = os.path.join(tmp, f"v{i}.mp4")
      input_bench.make_video(path, FLAGS.seconds, FLAGS.height, FLAGS.width, i)
      items.append(label_files.Item(f"v{i}", path, "a", "train"))
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    report = build_shards.convert(items, os.path.join(tmp, "out"), "bench", ["a"],
                                  build_shards.Options(short_side=FLAGS.short_side), progress=False,
                                  examples_per_shard=FLAGS.examples_per_shard, num_workers=FLAGS.num_workers,
                                  runner=FLAGS.runner)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
  assert report["converted"] == FLAGS.num_videos, report
  print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
  print(f"runner={FLAGS.runner} workers={FLAGS.num_workers}: {FLAGS.num_videos} videos of {FLAGS.seconds:.0f} s "
        f"at {FLAGS.height}x{FLAGS.width} (30 fps) in {wall:.1f} s wall = {FLAGS.num_videos / wall:.2f} videos/s; "
        f"{cpu:.1f} CPU-s = {FLAGS.num_videos / cpu:.3f} videos per CPU-second (per core), "
        f"{cpu / FLAGS.num_videos:.2f} CPU-s per video")
  return 0


if __name__ == "__main__":
  sys.exit(app.run(main))
