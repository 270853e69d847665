#!/bin/bash
# Data-parallel training on a TPU VM pod slice: the same command on every worker.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b scripts/tpu_pod_train.sh --config configs/teacher.py \
#     --workdir /mnt/shared/runs/teacher
#
# Each worker runs one process driving its local chips; JAX detects the pod itself
# (jax.distributed.initialize() with no arguments). The repository and MNIST must be on every
# worker (e.g. `--worker=all --command "git clone ... && pip install -e '.[tpu]'"` once), and
# --workdir on a filesystem all workers share (Filestore / NFS / gcsfuse mount).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REPO_DIR=${REPO_DIR:-kd_jax}
MNIST_DIR=${KD_JAX_MNIST_DIR:-\$HOME/data/mnist}
COMMAND=${COMMAND:-train}

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \
  "cd $REPO_DIR && KD_JAX_MNIST_DIR=$MNIST_DIR python3 -m kd_jax.$COMMAND --distributed $*"
