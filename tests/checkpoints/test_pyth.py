"""Damaged `.pyth` files: the reader says the file is truncated or corrupt (with its size), and suggests
torch only for a genuinely legacy (non-zip pickle) torch.save file."""
import importlib.util

import numpy as np
import pytest

from maskfeat_jax.checkpoints import pyth
from maskfeat_jax.checkpoints import slowfast


def _check_corrupt_message(err: Exception, size: int) -> None:
  msg = str(err)
  assert "truncated or corrupt" in msg
  assert f"({size} bytes)" in msg
  assert "torch" not in msg.replace("torch zip", "")  # no `pip install torch` advice: torch can't help


@pytest.mark.parametrize("read", [pyth.read_pyth, slowfast.load_official_checkpoint],
                         ids=["read_pyth", "load_official_checkpoint"])
def test_truncated_pyth_says_truncated_with_size(golden_dir, tmp_path, read):
  data = (golden_dir / "mvit_tiny_ft.pyth").read_bytes()
  path = tmp_path / "mvit_tiny_ft.pyth"
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError) as info:
    read(path)
  _check_corrupt_message(info.value, len(data) // 2)


@pytest.mark.parametrize("read", [pyth.read_pyth, slowfast.load_official_checkpoint],
                         ids=["read_pyth", "load_official_checkpoint"])
def test_random_bytes_say_corrupt_with_size(tmp_path, read):
  data = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
  assert data[:1] != b"\x80" and data[:2] != b"PK"  # neither a pickle nor a zip by construction
  path = tmp_path / "random.pyth"
  path.write_bytes(data)
  with pytest.raises(ValueError) as info:
    read(path)
  _check_corrupt_message(info.value, 4096)


def test_damaged_zip_member_says_corrupt(golden_dir, tmp_path):
  # The zip directory is intact but a tensor's bytes are overwritten: the CRC check catches it.
  data = bytearray((golden_dir / "mvit_tiny_ft.pyth").read_bytes())
  mid = len(data) // 2
  data[mid:mid + 64] = bytes(64)
  path = tmp_path / "damaged.pyth"
  path.write_bytes(bytes(data))
  with pytest.raises(ValueError) as info:
    pyth.read_pyth(path)
  _check_corrupt_message(info.value, len(data))


def test_legacy_pickle_suggests_torch(tmp_path):
  path = tmp_path / "legacy.pyth"
  path.write_bytes(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.")  # torch<1.6: pickle protocol 2 + magic
  with pytest.raises(pyth.LegacyFormatError, match=r"legacy \(non-zip\) torch.save file.*pip install"):
    pyth.read_pyth(path)
  # Without torch installed, the checkpoint loader passes the same advice on.
  if importlib.util.find_spec("torch") is None:
    with pytest.raises(pyth.LegacyFormatError, match="pip install"):
      slowfast.load_official_checkpoint(path)
