"""User-facing messages: main's command-line errors, the converter's report, eval summary and PNG, demo table."""
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from PIL import Image

from maskfeat_jax import demo as demo_lib
from maskfeat_jax import main as main_lib
from maskfeat_jax.config import base_config
from maskfeat_jax.data import build_shards
from maskfeat_jax.data import label_files
from maskfeat_jax.eval import multiview
from maskfeat_jax.eval import report

REPO = pathlib.Path(__file__).resolve().parents[1]
_ENV = dict(os.environ, JAX_PLATFORMS="cpu")
README_COMMAND = "python -m maskfeat_jax.main --config=configs/demo.py --workdir=./workdir_demo"


def _main(*args):
  cmd = ["timeout", "-k", "10", "120", sys.executable, "-m", "maskfeat_jax.main", *args]
  return subprocess.run(cmd, cwd=REPO, env=_ENV, capture_output=True, text=True, check=False)


def _one_line_error(p) -> str:
  """The process failed with exit status 2 and a single stderr line (no traceback, no help text)."""
  assert p.returncode == 2, (p.returncode, p.stderr[-3000:])
  lines = p.stderr.strip().splitlines()
  assert len(lines) == 1, p.stderr[-3000:]
  return lines[0]


# ------------------------------------------------------------------------------------------ main.py
def test_override_error_names_the_key_and_the_nearest_valid_ones():
  override_error = main_lib._override_error  # pylint: disable=protected-access
  msg = override_error(["main", "--config=configs/demo.py", "--config.optim.bse_lr=1"])
  assert "bse_lr" in msg and "config.optim.base_lr" in msg
  msg = override_error(["main", "--config", "configs/demo.py", "--config.optm.base_lr=1"])
  assert "'optm'" in msg and "config.optim" in msg
  assert override_error(["main", "--config=configs/demo.py", "--config.optim.base_lr=1"]) is None


@pytest.mark.slow
def test_misspelt_override_is_one_line_naming_the_nearest_key(tmp_path):
  line = _one_line_error(_main("--config=configs/demo.py", f"--workdir={tmp_path / 'w'}",
                               "--config.optim.bse_lr=1"))
  assert "--config.optim.bse_lr" in line and "config.optim.base_lr" in line
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_workdir_that_is_a_file_is_one_line(tmp_path):
  (tmp_path / "a_file").write_text("x")
  line = _one_line_error(_main("--config=configs/demo.py", f"--workdir={tmp_path / 'a_file'}"))
  assert f"{tmp_path / 'a_file'} is an existing file" in line


@pytest.mark.slow
def test_missing_workdir_parent_is_one_line_without_the_help_text(tmp_path):
  line = _one_line_error(_main("--config=configs/demo.py", f"--workdir={tmp_path / 'missing' / 'w'}"))
  assert "parent directory" in line and "does not exist" in line


@pytest.mark.slow
def test_no_flags_says_what_to_run():
  assert README_COMMAND in _one_line_error(_main())


@pytest.mark.slow
def test_help_exits_0():
  p = _main("--help")
  assert p.returncode == 0, p.stderr[-3000:]
  assert "--workdir" in p.stdout


@pytest.mark.slow
def test_overriding_model_name_alone_is_an_error(tmp_path):
  line = _one_line_error(_main("--config=configs/demo.py:tiny", f"--workdir={tmp_path / 'w'}",
                               "--config.model.name=mvit_tiny_ft"))
  assert "model.name=mvit_tiny_ft" in line and "layouts.get_model_config('mvit_tiny_ft')" in line
  assert not (tmp_path / "w").exists()


