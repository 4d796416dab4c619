r"""Entry point: `python -m maskfeat_jax.main --config=configs/demo.py --workdir=/tmp/run`.

`--config=configs/x.py:arg` calls `get_config(arg)`; `--config.a.b=value` overrides a key (unknown keys
are an error: the config is locked). The config's `mode` chooses what runs: pretrain | finetune | eval |
probe | demo.

Multi-process runs (TPU pods, SLURM, several GPU hosts): jax.distributed.initialize() is called before
anything touches the devices when MASKFEAT_DISTRIBUTED=1, or when a SLURM job has several tasks, or on a
multi-host TPU slice (TPU_WORKER_HOSTNAMES lists several hosts). Its arguments come from the environment
(cluster auto-detection), or from MASKFEAT_COORDINATOR (host:port), MASKFEAT_NUM_PROCESSES and
MASKFEAT_PROCESS_ID when set.
"""
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/x.py[:arg]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and outputs.")
flags.mark_flags_as_required(["config", "workdir"])


def wants_distributed(env=None) -> bool:
  """Whether this process is one of several (so jax.distributed must be initialised)."""
  env = os.environ if env is None else env
  if env.get("MASKFEAT_DISTRIBUTED", "") not in ("", "0"):
    return True
  if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in env:
    return True
  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  return len(hosts) > 1


def init_distributed(env=None):
  """jax.distributed.initialize() with explicit arguments from MASKFEAT_* variables when given."""
  env = os.environ if env is None else env
  if not wants_distributed(env):
    return False
  import jax  # pylint: disable=g-import-not-at-top
  kwargs = {}
  if env.get("MASKFEAT_COORDINATOR"):
    kwargs["coordinator_address"] = env["MASKFEAT_COORDINATOR"]
  if env.get("MASKFEAT_NUM_PROCESSES"):
    kwargs["num_processes"] = int(env["MASKFEAT_NUM_PROCESSES"])
  if env.get("MASKFEAT_PROCESS_ID"):
    kwargs["process_id"] = int(env["MASKFEAT_PROCESS_ID"])
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def _check_workdir(workdir: str) -> str:
  if "://" in workdir:
    # Metrics, configs and eval reports are written with plain file I/O; a bucket must be mounted.
    raise app.UsageError(
        f"--workdir={workdir}: remote URLs are not supported; mount the bucket (e.g. gcsfuse) or use a "
        "shared filesystem and pass its local path.")
  workdir = os.path.abspath(os.path.expanduser(workdir))
  parent = os.path.dirname(workdir)
  if not os.path.isdir(parent):
    raise app.UsageError(
        f"--workdir={workdir}: its parent directory {parent} does not exist; create it first "
        "(the workdir itself is created if missing).")
  os.makedirs(workdir, exist_ok=True)
  return workdir


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # progress goes to stdout; keep library INFO logs out
    logging.set_verbosity(logging.WARNING)
  init_distributed()  # before anything touches the devices
  config = _CONFIG.value
  workdir = _check_workdir(_WORKDIR.value)
  logging.info("mode=%s workdir=%s", config.mode, workdir)
  # After flag parsing: Grain's worker processes read the parsed flags.
  from maskfeat_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  from maskfeat_jax.train import logger  # pylint: disable=g-import-not-at-top
  try:
    result = run_lib.run(config, workdir)
  except logger.TrainingDiverged as e:
    raise SystemExit(f"ERROR: {e}") from e
  status = getattr(result, "status", "done")
  if status == "preempted":
    logging.info("Preempted: checkpoint saved; rerun the same command to resume.")


if __name__ == "__main__":
  app.run(main)
