#!/usr/bin/env bash
# Starts N local CPU processes that form one multi-process JAX job: a test of the multi-host code paths
# (sharded data loading, cross-process checkpoints, metrics from process 0) on a single machine.
# tests/train/test_multiprocess.py runs this script.
#
#   launch/local_multiprocess.sh N CONFIG WORKDIR [extra main.py flags...]
#   launch/local_multiprocess.sh 2 configs/demo.py /tmp/mp_demo --config.total_steps=4
# Environment read here:
#   PORT (default 12355)      coordinator port on localhost
#   DEVICES_PER_PROCESS (1)   fake CPU devices per process (--xla_force_host_platform_device_count)
#   TIMEOUT (0 = none)        each process runs under `timeout -k KILL_AFTER TIMEOUT`: a hung job
#   KILL_AFTER (10)           (jax.distributed ignores SIGTERM) is killed KILL_AFTER s after the SIGTERM
#   LOG_DIR (WORKDIR/logs)    where process_<i>.log go (set it when WORKDIR is a gs:// URL)
# Environment set for process i (0-based):
#   MASKFEAT_DISTRIBUTED=1                      main.py calls jax.distributed.initialize()
#   JAX_COORDINATOR_ADDRESS=localhost:$PORT     read by jax.distributed itself
#   JAX_NUM_PROCESSES=N, JAX_PROCESS_ID=i       the process count and this process's id
#   MASKFEAT_COORDINATOR / MASKFEAT_NUM_PROCESSES / MASKFEAT_PROCESS_ID
#                                               the same three values under the names main.py passes
#                                               to jax.distributed.initialize() explicitly
#   JAX_PLATFORMS=cpu
# SIGTERM / SIGINT to this script go to every process (a preemption of the whole job: each saves at the
# step they agree on and exits 0). The script fails if any process fails, and then stops the others
# (they would block in collectives waiting for the failed one).
set -uo pipefail

if [[ $# -lt 3 ]]; then
  sed -n '2,26p' "$0"; exit 2
fi
NUM="$1"; CONFIG="$2"; WORKDIR="$3"; shift 3
PORT="${PORT:-12355}"
DEVICES="${DEVICES_PER_PROCESS:-1}"
LOG_DIR="${LOG_DIR:-$WORKDIR/logs}"
mkdir -p "$LOG_DIR" || exit 2
wrap=()
if [[ "${TIMEOUT:-0}" != 0 ]]; then
  wrap=(timeout -k "${KILL_AFTER:-10}" "$TIMEOUT")
fi

pids=()
for ((i = 0; i < NUM; i++)); do
  env MASKFEAT_DISTRIBUTED=1 JAX_PLATFORMS=cpu \
    JAX_COORDINATOR_ADDRESS="localhost:$PORT" JAX_NUM_PROCESSES="$NUM" JAX_PROCESS_ID="$i" \
    MASKFEAT_COORDINATOR="localhost:$PORT" MASKFEAT_NUM_PROCESSES="$NUM" MASKFEAT_PROCESS_ID="$i" \
    XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$DEVICES" \
    "${wrap[@]}" python -u -m maskfeat_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@" \
    > "$LOG_DIR/process_$i.log" 2>&1 &
  pids+=("$!")
done

signal_all() {  # $1: the signal; `timeout` forwards it to its python process
  for pid in "${pids[@]}"; do kill "-$1" "$pid" 2>/dev/null || true; done
}
trap 'signal_all TERM' TERM
trap 'signal_all INT' INT

status=0
running=("${pids[@]}")
while ((${#running[@]} > 0)); do
  finished=""
  wait -n -p finished "${running[@]}"
  rc=$?
  [[ -z "${finished:-}" ]] && continue  # (wait -p leaves it unset then) a trapped signal interrupted the wait: the processes still run
  left=()
  for pid in "${running[@]}"; do [[ "$pid" != "$finished" ]] && left+=("$pid"); done
  running=("${left[@]+"${left[@]}"}")
  if ((rc != 0 && status == 0)); then
    status=$rc
    echo "a process failed (exit status $rc); stopping the others (logs: $LOG_DIR/)" >&2
    # Under timeout, TERM is forwarded and KILL follows KILL_AFTER s later; bare python ignores TERM.
    if ((${#wrap[@]})); then signal_all TERM; else signal_all KILL; fi
  fi
done
exit "$status"
