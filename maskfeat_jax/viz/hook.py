"""The pre-training hook (config.viz_every_steps > 0): prediction pictures of one fixed clip during training.

Built by run.py for MaskFeat runs and called by train/trainer.py as `visualizer(params, step, workdir, final)`
every viz_every_steps and once at the end (final=True): WORKDIR/pictures/prediction_<step>.png of the eval
split's first example with the mask drawn from config.seed (the same clip and mask every time), and at the
end WORKDIR/pictures/curves.png from metrics.jsonl. It only reads the params (no RNG, no data order of the
run changes). Every process runs the forward (the params may be sharded across them); process 0 writes.
"""
import copy

import numpy as np

from maskfeat_jax import paths
from maskfeat_jax import visualize as vis
from maskfeat_jax.viz import cli


def make_visualizer(config, model, mesh):
  """(params, step, workdir, final=False) -> None; the clip is read at the first call."""
  import jax
  from jax.sharding import NamedSharding, PartitionSpec

  from maskfeat_jax import compiler

  fixed = {}
  replicated = NamedSharding(mesh, PartitionSpec())
  keys = ("pred", "target", "token_mask")
  fwd = compiler.jit(lambda p, x, m: {k: v for k, v in model.apply({"params": p}, x, m).items() if k in keys},
                     platform=mesh.devices.flat[0].platform, out_shardings=replicated)

  def visualize(params, step: int, workdir: str, final: bool = False):
    if not fixed:
      c = copy.deepcopy(config)
      c.data.num_workers = 0
      fixed["clip"] = cli.dataset_clip(c, c.data.eval_split, 0)
      fixed["mask"] = cli.fixed_mask(c)
    pictures = paths.join(workdir, "pictures")
    path = paths.join(pictures, f"prediction_{step}.png")
    primary = jax.process_index() == 0
    if fixed.get("last_step") != step:  # the final call at a step the loop already drew draws nothing new
      fixed["last_step"] = step
      out = fwd(params, fixed["clip"][None], fixed["mask"][None])
      out = {k: np.asarray(v)[0] for k, v in out.items()}
      if primary:
        fig = cli.prediction_picture(config, fixed["clip"], fixed["mask"], out)
        fig.suptitle(f"step {step}")
        vis.save_png(fig, path)
    metrics = paths.join(workdir, "metrics.jsonl")
    if final and primary and paths.isfile(metrics):
      vis.save_png(vis.training_curves(metrics), paths.join(pictures, "curves.png"))
  return visualize
