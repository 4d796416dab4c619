"""End to end on a generated AVA-like dataset: convert (the CLI's AVA mode) -> fine-tune the tiny detector a few
steps (configs/ava_detection.py:S,local) -> frame-level mAP on the detected boxes, per class and mean."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskfeat_jax import config as config_lib
from maskfeat_jax import run
from maskfeat_jax.checkpoints import transfer
from maskfeat_jax.eval import ava_map
from maskfeat_jax.models import factory
from maskfeat_jax.models import layouts
from maskfeat_jax.train import losses

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12


@pytest.mark.slow
def test_ava_tiny_detection_end_to_end(tmp_path):
  out = tmp_path / "data"
  cmd = [sys.executable, "-m", "maskfeat_jax.data.build_shards", "--mode=ava", f"--ava_synthetic={tmp_path / 'raw'}",
         f"--output_dir={out}", "--name=ava_synthetic", "--num_frames=16", "--sampling_rate=2", "--short_side=80",
         "--noprogress"]
  done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "train: 16 keyframes in 2 shards, 1 skipped" in done.stdout  # train_broken is reported, not fatal
  assert "val: 7 keyframes in 1 shards, 1 skipped" in done.stdout  # val_missing; one timestamp excluded

  c = config_lib.load_config("configs/ava_detection.py:S,local", lock=False)
  c.data.data_dir = str(out)
  c.total_steps = STEPS
  c.log_every_steps = 4
  c.compilation_cache_dir = ""
  c.log.tensorboard = False
  c.lock()
  workdir = tmp_path / "work"
  result = run.run(c, str(workdir))
  assert result.status == "done" and result.step == STEPS
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl") if '"loss"' in line]
  assert rows[-1]["loss"] < rows[0]["loss"]  # the BCE goes down on the ground-truth boxes

  ev = result.eval
  report = json.loads(open(workdir / "eval_val" / "ava_map.json").read())
  aps = {r["name"]: r["AP"] for r in report["per_class"]}
  print("tiny AVA-like run:", {k: round(v, 4) for k, v in aps.items()}, "mAP", round(report["mAP@0.5IOU"], 4))
  assert set(aps) == {"red person", "green person", "moving"} and all(0.0 <= v <= 1.0 for v in aps.values())
  assert report["mAP@0.5IOU"] == pytest.approx(np.mean(list(aps.values()))) == pytest.approx(ev["mAP"])
  assert ev["boxes_scored"] == report["boxes_scored"] > 0 and ev["keyframes"] == 7

  # mode=eval of the trained run (restored from its checkpoint) gives the same mAP as the end of training.
  ce = config_lib.load_config("configs/ava_detection.py:S,local", lock=False)
  ce.mode, ce.init_from = "eval", str(workdir)
  ce.data.data_dir, ce.compilation_cache_dir, ce.log.tensorboard = str(out), "", False
  ce.lock()
  assert run.run(ce, str(tmp_path / "eval"))["mAP"] == pytest.approx(ev["mAP"], abs=1e-6)
  assert (tmp_path / "eval" / "eval_val" / "ava_map.json").is_file()

  # The same AP from the written detections against the official-format ground-truth CSV and exclusions
  # (the records' ground truth and the converter's exclusion must agree with the files).
  raw = tmp_path / "raw" / "annotations"
  label_map = ava_map.read_labelmap(str(raw / "ava_action_list_v2.2_for_activitynet_2019.pbtxt"))
  ids = [i for i, _ in label_map]
  gt = ava_map.read_boxes_csv(str(raw / "ava_val_v2.2.csv"), class_whitelist=ids)
  gt = {k: v for k, v in gt.items() if not k.startswith("val_missing")}  # its movie was never converted
  det = ava_map.read_boxes_csv(str(workdir / "eval_val" / "detections.csv"))
  again = ava_map.evaluate(gt, det, ids, ava_map.read_exclusions(str(raw / "ava_val_excluded_timestamps_v2.2.csv")))
  for cid, name in label_map:
    assert again["per_class"][cid] == pytest.approx(aps[name], abs=2e-3)  # detections.csv rounds to 3 decimals


@pytest.mark.parametrize("arg", ["S", "L", "S,local", "L,local"])
def test_ava_configs_validate(arg):
  c = config_lib.load_config(f"configs/ava_detection.py:{arg}")
  config_lib.validate(c)
  assert c.model.type == "detection"
  assert c.model.num_classes == (3 if "local" in arg else 60) and c.detection.score_thresh == 0.8
  assert config_lib.step_keys(c) == ("video", "boxes", "box_mask", "box_labels")


def test_roi_scale_factor_must_match_the_feature_stride():
  c = config_lib.load_config("configs/ava_detection.py:S,local", lock=False)
  c.model.roi_scale_factor = 32
  with pytest.raises(ValueError, match=r"config.model.roi_scale_factor=32 .* set config.model.roi_scale_factor=16"):
    config_lib.validate(c)


def test_masked_bce_ignores_padded_boxes():
  logits = jnp.asarray([[[2.0, -1.0], [50.0, -50.0]]])
  targets = jnp.asarray([[[1, 0], [0, 1]]], jnp.uint8)  # the padded box would cost ~50 per class
  loss = losses.masked_sigmoid_bce(logits, targets, jnp.asarray([[True, False]]))
  want = np.mean([np.log1p(np.exp(-2.0)), np.log1p(np.exp(-1.0))])
  assert float(loss) == pytest.approx(want, rel=1e-6)


def test_maskfeat_pretraining_params_initialise_the_detector():
  """config.init_from of a MaskFeat pre-training (ours or the official .pyth) fills the detector's backbone."""
  pt = config_lib.base_config()
  pt.model = layouts.get_model_config("maskfeat_mvit_tiny")
  det = config_lib.load_config("configs/ava_detection.py:S,local", lock=False)
  zeros = lambda tree, v: jax.tree.map(lambda s: np.full(s.shape, v, s.dtype), tree)  # noqa: E731
  pt_params = zeros(factory.param_shapes(pt), 1.0)
  det_params = zeros(factory.param_shapes(det), 0.0)
  merged = transfer.pretrain_to_finetune(pt_params, det_params)
  assert np.all(merged["blocks_4"]["mlp"]["fc1"]["kernel"] == 1.0)
  assert np.all(merged["head"]["projection"]["kernel"] == 0.0) and merged["head"]["projection"]["kernel"].shape[-1] == 3
