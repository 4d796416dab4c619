r"""Host throughput of the fine-tuning augmentation (one CPU core): clips/s for 16-frame clips.

  python benchmarks/augment_bench.py [--frames 16] [--size 224] [--repeats 30]

Prints, per stage, the mean time per clip over `--repeats` clips (after 3 warm-up clips) and clips/s:
  - JPEG decode of the clip's frames (PIL, quality 90) — the cost the loader pays anyway, for scale;
  - RandAugment 'rand-m7-mstd0.5-inc1' (n=2) on the crop size and on a 256x340 decoded frame (SlowFast applies
    it before the crop, on the decoded frames);
  - random erasing (pixel mode, p = 1 to time the erasing itself; the recipe's p = 0.25 costs a quarter).

The host-vs-device decision uses these numbers: RandAugment's ops are PIL C loops over the frames; per core
it costs about as much as decoding the clip's JPEGs, so the Grain workers that decode can also augment. A
device version would have to express Equalize / AutoContrast histograms, affine resampling with fill, and
per-example op choice as masked selects over all 15 ops (every op computed for every clip) in the step.
"""
import argparse
import io
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from maskfeat_jax.data import augment  # noqa: E402


def _natural_clip(rng, t, h, w):
  """Smooth moving gradients + noise (JPEG-compressible like video, with real histograms)."""
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  frames = []
  for i in range(t):
    r = 128 + 100 * np.sin((xx + 3 * i) / 23.0)
    g = 128 + 100 * np.cos((yy - 2 * i) / 31.0)
    b = 128 + 60 * np.sin((xx + yy + i) / 17.0)
    f = np.stack([r, g, b], -1) + rng.normal(0, 8, (h, w, 3))
    frames.append(np.clip(f, 0, 255).astype(np.uint8))
  return np.stack(frames)


def _time(fn, repeats):
  """Mean seconds per clip: ops vary per clip, so throughput is the mean over many draws (same seed per stage)."""
  for _ in range(3):
    fn(np.random.default_rng(1234))
  rng = np.random.default_rng(0)
  t0 = time.perf_counter()
  for _ in range(repeats):
    fn(rng)
  return (time.perf_counter() - t0) / repeats


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--frames", type=int, default=16)
  ap.add_argument("--size", type=int, default=224)
  ap.add_argument("--repeats", type=int, default=100)
  args = ap.parse_args()
  rng = np.random.default_rng(0)
  crop = _natural_clip(rng, args.frames, args.size, args.size)
  decoded = _natural_clip(rng, args.frames, 256, 340)
  jpegs = []
  for f in decoded:
    buf = io.BytesIO()
    Image.fromarray(f).save(buf, format="JPEG", quality=90)
    jpegs.append(buf.getvalue())

  def decode(_):
    return np.stack([np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs])

  spec = "rand-m7-mstd0.5-inc1"
  stages = {
      f"JPEG decode {args.frames}x256x340 (reference)": decode,
      f"RandAugment {spec} {args.frames}x{args.size}^2": lambda r: augment.rand_augment_video(crop, r, spec),
      f"RandAugment {spec} {args.frames}x256x340": lambda r: augment.rand_augment_video(decoded, r, spec),
      f"random erasing pixel p=1 {args.frames}x{args.size}^2": lambda r: augment.random_erasing(crop, r, 1.0),
  }
  print(f"one core, mean over {args.repeats} clips (numpy {np.__version__}, Pillow {Image.__version__})")
  for name, fn in stages.items():
    dt = _time(fn, args.repeats)
    print(f"  {name:<52} {1e3 * dt:8.2f} ms/clip  {1 / dt:8.1f} clips/s")


if __name__ == "__main__":
  main()
