"""models.arch: the one derivation of input / token / prediction / mask shapes, and what depends on it.

Regression tests for two facts that used to be derived twice: an odd frame count (the config check used
integer division, the model conv arithmetic) and the converter's output as `init_from`.
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskfeat_jax.checkpoints import slowfast
from maskfeat_jax.config import load_config
from maskfeat_jax.models import arch
from maskfeat_jax.models import layouts
from maskfeat_jax.models.maskfeat import resize_mask
from maskfeat_jax import run as run_lib
from maskfeat_jax import demo as demo_lib
from maskfeat_jax import config as config_lib
from maskfeat_jax.models import factory

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _pretrain(num_frames=8, grid=(4, 2, 2)):
  c = demo_lib.phase_config(load_config("configs/demo.py:tiny"), "pretrain")
  c.data.num_frames = num_frames
  c.model.input_size = (num_frames, 32, 32)
  c.mask.grid = grid
  return c


@pytest.mark.parametrize("frames,tokens,preds", [(8, (4, 8, 8), (4, 2, 2)), (5, (3, 8, 8), (3, 2, 2)),
                                                 (7, (4, 8, 8), (4, 2, 2))])
def test_io_shapes_use_conv_arithmetic(frames, tokens, preds):
  s = arch.io_shapes(_pretrain(frames, preds))
  assert s.pixels == (frames, 32, 32, 3)
  assert s.token_grid == tokens and s.prediction_grids == (preds,) and s.mask_grid == preds
  arch.check_io(_pretrain(frames, preds))


def test_io_shapes_of_an_image_model():
  c = _pretrain()
  c.model = layouts.get_model_config("maskfeat_vit_b_pt")
  c.mask.grid = (7, 7)
  s = arch.io_shapes(c)
  assert (s.pixels, s.token_grid, s.prediction_grids, s.image) == ((224, 224, 3), (14, 14), ((14, 14),), True)
  arch.check_io(c)


def test_mask_grid_errors_name_the_grid_to_use():
  with pytest.raises(ValueError, match=r"config.mask.grid=\(2, 2, 2\).*temporal size 3"):
    arch.check_io(_pretrain(5, (2, 2, 2)))
  with pytest.raises(ValueError, match=r"prediction grid of block 4 \(4, 2, 2\)"):
    arch.check_io(_pretrain(8, (4, 4, 4)))  # divides the 8x8 token grid, not the 2x2 prediction grid
  config_lib.validate(_pretrain(5, (3, 2, 2)))  # the config check agrees with the model
  with pytest.raises(ValueError, match="temporal"):
    config_lib.validate(_pretrain(5, (2, 2, 2)))


def test_example_batch_follows_io_shapes():
  ex = factory.example_batch(_pretrain(5, (3, 2, 2)), batch_size=2)
  assert ex["video"].shape == (2, 5, 32, 32, 3) and ex["mask"].shape == (2, 3, 2, 2)


@pytest.mark.slow
def test_odd_frame_count_pretrains_through_main(tmp_path):
  """`--config.data.num_frames=5` (token grid 3x8x8) pre-trains through main (it used to be refused)."""
  wd = tmp_path / "w"
  cmd = ["timeout", "-k", "10", "300", sys.executable, "-m", "maskfeat_jax.main",
         "--config=configs/demo.py:tiny", f"--workdir={wd}", "--config.mode=pretrain",
         "--config.total_steps=2", "--config.data.num_frames=5", "--config.model.input_size=(5,32,32)",
         "--config.mask.grid=(3,2,2)"]
  p = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                     text=True)
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
  assert os.path.isdir(wd / "checkpoints" / "2")
  rows = [json.loads(line) for line in open(wd / "metrics.jsonl")]
  assert rows and np.isfinite(rows[-1]["loss"])
  assert json.load(open(wd / "config.json"))["mask"]["grid"] == [3, 2, 2]


@pytest.mark.slow
def test_converter_output_is_init_from_for_finetune_eval_and_probe(golden_dir, tmp_path):
  """`convert --output DIR` writes a workdir-style checkpoint that `--config.init_from=DIR` reads."""
  pt_dir, ft_dir = tmp_path / "pt", tmp_path / "ft"
  slowfast.main(["--input", str(golden_dir / "maskmvit_tiny_pt.pyth"), "--output", str(pt_dir)])
  slowfast.main(["--input", str(golden_dir / "maskmvit_tiny_pt.pyth"), "--output", str(ft_dir),
                "--finetune_layout", "--num_classes", "8"])
  assert os.path.isdir(pt_dir / "checkpoints" / "0") and os.path.isfile(pt_dir / "config.json")
  demo = load_config("configs/demo.py:tiny")

  # Fine-tuning the demo's classifier (8x32x32) from the converted 8x64x64 pre-training checkpoint.
  ft = demo_lib.phase_config(demo, "finetune", init_from=str(pt_dir))
  ft.total_steps = 2
  res = run_lib.run(ft, str(tmp_path / "run_ft"))
  assert res.status == "done" and res.step == 2 and 0.0 <= res.eval["top1"] <= 1.0
  got = json.load(open(tmp_path / "run_ft" / "config.json"))
  assert got["init_from"] == str(pt_dir)

  # Eval of the converted fine-tuning layout, and a probe of the converted pre-training params, at the
  # checkpoint's own input size (64x64 crops of the 64x80 clips).
  saved = slowfast.config_from_json(json.loads((ft_dir / "config.json").read_text()))
  for mode, init, model in (("eval", ft_dir, saved.model), ("probe", pt_dir, None)):
    c = demo_lib.phase_config(demo, "finetune")
    c.mode, c.init_from = mode, str(init)
    if model is None:
      pt_saved = slowfast.config_from_json(json.loads((pt_dir / "config.json").read_text()))
      c.model, c.mask = pt_saved.model, pt_saved.mask
    else:
      c.model = model
    c.data.crop_size = c.data.test_short_side = 64
    c.data.train_split, c.data.eval_split = "train[:16]", "test[:16]"
    c.probe.steps = 5
    out = run_lib.run(c, str(tmp_path / f"run_{mode}"))
    assert out["num_views"] == 1 and 0.0 <= out["top1"] <= 1.0, (mode, out)
    if mode == "eval":
      assert out["num_examples"] == 16


def test_check_mask_grid():
  arch.check_mask_grid((8, 7, 7), (8, 56, 56))
  arch.check_mask_grid((8, 7, 7), (8, 14, 14))
  arch.check_mask_grid((14, 14), (14, 14))
  with pytest.raises(ValueError, match=r"\(8, 7, 7\).*\(8, 50, 56\)"):
    arch.check_mask_grid((8, 7, 7), (8, 50, 56))
  with pytest.raises(ValueError, match="temporal"):
    arch.check_mask_grid((4, 7, 7), (8, 56, 56))
  with pytest.raises(ValueError):
    arch.check_mask_grid((14, 14), (8, 14, 14))
  with pytest.raises(ValueError):
    arch.check_mask_grid((28, 28), (14, 14))  # mask finer than tokens


def test_resize_mask_nearest_spatial_only():
  rng = np.random.default_rng(0)
  video = rng.integers(0, 2, (2, 8, 7, 7)).astype(np.uint8)
  up = np.asarray(jax.jit(lambda m: resize_mask(m, (56, 56)))(video))
  np.testing.assert_array_equal(up, video.repeat(8, axis=2).repeat(8, axis=3))
  # The full grid form with the same temporal size is accepted too.
  np.testing.assert_array_equal(np.asarray(resize_mask(video, (8, 14, 14))),
                                video.repeat(2, axis=2).repeat(2, axis=3))
  image = rng.integers(0, 2, (3, 3, 5)).astype(np.float32)
  odd = np.asarray(resize_mask(jnp.asarray(image), (7, 4)))
  rows, cols = (np.arange(7) * 3) // 7, (np.arange(4) * 5) // 4  # floor(i * in / out)
  np.testing.assert_array_equal(odd, image[:, rows][:, :, cols])
  with pytest.raises(ValueError):
    resize_mask(video, (4, 56, 56))
  with pytest.raises(ValueError):
    resize_mask(video[0, 0], (56, 56))
