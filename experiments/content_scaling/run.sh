#!/usr/bin/env bash
# Does richer training content make the hypernetwork beat its base on videos it has never seen?
# Two stage-1 bases (photos only; procedural + photos), then stage 2 on four kinds of content
# (2 seeds each) on the content base, the controls on the richest content (chosen before any
# result: procedural + photos), stage 2 on photos over the photo base, then the oracle's eval and
# the tables and the plot. Runs go to outputs/content_scaling/ (checkpoints, logs);
# scripts/collect_content_scaling.py copies the results here.
# Selection (best.ckpt) uses fixed procedural validation scenes; the 20 held-out photo videos (and
# their 20 multi-shot twins) are scored once at the end and choose nothing.
# The bases run alone with 2 threads; the stage-2 runs in two queues side by side, 1 thread each
# (pinned: thread count changes float rounding). A finished run (metrics.json) is skipped, so the
# script resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=.venv/bin/python
out=outputs/content_scaling
# the procedural scenes these results were measured on: the PIL painter's (the default became the
# tensor program in issue 19; experiments/torch_scenes compares the two)
common=(logger=csv '~callbacks.rich_progress_bar' data.procedural.backend=pil)
train() {  # label, overrides...
  local label=$1; shift
  [ -f "$out/$label/metrics.json" ] && return 0
  rm -rf "${out:?}/$label"  # an unfinished run starts again from scratch
  $py -m hypernet.train "${common[@]}" "$@" paths.output_dir=$out/$label > "$out/$label.log" 2>&1
}
mkdir -p $out
OMP_NUM_THREADS=2 train base_photos experiment=base_quickstart data.test_shots=3 seed=0
OMP_NUM_THREADS=2 train base_content experiment=base_content data.test_shots=3 seed=0

content=base_ckpt=$out/base_content/checkpoints/best.ckpt
photos='data.source=stills data.photo_augment.colour=0 data.photo_augment.collage=0'
augmented='data.source=stills'  # hyper_content's photo augmentation (colour 0.5, collage 0.3)
procedural='data.source=procedural'
mixed=''  # hyper_content's own: {stills: 0.3, procedural: 0.7} with augmented photos
export OMP_NUM_THREADS=1
queue_a() {
  train photos_s0 experiment=hyper_content $content $photos seed=0
  train procedural_s0 experiment=hyper_content $content $procedural seed=0
  train mixed_stats experiment=hyper_content $content hypernet.source=stats seed=0
  train mixed_degradation experiment=hyper_content $content hypernet.source=degradation seed=0
  train photos_s1 experiment=hyper_content $content $photos seed=1
  train procedural_s1 experiment=hyper_content $content $procedural seed=1
}
queue_b() {
  train augmented_s0 experiment=hyper_content $content $augmented seed=0
  train mixed_s0 experiment=hyper_content $content $mixed seed=0
  train mixed_static experiment=hyper_content $content hypernet.static=true seed=0
  train photos_on_photo_base experiment=hyper_content base_ckpt=$out/base_photos/checkpoints/best.ckpt \
    $photos seed=0
  train augmented_s1 experiment=hyper_content $content $augmented seed=1
  train mixed_s1 experiment=hyper_content $content $mixed seed=1
}
queue_a & a=$!
queue_b & b=$!
wait $a; wait $b

# the oracle (LoRA fitted to each test video's own HR) and the large-frame test group, for the
# hypernetwork on the richest content
[ -f $out/eval_mixed_s0/metrics.json ] || $py -m hypernet.eval checkpoint=$out/mixed_s0/checkpoints/best.ckpt \
  data.test_shots=3 methods=[bicubic,base,hypernet,oracle] paths.output_dir=$out/eval_mixed_s0
# real frame sizes: 8 videos at 512x512 HR (128x128 LR) from the two held-out photographs that large;
# context frames read whole (context_tile=0), then as tiles of the training frames' size (the
# checkpoint's own reading; the checkpoint's context frames are used throughout, as trained)
[ -f $out/eval_large_mixed_s0/metrics.json ] || $py -m hypernet.eval checkpoint=$out/mixed_s0/checkpoints/best.ckpt \
  data.test_large_hr=512 context_tile=0 methods=[bicubic,base,hypernet] crop_videos=0 \
  paths.output_dir=$out/eval_large_mixed_s0
[ -f $out/eval_large_tiled_mixed_s0/metrics.json ] || $py -m hypernet.eval checkpoint=$out/mixed_s0/checkpoints/best.ckpt \
  data.test_large_hr=512 methods=[bicubic,base,hypernet] crop_videos=0 \
  paths.output_dir=$out/eval_large_tiled_mixed_s0
$py scripts/collect_content_scaling.py $out -o experiments/content_scaling
