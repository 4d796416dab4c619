"""The scale benchmark: one table for MaskFeat MViT-S and MViT-L pre-training, per precision and remat policy.

For each model x compute dtype (fp32 / bf16) x remat policy (none / full), on the default device, the
forward+backward step of the MaskFeat loss (`jax.value_and_grad`, fp32 params; what the train step runs
besides the optimizer update) prints:
  step time (median of --steps after --warmup) and compile time;
  clips/s per device (the batch is one device's batch);
  model TFLOP/s and MFU: model FLOPs = XLA's cost analysis of the lowered, platform-independent step
    without remat (recomputation is not counted), over the step time, over the device's peak (bf16 peak
    for both dtypes, --peak_tflops or known GPUs; on a CPU no peak is known, so MFU prints n/a);
  the HOG target's share of the step: the same batch's token targets (maskfeat_jax/targets.py, every
    prediction depth), jitted alone, over the step time;
  device memory: XLA's memory analysis of the compiled step (arguments + temporaries + outputs - aliased),
    and on accelerators the device's peak bytes in use.
Out-of-memory settings are reported and skipped.

Full size (16x224², the official PT input) is for accelerators; on a CPU use the reduced input:

  python benchmarks/run_suite.py                                   # accelerator, full size
  python benchmarks/run_suite.py --input 4,64,64 --batch 1         # CPU, reduced size
  python benchmarks/run_suite.py --models maskfeat_mvit_s_16x4_pt --dtypes float32 --remat none

Figures depend on everything else running on the machine: it prints the load average at start and end.
"""
import argparse
import gc
import os
import statistics

import jax

from maskfeat_jax import compiler
from maskfeat_jax import targets as targets_lib
from maskfeat_jax.models import factory
from model_bench import _flops, _is_oom, _loss_fn, init_params, make_config, make_inputs, PEAK_BF16_TFLOPS, time_step

MODELS = ("maskfeat_mvit_s_16x4_pt", "maskfeat_mvit_l_16x4_pt")


def _config(name: str, dtype: str, remat: str, input_size):
  c = make_config(name, dtype, remat)
  if input_size:
    t, h, w = input_size
    if h % 32 or w % 32 or t % 2:
      raise SystemExit(f"--input {t},{h},{w}: H and W must be multiples of 32 (MViT's last stage is at 1/32) "
                       "and T even (temporal patch stride 2).")
    c.model.input_size = (t, h, w)
    c.mask.grid = (t // 2, h // 16, w // 16)  # one mask unit per stride-16 prediction token, as officially
  return c


def _hog_fn(model):
  """The HOG token targets of every prediction depth for a raw uint8 clip batch (the step's target work)."""
  strides = [model.spec.feature_stride(d) for d in model.pretrain_depth]

  def hog(x):
    return [targets_lib.token_targets(x, model.target, s[1], s[0]) for s in strides]
  return compiler.jit(hog)


def _peak_tflops(arg: float) -> float:
  if arg:
    return arg
  kind = jax.devices()[0].device_kind
  return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in kind), float("nan"))


def measure(name: str, dtype: str, remat: str, args, model_flops: dict) -> dict:
  row = dict(model=name.replace("maskfeat_", "").replace("_16x4_pt", ""), dtype=dtype, remat=remat)
  config = _config(name, dtype, remat, args.input)
  model = factory.build_model(config)
  inputs = tuple(jax.device_put(a) for a in make_inputs(config, args.batch))
  params = init_params(model, config, inputs)
  step = compiler.jit(jax.value_and_grad(_loss_fn(model, config)))
  row["compile_s"], times, compiled = time_step(step, (params,) + inputs, args.warmup, args.steps)
  step_s = statistics.median(times)
  if remat == "none":
    model_flops[(name, dtype)] = _flops(step.lower(params, *inputs))
  flops = model_flops.get((name, dtype), float("nan"))
  hog_s = statistics.median(time_step(_hog_fn(model), (inputs[0],), args.warmup, args.steps)[1])
  mem = compiled.memory_analysis()
  xla_gib = float("nan") if mem is None else (mem.temp_size_in_bytes + mem.argument_size_in_bytes
                                              + mem.output_size_in_bytes - mem.alias_size_in_bytes) / 2**30
  stats = jax.devices()[0].memory_stats() or {}
  peak = args.peak
  row.update(status="ok", step_ms=step_s * 1e3, clips_s=args.batch / step_s, tflops=flops / step_s / 1e12,
             mfu=flops / step_s / (peak * 1e12), hog_share=hog_s / step_s, xla_gib=xla_gib,
             peak_gib=stats.get("peak_bytes_in_use", float("nan")) / 2**30)
  return row


