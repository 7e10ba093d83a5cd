#!/usr/bin/env bash
# A domain adapter under the per-video one. For each domain (one held-out photograph: the top of
# its left half gives the 16 videos the domain adapter is fitted on, the bottom of the left half 4
# held-out videos that keep its best step and its learned merge with the hypernetwork's adapter,
# the right half the 12 test videos; no pixel is shared), fit one LoRA, then score base | domain | hypernet | domain + hypernet (naive
# and learned merge) | oracle on the 12 test videos, and the gain against the domain adapter's
# strength. The hypernetwork is experiments/content_scaling's mixed_s0 (run that study first);
# neither photograph was seen in stage 1 or stage 2. Videos, adapters and logs go to
# outputs/domain_adapter/; the tables, CSVs and plots are written here. About 15 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=.venv/bin/python
ckpt=outputs/content_scaling/mixed_s0/checkpoints/best.ckpt
out=outputs/domain_adapter
here=experiments/domain_adapter
[ -f $ckpt ] || { echo "missing $ckpt: run experiments/content_scaling/run.sh first" >&2; exit 1; }
export OMP_NUM_THREADS=2  # pinned: the thread count changes float rounding
for photo in ihc gravel; do
  videos=$out/$photo/videos
  [ -d $videos/test/lr ] || $py scripts/make_domain_videos.py --photo $photo -o $videos --train 16 --val 4 \
    --test 12 --blur 1.5 --noise 3 --seed 0
  [ -f $out/$photo/domain.safetensors ] || $py -m hypernet.finetune --checkpoint $ckpt \
    --hr $videos/train/hr --lr $videos/train/lr --val-hr $videos/val/hr --val-lr $videos/val/lr --val-every 50 \
    --steps 1000 --learning-rate 1e-3 --clips 4 --clip-len 5 --merge-steps 300 --seed 0 --no-progress \
    -o $out/$photo/domain.safetensors | tee $out/$photo/finetune.txt
  mkdir -p $here/$photo
  sed "s#$out/##g" $out/$photo/finetune.txt > $here/$photo/finetune.txt  # the fit's own validation figures
  $py scripts/domain_study.py --checkpoint $ckpt --adapter $out/$photo/domain.safetensors \
    --videos $videos/test --oracle-steps 100 --seed 0 -o $here/$photo
done
