#!/usr/bin/env bash
# Run clip_jax on a Cloud TPU VM pod slice (every host runs the same command; JAX finds the
# other hosts itself: clip_jax.distributed.initialize() -> jax.distributed.initialize()).
#
#   launch/tpu_pod.sh create                      # create the TPU VM slice
#   launch/tpu_pod.sh setup                       # copy this checkout to every host, install
#   launch/tpu_pod.sh run CONFIG WORKDIR [--config.key=value ...]   # start training on all hosts
#   launch/tpu_pod.sh tail                        # follow host 0's log (process 0 prints)
#   launch/tpu_pod.sh logs                        # last lines of every host's log
#   launch/tpu_pod.sh stop                        # SIGTERM: each host saves and exits cleanly
#   launch/tpu_pod.sh delete                      # delete the slice
#
# Set (environment):
#   TPU_NAME     name of the slice                         (required)
#   ZONE         e.g. us-central2-b (v4) / us-west4-a (v5e) (required)
#   PROJECT      GCP project (default: gcloud's configured project)
#   ACCELERATOR  e.g. v4-64, v5litepod-256                 (create; default v4-64)
#   RUNTIME      TPU VM image, e.g. tpu-ubuntu2204-base, v2-alpha-tpuv5-lite (create)
#   SPOT=1       create a spot (preemptible) slice; pair it with checkpoint.every_steps, since
#                re-running `run` on the same WORKDIR resumes from the latest checkpoint
#
# WORKDIR and the shards (data.train) must be visible to every host: a gcsfuse-mounted bucket
# or an NFS/Filestore mount (checkpoints are written by all hosts, metrics by host 0).
# Data may also be streamed with data.train='pipe:gsutil cat gs://BUCKET/shards/{00000..41407}.tar'.
# Each host logs to ~/clip_jax_logs/train.log.
set -euo pipefail

usage() { sed -n '2,25p' "$0"; exit 2; }
[ $# -ge 1 ] || usage
cmd=$1; shift
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCELERATOR=${ACCELERATOR:-v4-64}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
project_flag=()
[ -n "${PROJECT:-}" ] && project_flag=(--project "$PROJECT")
REMOTE_DIR=clip_jax
LOG=clip_jax_logs/train.log

on_all() {  # run a shell command on every host of the slice
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" "${project_flag[@]}" \
    --worker=all --command "$1"
}

case "$cmd" in
  create)
    spot=()
    [ "${SPOT:-0}" = 1 ] && spot=(--spot)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" "${project_flag[@]}" \
      --accelerator-type "$ACCELERATOR" --version "$RUNTIME" "${spot[@]}"
    ;;
  setup)
    # Copy the checkout (not its workdirs/data) to every host and install it with TPU jax.
    root=$(cd "$(dirname "$0")/.." && pwd)
    tarball=$(mktemp --suffix .tar.gz)
    tar -C "$root" --exclude=.git --exclude=workdirs --exclude=data --exclude=logs \
      -czf "$tarball" .
    gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:clip_jax.tar.gz" --zone "$ZONE" \
      "${project_flag[@]}" --worker=all
    rm -f "$tarball"
    on_all "mkdir -p $REMOTE_DIR && tar -C $REMOTE_DIR -xzf clip_jax.tar.gz && \
      cd $REMOTE_DIR && pip install -q -e . 'jax[tpu]' \
      -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
    ;;
  run)
    [ $# -ge 2 ] || usage
    config=$1; workdir=$2; shift 2
    args=$(printf ' %q' "$@")
    on_all "mkdir -p clip_jax_logs && cd $REMOTE_DIR && \
      nohup python -m clip_jax.train --config $config --workdir $workdir $args \
      > ~/$LOG 2>&1 < /dev/null &"
    echo "started on every host; follow with: $0 tail"
    ;;
  tail)
    gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" "${project_flag[@]}" \
      --worker=0 --command "tail -n 50 -f ~/$LOG"
    ;;
  logs)
    on_all "echo \"== \$(hostname)\"; tail -n ${LINES:-20} ~/$LOG"
    ;;
  stop)
    on_all "pkill -TERM -f 'clip_jax.train' || true"
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$ZONE" "${project_flag[@]}" --quiet
    ;;
  *) usage ;;
esac
