#!/usr/bin/env bash
# Installs maskfeat_jax with the TPU build of JAX on ONE Cloud TPU VM worker.
# Run on every worker, e.g. through launch/tpu_pod.sh (which copies this repo there first):
#   bash launch/tpu_setup.sh [REPO_DIR]
# Environment: none required. REPO_DIR defaults to ~/maskfeat_jax.
set -euo pipefail

REPO_DIR="${1:-$HOME/maskfeat_jax}"
cd "$REPO_DIR"
python3 -m pip install --upgrade pip
# The package first (CPU jax as declared in setup.py), then the TPU runtime on top of it.
python3 -m pip install -e .
python3 -m pip install -U "jax[tpu]"
# Each worker sees only its own chips until jax.distributed is initialised: 4 on a v4/v5p host.
python3 -c 'import jax; print(jax.__version__, jax.local_devices())'