# ------------------------------------------------------------------------------------------ converter
def test_report_names_the_path_looked_for_a_missing_video(tmp_path):
  videos = tmp_path / "videos"
  videos.mkdir()
  (tmp_path / "list.csv").write_text("path,label\nsub/missing.mp4,red\n")
  (tmp_path / "k400.csv").write_text("label,youtube_id,time_start,time_end,split\nred,abcdefghijk,10,20,val\n")
  (tmp_path / "ssv2.json").write_text('[{"id": "123", "template": "Pushing [something]"}]')
  items = (label_files.read_label_file(str(tmp_path / "list.csv"), str(videos), "train")
           + label_files.read_label_file(str(tmp_path / "k400.csv"), str(videos), "train")
           + label_files.read_label_file(str(tmp_path / "ssv2.json"), str(videos), "train"))
  names = label_files.class_names_for(items)
  rep = build_shards.convert(items, str(tmp_path / "out"), "toy", names, build_shards.Options(), progress=False)
  paths = {x["video_id"]: (x["path"], x["reason"]) for x in rep["skipped_items"]}
  assert paths["sub/missing"] == (str(videos / "sub" / "missing.mp4"), "missing file")
  assert paths["abcdefghijk_000010_000020"][0] == (
      f"{videos / '**' / 'abcdefghijk_000010_000020.*'} or abcdefghijk.*")
  assert paths["123"][0] == str(videos / "**" / "123.*")


# ------------------------------------------------------------------------------------------ eval
class _MeanColour(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(3, name="head")(jnp.mean(x.astype(jnp.float32) / 255.0, axis=(1, 2, 3)))


def _batches(num_batches: int, batch: int = 4):
  for b in range(num_batches):
    labels = np.arange(batch) % 3
    video = np.zeros((batch, 2, 4, 4, 3), np.uint8)
    video[np.arange(batch), ..., labels] = 200
    yield dict(video=video, label=labels, example_id=np.arange(batch) + b * batch, view=np.zeros(batch, int),
               valid=np.ones(batch, bool))


@pytest.mark.parametrize("num_batches", [1, 3])
def test_views_per_second_is_na_with_a_single_batch(capsys, num_batches):
  config = base_config()
  config.mode = "eval"
  config.eval.num_clips, config.eval.num_crops, config.eval.batch_size = 1, 1, 4
  mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"),
              axis_types=(jax.sharding.AxisType.Auto,) * 2)
  params = {"head": {"kernel": jnp.eye(3) * 10.0, "bias": jnp.zeros((3,))}}
  out = multiview.evaluate(config, _MeanColour(), params, mesh, "test", iterator=_batches(num_batches))
  speed = [l for l in capsys.readouterr().out.splitlines() if "views/s" in l]
  assert len(speed) == 1
  if num_batches == 1:
    assert "views/s after the first batch: n/a" in speed[0] and out["views_per_sec"] is None
  else:
    assert out["views_per_sec"] > 0 and "n/a" not in speed[0]


def test_confusion_png_title_fits_on_few_classes(tmp_path):
  cm = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 6]])
  title = "test[:10%]: top-1 77.78%, top-5 100.00% (18 examples, 10 views (5 clips x 2 crops))"
  path = tmp_path / "cm.png"
  report.save_confusion_png(str(path), cm, ["blue", "green", "red"], title)
  img = np.asarray(Image.open(path).convert("L"))
  # Nothing is drawn on the image's outer frame: a cut-off title would run through its left / right edges.
  frame = np.concatenate([img[:3].ravel(), img[-3:].ravel(), img[:, :3].ravel(), img[:, -3:].ravel()])
  assert frame.min() > 250, "something (the title?) is cut off at the image's edge"
  # The title is there: dark pixels above the matrix.
  assert (img[: img.shape[0] // 10] < 128).any()


# ------------------------------------------------------------------------------------------ demo
def test_demo_summary_labels_the_loss_it_prints():
  ev = dict(top1=0.5, top5=0.9, num_views=2, num_clips=2, num_crops=1)
  text = demo_lib.format_demo(dict(wall_s=12.0, pretrain=dict(steps=40, final_loss=0.1234, wall_s=5.0),
                                   finetune=dict(eval=ev), scratch=dict(eval=ev)))
  assert "loss at the last step 0.1234" in text
  assert "final loss" not in text  # ambiguous next to the console's window means
