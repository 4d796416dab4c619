r"""Entry point: `python -m maskfeat_jax.main --config=configs/demo.py --workdir=/tmp/run`.

`--config=configs/x.py:arg` calls `get_config(arg)`; `--config.a.b=value` overrides a key (unknown keys
are an error: the config is locked). The config's `mode` chooses what runs.
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


def _check_workdir(workdir: str) -> str:
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
  config = _CONFIG.value
  workdir = _check_workdir(_WORKDIR.value)
  logging.info("mode=%s workdir=%s", config.mode, workdir)
  from maskfeat_jax.train import loop  # imported late: flags are parsed (Grain workers need them)
  loop.run(config, workdir)


if __name__ == "__main__":
  app.run(main)
