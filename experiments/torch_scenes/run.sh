#!/usr/bin/env bash
# Does the mixed recipe of experiments/content_scaling keep its gain when its procedural scenes
# are drawn by the tensor program (data.procedural.backend=torch, the default since issue 19)
# instead of the PIL painter? The same runs as content_scaling's base_content, mixed_s0 and mixed_s1
# (same configs, seeds, thread counts), then the tables. Runs go to outputs/torch_scenes/;
# scripts/collect_torch_scenes.py copies the results here. A finished run (metrics.json) is
# skipped, so the script resumes where it stopped.
# Selection (best.ckpt) uses fixed procedural validation scenes (drawn by the torch backend too);
# the 20 held-out photo videos and their 20 multi-shot twins are scored once and choose nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=.venv/bin/python
out=outputs/torch_scenes
common=(logger=csv '~callbacks.rich_progress_bar')
train() {  # label, overrides...
  local label=$1; shift
  [ -f "$out/$label/metrics.json" ] && return 0
  rm -rf "${out:?}/$label"  # an unfinished run starts again from scratch
  $py -m hypernet.train "${common[@]}" "$@" paths.output_dir=$out/$label > "$out/$label.log" 2>&1
}
mkdir -p $out
OMP_NUM_THREADS=2 train base_content experiment=base_content data.test_shots=3 seed=0
for seed in 0 1; do
  OMP_NUM_THREADS=1 train mixed_s$seed experiment=hyper_content base_ckpt=$out/base_content/checkpoints/best.ckpt seed=$seed
done
$py scripts/collect_torch_scenes.py
