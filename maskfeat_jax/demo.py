"""The README's main job: pre-train on unlabelled clips -> linear probe -> fine-tune on few labels -> multi-view
eval, next to the same fine-tuning and probe from a random init.

One config tree (configs/demo.py): `config.demo.pretrain` / `config.demo.finetune` hold what the phases
change, `config.demo.targets` the pre-training targets (one pre-training each: 'hog', 'pixel');
`phase_config` derives each phase's config from it. The phases run through the same `run.train` /
`run.run_probe` as any pre-training, fine-tuning or probe run.
"""
import json
import math
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


def targets(config) -> tuple[str, ...]:
  """The pre-training targets the demo runs (config.demo.targets; 'hog' when a config does not say)."""
  t = tuple(config.demo.get("targets", ("hog",)))
  if not t or len(set(t)) != len(t) or any(x not in ("hog", "pixel") for x in t):
    raise ValueError(f"config.demo.targets={t!r}: expected distinct entries of ('hog', 'pixel').")
  return t


def phase_config(config, phase: str, init_from: str = "", target: str = ""):
  """The demo's 'pretrain' / 'finetune' / 'scratch' / 'probe' config: the one config + config.demo.<phase> overrides.

  A different `model.name` in the overrides first loads that named layout (models/layouts.py: the
  fine-tuning model is a different architecture), then the remaining overrides apply. The result is locked
  like the config it came from. 'scratch' is 'finetune' without init_from (same recipe, same budget);
  'probe' is the pre-training model (its overrides) in mode 'probe' of `init_from` ('' = its random init).
  `target` ('hog' | 'pixel'; '' = config.target.type) sets the pre-training target.
  """
  if phase not in ("pretrain", "finetune", "scratch", "probe"):
    raise ValueError(f"phase_config: phase {phase!r}, expected 'pretrain', 'finetune', 'scratch' or 'probe'.")
  if phase == "scratch":
    phase, init_from = "finetune", ""
  c = locked_copy(config)
  key = "finetune" if phase == "finetune" else "pretrain"
  overrides = config.demo[key]
  name = overrides.get("model", {}).get("name") if "model" in overrides else None
  if name and name != c.model.name:
    c.model = layouts.get_model_config(name)
  _apply_overrides(c, overrides, f"config.demo.{key}")
  if target:
    c.target.type = target
  if c.target.type != "hog":
    c.viz_every_steps = 0  # the prediction pictures draw HOG glyphs (viz/hook.py): none for other targets
  c.mode = phase if phase == "probe" else key
  c.init_from = init_from if phase in ("finetune", "probe") else ""
  if phase == "probe":
    c.viz_every_steps = 0
  c.lock()
  return c


def _dirs(target: str) -> tuple[str, str]:
  """Pre-training and fine-tuning subdirectories of one target (HOG keeps the plain names)."""
  return ("pretrain", "finetune") if target == "hog" else (f"pretrain_{target}", f"finetune_{target}")


