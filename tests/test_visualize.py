"""maskfeat_jax.visualize: glyphs (angle convention of targets.hog), mask overlay, token layout, the CLI and
the pre-training hook."""
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from maskfeat_jax import targets
from maskfeat_jax import visualize as vis


# ------------------------------------------------------------------------------------------------- glyphs
@pytest.mark.parametrize("b", range(9))
def test_one_bin_draws_one_bar_at_its_angle(b):
  cs, nbins = 16, 9
  cells = np.zeros((3, 3, nbins), np.float32)
  cells[1, 2, b] = 0.7
  img = vis.hog_glyphs(cells, cs)
  assert img.shape == (48, 48) and img.dtype == np.float32
  rows, cols = np.nonzero(img)
  np.testing.assert_allclose(img[rows, cols], 1.0)  # normalised by the max
  # Nothing outside cell (1, 2).
  assert rows.min() >= cs and rows.max() < 2 * cs and cols.min() >= 2 * cs and cols.max() < 3 * cs
  # Every bright pixel on the line through the cell centre along the edge direction (cos t, -sin t) (col, row).
  theta = (b + 0.5) * math.pi / nbins
  centre_r, centre_c = cs + (cs - 1) / 2, 2 * cs + (cs - 1) / 2
  dr, dc = rows - centre_r, cols - centre_c
  along = dc * math.cos(theta) - dr * math.sin(theta)
  across = dc * math.sin(theta) + dr * math.cos(theta)
  assert np.abs(across).max() <= 0.75, (b, np.abs(across).max())
  assert along.max() - along.min() >= 0.85 * (cs - 1)  # spans the cell
  assert len(rows) >= cs - 1


def test_glyph_is_along_the_edge_of_a_real_gradient():
  # A vertical edge (dark left, bright right): gradient along the columns -> theta 90 deg (bin 4) -> a
  # vertical bar; a horizontal edge -> bin 0 -> a (nearly) horizontal bar. This pins the targets.hog
  # convention (gx = left - right, gy = top - bottom, theta = atan2(gx, gy)).
  img = np.zeros((32, 32, 3), np.uint8)
  img[:, 16:] = 200
  cells = vis.frame_hog(img)
  assert cells.shape == (4, 4, 9)
  assert (cells[:, 1].argmax(-1) == 4).all() and (cells[:, 2].argmax(-1) == 4).all()
  assert (cells[:, 0] == 0).all()  # flat cells: no gradient, no bars
  one = np.zeros_like(cells)
  one[0, 1] = cells[0, 1]
  g = vis.hog_glyphs(one, 8)
  assert len(set(np.nonzero(g == 1.0)[1])) == 1  # the peak bar is one column: vertical
  cells_h = vis.frame_hog(np.ascontiguousarray(img.transpose(1, 0, 2)))
  assert (cells_h[1, :].argmax(-1) == 0).all()
  one = np.zeros_like(cells_h)
  one[1, 0] = cells_h[1, 0]
  rows, cols = np.nonzero(vis.hog_glyphs(one, 8) == 1.0)
  assert cols.max() - cols.min() >= 6 and rows.max() - rows.min() <= 2  # horizontal


def test_oblique_stripes_peak_in_their_bin():
  theta = (2 + 0.5) * math.pi / 9  # bin 2; the gradient points along (col, row) = (sin t, cos t)
  r, c = np.mgrid[0:64, 0:64]
  v = 127 + 100 * np.sin(2 * math.pi * (c * math.sin(theta) + r * math.cos(theta)) / 12)
  img = np.repeat(np.rint(v).astype(np.uint8)[..., None], 3, -1)
  peaks = vis.frame_hog(img)[1:-1, 1:-1].argmax(-1)
  assert (peaks == 2).mean() > 0.9


def test_token_hog_cells_inverts_hog_token_targets():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
  tok = np.asarray(targets.hog_token_targets(x[None], feature_stride=16))[0]  # [2, 3, 108]
  cells = np.asarray(targets.hog(x)).sum(-2)  # [4, 6, 9]
  np.testing.assert_allclose(vis.frame_hog(x), cells, rtol=1e-6)
  for i in range(2):
    for j in range(3):
      np.testing.assert_allclose(vis.token_hog_cells(tok[i, j]), cells[2 * i:2 * i + 2, 2 * j:2 * j + 2],
                                 rtol=1e-5, atol=1e-6)
  # u = 1 (feature stride = cell size) and a batch of tokens.
  tok1 = np.asarray(targets.hog_token_targets(x[None], feature_stride=8))[0]
  np.testing.assert_allclose(vis.token_hog_cells(tok1, cells_per_token=1)[..., 0, 0, :], cells, rtol=1e-5,
                             atol=1e-6)


# --------------------------------------------------------------------------------------------------- masks
def test_mask_overlay_shades_exactly_the_masked_units():
  rng = np.random.default_rng(1)
  frames = rng.integers(0, 200, (8, 32, 48, 3), dtype=np.uint8)  # red < 200: blending always changes it
  mask = np.zeros((4, 2, 3), np.uint8)
  mask[0, 0, 0] = mask[1, 1, 2] = mask[3, :, 1] = 1
  out = vis.mask_overlay(frames, mask, alpha=0.5)
  assert out.dtype == np.uint8 and out.shape == frames.shape
  expected = np.zeros((8, 32, 48), bool)
  for t, y, x in zip(*np.nonzero(mask)):
    expected[2 * t:2 * t + 2, 16 * y:16 * y + 16, 16 * x:16 * x + 16] = True
  changed = (out != frames).any(-1)
  np.testing.assert_array_equal(changed, expected)
  np.testing.assert_array_equal(out[~expected], frames[~expected])  # bitwise
  want = np.rint(0.5 * frames[expected].astype(np.float32) + 0.5 * np.array([255, 0, 0], np.float32))
  np.testing.assert_array_equal(out[expected], want.astype(np.uint8))
  with pytest.raises(ValueError, match="does not divide"):
    vis.mask_overlay(frames, np.zeros((3, 2, 3)))


