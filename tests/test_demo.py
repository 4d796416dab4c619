"""The demo's phases (configs/demo.py through maskfeat_jax.demo.phase_config) and its table; no compilation.
The whole path runs in tests/test_main.py::test_demo_tiny_smoke."""
import pytest

from maskfeat_jax import config as config_lib
from maskfeat_jax import demo


def test_default_protocol_pretrains_on_unlabeled_and_finetunes_on_few_balanced_labels():
  c = config_lib.load_config("configs/demo.py")
  pt, ft = demo.phase_config(c, "pretrain"), demo.phase_config(c, "finetune", init_from="/x")
  probe = demo.phase_config(c, "probe")
  assert c.data.name == "synthetic_shapes" and demo.targets(c) == ("hog",)
  assert (pt.mode, pt.data.train_split, pt.target.type, pt.model.type) == ("pretrain", "unlabeled", "hog", "maskfeat")
  assert (ft.mode, ft.data.train_split, ft.init_from, ft.model.type) == ("finetune", "train[:40]", "/x", "classifier")
  assert ft.data.eval_split == "test" and ft.model.input_size == pt.model.input_size == c.model.input_size
  # The probe: the pre-training model, trained on the same few labels, tested on `test`; '' = random init.
  assert (probe.mode, probe.init_from, probe.model.name, probe.viz_every_steps) == ("probe", "", pt.model.name, 0)
  assert (probe.probe.train_split, probe.probe.eval_split) == ("train", "test")
  scratch = demo.phase_config(c, "scratch", init_from="/x")  # the baseline: fine-tuning without init_from
  assert (scratch.mode, scratch.init_from, scratch.total_steps) == ("finetune", "", ft.total_steps)
  for p in (pt, ft, probe):
    config_lib.validate(p)


def test_ablation_pretrains_hog_and_pixel_with_the_same_budget():
  c = config_lib.load_config("configs/demo.py:ablation")
  assert demo.targets(c) == ("hog", "pixel")
  hog, pixel = (demo.phase_config(c, "pretrain", target=t) for t in demo.targets(c))
  assert (hog.target.type, pixel.target.type) == ("hog", "pixel")
  assert (hog.viz_every_steps, pixel.viz_every_steps) == (500, 0)  # the pictures draw HOG only
  assert hog.total_steps == pixel.total_steps and hog.optim == pixel.optim and hog.data == pixel.data
  config_lib.validate(pixel)
  c = config_lib.load_config("configs/demo.py:ablation", lock=False)
  c.demo.targets = ("hog", "hog")
  with pytest.raises(ValueError, match=r"config.demo.targets=\('hog', 'hog'\)"):
    demo.targets(c)
  with pytest.raises(ValueError, match="unknown variant 'abl'"):
    config_lib.load_config("configs/demo.py:abl")


def _ev(top1):
  return dict(top1=top1, top5=1.0, num_views=2, num_clips=2, num_crops=1)


def test_table_has_every_init_with_its_probe():
  res = dict(wall_s=300.0, labelled_split="train[:80]",
             pretrain=dict(target="hog", steps=40, final_loss=0.5, wall_s=5.0, clips_per_sec=88.0),
             pretrain_pixel=dict(target="pixel", steps=40, final_loss=0.7, wall_s=6.0, clips_per_sec=90.0),
             finetune=dict(eval=_ev(0.625)), finetune_pixel=dict(eval=_ev(0.5)), scratch=dict(eval=_ev(0.25)),
             probe=dict(hog=dict(top1=0.55), pixel=dict(top1=0.4), random_init=dict(top1=0.2)))
  lines = demo.format_demo(res).splitlines()
  assert "fine-tuned on train[:80]" in lines[1]
  row = {ln.split("  ")[0]: ln for ln in lines}
  assert row["MaskFeat pre-training"].split()[2:4] == ["62.5%", "100.0%"]
  assert row["MaskFeat pre-training"].split()[-1] == "55.0%"
  assert row["MaskFeat pre-training (pixel)"].split()[3] == "50.0%" and row["MaskFeat pre-training (pixel)"].split()[-1] == "40.0%"
  assert row["scratch (same budget)"].split()[3] == "25.0%" and row["scratch (same budget)"].split()[-1] == "20.0%"
  assert "pre-training (pixel): 40 steps, loss at the last step 0.7000, 6s, 90 clips/s" in lines
