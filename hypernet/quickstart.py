"""`make quickstart` / `python -m hypernet.quickstart`: the whole story on the built-in data, on
two CPU cores in under 10 minutes: a look at the data, stage 1 (the base), stage 2 (the
hypernetwork), and the evaluation against every baseline on the 20 held-out photo videos.

Both stages train on the content of `experiments/content_scaling` (procedural scenes and
meta-augmented photographs, `experiment=base_content` / `hyper_content`) at a shorter budget
(QUICKSTART_BASE, QUICKSTART_HYPER); the study's longer runs are the full-budget versions.

Everything lands in `outputs/quickstart/` (override with --out):
    preview.png   the data: HR frames and their degraded LR frames
    base/         stage-1 run folder (checkpoints/best.ckpt, chosen on the validation scenes, is the base)
    hyper/        stage-2 run folder (checkpoints/best.ckpt is what `hypernet.specialise` uses by default)
    eval/         results.md, results.csv, gains.png, crops.png
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from hypernet.data.preview import write_preview

DEFAULT_OUT = Path("outputs/quickstart")
# the study's recipes at the quickstart's budget (the study: 48 and 40 epochs)
QUICKSTART_BASE = ["experiment=base_content", "trainer.max_epochs=8"]
QUICKSTART_HYPER = ["experiment=hyper_content", "trainer.max_epochs=16"]
QUICKSTART_EVAL = ["data.test_shots=0"]  # the 20 videos; the model's inputs come from its checkpoint


def step(module: str, overrides: list[str], output_dir: Path) -> dict:
    """One of the README's commands, `python -m hypernet.<module> OVERRIDES`, run as a user runs
    it (its own process, its own Hydra run); returns the metrics.json it wrote."""
    command = [sys.executable, "-m", f"hypernet.{module}", *overrides, f"paths.output_dir={output_dir}"]
    if subprocess.run(command).returncode != 0:
        raise SystemExit(f"quickstart: `{' '.join(command[1:])}` failed (its messages are above)")
    return json.loads((output_dir / "metrics.json").read_text())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides for both training stages, e.g. logger=csv"
    )
    args = parser.parse_args(argv)
    started = time.time()
    out = args.out
    print(f"[1/4] data preview: {write_preview(out / 'preview.png')}")

    base = step("train", [*QUICKSTART_BASE, *args.overrides], out / "base")
    print(
        f"[2/4] stage 1 (base): test PSNR-Y {base['test/psnr_y']:.2f} dB vs bicubic {base['test/psnr_y_bicubic']:.2f} dB "
        f"({base['test/psnr_y'] - base['test/psnr_y_bicubic']:+.2f}); {out / 'base'}"
    )
    base_ckpt = out / "base" / "checkpoints" / "best.ckpt"  # chosen on the procedural validation scenes
    hyper = step("train", [*QUICKSTART_HYPER, f"base_ckpt={base_ckpt}", *args.overrides], out / "hyper")
    print(
        f"[3/4] stage 2 (hypernet): test PSNR-Y {hyper['test/psnr_y']:.3f} dB vs base {hyper['test/psnr_y_base']:.3f} dB "
        f"({hyper['test/gain_y']:+.3f}); {out / 'hyper'}"
    )
    hyper_ckpt = out / "hyper" / "checkpoints" / "best.ckpt"
    summary = step("eval", [f"checkpoint={hyper_ckpt}", *QUICKSTART_EVAL], out / "eval")
    print(f"[4/4] evaluation: {out / 'eval'}\n")
    print((out / "eval" / "results.md").read_text())
    result = {"seconds": round(time.time() - started, 1), "base": base, "hyper": hyper, "eval": summary}
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    print(
        f"done in {result['seconds']:.0f} s. Report: {out / 'eval' / 'results.md'} (plot gains.png, crops crops.png)"
    )
    print(
        f"Upscale your own video: .venv/bin/python -m hypernet.specialise VIDEO.mp4 -o upscaled.mp4  (uses {hyper_ckpt})"
    )
    return result


def cli() -> None:
    """Console entry point: main() returns its figures, which sys.exit would take for an error."""
    main()


if __name__ == "__main__":
    main()
