#!/usr/bin/env bash
# Multi-host training on a Cloud TPU VM slice (e.g. v4-32, v5p-64): one JAX process per host.
# Run from your workstation with gcloud logged in; the slice must already exist
# (gcloud compute tpus tpu-vm create). `--worker=all` runs the same command on every host of the
# slice at once, so each step below happens on all hosts.
#
# What to set (edit here or export before running):
#   TPU_NAME, ZONE, PROJECT   the slice and where it lives
#   REPO_URL, REPO_DIR        where each host clones this repo (REPO_DIR is relative to the home dir)
#   WORKDIR                   a path every host mounts (Filestore/NFS, or a bucket via gcsfuse; not a
#                             gs:// URL): all hosts write each checkpoint together, only host 0
#                             writes metrics and plots
#   MODEL, MESH               what to train and how to lay it over all chips of all hosts: data:-1,
#                             fsdp:-1, or data:-1,model:4
# Keep this terminal open (or run inside tmux): closing it ends training on every host.
# Running it again with the same WORKDIR resumes from the latest checkpoint.
set -euo pipefail

TPU_NAME=${TPU_NAME:-archlab-v4-32}
ZONE=${ZONE:-us-central2-b}
PROJECT=${PROJECT:-$(gcloud config get-value project 2>/dev/null)}
REPO_URL=${REPO_URL:-https://github.com/archlab/archlab.git}
REPO_DIR=${REPO_DIR:-archlab}
WORKDIR=${WORKDIR:-/mnt/shared/archlab/transformer}
MODEL=${MODEL:-transformer}
MESH=${MESH:-data:-1}

on_all_hosts() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" --worker=all --command="$1"
}

# Setup: clone or update the repo, then install it with the TPU build of jax. uv supplies a
# Python >= 3.11 (the project's minimum) whatever version the TPU image ships.
# (Unquoted heredocs: $VAR is filled in here, \$VAR on the host; read returns 1 at end of input.)
read -r -d '' SETUP <<EOF || true
set -e
if [ -d $REPO_DIR/.git ]; then git -C $REPO_DIR pull --ff-only; else git clone $REPO_URL $REPO_DIR; fi
cd $REPO_DIR
export PATH=\$HOME/.local/bin:\$PATH
command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh
[ -x .venv/bin/python ] || uv venv -q --python 3.11 .venv
uv pip install -q --python .venv/bin/python -e . 'jax[tpu]'
EOF

# Train. distributed=auto's Cloud TPU check reads TPU_WORKER_HOSTNAMES, which GKE sets but a TPU VM
# keeps only in its metadata server; read the host list from there (as jax.distributed itself
# does) so auto starts jax.distributed with worker 0 as coordinator.
read -r -d '' TRAIN <<EOF || true
set -e
cd $REPO_DIR
md() { curl -sf -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/\$1; }
hosts=\$(md worker-network-endpoints | tr , '\n' | awk -F: '{print \$NF}')
export JAX_COORDINATOR_ADDRESS=\$(echo "\$hosts" | head -n 1):8482
export JAX_NUM_PROCESSES=\$(echo "\$hosts" | wc -l)
export JAX_PROCESS_ID=\$(md agent-worker-number)
export PYTHONUNBUFFERED=1
.venv/bin/python -m launch.train \
  --model=$MODEL \
  --workdir=$WORKDIR \
  --no_progress \
  --config.parallel.distributed=auto \
  --config.parallel.mesh=$MESH \
  --config.parallel.rules=default
EOF

on_all_hosts "$SETUP"
on_all_hosts "$TRAIN"
