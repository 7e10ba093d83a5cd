#!/usr/bin/env bash
# Does richer training content make the hypernetwork beat its base on videos it has never seen?
# Two stage-1 bases (photos only; procedural + photos), then stage 2 on four kinds of content
# (2 seeds each) on the content base, then the controls on the richest content (chosen before any
# result: procedural + photos), then the tables and the plot. Runs go to outputs/content_scaling/
# (checkpoints, logs); scripts/collect_content_scaling.py copies the results here.
# Selection (best.ckpt) uses fixed procedural validation scenes; the 20 held-out photo videos (and
# their 20 multi-shot twins) are scored once at the end and choose nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=.venv/bin/python
out=outputs/content_scaling
common=(logger=csv '~callbacks.rich_progress_bar')
train() {  # label, overrides...: skip runs that already finished (metrics.json written)
  local label=$1; shift
  [ -f "$out/$label/metrics.json" ] && return 0
  $py -m hypernet.train "${common[@]}" "$@" paths.output_dir=$out/$label
}
train base_photos experiment=base_quickstart data.test_shots=3 seed=0
train base_content experiment=base_content data.test_shots=3 seed=0
content=base_ckpt=$out/base_content/checkpoints/best.ckpt
photos='data.source=stills'
augmented='data.source=stills data.photo_augment.colour=0.5 data.photo_augment.collage=0.3'
procedural='data.source=procedural'
mixed=''  # hyper_content's own: {stills: 0.3, procedural: 0.7} with augmented photos
for seed in 0 1; do
  train photos_s$seed experiment=hyper_content $content $photos 'data.photo_augment.colour=0' \
    'data.photo_augment.collage=0' seed=$seed
  train augmented_s$seed experiment=hyper_content $content $augmented seed=$seed
  train procedural_s$seed experiment=hyper_content $content $procedural seed=$seed
  train mixed_s$seed experiment=hyper_content $content $mixed seed=$seed
done
train mixed_stats experiment=hyper_content $content hypernet.source=stats seed=0
train mixed_static experiment=hyper_content $content hypernet.static=true seed=0
train mixed_degradation experiment=hyper_content $content hypernet.source=degradation seed=0
train photos_on_photo_base experiment=hyper_content base_ckpt=$out/base_photos/checkpoints/best.ckpt \
  $photos 'data.photo_augment.colour=0' 'data.photo_augment.collage=0' seed=0
$py scripts/collect_content_scaling.py $out -o experiments/content_scaling
