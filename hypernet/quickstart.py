"""`make quickstart` / `python -m hypernet.quickstart`: the whole story on the built-in data, on
two CPU cores in under 10 minutes: a look at the data, stage 1 (the base), stage 2 (the
hypernetwork), and the evaluation against every baseline on the 20 held-out photo videos.

Both stages train on the content of `experiments/content_scaling` (procedural scenes and
meta-augmented photographs) with the degradations users' videos have (clean bicubic, subsampled,
H.264, besides blur and noise: `experiment=base_coverage` / `hyper_coverage`,
`experiments/real_sizes`) at a shorter budget (QUICKSTART_BASE, QUICKSTART_HYPER); the study's
longer runs are the full-budget versions.

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
from hypernet.runs import read_run

DEFAULT_OUT = Path("outputs/quickstart")
# the study's recipes at the quickstart's budget (the study: 48 and 40 epochs), set by time alone:
# under 10 minutes in all on two CPU cores (32 + 32 epochs took 600-617 s: too close)
QUICKSTART_BASE = ["experiment=base_coverage", "trainer.max_epochs=28"]
QUICKSTART_HYPER = [
    "experiment=hyper_coverage",
    "trainer.max_epochs=28",
    "data.test_shots=0",  # the 20 test videos (the real-size groups: experiments/quickstart/run.sh)
    "data.test_real_sides=[]",
    "threads=1",  # one core trains, the loader's worker draws on the other (as the study ran it)
]
# the 20 videos, with the hypernet as `specialise` applies it by default (the guard's strength);
# the model's inputs come from its checkpoint
QUICKSTART_EVAL = ["data.test_shots=0", "methods=[bicubic,base,selfsup,hypernet,hypernet_guard,oracle]"]


def step(module: str, overrides: list[str], output_dir: Path, *, reuse: bool = True) -> tuple[dict, bool]:
    """One of the README's commands, `python -m hypernet.<module> OVERRIDES`, run as a user runs
    it (its own process, its own Hydra run); returns the metrics.json it wrote and whether an
    earlier one was kept. With `reuse` (the steps before it were kept), a step an earlier
    quickstart finished with the same command (run.json, or eval.json for the evaluation) is kept,
    not run again: `make quickstart` twice picks up where it stopped."""
    overrides = [*overrides, f"paths.output_dir={output_dir}"]
    if reuse and finished_before(module, overrides, output_dir):
        print(f"  kept: {output_dir} (finished by an earlier quickstart with the same command)")
        return json.loads((output_dir / "metrics.json").read_text()), True
    command = [sys.executable, "-m", f"hypernet.{module}", *overrides]
    if subprocess.run(command).returncode != 0:
        raise SystemExit(f"quickstart: `{' '.join(command[1:])}` failed (its messages are above)")
    return json.loads((output_dir / "metrics.json").read_text()), False


def finished_before(module: str, overrides: list[str], output_dir: Path) -> bool:
    """Whether `output_dir` holds this very step, finished: a training run whose run.json says
    finished with these overrides, or an evaluation whose eval.json records them."""
    if not (output_dir / "metrics.json").is_file():
        return False
    if module == "train":
        record = read_run(output_dir)
        return record is not None and record["status"] == "finished" and record.get("overrides") == overrides
    recorded = output_dir / "eval.json"
    return recorded.is_file() and json.loads(recorded.read_text()).get("overrides") == overrides


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

    base, kept = step("train", [*QUICKSTART_BASE, *args.overrides], out / "base")
    print(
        f"[2/4] stage 1 (base): test PSNR-Y {base['test/psnr_y']:.2f} dB vs bicubic {base['test/psnr_y_bicubic']:.2f} dB "
        f"({base['test/psnr_y'] - base['test/psnr_y_bicubic']:+.2f}); {out / 'base'}"
    )
    base_ckpt = out / "base" / "checkpoints" / "best.ckpt"  # chosen on the procedural validation scenes
    overrides = [*QUICKSTART_HYPER, f"base_ckpt={base_ckpt}", *args.overrides]
    hyper, kept = step("train", overrides, out / "hyper", reuse=kept)  # a new base: a new stage 2
    print(
        f"[3/4] stage 2 (hypernet): test PSNR-Y {hyper['test/psnr_y']:.3f} dB vs base {hyper['test/psnr_y_base']:.3f} dB "
        f"({hyper['test/gain_y']:+.3f}); {out / 'hyper'}"
    )
    hyper_ckpt = out / "hyper" / "checkpoints" / "best.ckpt"
    summary, _ = step("eval", [f"checkpoint={hyper_ckpt}", *QUICKSTART_EVAL], out / "eval", reuse=kept)
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
    print(
        f"Fit its learned guard first (about 8 minutes): .venv/bin/python -m hypernet.fit_guard checkpoint={hyper_ckpt}"
    )
    return result


def cli() -> None:
    """Console entry point: main() returns its figures, which sys.exit would take for an error."""
    main()


if __name__ == "__main__":
    main()
