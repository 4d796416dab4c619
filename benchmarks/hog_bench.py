"""Times the jitted HOG token target on the HOG work of one 4-clip video batch.

The input is a [4, 16, 224, 224, 3] uint8 batch (4 clips of 16 frames); at temporal stride 2 the target
uses frames 0, 2, ..., 14 of each clip, so HOG runs on 4 x 8 = 32 frames of 224² and returns
[4, 8, 14, 14, 108]. The frame selection and uint8 -> float32 cast are part of the timed function, as in
the training step. Prints the compile time and the median / min wall time of `--runs` calls after
`--warmup` calls, with XLA's default options and (on CPU) with `targets.CPU_COMPILER_OPTIONS`.

Usage: python benchmarks/hog_bench.py [--runs 10] [--warmup 3] [--clips 4]
"""
import argparse
import statistics
import time

import jax
import numpy as np

from maskfeat_jax import targets


def _time(compiled, x, warmup: int, runs: int) -> list[float]:
  for _ in range(warmup):
    compiled(x).block_until_ready()
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    compiled(x).block_until_ready()
    times.append(time.perf_counter() - t0)
  return times


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--clips", type=int, default=4)
  parser.add_argument("--frames", type=int, default=16)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--temporal_stride", type=int, default=2)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--runs", type=int, default=10)
  args = parser.parse_args()

  rng = np.random.default_rng(0)
  shape = (args.clips, args.frames, args.size, args.size, 3)
  # Random uint8 pixels: every pixel has a gradient, so no bin is trivially empty.
  x = jax.device_put(rng.integers(0, 256, size=shape, dtype=np.uint8))
  fn = jax.jit(lambda v: targets.hog_token_targets(v, 16, args.temporal_stride))
  n_frames = args.clips * (args.frames // args.temporal_stride)
  print(f"device: {jax.devices()[0].platform} x{jax.device_count()}; input {shape} uint8 -> "
        f"{n_frames} frames of {args.size}² -> targets {tuple(fn.eval_shape(x).shape)}")

  variants = [("default XLA options", None)]
  if jax.default_backend() == "cpu":
    variants.append(("targets.CPU_COMPILER_OPTIONS", targets.CPU_COMPILER_OPTIONS))
  for name, options in variants:
    t0 = time.perf_counter()
    compiled = fn.lower(x).compile(compiler_options=options)
    compile_s = time.perf_counter() - t0
    times = _time(compiled, x, args.warmup, args.runs)
    print(f"[{name}] compile {compile_s * 1e3:.0f} ms; hog_token_targets median "
          f"{statistics.median(times) * 1e3:.1f} ms, min {min(times) * 1e3:.1f} ms "
          f"({args.runs} runs after {args.warmup} warm-up)")


if __name__ == "__main__":
  main()
