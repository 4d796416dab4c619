"""HOG target speed: `targets.hog` called as a user calls it, against the official algorithm in PyTorch.

Input: 32 frames of 224² RGB (`--frames`, `--size`), uint8 for ours (what the train step feeds it), float32
[N, 3, H, W] for the official `slowfast/models/operators.py::HOGLayerC` (nbins 9, pool 8, gaussian window
0, as MaskMViT builds it), re-implemented below in PyTorch from its definition (reflect pad, depthwise 3x3
Sobel conv2d, atan2(gx, gy), hard binning by scatter-add, 8x8 cell sums by unfold, L2 over the bins).

Printed, one line each: ours through `maskfeat_jax.compiler` (the options every jitted entry point of the
package uses), ours with XLA's default options (what a bare `jax.jit` gives; for the record), the
official in torch (if torch is installed) with torch's thread count set to JAX's, and the ratio
official / ours. Timed runs are interleaved (ours, official, ours, ...) after `--warmup` calls each, so
both see the same machine state; the load average is printed before and after.
`--token_targets` also times `targets.hog_token_targets` on the equivalent [4, 16, 224², 3] clip batch.

Usage: python benchmarks/hog_bench.py [--runs 10] [--warmup 3] [--frames 32] [--size 224]
"""
import argparse
import os
import statistics
import time

import jax
import numpy as np

from maskfeat_jax import compiler
from maskfeat_jax import targets


def official_hog_layer_c(torch, x, nbins: int = 9, pool: int = 8):
  """`HOGLayerC.forward` (gaussian_window 0) on float32 [N, 3, H, W]: [N, 3, nbins, H/pool, W/pool]."""
  f = torch.nn.functional
  weight_x = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
  weight_x = weight_x.view(1, 1, 3, 3).repeat(3, 1, 1, 1)
  weight_y = weight_x.transpose(2, 3)
  xp = f.pad(x, pad=(1, 1, 1, 1), mode="reflect")
  gx = f.conv2d(xp, weight_x, bias=None, stride=1, padding=0, dilation=1, groups=3)
  gy = f.conv2d(xp, weight_y, bias=None, stride=1, padding=0, dilation=1, groups=3)
  norm_rgb = torch.stack([gx, gy], dim=-1).norm(dim=-1)
  phase = torch.atan2(gx, gy) / np.pi * nbins
  b, c, h, w = norm_rgb.shape
  out = torch.zeros((b, c, nbins, h, w), dtype=torch.float, device=x.device)
  phase = phase.view(b, c, 1, h, w)
  norm_rgb = norm_rgb.view(b, c, 1, h, w)
  out.scatter_add_(2, phase.floor().long() % nbins, norm_rgb)
  out = out.unfold(3, pool, pool).unfold(4, pool, pool).sum(dim=[-1, -2])
  return f.normalize(out, p=2, dim=2)


def _timed(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def _load() -> str:
  return "load average %.2f %.2f %.2f" % os.getloadavg()


def _ms(times) -> str:
  return f"median {statistics.median(times) * 1e3:.1f} ms (min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f})"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--frames", type=int, default=32)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--runs", type=int, default=10)
  parser.add_argument("--token_targets", action="store_true",
                      help="also time targets.hog_token_targets on [frames/8, 16, size, size, 3] clips")
  args = parser.parse_args()
  print(f"{_load()}; device {jax.devices()[0].platform} x{jax.device_count()}; "
        f"{args.frames} frames of {args.size}², RGB")

  rng = np.random.default_rng(0)
  # Random uint8 pixels: every pixel has a gradient, so no bin is trivially empty.
  frames = rng.integers(0, 256, size=(args.frames, args.size, args.size, 3), dtype=np.uint8)
  x = jax.device_put(frames)
  ours = {}
  t0 = time.perf_counter()
  jax.block_until_ready(targets.hog(x))  # compiler.jit: the package's options
  ours["targets.hog (maskfeat_jax.compiler options)"] = (lambda: jax.block_until_ready(targets.hog(x)),
                                                        time.perf_counter() - t0)
  default = jax.jit(targets.hog.__wrapped__)  # the same function under a bare jax.jit
  t0 = time.perf_counter()
  default_compiled = default.lower(x).compile()
  ours["targets.hog (XLA default options)"] = (lambda: jax.block_until_ready(default_compiled(x)),
                                              time.perf_counter() - t0)
  if args.token_targets:
    clips = jax.device_put(np.repeat(frames.reshape(-1, 8, args.size, args.size, 3), 2, axis=1))
    tok = compiler.jit(lambda v: targets.hog_token_targets(v, 16, 2))
    t0 = time.perf_counter()
    jax.block_until_ready(tok(clips))
    ours[f"hog_token_targets {tuple(clips.shape)}"] = (lambda: jax.block_until_ready(tok(clips)),
                                                       time.perf_counter() - t0)

  official = None
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    print("torch is not installed (pip install -e '.[torch]'): the official HOGLayerC is not timed")
  else:
    torch.set_num_threads(os.cpu_count() if jax.default_backend() == "cpu" else torch.get_num_threads())
    xt = torch.from_numpy(frames).permute(0, 3, 1, 2).float().contiguous()
    with torch.no_grad():
      ref = official_hog_layer_c(torch, xt).numpy()  # [N, 3, 9, h, w]
    got = np.asarray(targets.hog(x))  # [N, h, w, 3, 9]
    err = np.abs(got.transpose(0, 3, 4, 1, 2) - ref).max()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; max |ours - official| = {err:.2e} "
          "(random pixels: no flat cells, so both agree to float rounding)")

    def run_official():
      with torch.no_grad():
        official_hog_layer_c(torch, xt)
    official = run_official

  for name, (fn, compile_s) in ours.items():
    print(f"compile {name}: {compile_s * 1e3:.0f} ms")
  times = {name: [] for name in ours}
  official_times = []
  for _ in range(args.warmup):
    for fn, _ in ours.values():
      fn()
    if official:
      official()
  for _ in range(args.runs):
    for name, (fn, _) in ours.items():
      times[name].append(_timed(fn))
    if official:
      official_times.append(_timed(official))
  first = next(iter(times))
  for name, t in times.items():
    print(f"[{name}] {_ms(t)}")
  if official:
    print(f"[official HOGLayerC, torch] {_ms(official_times)}")
    print(f"official / targets.hog (median): {statistics.median(official_times) / statistics.median(times[first]):.2f}x")
  print(f"{_load()}; {args.runs} interleaved runs after {args.warmup} warm-up")


if __name__ == "__main__":
  main()
