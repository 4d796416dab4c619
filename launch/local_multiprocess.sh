#!/usr/bin/env bash
# Starts N local CPU processes that form one multi-process JAX job: a test of the multi-host code paths
# (sharded data loading, cross-process checkpoints, metrics from process 0) on a single machine.
#
#   launch/local_multiprocess.sh N CONFIG WORKDIR [extra main.py flags...]
#   launch/local_multiprocess.sh 2 configs/demo.py /tmp/mp_demo --config.total_steps=4
# Environment read here:
#   PORT (default 12355)      coordinator port on localhost
#   DEVICES_PER_PROCESS (1)   fake CPU devices per process (--xla_force_host_platform_device_count)
# Environment set for process i (0-based):
#   MASKFEAT_DISTRIBUTED=1                      main.py calls jax.distributed.initialize()
#   JAX_COORDINATOR_ADDRESS=localhost:$PORT     read by jax.distributed itself
#   JAX_NUM_PROCESSES=N, JAX_PROCESS_ID=i       the process count and this process's id
#   MASKFEAT_COORDINATOR / MASKFEAT_NUM_PROCESSES / MASKFEAT_PROCESS_ID
#                                               the same three values under the names main.py passes
#                                               to jax.distributed.initialize() explicitly
#   JAX_PLATFORMS=cpu
# Logs go to WORKDIR/logs/process_<i>.log; the script fails if any process fails.
set -euo pipefail

if [[ $# -lt 3 ]]; then
  sed -n '2,20p' "$0"; exit 2
fi
NUM="$1"; CONFIG="$2"; WORKDIR="$3"; shift 3
PORT="${PORT:-12355}"
DEVICES="${DEVICES_PER_PROCESS:-1}"
mkdir -p "$WORKDIR/logs"

pids=()
for ((i = 0; i < NUM; i++)); do
  env MASKFEAT_DISTRIBUTED=1 JAX_PLATFORMS=cpu \
    JAX_COORDINATOR_ADDRESS="localhost:$PORT" JAX_NUM_PROCESSES="$NUM" JAX_PROCESS_ID="$i" \
    MASKFEAT_COORDINATOR="localhost:$PORT" MASKFEAT_NUM_PROCESSES="$NUM" MASKFEAT_PROCESS_ID="$i" \
    XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$DEVICES" \
    python -m maskfeat_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@" \
    > "$WORKDIR/logs/process_$i.log" 2>&1 &
  pids+=("$!")
done

# Wait for all; if one fails, stop the others (they would block in collectives waiting for it).
status=0
remaining=${#pids[@]}
while ((remaining > 0)); do
  if ! wait -n "${pids[@]}"; then
    status=1
    echo "a process failed; stopping the others (logs: $WORKDIR/logs/)" >&2
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  fi
  remaining=$((remaining - 1))
done
exit "$status"