def test_prediction_figure_and_curves(tmp_path):
  rng = np.random.default_rng(2)
  frames = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  target = np.abs(rng.normal(size=(2 * 2 * 2, 108))).astype(np.float32)
  pred = target + 0.1 * rng.normal(size=target.shape).astype(np.float32)
  token_mask = np.array([1, 0, 0, 1, 1, 1, 0, 0], bool)
  mask = token_mask.reshape(2, 2, 2).astype(np.uint8)
  fig = vis.prediction_figure(frames, mask, target, pred, token_mask)
  path = vis.save_png(fig, str(tmp_path / "p.png"))
  assert Image.open(path).format == "PNG"
  with pytest.raises(ValueError, match="tokens"):
    vis.prediction_figure(frames, mask, target[:5], pred[:5], token_mask[:5])
  rows = [{"step": s, "time": 0, "loss": 1.0 / s, "lr": 1e-3, "grad_norm": 0.5, "clips_per_sec": 100.0}
          for s in (10, 20, 30)]
  rows += [{"step": 20, "time": 0, "eval/top1": 0.3}, {"step": 30, "time": 0, "final": True, "eval/top1": 0.4}]
  metrics = tmp_path / "metrics.jsonl"
  metrics.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4')  # a torn last line
  train_rows, eval_rows = vis.read_metrics(str(metrics))
  assert len(train_rows) == 3 and len(eval_rows) == 2
  fig = vis.training_curves(str(metrics))
  titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
  assert titles == ["loss", "learning rate", "grad norm (before clip)", "clips / s", "eval top-1"]
  gif = vis.save_gif(frames, str(tmp_path / "c.gif"), fps=4)
  im = Image.open(gif)
  assert im.format == "GIF" and im.n_frames == 4 and im.info.get("loop") == 0


# ------------------------------------------------------------------------------------- CLI and the hook
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """A 3-step tiny MaskFeat pre-training with pictures every 2 steps."""
  from maskfeat_jax import config as config_lib
  from maskfeat_jax import demo
  from maskfeat_jax import run as run_lib
  c = demo.phase_config(config_lib.load_config("configs/demo.py:tiny"), "pretrain")
  c.viz_every_steps = 2
  c.log.tensorboard = False
  workdir = str(tmp_path_factory.mktemp("viz") / "pretrain")
  result = run_lib.run(c, workdir)
  assert result.status == "done" and result.step == 3
  return workdir


@pytest.mark.slow
def test_hook_writes_prediction_pictures(tiny_run):
  pictures = os.path.join(tiny_run, "pictures")
  assert sorted(os.listdir(pictures)) == ["curves.png", "prediction_2.png", "prediction_3.png"]
  for name in os.listdir(pictures):
    assert Image.open(os.path.join(pictures, name)).format == "PNG"


def _video(path):
  import av
  rng = np.random.default_rng(0)
  with av.open(path, "w") as c:
    s = c.add_stream("mpeg4", rate=10)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    for i in range(24):
      f = np.zeros((48, 64, 3), np.uint8)
      f[10:30, 2 * i:2 * i + 16] = rng.integers(100, 255, 3)
      for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  return path


@pytest.mark.slow
@pytest.mark.parametrize("source", ["dataset", "video"])
def test_cli_writes_every_picture(tiny_run, tmp_path, source):
  out = str(tmp_path / "out")
  args = ["--workdir", tiny_run, "--out", out]
  args += ["--split", "test", "--index", "3"] if source == "dataset" else \
      ["--video", _video(str(tmp_path / "v.mp4")), "--checkpoint", "3"]
  assert vis.main(args) == 0
  want = {"hog.png": "PNG", "mask.png": "PNG", "prediction.png": "PNG", "curves.png": "PNG", "clip.gif": "GIF"}
  assert sorted(os.listdir(out)) == sorted(want)
  for name, fmt in want.items():
    assert Image.open(os.path.join(out, name)).format == fmt


def test_cli_errors_name_the_path(tmp_path):
  with pytest.raises(SystemExit, match=f"ERROR: --workdir={tmp_path}/nope: no such directory"):
    vis.main(["--workdir", str(tmp_path / "nope"), "--split", "test", "--out", str(tmp_path / "o")])
  with pytest.raises(SystemExit, match=f"ERROR: {tmp_path}/config.json: not found"):
    vis.main(["--workdir", str(tmp_path), "--split", "test", "--out", str(tmp_path / "o")])
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(SystemExit, match=f"--checkpoint=7: {tmp_path}/checkpoints/7 does not exist"):
    vis.main(["--workdir", str(tmp_path), "--checkpoint", "7", "--video", "x.mp4", "--out", str(tmp_path / "o")])


def test_demo_pretraining_draws_pictures():
  from maskfeat_jax import config as config_lib
  from maskfeat_jax import demo
  from maskfeat_jax import run as run_lib
  c = config_lib.load_config("configs/demo.py")
  pt, ft = demo.phase_config(c, "pretrain"), demo.phase_config(c, "finetune")
  assert (pt.viz_every_steps, ft.viz_every_steps, config_lib.base_config().viz_every_steps) == (500, 0, 0)
  config_lib.validate(pt)
  assert run_lib.splits_read(pt)["config.data.eval_split"] == "test"  # the pictures' clip, checked up front
