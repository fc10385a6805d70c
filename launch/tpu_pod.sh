#!/usr/bin/env bash
# Runs one mmd_jax config on every worker of a Cloud TPU VM slice.
#
#   TPU_NAME=my-v5p-64 ZONE=us-east5-a CONFIG=configs/imagenet64.py:mm_alternating \
#   WORKDIR=/mnt/shared/runs/in64_mm bash launch/tpu_pod.sh
#
# Expects: the repository at $REPO and a venv at $REPO/.venv on every worker
# (install once with the same ssh command: `pip install -e '.[tpu]'`), the
# tfds data and the Inception .npz on shared storage, and $WORKDIR on a
# filesystem all workers see.
set -euo pipefail
: "${TPU_NAME:?}" "${ZONE:?}" "${CONFIG:?}" "${WORKDIR:?}"
REPO=${REPO:-~/mmd_jax}
EXTRA=${EXTRA:-}   # e.g. "--config.eval.inception_weights=/mnt/shared/inception_fid.npz"

# --worker=all starts the identical command on every host; jax.distributed
# finds its peers through the TPU metadata server.
until gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all \
    --command="cd $REPO && . .venv/bin/activate && python -m mmd_jax.main \
      --config=$CONFIG --workdir=$WORKDIR --distributed=on $EXTRA"; do
  status=$?
  # 143: pre-empted after saving; anything else is a real failure.
  [ "$status" -eq 143 ] || exit "$status"
  echo "pre-empted; resuming" >&2
  sleep 60
done
