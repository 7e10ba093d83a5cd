#!/usr/bin/env bash
# Does the mixed recipe of experiments/content_scaling keep its gain when its procedural scenes
# are drawn by the tensor program (data.procedural.backend=torch, the default since issue 19)
# instead of the PIL painter? The same two runs as content_scaling's base_content and mixed_s0
# (seed 0, same configs, same thread counts), then the tables. Runs go to outputs/torch_scenes/;
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
OMP_NUM_THREADS=1 train mixed_s0 experiment=hyper_content base_ckpt=$out/base_content/checkpoints/best.ckpt seed=0
$py scripts/collect_torch_scenes.py
