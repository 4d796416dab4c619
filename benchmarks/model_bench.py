"""Model benchmark: MaskFeat MViT-S pre-training forward+backward time, XLA FLOPs, and (GPU) throughput.

CPU (default): forward+backward (value_and_grad of the MaskFeat loss) of `--model` at its configured
input (MViT-S PT: 16x224², batch 1), median of `--steps` timed runs after `--warmup` runs, compile time
printed separately; forward FLOPs from XLA's cost analysis next to the official per-view GFLOPs
(86.5 PT / 71 FT, multiply-adds). XLA counts 2 FLOPs per multiply-add, so its number is halved for the
comparison; XLA also counts elementwise work (softmax, LayerNorm, GELU, HOG), which the official count
(fvcore-style, matmuls and convs) leaves out.

--gpu: clips/s, MFU and peak memory of the forward+backward step at batches 8/16/32 in bf16 compute
(fp32 params), with and without remat; an out-of-memory setting is reported and skipped. MFU = model
FLOPs of a step (XLA cost analysis of the lowered, platform-independent non-remat step, so recomputation is not counted) / step time
/ peak bf16 FLOP/s (`--peak_tflops`, defaults known for H100/H200/A100).

  python benchmarks/model_bench.py                      # CPU figures
  python benchmarks/model_bench.py --gpu                # GPU table
  python benchmarks/model_bench.py --help
"""
import argparse
import gc
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from maskfeat_jax import compiler
from maskfeat_jax.models import factory
from maskfeat_jax.config import base_config
from maskfeat_jax.config import input_key
from maskfeat_jax.models import layouts
from maskfeat_jax.train import optim
from maskfeat_jax.train import state as state_lib
from maskfeat_jax.train import step as step_lib

OFFICIAL_GMACS = {"maskfeat_mvit_s_16x4_pt": 86.5, "mvit_s_16x4_ft": 71.0, "maskfeat_mvit_l_16x4_pt": 450.4,
                  "mvit_l_16x4_ft": 377.0}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "V100": 125.0}


def make_config(name: str, dtype: str = "float32", remat: str = "none"):
  c = base_config()
  c.model = layouts.get_model_config(name)
  c.model.dtype = dtype
  c.model.remat_policy = remat
  if c.model.patch_2d:
    c.mask.grid = (c.model.input_size[1] // 16, c.model.input_size[2] // 16)
  return c


def make_inputs(config, batch: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  t, h, w = config.model.input_size
  shape = (batch, h, w, 3) if config.model.patch_2d else (batch, t, h, w, 3)
  x = rng.integers(0, 256, shape, dtype=np.uint8)
  if config.model.type != "maskfeat":
    return (x,)
  mask = (rng.random((batch,) + tuple(config.mask.grid)) < config.mask.ratio).astype(np.uint8)
  return x, mask


def _flops(compiled_or_lowered) -> float:
  cost = compiled_or_lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", float("nan")))


def _loss_fn(model, config):
  if config.model.type == "maskfeat":
    def loss(params, x, mask):
      return model.apply({"params": params}, x, mask, train=True, rngs={"dropout": jax.random.key(0)})["loss"]
  else:
    def loss(params, x):
      logits = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(0)})
      return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[:, 0])
  return loss


def init_params(model, config, inputs):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  return nn.unbox(jax.jit(model.init)(jax.random.key(0), *inputs))["params"]


def time_step(fn, args, warmup: int, steps: int) -> tuple[float, list[float]]:
  """(compile seconds, timed step seconds) of jitted `fn(*args)`."""
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(warmup):
    jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return compile_s, times, compiled


def forward_gmacs(name: str, batch: int = 1) -> tuple[float, float]:
  """(XLA forward GFLOPs per view, official GMACs) for the named layout, from the lowered program.

  Counted with `scan_blocks` off: XLA's cost analysis counts a while loop's body once, so the scanned
  program would understate the FLOPs of every scanned run of blocks.
  """
  config = make_config(name)
  config.model.scan_blocks = False
  model = factory.build_model(config)
  inputs = make_inputs(config, batch)
  params = jax.eval_shape(lambda: init_params(model, config, inputs))
  fwd = compiler.jit(lambda p, *a: model.apply({"params": p}, *a))
  return _flops(fwd.lower(params, *inputs)) / batch / 1e9, OFFICIAL_GMACS.get(name, float("nan"))


def _step_model_flops(name: str, dtype: str, attention: str, params, inputs) -> float:
  """Model FLOPs of one forward+backward step: XLA's count of the lowered (platform-independent) program --
  on GPU the compiled module's analysis misses the cuBLAS / cuDNN custom calls, which would understate MFU
  several-fold -- without remat (recomputation is not model work) and unscanned (the analysis counts a while
  loop's body once)."""
  config = make_config(name, dtype, "none")
  config.model.attention_impl, config.model.scan_blocks = attention, False
  model = factory.build_model(config)
  return _flops(compiler.jit(jax.value_and_grad(_loss_fn(model, config))).lower(params, *inputs))


