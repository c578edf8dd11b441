#!/usr/bin/env bash
# Run N JAX processes on this machine, each with D simulated CPU devices, joined by
# jax.distributed (CPU collectives: gloo) -- the multi-host code path, on one box.
#
#   launch/local_multiprocess.sh NUM_PROCESSES DEVICES_PER_PROCESS COMMAND...
#   launch/local_multiprocess.sh 2 4 python -m clip_jax.train --config configs/tiny.py --workdir W
#
# Each process logs to $LOG_DIR/process_<i>.log (default: ./logs/multiprocess); process 0's log
# is also streamed to the terminal. If any process fails, the others are stopped and the script
# exits with that process's status (no hang).
set -euo pipefail

if [ $# -lt 3 ]; then
  sed -n '2,10p' "$0"; exit 2
fi
NPROC=$1; NDEV=$2; shift 2
LOG_DIR=${LOG_DIR:-logs/multiprocess}
PORT=${CLIP_JAX_PORT:-$((20000 + RANDOM % 20000))}
mkdir -p "$LOG_DIR"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap 'cleanup; exit 130' INT TERM

for ((i = 0; i < NPROC; i++)); do
  CLIP_JAX_COORDINATOR="127.0.0.1:$PORT" CLIP_JAX_NUM_PROCESSES=$NPROC CLIP_JAX_PROCESS_ID=$i \
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$NDEV ${XLA_FLAGS:-}" \
    "$@" >"$LOG_DIR/process_$i.log" 2>&1 &
  pids+=($!)
done
tail -n +1 -f "$LOG_DIR/process_0.log" --pid "${pids[0]}" &
tailer=$!

status=0
remaining=${#pids[@]}
declare -A done_pids=()
while [ "$remaining" -gt 0 ]; do
  for i in "${!pids[@]}"; do
    p=${pids[$i]}
    [ -n "${done_pids[$p]:-}" ] && continue
    if ! kill -0 "$p" 2>/dev/null; then
      wait "$p" && rc=0 || rc=$?
      done_pids[$p]=1; remaining=$((remaining - 1))
      if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
        status=$rc
        echo "process $i exited with status $rc; stopping the others (log: $LOG_DIR/process_$i.log)" >&2
        tail -n 20 "$LOG_DIR/process_$i.log" >&2 || true
        cleanup
      fi
    fi
  done
  sleep 0.2
done
kill "$tailer" 2>/dev/null || true
exit "$status"
