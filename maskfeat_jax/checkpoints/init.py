"""Where a fine-tuning, eval or probe run gets its weights: `config.init_from`.

`config.init_from` is one of our workdirs (a training run's or the converter's), its checkpoints/ directory
or a step directory (checkpoints/orbax.py), or an official `.pyth` / state-dict `.npz` converted on the fly
(checkpoints/slowfast.py). `read_params` is the one branch between the two.
"""

import jax

from maskfeat_jax import paths
from maskfeat_jax.checkpoints import orbax as ckpt_lib
from maskfeat_jax.checkpoints import slowfast
from maskfeat_jax.checkpoints import transfer

OFFICIAL_SUFFIXES = (".pyth", ".pth", ".npz")


def read_params(init_from: str):
  """Host params of `init_from` (see the module docstring); a missing path is an error naming the key."""
  if not init_from:
    raise ValueError("config.init_from is empty: set it to a workdir, checkpoint dir or an official "
                     ".pyth/.npz.")
  path = paths.resolve(init_from)
  if not paths.exists(path):
    raise FileNotFoundError(f"config.init_from={init_from}: no such file or directory.")
  if path.endswith(OFFICIAL_SUFFIXES):
    _, variables = slowfast.load_official_checkpoint(path)
    return variables["params"] if "params" in variables else variables
  return ckpt_lib.restore_params(path)


def finetune_params(config, fresh_params):
  """Pre-trained backbone weights of config.init_from merged into `fresh_params` (keeps the new head/norm).

  Args:
    config: fine-tuning config.
    fresh_params: host copy of the freshly initialised fine-tuning params.
  """
  return transfer.pretrain_to_finetune(read_params(config.init_from), fresh_params)


def params_on_mesh(config, shardings):
  """config.init_from's params placed with `shardings` (the model's param shardings): eval and probe."""
  if not config.init_from:
    raise ValueError(f"config.mode={config.mode!r} needs config.init_from (a workdir, checkpoint dir or an "
                     "official .pyth/.npz).")
  return jax.device_put(read_params(config.init_from), shardings)