def train_step_compile(config, model, params, inputs) -> tuple[float, int, int]:
  """(compile seconds, fusions, distinct fused kernels: `compiler.kernel_counts`) of the trainer's whole
  step: forward+backward, the global grad norm, clipping and AdamW (the pre-training recipe's clipping and
  weight decay), as `train/step.py` builds it (`train/trainer.py::_compile` adds only the shardings)."""
  config.data.image_mode = bool(config.model.patch_2d)
  o = config.optim
  o.clip_grad_norm, o.weight_decay = 0.02, 0.05  # configs/k400_pretrain.py's
  schedule = optim.Schedule(total_steps=100, warmup_steps=10.0, steps_per_epoch=10.0, base_lr=1e-4,
                            start_lr=1e-6, end_lr=1e-6)
  tx = optim.make_optimizer(config, params, schedule)
  state = jax.eval_shape(lambda p: state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=p,
                                                        opt_state=tx.init(p), rng=jnp.zeros((2,), jnp.uint32)),
                         params)
  batch = {input_key(config): inputs[0]}
  if len(inputs) > 1:
    batch["mask"] = inputs[1]
  fn = compiler.jit(step_lib.make_step_fn(step_lib.loss_fn_for(config, model), tx), donate_argnums=(0,))
  t0 = time.perf_counter()
  compiled = fn.lower(state, batch, jax.ShapeDtypeStruct((), jnp.float32)).compile()
  seconds = time.perf_counter() - t0
  return (seconds,) + compiler.kernel_counts(compiled.as_text())


def _load() -> str:
  return "load average %.2f %.2f %.2f" % os.getloadavg()


def cpu_benchmark(args):
  config = make_config(args.model, args.dtype)
  model = factory.build_model(config)
  inputs = make_inputs(config, args.batch)
  print(f"model {args.model}: {factory.count_params(factory.param_shapes(config, model)):,} params, input "
        f"{tuple(inputs[0].shape)} uint8, {config.model.dtype} compute, device {jax.devices()[0].device_kind}")
  params = init_params(model, config, inputs)
  print(f"{_load()}; compiler options {compiler.compiler_options()}")
  for scan in args.scan_blocks:
    config.model.scan_blocks = scan == "on"
    model = factory.build_model(config)
    step = compiler.jit(jax.value_and_grad(_loss_fn(model, config)))
    compile_s, times, _ = time_step(step, (params,) + inputs, args.warmup, args.steps)
    med = statistics.median(times)
    print(f"forward+backward, batch {args.batch}, scan_blocks {scan}: compile {compile_s:.1f} s; step median "
          f"{med:.2f} s over {len(times)} runs (min {min(times):.2f}, max {max(times):.2f}) after "
          f"{args.warmup} warm-up")
    if args.train_step:
      compile_s, fusions, distinct = train_step_compile(config, model, params, inputs)
      print(f"train step (forward+backward+clip+AdamW), batch {args.batch}, scan_blocks {scan}: compile "
            f"{compile_s:.1f} s ({fusions} fusions, {distinct} distinct kernels)")
  print(_load())
  names = [args.model] + ([] if args.skip_ft_flops or args.model == "mvit_s_16x4_ft" else ["mvit_s_16x4_ft"])
  for name in names:
    t0 = time.perf_counter()
    gflops, official = forward_gmacs(name)
    print(f"forward FLOPs {name}: XLA {gflops:.1f} GFLOPs/view (2 per multiply-add) = {gflops / 2:.1f} "
          f"GMACs vs official {official} GFLOPs/view (multiply-adds) [{time.perf_counter() - t0:.0f} s]")


def _peak_tflops(args) -> float:
  if args.peak_tflops:
    return args.peak_tflops
  kind = jax.devices()[0].device_kind
  for key, value in PEAK_BF16_TFLOPS.items():
    if key in kind:
      return value
  return float("nan")


