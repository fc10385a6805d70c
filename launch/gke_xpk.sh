#!/usr/bin/env bash
# Submits one mmd_jax config as an xpk workload on a GKE TPU (or GPU) cluster.
#
#   CLUSTER=my-cluster TPU_TYPE=v5p-64 IMAGE=gcr.io/me/mmd_jax:latest \
#   CONFIG=configs/imagenet128.py:emd WORKDIR=/mnt/shared/runs/in128_emd \
#   bash launch/gke_xpk.sh
#
# Expects: `pip install xpk`, a cluster made with `xpk cluster create`, an
# image built from the Dockerfile in launch/README.md, and a shared volume
# (Filestore or GCS FUSE) mounted at the workdir's root in every pod.
set -euo pipefail
: "${CLUSTER:?}" "${TPU_TYPE:?}" "${IMAGE:?}" "${CONFIG:?}" "${WORKDIR:?}"
NAME=${NAME:-mmd-$(date +%m%d-%H%M)}
EXTRA=${EXTRA:-}

# xpk starts the same command in every pod of a JobSet; jax.distributed
# picks up the coordinator from the JobSet environment. --max-restarts lets
# the JobSet restart pre-empted pods: the command resumes from the workdir.
xpk workload create --cluster "$CLUSTER" --workload "$NAME" \
  --tpu-type "$TPU_TYPE" --num-slices 1 --docker-image "$IMAGE" \
  --max-restarts 10 \
  --command "python -m mmd_jax.main --config=$CONFIG --workdir=$WORKDIR --distributed=on $EXTRA"
