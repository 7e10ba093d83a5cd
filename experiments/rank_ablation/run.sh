#!/usr/bin/env bash
# LoRA rank of the hypernetwork's adapters (2, 4, 8) x 2 seeds, at quickstart size on 2 CPU cores.
# A stage-1 base, then a Hydra multirun of stage 2 (basic launcher, jobs one after another),
# then the collector: results.md, results.csv, plot.png beside this script.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=experiments/rank_ablation
py=.venv/bin/python
$py -m hypernet.train experiment=base_quickstart logger=csv '~callbacks.rich_progress_bar' seed=0 \
  paths.output_dir=$here/runs/base
$py -m hypernet.train -m experiment=hyper_quickstart hparams_search=rank_ablation \
  base_ckpt=$here/runs/base/checkpoints/last.ckpt logger=csv '~callbacks.rich_progress_bar' \
  trainer.max_epochs=10 hydra.sweep.dir=$here/sweep
$py scripts/collect_results.py $here/sweep --param hypernet.rank --metric val/gain_y --metric val/psnr_y \
  --metric val/psnr_y_shuffled --metric val/adapter_spread -o $here
