"""torchvision `mvit_v2_s` -> our `mvitv2_s_16x4`: key table, logits parity, errors, CLI (the torch extra).

Skipped only where torch / torchvision are not importable (`pip install -e ".[torch]"`, README).
"""
import jax
import numpy as np
import pytest

from maskfeat_jax.checkpoints import slowfast
from maskfeat_jax.checkpoints import torchvision as tv_ckpt
from maskfeat_jax.checkpoints.init import read_params
from maskfeat_jax.models import factory

try:
  TORCHVISION = tv_ckpt.import_torchvision()
  import torch  # pylint: disable=g-import-not-at-top
except ImportError as e:  # the optional torch extra is not installed
  pytest.skip(f"torch / torchvision not importable: {e}", allow_module_level=True)

# mvit_v2_s fixes its input size (16x224², no constructor argument changes it), so parity runs at that
# size, once (batch 1).
SIZE = (16, 224, 224)


def _random_torchvision(seed: int):
  """torchvision's mvit_v2_s with seeded random weights, every parameter perturbed so that no two
  LayerNorms or biases are equal (its init sets them all to 1 / 0, which would hide a swapped key)."""
  torch.manual_seed(seed)
  model = TORCHVISION.models.video.mvit_v2_s()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model.eval()


def _state(model) -> dict:
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def model_state():
  model = _random_torchvision(0)
  state = _state(model)
  return model, state, tv_ckpt.torchvision_config(state)


def test_table_covers_torchvision_state_dict_exactly(model_state):
  # Our layout, with the input size and classes read from the state dict, has exactly torchvision's keys
  # and shapes.
  _, state, config = model_state
  want = {k: tuple(v.shape) for k, v in state.items()}
  assert tuple(config.model.input_size) == SIZE and config.model.num_classes == 400
  got = {k: tuple(s) for k, s in tv_ckpt.expected_state_shapes(config).items()}
  assert got == want


def test_logits_equal_torchvision(model_state):
  model, state, config = model_state
  variables = {"params": tv_ckpt.convert_torchvision_state_dict(state, config)}
  x = np.random.default_rng(0).uniform(0, 255, (1,) + SIZE + (3,)).astype(np.float32)
  ours = np.asarray(jax.jit(lambda v, x: factory.build_model(config).apply(v, x))(variables, x))
  # torchvision takes normalised NCTHW input: the same normalisation our model applies to raw pixels.
  m = config.model
  x_norm = ((x - np.float32(255) * np.asarray(m.pixel_mean, np.float32))
            / (np.float32(255) * np.asarray(m.pixel_std, np.float32)))
  with torch.inference_mode():
    theirs = model(torch.from_numpy(x_norm.transpose(0, 4, 1, 2, 3).copy())).numpy()
  assert ours.shape == theirs.shape == (1, 400)
  assert np.std(theirs) > 0.1  # a non-degenerate function of the input
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


def test_export_round_trip_loads_strictly(model_state):
  model, state, config = model_state
  params = tv_ckpt.convert_torchvision_state_dict(state, config)
  back = tv_ckpt.export_torchvision(config, params)
  assert set(back) == set(state)
  for k, v in state.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)
  fresh = TORCHVISION.models.video.mvit_v2_s()
  fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)


def _error(state, config) -> str:
  with pytest.raises(ValueError) as err:
    tv_ckpt.convert_torchvision_state_dict(state, config)
  msg = str(err.value)
  assert "\n" not in msg
  return msg


def test_bad_state_dict_error_names_keys_and_shapes(model_state):
  _, state, config = model_state
  state = dict(state, **{"blocks.1.attn.qkv.weight": np.zeros((576, 95), np.float32),
                         "blocks.2.attn.extra.weight": np.zeros((3,), np.float32)})
  del state["blocks.3.attn.pool_k.pool.weight"]
  msg = _error(state, config)
  assert "missing blocks.3.attn.pool_k.pool.weight (96, 1, 3, 3, 3)" in msg, msg
  assert "blocks.1.attn.qkv.weight has shape (576, 95), the model expects (576, 96)" in msg, msg
  assert "unknown key blocks.2.attn.extra.weight (3,)" in msg, msg
  # A wrong shape alone (every key known) goes through the SlowFast converter and is still named so.
  state = dict(model_state[1], **{"norm.weight": np.zeros((767,), np.float32)})
  assert _error(state, config).endswith("norm.weight has shape (767,), the model expects (768,)")


def test_cli_writes_an_init_from_workdir(model_state, tmp_path, capsys):
  model, state, config = model_state
  path = tmp_path / "mvit_v2_s_random.pth"
  torch.save(model.state_dict(), path)
  tv_ckpt.main(["--input", str(path), "--output", str(tmp_path / "out")])
  assert "--config.init_from=" in capsys.readouterr().out
  restored_config, restored = slowfast.restore_converted(tmp_path / "out")
  assert restored_config.model.to_dict() == config.model.to_dict()
  want = tv_ckpt.convert_torchvision_state_dict(state, config)
  got = read_params(str(tmp_path / "out"))
  np.testing.assert_array_equal(got["blocks_1"]["attn"]["qkv"]["kernel"], want["blocks_1"]["attn"]["qkv"]["kernel"])
  flat_got, flat_want = slowfast._flatten(restored["params"]), slowfast._flatten(want)
  assert flat_got.keys() == flat_want.keys()
  for k in flat_want:
    np.testing.assert_array_equal(np.asarray(flat_got[k]), flat_want[k], err_msg=str(k))


def test_cli_error_is_one_line(model_state, tmp_path):
  model, _, _ = model_state
  state = {k: v for k, v in model.state_dict().items() if k != "norm.bias"}
  path = tmp_path / "broken.pth"
  torch.save(state, path)
  with pytest.raises(SystemExit) as err:
    tv_ckpt.main(["--input", str(path), "--output", str(tmp_path / "out")])
  msg = str(err.value)
  assert "\n" not in msg and str(path) in msg and "missing norm.bias (768,)" in msg, msg
