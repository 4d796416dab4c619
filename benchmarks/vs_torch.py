"""Peer baseline: our `mvitv2_s_16x4` against torchvision's `mvit_v2_s` (PyTorch), same weights, same input.

torchvision's MViTv2-S is an independent implementation of the same K400 layout; its weights (seeded
random by default, or `--weights` a state-dict file such as the released mvit_v2_s-ae3be167.pth) are
converted into ours (checkpoints/torchvision.py), and the logits of the two are compared once before timing.
Timed, after `--warmup` runs of each, in interleaved pairs (ours, torch, ours, torch, ...), with the same
thread count for both (torch.set_num_threads = the cores XLA:CPU uses):
- forward+backward: a scalar loss (cross-entropy of the logits against label 0) and the gradients of every
  parameter: `jax.value_and_grad`, jitted, vs `loss.backward()` with the grads zeroed each step;
- inference: a jitted forward vs the forward under `torch.inference_mode()`.
Both models run deterministically (no dropout, no stochastic depth: torch's eval mode, our train=False), so
they compute the same function; `--train_mode` switches both to training (torchvision's head dropout 0.5 and
stochastic depth 0.2; ours set to the same). Our jitted functions go through `maskfeat_jax.compiler.jit`,
as every entry point of the package; our compile time (trace + lower + compile) is printed. On a GPU torch
runs eager and `torch.compile`d (compile time = its first calls); on a CPU torch.compile runs only with
`--torch_compile`. Ours takes the uint8 pixels and normalises them inside the model; torch gets the same
pixels normalised beforehand (outside the timing). `--dtype bfloat16`: our compute dtype (fp32 params,
fp32 softmax / LayerNorm statistics) vs torch autocast to bfloat16 (fp32 params).

`uptime` is printed at the start and the end: the figures mean something only on an otherwise idle machine.

  nice -n 19 python benchmarks/vs_torch.py --steps 1 --warmup 0     # a quick check that it runs
  python benchmarks/vs_torch.py                                     # the figures (quiet machine)
  python benchmarks/vs_torch.py --batch 8 --dtype bfloat16          # GPU
"""
import argparse
import os
import statistics
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np

from maskfeat_jax import compiler
from maskfeat_jax.checkpoints import torchvision as tv_ckpt
from maskfeat_jax.models import factory

# Imported after the shim above has made torchvision importable with the CPU torch.
TORCHVISION = tv_ckpt.import_torchvision()
import torch  # pylint: disable=g-import-not-at-top,wrong-import-position


def _uptime() -> str:
  try:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def _torch_model(args, device):
  if args.weights:
    state = tv_ckpt.read_state_dict(args.weights)
    model = TORCHVISION.models.video.mvit_v2_s()
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, strict=True)
  else:
    torch.manual_seed(args.seed)
    model = TORCHVISION.models.video.mvit_v2_s()
  model = model.to(device)
  return model.train() if args.train_mode else model.eval()


def _stats(times) -> str:
  return (f"median {statistics.median(times):8.4f} s   min {min(times):8.4f}   max {max(times):8.4f}   "
          f"({len(times)} runs)")


