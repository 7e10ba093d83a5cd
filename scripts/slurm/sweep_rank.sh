#!/bin/bash
# A stage-2 rank sweep, one SLURM job per point (submitit), each on one node with 4 GPUs:
#   bash scripts/slurm/sweep_rank.sh base_ckpt=/path/to/stage1/last.ckpt
set -euo pipefail
.venv/bin/python -m hypernet.train -m hydra/launcher=slurm experiment=hyper_quickstart \
  trainer=ddp trainer.devices=4 data.batch_size=32 \
  hypernet.lora.rank=2,4,8 seed=0,1 "$@"
