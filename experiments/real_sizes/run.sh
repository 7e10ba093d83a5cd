#!/usr/bin/env bash
# Does the hypernetwork help at real frame sizes and degradations, and does the guard keep it from
# harming? The study's best recipe (content_scaling's mixed recipe on the torch scenes: the runs of
# experiments/torch_scenes, the same commands) without and with the training coverage of users'
# degradations (experiment=base_coverage, hyper_coverage: 30% clean bicubic, 30% of the blurred
# videos subsampled as BD, 30% through H.264 at CRF 18-35, in both stages), each evaluated by
# hypernet.eval with and without the guard on the 20 standard test videos and on the real-size
# groups (LR 128, 192, 256, 320 pixels, 2 procedural scenes each, and the held-out photos that are
# large enough; clean bicubic, BD, random blur/noise, H.264 CRF 23 and 33). Runs go to
# outputs/real_sizes/; scripts/collect_real_sizes.py writes the tables here. A finished run or
# evaluation (metrics.json) is skipped, so the script resumes where it stopped.
# Selection (best.ckpt) uses fixed procedural validation scenes; the test videos choose nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=.venv/bin/python
out=outputs/real_sizes
common=(logger=csv '~callbacks.rich_progress_bar')
train() {  # label, overrides...
  local label=$1; shift
  [ -f "$out/$label/metrics.json" ] && return 0
  rm -rf "${out:?}/$label"  # an unfinished run starts again from scratch
  $py -m hypernet.train "${common[@]}" "$@" paths.output_dir=$out/$label > "$out/$label.log" 2>&1
}
evaluate() {  # model: the guard's reproduction rule
  local label=eval_$1
  [ -f "$out/$label/metrics.json" ] && return 0
  rm -rf "${out:?}/$label"
  OMP_NUM_THREADS=2 $py -m hypernet.eval checkpoint=$out/$1/checkpoints/best.ckpt \
    'methods=[bicubic,base,hypernet,hypernet_guard]' 'data.test_real_sides=[128,192,256,320]' \
    learned_guard=false paths.output_dir=$out/$label > "$out/$label.log" 2>&1
}
fit_guard() {  # model: its learned guard, fitted on fresh videos where HR exists, into its best.ckpt
  local label=guard_$1
  [ -f "$out/$label/metrics.json" ] && return 0
  rm -rf "${out:?}/$label"
  OMP_NUM_THREADS=2 $py -m hypernet.fit_guard checkpoint=$out/$1/checkpoints/best.ckpt \
    paths.output_dir=$out/$label > "$out/$label.log" 2>&1
}
evaluate_learned() {  # model: the learned guard (the default of specialise and eval)
  local label=eval_learned_$1
  [ -f "$out/$label/metrics.json" ] && return 0
  rm -rf "${out:?}/$label"
  OMP_NUM_THREADS=2 $py -m hypernet.eval checkpoint=$out/$1/checkpoints/best.ckpt \
    'methods=[base,hypernet,hypernet_guard]' 'data.test_real_sides=[128,192,256,320]' \
    paths.output_dir=$out/$label > "$out/$label.log" 2>&1
}
mkdir -p $out
# without the coverage: experiments/torch_scenes' base_content and mixed_s0
OMP_NUM_THREADS=2 train base_content experiment=base_content data.test_shots=3 seed=0
OMP_NUM_THREADS=1 train mixed_s0 experiment=hyper_content base_ckpt=$out/base_content/checkpoints/best.ckpt seed=0
# with it
OMP_NUM_THREADS=2 train base_coverage experiment=base_coverage seed=0
for seed in 0 1; do
  OMP_NUM_THREADS=2 train coverage_s$seed experiment=hyper_coverage base_ckpt=$out/base_coverage/checkpoints/best.ckpt seed=$seed
done
for model in mixed_s0 coverage_s0 coverage_s1; do evaluate $model; done
for model in mixed_s0 coverage_s0; do fit_guard $model; evaluate_learned $model; done
# the diagnosis: size, degradation or motion? mixed_s0 at LR 24 (its training size) to 320, 3 scenes a side
if [ ! -f $out/diagnosis_mixed_s0/metrics.json ]; then
  rm -rf $out/diagnosis_mixed_s0
  OMP_NUM_THREADS=2 $py -m hypernet.eval checkpoint=$out/mixed_s0/checkpoints/best.ckpt \
    'data.test_real_sides=[24,64,128,320]' data.test_real_scenes=3 'methods=[bicubic,base,hypernet]' \
    'strengths=[0.5]' paths.output_dir=$out/diagnosis_mixed_s0 > $out/diagnosis_mixed_s0.log 2>&1
fi
$py scripts/collect_real_sizes.py