def _timed(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--steps", type=int, default=5, help="timed runs of each side (interleaved)")
  parser.add_argument("--warmup", type=int, default=2, help="untimed runs of each side before timing")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--seed", type=int, default=0, help="torch init seed and input seed")
  parser.add_argument("--weights", default=None, help="a torchvision mvit_v2_s state-dict file (default: "
                                                       "seeded random weights)")
  parser.add_argument("--torch_compile", action="store_true", help="also torch.compile on a CPU")
  parser.add_argument("--train_mode", action="store_true",
                      help="dropout and stochastic depth on in both (default: off in both)")
  parser.add_argument("--skip", default="", help="comma list of parts to skip: fwd_bwd, inference")
  args = parser.parse_args(argv)
  skip = {s for s in args.skip.split(",") if s}

  print(f"uptime at start: {_uptime()}", flush=True)
  backend = jax.default_backend()
  gpu = backend == "gpu"
  if gpu and not torch.cuda.is_available():
    raise SystemExit("JAX runs on a GPU but this torch has no CUDA: the comparison would not be on the "
                     "same hardware (install a CUDA torch, or run with JAX_PLATFORMS=cpu)")
  device = torch.device("cuda" if gpu else "cpu")
  # XLA:CPU sizes its thread pool to the cores this process may run on; torch gets the same number.
  cores = len(os.sched_getaffinity(0))
  torch.set_num_threads(cores)
  print(f"jax {jax.__version__} ({backend}: {jax.devices()[0].device_kind}), torch {torch.__version__}, "
        f"torchvision {TORCHVISION.__version__}; threads: XLA {cores} cores, torch {torch.get_num_threads()}"
        f" intra-op / {torch.get_num_interop_threads()} inter-op; our compiler options "
        f"{compiler.compiler_options()}", flush=True)

  # -- the same weights ---------------------------------------------------------------------------------
  tmodel = _torch_model(args, device)
  state = {k: v.detach().cpu().numpy() for k, v in tmodel.state_dict().items()}
  config = tv_ckpt.torchvision_config(state)
  config.model.dtype = args.dtype
  if args.train_mode:
    config.model.dropout_rate = 0.5  # torchvision MViT's default head Dropout; drop path 0.2 in both
  params = jax.device_put(tv_ckpt.convert_torchvision_state_dict(state, config))
  model = factory.build_model(config)
  n_params = factory.count_params(params)
  t, h, w = config.model.input_size
  print(f"model: our {config.model.name} ({n_params:,} params) vs torchvision mvit_v2_s "
        f"({sum(p.numel() for p in tmodel.parameters()):,}), same weights "
        f"({'file ' + args.weights if args.weights else f'random, torch seed {args.seed}'}); input batch "
        f"{args.batch} x {t}x{h}x{w}; {args.dtype}; {'train' if args.train_mode else 'eval'} mode", flush=True)

  # -- the same input -----------------------------------------------------------------------------------
  rng = np.random.default_rng(args.seed)
  pixels = rng.integers(0, 256, (args.batch, t, h, w, 3), dtype=np.uint8)
  m = config.model
  mean = np.float32(255) * np.asarray(m.pixel_mean, np.float32)
  std = np.float32(255) * np.asarray(m.pixel_std, np.float32)
  x_torch = torch.from_numpy(((pixels.astype(np.float32) - mean) / std).transpose(0, 4, 1, 2, 3).copy())
  x_torch = x_torch.to(device)
  y_torch = torch.zeros((args.batch,), dtype=torch.long, device=device)
  x_ours = jax.device_put(pixels)
  y_ours = jax.device_put(np.zeros((args.batch,), np.int32))
  dropout_key = jax.random.key(args.seed)
  autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if args.dtype == "bfloat16"
              else torch.autocast(device_type=device.type, enabled=False))

  def ours_logits(p, x):
    return model.apply({"params": p}, x, train=args.train_mode, rngs={"dropout": dropout_key})

  def ours_loss(p, x, y):
    logits = ours_logits(p, x).astype(jnp.float32)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=-1))

  def sync():
    if gpu:
      torch.cuda.synchronize()

  # -- correctness, once: the two compute the same logits --------------------------------------------------
  infer = compiler.jit(ours_logits)
  t0 = time.perf_counter()
  infer_c = infer.lower(params, x_ours).compile()
  compile_infer = time.perf_counter() - t0
  with torch.inference_mode(), autocast:
    theirs = tmodel(x_torch).float().cpu().numpy()
  ours = np.asarray(infer_c(params, x_ours), np.float32)
  rel = float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))
  note = " (train mode: dropout draws differ)" if args.train_mode else ""
  print(f"logits: max |ours - torch| / max |torch| = {rel:.2e}{note}", flush=True)

  sides = {}  # part -> [(name, step fn)]
  compile_times = {"ours inference": compile_infer}
  if "fwd_bwd" not in skip:
    grad = compiler.jit(jax.value_and_grad(ours_loss))
    t0 = time.perf_counter()
    grad_c = grad.lower(params, x_ours, y_ours).compile()
    compile_times["ours fwd+bwd"] = time.perf_counter() - t0

    def ours_fwd_bwd():
      jax.block_until_ready(grad_c(params, x_ours, y_ours))

    def torch_fwd_bwd(module):
      def step():
        module.zero_grad(set_to_none=True)
        with autocast:
          loss = torch.nn.functional.cross_entropy(module(x_torch).float(), y_torch)
        loss.backward()
        sync()
      return step
    sides["forward+backward (cross-entropy vs label 0, all parameter gradients)"] = [
        ("ours (jax.value_and_grad, jit)", ours_fwd_bwd), ("torch eager", torch_fwd_bwd(tmodel))]
  if "inference" not in skip:
    def ours_infer():
      jax.block_until_ready(infer_c(params, x_ours))

    def torch_infer(module):
      def step():
        with torch.inference_mode(), autocast:
          module(x_torch)
        sync()
      return step
    sides["inference (forward)"] = [("ours (jit)", ours_infer), ("torch eager", torch_infer(tmodel))]

  if gpu or args.torch_compile:
    compiled = torch.compile(tmodel)
    for part, entries in sides.items():
      step = torch_fwd_bwd(compiled) if part.startswith("forward+backward") else torch_infer(compiled)
      compile_times[f"torch.compile {part.split(' ')[0]} (first call)"] = _timed(step)
      entries.append(("torch.compile", step))

  print("compile: " + ", ".join(f"{k} {v:.1f} s" for k, v in compile_times.items()), flush=True)
  for part, entries in sides.items():
    for _ in range(args.warmup):
      for _, step in entries:
        step()
    times = {name: [] for name, _ in entries}
    for _ in range(args.steps):
      for name, step in entries:  # interleaved: a load change hits every side alike
        times[name].append(_timed(step))
    print(f"{part}, {args.steps} interleaved runs after {args.warmup} warm-up (torch/ours > 1: ours "
          "faster):")
    ours_med = statistics.median(times[entries[0][0]])
    for name, ts in times.items():
      ratio = "" if name == entries[0][0] else f"   torch/ours {statistics.median(ts) / ours_med:.2f}"
      print(f"  {name:32s} {_stats(ts)}{ratio}", flush=True)
  print(f"uptime at end: {_uptime()}")


if __name__ == "__main__":
  main()
