r"""Entry point: `python -m maskfeat_jax.main --config=configs/demo.py --workdir=/tmp/run`.

`--config=configs/x.py:arg` calls `get_config(arg)`; `--config.a.b=value` overrides a key (unknown keys
are an error: the config is locked). The config's `mode` chooses what runs: pretrain | finetune | eval |
probe | demo.

Multi-process runs (TPU pods, SLURM, several GPU hosts): jax.distributed.initialize() is called before
anything touches the devices when MASKFEAT_DISTRIBUTED=1, or when a SLURM job has several tasks, or on a
multi-host TPU slice (TPU_WORKER_HOSTNAMES lists several hosts). Its arguments come from the environment
(cluster auto-detection), or from MASKFEAT_COORDINATOR (host:port), MASKFEAT_NUM_PROCESSES and
MASKFEAT_PROCESS_ID when set. MASKFEAT_INIT_TIMEOUT (seconds, default 300) bounds the wait for the
coordinator and the other processes; a coordinator that does not answer within it is a one-line error naming
its address. CPU processes exchange collectives through gloo.

The workdir may be a local path or a URL that etils.epath opens (gs://bucket/run: checkpoints through
TensorStore's gcs driver, the rest through gcsfs; see maskfeat_jax/paths.py).

Command-line mistakes (a misspelt override, a missing flag, a bad workdir) print one line on stderr and exit
with status 2; `--help` prints the flags and exits 0.
"""
import difflib
import os
import socket
import sys
import time
from typing import NoReturn

import ml_collections
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from maskfeat_jax import config as config_lib
from maskfeat_jax import paths

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/x.py[:arg]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and outputs.")
flags.mark_flags_as_required(["config", "workdir"])

RUN_HINT = "python -m maskfeat_jax.main --config=configs/demo.py --workdir=./workdir_demo"
_HELP_FLAGS = ("help", "?", "helpshort", "helpfull", "helpxml")


def _usage_error(message: str) -> NoReturn:
  """One line on stderr, exit status 2 (absl's UsageError would print the whole help text first)."""
  print(f"ERROR: {message}", file=sys.stderr)
  sys.exit(2)


def _flag_names(argv) -> list:
  return [a.lstrip("-").split("=", 1)[0] for a in argv[1:] if a.startswith("-")]


def _flag_value(argv, name: str) -> str | None:
  """The value of `--name=v` / `-name=v` / `--name v` in argv (absl accepts all three), else None."""
  for i, a in enumerate(argv[1:], start=1):
    key, eq, value = a.lstrip("-").partition("=")
    if a.startswith("-") and key == name:
      return value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
  return None


def _override_error(argv) -> str | None:
  """For a `--config.a.b=v` naming no config key: the key and the nearest valid ones (None if all exist)."""
  spec = _flag_value(argv, "config")
  if spec is None:
    return None
  config = config_lib.load_config(spec)
  for name in _flag_names(argv):
    if not name.startswith("config."):
      continue
    node, parts = config, name.split(".")[1:]
    for i, part in enumerate(parts):
      key = part.split("[", 1)[0]  # `--config.a.b[0]=v` indexes a sequence field
      if not isinstance(node, ml_collections.ConfigDict):
        break  # inside a plain value: config_flags reports those itself
      if key in node:
        node = node[key]
        continue
      where = ".".join(["config"] + parts[:i])
      keys = list(node.keys())
      near = difflib.get_close_matches(key, keys, n=3) or difflib.get_close_matches(key, keys, n=3, cutoff=0.0)
      return (f"--{name}: {where} has no key {key!r}; nearest valid keys: "
              f"{', '.join('.'.join(['config'] + parts[:i] + [k]) for k in near)}")
  return None


