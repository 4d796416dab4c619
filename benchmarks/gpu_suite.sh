#!/usr/bin/env bash
# One GPU session's checks, in order of value: parity on the accelerator (fp32 matmuls at full
# precision, so the golden tolerances apply), the HOG target timing, then the MViT-S throughput table.
# Usage: bash benchmarks/gpu_suite.sh OUTDIR
set -u
out=${1:-/tmp/gpu_suite}; mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" | tee -a "$out/gpu.txt"
JAX_DEFAULT_MATMUL_PRECISION=highest timeout -k 10 150 python3 -m pytest -q -x \
  tests/test_targets.py tests/models/test_mvit.py -k "parity or hog or golden" 2>&1 | tail -15 | tee "$out/parity.txt"
timeout -k 10 90 python3 benchmarks/hog_bench.py 2>&1 | tee "$out/hog.txt"
timeout -k 10 330 python3 benchmarks/model_bench.py --gpu --skip_ft_flops 2>&1 | tee "$out/model_gpu.txt"
