"""The README's main job: pre-train -> fine-tune -> multi-view eval, next to the same fine-tuning from scratch.

One config tree (configs/demo.py): `config.demo.pretrain` / `config.demo.finetune` hold what the two phases
change; `phase_config` derives each phase's config from it. The phases run through the same `run.train`
as any pre-training or fine-tuning run.
"""
import json
import time
from typing import Callable

import jax
import ml_collections
import numpy as np

from maskfeat_jax import paths
from maskfeat_jax.config import locked_copy
from maskfeat_jax.models import layouts


def _apply_overrides(config, overrides, where: str):
  """Recursively sets `overrides` (a ConfigDict) on `config`; unknown keys are an error naming them."""
  for k, v in overrides.items():
    if k not in config:
      raise KeyError(f"{where}.{k}: no such key in the config tree (see maskfeat_jax/config.py).")
    if isinstance(v, ml_collections.ConfigDict):
      _apply_overrides(config[k], v, f"{where}.{k}")
    else:
      config[k] = v


def phase_config(config, phase: str, init_from: str = ""):
  """The demo's 'pretrain' / 'finetune' / 'scratch' config: the one config + config.demo.<phase> overrides.

  A different `model.name` in the overrides first loads that named layout (models/layouts.py: the
  fine-tuning model is a different architecture), then the remaining overrides apply. The result is locked
  like the config it came from. 'scratch' is 'finetune' without init_from
  (same recipe, same budget).
  """
  c = locked_copy(config)
  key = "pretrain" if phase == "pretrain" else "finetune"
  overrides = config.demo[key]
  name = overrides.get("model", {}).get("name") if "model" in overrides else None
  if name and name != c.model.name:
    c.model = layouts.get_model_config(name)
  _apply_overrides(c, overrides, f"config.demo.{key}")
  c.mode = key
  c.init_from = init_from if phase == "finetune" else ""
  c.lock()
  return c


def run_demo(config, workdir: str, *, train_phase: Callable, check: Callable) -> dict:
  """Pre-train -> fine-tune -> evaluate, and the same fine-tuning from scratch; prints both accuracies.

  Args:
    config: the demo config (mode 'demo', phases in config.demo).
    workdir: phases run in WORKDIR/pretrain, /finetune, /scratch; demo_results.json goes here.
    train_phase: (phase config, phase workdir) -> TrainResult (run.train).
    check: validates a phase config before anything compiles (config.validate).
  """
  t0 = time.perf_counter()
  for phase in ("pretrain", "finetune"):  # both phases' configs fail now, not after pre-training
    check(phase_config(config, phase))
  pt_dir, ft_dir, sc_dir = (paths.join(workdir, n) for n in ("pretrain", "finetune", "scratch"))
  results = {}
  pt = train_phase(phase_config(config, "pretrain"), pt_dir)
  results["pretrain"] = {"final_loss": pt.last_metrics.get("loss"), "steps": pt.step,
                         "steps_per_sec": pt.steps_per_sec, "wall_s": pt.wall_s}
  if pt.status != "done":
    return results
  for name, d, init in (("finetune", ft_dir, pt_dir), ("scratch", sc_dir, "")):
    r = train_phase(phase_config(config, "finetune", init_from=init), d)
    results[name] = {"eval": _scalars(r.eval), "steps": r.step, "steps_per_sec": r.steps_per_sec,
                     "wall_s": r.wall_s, "final_loss": r.last_metrics.get("loss")}
    if r.status != "done":
      return results
  results["wall_s"] = time.perf_counter() - t0
  if jax.process_index() == 0:
    with paths.open(paths.join(workdir, "demo_results.json"), "w") as f:
      json.dump(results, f, indent=2)
    print(format_demo(results), flush=True)
  return results


def _scalars(d):
  if not d:
    return {}
  return {k: (float(v) if np.isscalar(v) else v) for k, v in d.items()
          if np.isscalar(v) or isinstance(v, str)}


def _fmt(v, spec: str) -> str:
  return "n/a" if v is None else format(v, spec)


def format_demo(results: dict) -> str:
  """Side-by-side table of the pre-trained vs from-scratch fine-tuned accuracies."""
  ft, sc = results["finetune"]["eval"], results["scratch"]["eval"]
  views = (f"{int(ft['num_views'])} ({int(ft.get('num_clips', 0))} clips x {int(ft.get('num_crops', 0))} crops)"
           if "num_views" in ft else "?")
  lines = ["", f"MaskFeat demo ({results['wall_s']:.0f}s total)",
           f"{'fine-tuned from':<24}{'top-1':>8}{'top-5':>8}   views",
           f"{'MaskFeat pre-training':<24}{100 * ft.get('top1', float('nan')):>7.1f}%"
           f"{100 * ft.get('top5', float('nan')):>7.1f}%   {views}",
           f"{'scratch (same budget)':<24}{100 * sc.get('top1', float('nan')):>7.1f}%"
           f"{100 * sc.get('top5', float('nan')):>7.1f}%   {views}",
           # TrainResult.last_metrics holds the last step's metrics, not the mean over a logging window that
           # the console and metrics.jsonl show: say so.
           f"pre-training: {results['pretrain']['steps']} steps, loss at the last step "
           f"{_fmt(results['pretrain']['final_loss'], '.4f')}, {results['pretrain']['wall_s']:.0f}s"]
  return "\n".join(lines)