def parse_flags(argv):
  """absl flag parsing, but command-line mistakes are one line on stderr and exit status 2."""
  argv = [("--help" if a == "-h" else a) for a in argv]
  if len(argv) == 1:
    _usage_error(f"no flags given. To run the demo (the README's main job): {RUN_HINT}; "
                 "other jobs: --config=configs/<name>.py (README: Configs and modes); --help lists the flags.")
  try:
    return flags.FLAGS(argv)
  except SystemExit:
    # absl's help flags print the help, then exit with status 1: asking for help is not an error.
    if set(_flag_names(argv)) & set(_HELP_FLAGS):
      sys.exit(0)
    raise
  except (AttributeError, KeyError):
    # config_flags raises these (with a double traceback) for an override naming no config key.
    message = _override_error(argv)
    if message is None:  # not an override: a bug in the config file itself, keep its traceback
      raise
    _usage_error(message)
  except flags.Error as e:
    missing = [f"--{n}" for n in ("config", "workdir") if n not in _flag_names(argv)]
    if missing:
      _usage_error(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required, e.g. {RUN_HINT}")
    _usage_error(str(e).splitlines()[0] if str(e) else type(e).__name__)


def _check_model_name(config) -> None:
  """An override of model.name alone would keep the file's layout (depth, widths, ...) under a new name."""
  spec = config_flags.get_config_filename(flags.FLAGS["config"])
  from_file = config_lib.load_config(spec).model.name
  if config.model.name != from_file:
    _usage_error(
        f"--config.model.name={config.model.name} changes only the name: config.model keeps the "
        f"{from_file!r} layout of {spec}. Pick a layout in a config file instead: its get_config() sets "
        f"`c.model = layouts.get_model_config({config.model.name!r})` (maskfeat_jax/models/layouts.py, "
        "as configs/k400_finetune.py does); other model.* keys may still be overridden.")


def wants_distributed(env=None) -> bool:
  """Whether this process is one of several (so jax.distributed must be initialised)."""
  env = os.environ if env is None else env
  if env.get("MASKFEAT_DISTRIBUTED", "") not in ("", "0"):
    return True
  if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in env:
    return True
  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  return len(hosts) > 1


_DEFAULT_INIT_TIMEOUT_S = 300


class DistributedInitError(RuntimeError):
  """The multi-process job cannot start (the message says which setting or address)."""


def _wait_for_coordinator(address: str, timeout_s: float, process_id: int, num_processes: int | None):
  """Returns once `address` accepts TCP connections; raises DistributedInitError after timeout_s.

  jax.distributed.initialize itself aborts the whole process (a C++ CHECK, a page of stack) when the
  coordinator never answers; probing first turns that into one line naming the address.
  """
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise DistributedInitError(f"MASKFEAT_COORDINATOR={address!r}: expected host:port (e.g. 10.0.0.2:12355).")
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        of = f" of {num_processes}" if num_processes else ""
        raise DistributedInitError(
            f"coordinator {address} (MASKFEAT_COORDINATOR) did not answer within {timeout_s:g}s "
            f"(process {process_id}{of}; last error: {e.strerror or e}): start process 0 there, or fix the "
            "address / port (MASKFEAT_INIT_TIMEOUT sets this wait).") from None
      time.sleep(0.2)


def init_distributed(env=None):
  """jax.distributed.initialize() with explicit arguments from MASKFEAT_* variables when given."""
  env = os.environ if env is None else env
  if not wants_distributed(env):
    return False
  import jax  # pylint: disable=g-import-not-at-top
  kwargs = {}
  if env.get("MASKFEAT_COORDINATOR"):
    kwargs["coordinator_address"] = env["MASKFEAT_COORDINATOR"]
  try:
    if env.get("MASKFEAT_NUM_PROCESSES"):
      kwargs["num_processes"] = int(env["MASKFEAT_NUM_PROCESSES"])
    if env.get("MASKFEAT_PROCESS_ID"):
      kwargs["process_id"] = int(env["MASKFEAT_PROCESS_ID"])
    timeout_s = int(env.get("MASKFEAT_INIT_TIMEOUT", _DEFAULT_INIT_TIMEOUT_S))
  except ValueError as e:
    raise DistributedInitError(f"MASKFEAT_NUM_PROCESSES / MASKFEAT_PROCESS_ID / MASKFEAT_INIT_TIMEOUT must be "
                               f"integers: {e}") from None
  kwargs["initialization_timeout"] = timeout_s
  # Cross-process collectives of the CPU backend (the 2-process tests, CPU clusters) go through gloo; GPU and
  # TPU backends use their own (NCCL / ICI) and ignore this setting.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if kwargs.get("coordinator_address") and kwargs.get("process_id", 0) != 0:
    _wait_for_coordinator(kwargs["coordinator_address"], timeout_s, kwargs["process_id"],
                          kwargs.get("num_processes"))
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def _check_workdir(workdir: str) -> str:
  if paths.is_remote(workdir):
    try:
      paths.check_remote_dir(workdir)
    except paths.RemotePathError as e:
      raise app.UsageError(str(e)) from None
    return workdir
  workdir = os.path.abspath(os.path.expanduser(workdir))
  parent = os.path.dirname(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise app.UsageError(f"--workdir={workdir} is an existing file, not a directory; pass a directory "
                         "(it is created if missing).")
  if not os.path.isdir(parent):
    raise app.UsageError(
        f"--workdir={workdir}: its parent directory {parent} does not exist; create it first "
        "(the workdir itself is created if missing).")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise app.UsageError(f"--workdir={workdir}: cannot create it: {e.strerror or e}") from e
  return workdir


def main(argv):
  if len(argv) > 1:
    _usage_error(f"unexpected arguments {argv[1:]} (flags are --name=value)")
  if not flags.FLAGS["verbosity"].present:  # progress goes to stdout; keep library INFO logs out
    logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  try:
    _check_model_name(config)
  except FileNotFoundError as e:  # config_flags defers a missing config file's error to the first access
    _usage_error(str(e))
  try:
    workdir = _check_workdir(_WORKDIR.value)
  except app.UsageError as e:
    _usage_error(str(e))
  try:
    if init_distributed():  # before anything touches the devices
      import jax  # pylint: disable=g-import-not-at-top
      # Before compilation: e.g. a batch the process count does not divide (config.validate).
      config_lib.validate(config, process_count=jax.process_count())
  except (DistributedInitError, ValueError) as e:
    _usage_error(str(e))
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
  app.run(main, flags_parser=parse_flags)
