#!/usr/bin/env bash
# The quickstart behind the README's table: `make quickstart`, then its results copied here.
set -euo pipefail
cd "$(dirname "$0")/../.."
time make quickstart
q=outputs/quickstart
here=experiments/quickstart
cp $q/eval/results.md $q/eval/results.csv $q/eval/gains.png $q/eval/crops.png $q/eval/metrics.json $here/
cp $q/base/metrics.json $here/base_metrics.json
cp $q/hyper/metrics.json $here/hyper_metrics.json
cp $q/hyper/test_videos.csv $here/hyper_test_videos.csv
