#!/usr/bin/env bash
# Runs a maskfeat_jax job on every worker of a multi-host Cloud TPU VM slice (one process per host).
#
# Usage:
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [extra main.py flags...]
#   launch/tpu_pod.sh my-v4-64 us-central2-b configs/k400_pretrain.py:S gs://my-bucket/runs/s_pt
# Environment read here:
#   PROJECT        GCP project (default: gcloud's configured project)
#   SETUP=0        skip copying the repo and running launch/tpu_setup.sh on the workers
# Environment set on the workers:
#   MASKFEAT_DISTRIBUTED=1  main.py calls jax.distributed.initialize(); on TPU VMs JAX detects the
#                           coordinator, process count and process id itself (TPU metadata).
# WORKDIR must be a path every worker can write (Orbax writes checkpoints from all hosts): a gs:// bucket,
# written directly (maskfeat_jax/paths.py; not a gcsfuse mount, where Orbax falls back to rename commits,
# which are not atomic on standard buckets), or a shared filesystem.
set -euo pipefail

if [[ $# -lt 4 ]]; then
  sed -n '2,15p' "$0"; exit 2
fi
TPU_NAME="$1"; ZONE="$2"; CONFIG="$3"; WORKDIR="$4"; shift 4
EXTRA_FLAGS="$*"
PROJECT_FLAG=()
if [[ -n "${PROJECT:-}" ]]; then PROJECT_FLAG=(--project "$PROJECT"); fi
REPO_ROOT="$(cd "$(dirname "$0")/.." && pwd)"
REMOTE_DIR='~/maskfeat_jax'

ssh_all() {
  gcloud alpha compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" "${PROJECT_FLAG[@]}" \
    --worker=all --command "$1"
}

if [[ "${SETUP:-1}" != "0" ]]; then
  # Same code on every host: copy this checkout (without build/venv clutter), then install.
  tar -C "$REPO_ROOT" --exclude=.git --exclude='*.egg-info' --exclude=workdir -czf /tmp/maskfeat_jax.tgz .
  gcloud alpha compute tpus tpu-vm scp /tmp/maskfeat_jax.tgz "$TPU_NAME":/tmp/maskfeat_jax.tgz \
    --zone "$ZONE" "${PROJECT_FLAG[@]}" --worker=all
  ssh_all "mkdir -p $REMOTE_DIR && tar -xzf /tmp/maskfeat_jax.tgz -C $REMOTE_DIR && bash $REMOTE_DIR/launch/tpu_setup.sh $REMOTE_DIR"
fi

# All workers start the same command; they meet in jax.distributed.initialize().
ssh_all "cd $REMOTE_DIR && MASKFEAT_DISTRIBUTED=1 python3 -m maskfeat_jax.main \
  --config=$CONFIG --workdir=$WORKDIR $EXTRA_FLAGS"
