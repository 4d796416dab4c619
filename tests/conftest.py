"""Shared test setup.

- Absl flags are parsed once (Grain's multiprocessing reads them).
- `golden_dir` points at the official reference outputs in ../shared/golden (read-only in CI).
"""
import os
import pathlib

import pytest
from absl import flags

REPO = pathlib.Path(__file__).resolve().parents[1]
GOLDEN = pathlib.Path(os.environ.get("MASKFEAT_GOLDEN_DIR", REPO.parent / "shared" / "golden"))

if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def golden_dir() -> pathlib.Path:
  if not GOLDEN.is_dir():
    raise FileNotFoundError(
        f"Golden reference outputs not found at {GOLDEN}; set MASKFEAT_GOLDEN_DIR to ../shared/golden.")
  return GOLDEN