def run_demo(config, workdir: str, *, train_phase: Callable, check: Callable,
             probe_phase: Callable | None = None) -> dict:
  """Pre-train (per target) -> probe -> fine-tune -> evaluate, and the same probe and fine-tuning from a
  random init; prints the table.

  Args:
    config: the demo config (mode 'demo', phases in config.demo).
    workdir: phases run in WORKDIR/pretrain[_pixel], /finetune[_pixel], /scratch, probes write into
      WORKDIR/probe/<init>; demo_results.json goes here.
    train_phase: (phase config, phase workdir) -> TrainResult (run.train).
    check: validates a phase config before anything compiles (config.validate and its splits).
    probe_phase: (probe config, probe workdir) -> probe scalars (run.run_probe; init_from '' = random
      init); None = no probes.
  """
  t0 = time.perf_counter()
  names = targets(config)
  for phase in ("pretrain", "finetune") + (("probe",) if probe_phase else ()):  # all fail now, not later
    check(phase_config(config, phase, target=names[0]))
  results = {}
  for target in names:
    pt_name, _ = _dirs(target)
    c = phase_config(config, "pretrain", target=target)
    pt = train_phase(c, paths.join(workdir, pt_name))
    results[pt_name] = {"target": target, "final_loss": pt.last_metrics.get("loss"), "steps": pt.step,
                        "steps_per_sec": pt.steps_per_sec, "wall_s": pt.wall_s,
                        "clips_per_sec": pt.steps_per_sec * c.batch_size if pt.steps_per_sec else None}
    if pt.status != "done":
      return results
  if probe_phase:
    results["probe"] = {}
    for init, name in [(paths.join(workdir, _dirs(t)[0]), t) for t in names] + [("", "random_init")]:
      r = probe_phase(phase_config(config, "probe", init_from=init), paths.join(workdir, "probe", name))
      results["probe"][name] = _scalars(r)
  runs = [(_dirs(t)[1], paths.join(workdir, _dirs(t)[0])) for t in names] + [("scratch", "")]
  for name, init in runs:
    r = train_phase(phase_config(config, "finetune", init_from=init), paths.join(workdir, name))
    results[name] = {"eval": _scalars(r.eval), "steps": r.step, "steps_per_sec": r.steps_per_sec,
                     "wall_s": r.wall_s, "final_loss": r.last_metrics.get("loss")}
    if r.status != "done":
      return results
  results["wall_s"] = time.perf_counter() - t0
  results["labelled_split"] = config.demo.finetune.get("data", {}).get("train_split", config.data.train_split)
  if jax.process_index() == 0:
    with paths.open(paths.join(workdir, "demo_results.json"), "w") as f:
      json.dump(results, f, indent=2)
    print(format_demo(results), flush=True)
  return results


def _scalars(d):
  if not d:
    return {}
  return {k: (float(v) if np.isscalar(v) and not isinstance(v, str) else v) for k, v in d.items()
          if np.isscalar(v) or isinstance(v, str)}


def _fmt(v, spec: str) -> str:
  return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _pct(d: dict, key: str) -> str:
  v = d.get(key)
  return f"{'n/a' if v is None else format(100 * v, '.1f') + '%':>7}"


def format_demo(results: dict) -> str:
  """The table: fine-tuned (multi-view) and linear-probe accuracies per init, then the pre-training line(s)."""
  ft = results["finetune"]["eval"] if "finetune" in results else {}
  views = (f"{int(ft['num_views'])} ({int(ft.get('num_clips', 0))} clips x {int(ft.get('num_crops', 0))} crops)"
           if "num_views" in ft else "?")
  probes = results.get("probe", {})
  rows = [(f"MaskFeat pre-training{'' if t == 'hog' else ' (' + t + ')'}", _dirs(t)[1], t)
          for t in ("hog", "pixel") if _dirs(t)[1] in results]
  rows.append(("scratch (same budget)", "scratch", "random_init"))
  labelled = results.get("labelled_split", "")
  lines = ["", f"MaskFeat demo ({results['wall_s']:.0f}s total)" + (f": fine-tuned on {labelled}" if labelled else ""),
           f"{'fine-tuned from':<30}{'top-1':>8}{'top-5':>8}   views" + ("    linear probe top-1 (frozen)"
                                                                     if probes else "")]
  for label, key, probe_key in rows:
    ev = results[key]["eval"]
    line = f"{label:<30}{_pct(ev, 'top1')} {_pct(ev, 'top5')}   {views}"
    if probes:
      line += f"    {_pct(probes.get(probe_key, {}), 'top1')}"
    lines.append(line)
  # TrainResult.last_metrics holds the last step's metrics, not the mean over a logging window that the
  # console and metrics.jsonl show: say so.
  for t in ("hog", "pixel"):
    pt = results.get(_dirs(t)[0])
    if pt is None:
      continue
    rate = f", {pt['clips_per_sec']:.0f} clips/s" if pt.get("clips_per_sec") else ""
    lines.append(f"pre-training ({pt.get('target', t)}): {pt['steps']} steps, loss at the last step "
                 f"{_fmt(pt['final_loss'], '.4f')}, {pt['wall_s']:.0f}s{rate}")
  return "\n".join(lines)
