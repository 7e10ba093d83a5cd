#!/usr/bin/env bash
# Stage 2 on the built-in stills videos: both feature sources x both modes, next to the
# static-LoRA control, all on one stage-1 base and validated on the same 20 held-out videos.
# Produces runs/<label>/ (config, metrics.json, val_videos.csv) and table.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=experiments/hyper_quickstart/runs
py=.venv/bin/python
common=(logger=csv '~callbacks.rich_progress_bar' seed=0)

$py -m hypernet.train experiment=base_quickstart "${common[@]}" paths.output_dir=$out/base
base=base_ckpt=$out/base/checkpoints/last.ckpt
for variant in "base_direct hypernet.source=base hypernet.mode=direct" \
               "conv_direct hypernet.source=conv hypernet.mode=direct" \
               "base_refine hypernet.source=base hypernet.mode=refine" \
               "conv_refine hypernet.source=conv hypernet.mode=refine" \
               "static hypernet.static=true" \
               "stats_direct hypernet.source=stats hypernet.mode=direct"; do
  set -- $variant
  label=$1; shift
  $py -m hypernet.train experiment=hyper_quickstart "${common[@]}" $base "$@" paths.output_dir=$out/$label
done
$py scripts/compare_runs.py static=$out/static base_direct=$out/base_direct conv_direct=$out/conv_direct \
  base_refine=$out/base_refine conv_refine=$out/conv_refine stats_direct=$out/stats_direct \
  -o experiments/hyper_quickstart/table.md
