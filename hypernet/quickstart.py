"""`make quickstart` / `python -m hypernet.quickstart`: the whole story on the built-in data,
on two CPU cores: a look at the data, then stage 1 (the base network).

Everything lands in `outputs/quickstart/` (override with --out): `preview.png`, and `base/`, a
normal run folder (config, metrics.json, checkpoints/last.ckpt) that later commands use as
their default base."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from hypernet.data.preview import write_preview

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")
DEFAULT_OUT = Path("outputs/quickstart")


def compose_experiment(experiment: str, output_dir: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[f"experiment={experiment}", f"paths.output_dir={output_dir}", *overrides],
        )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides applied to every stage, e.g. logger=csv"
    )
    args = parser.parse_args(argv)
    from hypernet.train import run

    started = time.time()
    preview = write_preview(args.out / "preview.png")
    print(f"[1/2] data preview: {preview}")

    base_dir = args.out / "base"
    base_metrics = run(compose_experiment("base_quickstart", base_dir, args.overrides))
    gain = base_metrics["val/psnr_y"] - base_metrics["val/psnr_y_bicubic"]
    print(
        f"[2/2] stage 1 (base): val PSNR-Y {base_metrics['val/psnr_y']:.2f} dB, bicubic "
        f"{base_metrics['val/psnr_y_bicubic']:.2f} dB ({gain:+.2f} dB); run folder {base_dir}"
    )
    summary = {"seconds": round(time.time() - started, 1), "base": base_metrics}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"done in {summary['seconds']:.0f} s; per-video table: {base_dir / 'val_videos.csv'}")
    return summary


if __name__ == "__main__":
    main()
