#!/usr/bin/env bash
# The quickstart behind the README's tables: `make quickstart`, then what its specialise default
# does on videos like users' (the real-size groups: LR 128-320, clean bicubic, BD, random
# blur/noise, H.264 CRF 23 and 33; the guard as specialise applies it, against the base alone),
# then the results copied here.
set -euo pipefail
cd "$(dirname "$0")/../.."
time make quickstart
q=outputs/quickstart
here=experiments/quickstart
if [ ! -f $q/eval_real_sizes/metrics.json ]; then
  rm -rf $q/eval_real_sizes
  .venv/bin/python -m hypernet.eval checkpoint=$q/hyper/checkpoints/best.ckpt \
    'methods=[bicubic,base,hypernet,hypernet_guard]' 'data.test_real_sides=[128,192,256,320]' \
    data.test_source=stills paths.output_dir=$q/eval_real_sizes > $q/eval_real_sizes.log 2>&1
fi
cp $q/eval/results.md $q/eval/results.csv $q/eval/gains.png $q/eval/crops.png $q/eval/metrics.json $here/
cp $q/base/metrics.json $here/base_metrics.json
cp $q/hyper/metrics.json $here/hyper_metrics.json
cp $q/hyper/test_videos.csv $here/hyper_test_videos.csv
mkdir -p $here/real_sizes
cp $q/eval_real_sizes/results.md $q/eval_real_sizes/results.csv $q/eval_real_sizes/guard.csv $q/eval_real_sizes/metrics.json $here/real_sizes/