HEADER = (f"{'model':>8} {'dtype':>8} {'remat':>5} {'compile s':>9} {'step ms':>9} {'clips/s/dev':>11} "
          f"{'TFLOP/s':>8} {'MFU':>6} {'HOG share':>9} {'XLA mem GiB':>11} {'peak GiB':>8}  status")


def format_row(r: dict) -> str:
  head = f"{r['model']:>8} {r['dtype']:>8} {r['remat']:>5}"
  if r.get("status") != "ok":
    return f"{head} {'':>9} {'':>9} {'':>11} {'':>8} {'':>6} {'':>9} {'':>11} {'':>8}  {r['status']}"
  mfu = "n/a" if r["mfu"] != r["mfu"] else f"{r['mfu']:.1%}"
  peak = "n/a" if r["peak_gib"] != r["peak_gib"] else f"{r['peak_gib']:.2f}"
  return (f"{head} {r['compile_s']:>9.1f} {r['step_ms']:>9.1f} {r['clips_s']:>11.2f} {r['tflops']:>8.3f} "
          f"{mfu:>6} {r['hog_share']:>9.1%} {r['xla_gib']:>11.2f} {peak:>8}  ok")


def _load() -> str:
  return "load average %.2f %.2f %.2f" % os.getloadavg()


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--models", type=lambda v: v.split(","), default=list(MODELS))
  p.add_argument("--dtypes", type=lambda v: v.split(","), default=["float32", "bfloat16"])
  p.add_argument("--remat", type=lambda v: v.split(","), default=["none", "full"])
  p.add_argument("--input", type=lambda v: tuple(int(x) for x in v.split(",")), default=None,
                 help="T,H,W clip size (default: the layout's, 16,224,224); e.g. 4,64,64 on a CPU")
  p.add_argument("--batch", type=int, default=0, help="per-device batch (default 8 on accelerators, 1 on CPU)")
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--peak_tflops", type=float, default=0.0, help="peak bf16 TFLOP/s for MFU (0 = by device)")
  args = p.parse_args(argv)
  dev = jax.devices()[0]
  args.batch = args.batch or (1 if dev.platform == "cpu" else 8)
  args.peak = _peak_tflops(args.peak_tflops)
  size = "x".join(map(str, args.input)) if args.input else "layout default (16x224x224)"
  print(f"device {dev.device_kind} ({dev.platform}) x{jax.device_count()}, peak {args.peak} TFLOP/s; input "
        f"{size}, batch {args.batch} per device; median of {args.steps} after {args.warmup} warm-up; {_load()}",
        flush=True)
  rows, model_flops = [], {}
  for name in args.models:
    for dtype in args.dtypes:
      for remat in sorted(args.remat, key=lambda r: r != "none"):  # 'none' first: it gives the model FLOPs
        try:
          row = measure(name, dtype, remat, args, model_flops)
        except Exception as err:  # pylint: disable=broad-except
          row = dict(model=name, dtype=dtype, remat=remat,
                     status="OOM" if _is_oom(err) else f"error: {type(err).__name__}: {str(err)[:160]}")
        rows.append(row)
        print(format_row(row), flush=True)
        gc.collect()
        jax.clear_caches()
  print(f"\n{HEADER}")
  for row in rows:
    print(format_row(row))
  print(_load())


if __name__ == "__main__":
  main()