def _is_oom(err: Exception) -> bool:
  text = str(err)
  return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def gpu_benchmark(args):
  peak = _peak_tflops(args)
  dev = jax.devices()[0]
  print(f"device {dev.device_kind} ({dev.platform}), peak bf16 {peak} TFLOP/s, model {args.model}, "
        f"compute {args.gpu_dtype}, fp32 params; forward+backward (value_and_grad) per step")
  rows = []
  model_flops = {}
  settings = [(b, r, a) for a in args.attention_impl for b in args.batches for r in args.remat]
  for batch, remat, attention in settings:
    row = dict(batch=batch, remat=remat, attention=attention)
    try:
      config = make_config(args.model, args.gpu_dtype, remat)
      config.model.attention_impl = attention
      model = factory.build_model(config)
      inputs = tuple(jax.device_put(a) for a in make_inputs(config, batch))
      params = init_params(model, config, inputs)
      step = compiler.jit(jax.value_and_grad(_loss_fn(model, config)))
      compile_s, times, compiled = time_step(step, (params,) + inputs, args.warmup, args.steps)
      if (batch, attention) not in model_flops:
        model_flops[(batch, attention)] = _step_model_flops(args.model, args.gpu_dtype, attention, params, inputs)
      med = statistics.median(times)
      mem = compiled.memory_analysis()
      mem_gib = float("nan")
      if mem is not None:
        mem_gib = (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
                   - mem.alias_size_in_bytes) / 2**30
      stats = dev.memory_stats() or {}
      mflops = model_flops[(batch, attention)]
      row.update(status="ok", compile_s=compile_s, step_ms=med * 1e3, clips_s=batch / med,
                 tflops=mflops / med / 1e12, mfu=mflops / med / (peak * 1e12), mem_gib=mem_gib,
                 peak_gib=stats.get("peak_bytes_in_use", float("nan")) / 2**30)
    except Exception as err:  # pylint: disable=broad-except
      row.update(status="OOM" if _is_oom(err) else f"error: {type(err).__name__}: {str(err)[:120]}")
    rows.append(row)
    print(_format_row(row), flush=True)
    params = step = compiled = None  # free device memory before the next setting
    gc.collect()
    jax.clear_caches()
  print("\n" + _HEADER)
  for row in rows:
    print(_format_row(row))


_HEADER = (f"{'attention':>9} {'batch':>5} {'remat':>5} {'compile s':>9} {'step ms':>8} {'clips/s':>8} {'TFLOP/s':>8} "
           f"{'MFU':>6} {'XLA mem GiB':>11} {'peak GiB':>8}  status")


def _format_row(r) -> str:
  if r.get("status") != "ok":
    return f"{r['attention']:>9} {r['batch']:>5} {r['remat']:>5} {'':>9} {'':>8} {'':>8} {'':>8} {'':>6} {'':>11} {'':>8}  {r['status']}"
  return (f"{r['attention']:>9} {r['batch']:>5} {r['remat']:>5} {r['compile_s']:>9.1f} {r['step_ms']:>8.1f} {r['clips_s']:>8.2f} "
          f"{r['tflops']:>8.1f} {r['mfu']:>6.1%} {r['mem_gib']:>11.2f} {r['peak_gib']:>8.2f}  ok")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  p.add_argument("--model", default="maskfeat_mvit_s_16x4_pt", choices=layouts.MODEL_NAMES)
  p.add_argument("--batch", type=int, default=1, help="CPU batch")
  p.add_argument("--dtype", default="float32", help="CPU compute dtype (bf16 is slower than fp32 on CPU)")
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--attention_impl", type=lambda v: v.split(","), default=["xla", "flash"],
                 help="GPU table: model.attention_impl values to measure")
  p.add_argument("--scan_blocks", type=lambda v: v.split(","), default=["on"],
                 help="CPU: 'on', 'off' or 'on,off' (compile and step time of each, same params)")
  p.add_argument("--train_step", action=argparse.BooleanOptionalAction, default=True,
                 help="CPU: also compile the trainer's whole step (with the optimizer update)")
  p.add_argument("--skip_ft_flops", action="store_true", help="do not also count the MViT-S FT forward")
  p.add_argument("--gpu", action="store_true", help="GPU throughput / MFU / memory table")
  p.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")], default=[8, 16, 32])
  p.add_argument("--remat", type=lambda s: s.split(","), default=["none", "full"],
                 help="comma-separated remat policies (none, full, dots)")
  p.add_argument("--gpu_dtype", default="bfloat16")
  p.add_argument("--peak_tflops", type=float, default=0.0, help="peak bf16 TFLOP/s for MFU (0 = by device)")
  p.add_argument("--allow_cpu", action="store_true",
                 help="run the --gpu table on the CPU (to check the script with a small --model)")
  args = p.parse_args(argv)
  if args.gpu:
    if jax.devices()[0].platform == "cpu" and not args.allow_cpu:
      raise SystemExit("--gpu: no accelerator visible to JAX (install jax[cuda12])")
    args.steps = max(args.steps, 5)
    args.warmup = max(args.warmup, 2)
    gpu_benchmark(args)
  else:
    cpu_benchmark(args)


if __name__ == "__main__":
  main()
