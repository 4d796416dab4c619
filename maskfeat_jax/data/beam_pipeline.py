"""`build_shards --runner=beam`: the conversion as an Apache Beam pipeline (apache-beam is an optional extra).

TFDS builds its large datasets the same way (`tfds.core.beam_utils`, `tfds build --beam_pipeline_options=...`):
the driver plans, Beam workers do the decoding. Here the driver (`build_shards.convert`) plans the shards
and skips finished ones as the local runner does; the pipeline

    Create(shard keys) -> Reshuffle -> ParDo(convert and write one shard)

hands each shard to a worker, which decodes, resizes and JPEG-encodes its videos and writes the shard and
its sidecar with `build_shards.convert_shard` (the local runner's code), so the array_record files are those
of the local runner. The driver then writes dataset_info and `conversion_report.json` from the sidecars
(`build_shards.finish`). The rows of every shard go to `.convert/beam_plan.json` in the dataset directory
and only (split, shard) keys into the pipeline graph: a Kinetics-size label list inlined in the graph would
exceed a runner's job-size limits (Dataflow: 20 MB). Workers therefore read the plan where the driver
wrote it and write their shards there: with a gs:// output dir both go through the bucket (paths.py; each
shard staged on the worker's local disk and uploaded, storage.ShardWriter), so workers share no file system
with the driver; with a local output dir it must be a mount they all see at the same path. The videos are
read through ordinary file paths on every worker.

Decoding runs in one child process per shard (worker_pool.CrashSafePool), so a decoder crash skips and reports
its video instead of failing the bundle; bad inputs are skipped and listed as with the local runner.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from maskfeat_jax import paths
from maskfeat_jax.data import build_shards
from maskfeat_jax.data.label_files import Item

PLAN_FILE = "beam_plan.json"


def pipeline_args(beam_pipeline_options: str, num_workers: int) -> list[str]:
  """'runner=X,a=b' (TFDS's --beam_pipeline_options form; a leading -- is optional) -> Beam argv.

  Without a runner: the DirectRunner in multi_processing mode with `num_workers` processes (at least 1).
  """
  args = [a.strip() for a in beam_pipeline_options.split(",") if a.strip()]
  args = [a if a.startswith("--") else f"--{a}" for a in args]
  bad = [a for a in args if "=" not in a and not a[2:].replace("_", "").isalnum()]
  if bad:
    raise ValueError(f"--beam_pipeline_options={beam_pipeline_options!r}: cannot read {bad[0]!r}; use "
                     "comma-separated key=value entries, e.g. 'runner=DirectRunner,direct_num_workers=2'.")
  keys = {a[2:].split("=", 1)[0] for a in args}
  if "runner" not in keys:
    args.append("--runner=DirectRunner")
  runner = next(a.split("=", 1)[1] for a in args if a.startswith("--runner="))
  if runner in ("DirectRunner", "direct"):
    if "direct_running_mode" not in keys:
      args.append("--direct_running_mode=multi_processing")
    if "direct_num_workers" not in keys:
      args.append(f"--direct_num_workers={max(1, num_workers)}")
  return args


def _plan_path(ds_dir: str) -> str:
  return paths.join(ds_dir, build_shards.STATE_DIR, PLAN_FILE)


def _write_plan(ds_dir: str, pending) -> str:
  plan = {f"{split}/{k}": {"split": split, "shard": k, "num_shards": n,
                           "rows": [dataclasses.asdict(it) for it in rows]}
          for split, k, n, rows in pending}
  path = _plan_path(ds_dir)
  build_shards._write_json_atomic(path, plan)  # pylint: disable=protected-access
  return path


class ConvertShardDoFn(beam.DoFn):
  """Shard key -> that shard and its sidecar written (build_shards.convert_shard); yields (key, rows)."""

  def __init__(self, ds_dir: str, name: str, class_names: Sequence[str], options: build_shards.Options,
               decode_processes: int):
    super().__init__()
    self.ds_dir, self.name, self.class_names = ds_dir, name, list(class_names)
    self.options, self.decode_processes = options, decode_processes
    self.plan = None

  def setup(self):
    paths.refresh(self.ds_dir)  # a worker process that served an earlier run may have listed the old plan
    with paths.open(_plan_path(self.ds_dir)) as f:  # on the bucket when ds_dir is a URL
      self.plan = json.load(f)

  def process(self, key: str):
    entry = self.plan[key]
    rows = [Item(**r) for r in entry["rows"]]
    build_shards.convert_shard(self.ds_dir, self.name, entry["split"], entry["shard"],
                               entry["num_shards"], rows, self.class_names, self.options,
                               num_workers=self.decode_processes)
    yield key, len(rows)


def run(pending, ds_dir: str | os.PathLike, name: str, class_names: Sequence[str], options: build_shards.Options,
        beam_pipeline_options: str = "", *, num_workers: int = 0, decode_processes: int = 1) -> int:
  """Converts and writes every shard of `pending` ((split, shard, num_shards, rows)) with Beam.

  Returns the number of shards written. Raises if the pipeline fails (a finished shard stays finished: a
  rerun converts only the rest, as with the local runner).
  """
  if not pending:
    return 0
  ds_dir = paths.resolve(ds_dir)  # absolute: workers may run elsewhere / in another cwd
  # Under `python -m maskfeat_jax.data.build_shards` the caller's Options class is `__main__.Options`, which
  # workers cannot unpickle: rebuild it from the importable module.
  options = build_shards.Options(**dataclasses.asdict(options))
  _write_plan(ds_dir, pending)
  keys = [f"{split}/{k}" for split, k, _, _ in pending]
  opts = PipelineOptions(pipeline_args(beam_pipeline_options, num_workers))
  with beam.Pipeline(options=opts) as p:
    _ = (p
         | "ShardKeys" >> beam.Create(keys)
         # Spreads the shards over the workers (Create alone may keep them in one bundle).
         | "Spread" >> beam.Reshuffle()
         | "ConvertAndWrite" >> beam.ParDo(ConvertShardDoFn(ds_dir, name, class_names, options,
                                                                decode_processes)))
  return len(keys)
