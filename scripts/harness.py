"""What the benchmarks share: a command run in a fresh interpreter with its own peak memory, the
synthetic videos they write, the stage-2 checkpoint they need, timing, their shared options and
the `--json` figures.

Peak memory is read inside the measured process, never from the parent: on Linux ``ru_maxrss``
(``wait4``, ``getrusage(RUSAGE_CHILDREN)``) starts from the parent's high-water mark at fork, so
a small child of a large parent would report the parent's size. ``run_measured`` runs the command
under this file, which reads the child's own ``VmHWM`` (`hypernet.memory.peak_rss_mib`) as it
exits:

    python scripts/harness.py PEAK_JSON SCRIPT.py ARGS...      (or  -m MODULE ARGS...)

runs SCRIPT (or MODULE) as ``__main__`` with ARGS as its command line, then writes
``{"peak_mib": ...}`` to PEAK_JSON whatever the exit; the exit status is the command's.

The benchmarks import this module as ``harness``: a script run as ``python scripts/x.py`` has
scripts/ on its path.
"""

from __future__ import annotations

import argparse
import gc
import json
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HARNESS = Path(__file__).resolve()


@dataclass(frozen=True)
class Measured:
    """What a measured command left: its standard output and its own peak resident memory."""

    stdout: str
    peak_mib: float

    def last_json(self) -> dict:
        """The figures a benchmark child prints as its last line of output, as one JSON object."""
        return json.loads(self.stdout.strip().splitlines()[-1])


def run_measured(command: Sequence[str], *, what: str) -> Measured:
    """Run `python COMMAND` (a script and its arguments, or `-m MODULE ...`) in a fresh interpreter
    and return its output and its own peak memory. Output goes to files, so no pipe can fill up
    while it runs; a failure stops the benchmark with `what` and the command's stderr."""
    with tempfile.TemporaryDirectory() as tmp:
        peak, out, err = Path(tmp) / "peak.json", Path(tmp) / "stdout", Path(tmp) / "stderr"
        with out.open("w") as stdout, err.open("w") as stderr:
            code = subprocess.run(
                [sys.executable, str(HARNESS), str(peak), *command], stdout=stdout, stderr=stderr
            ).returncode
        if code != 0 or not peak.is_file():
            raise SystemExit(f"error: {what} failed (exit {code}):\n{err.read_text().strip()}")
        return Measured(out.read_text(), json.loads(peak.read_text())["peak_mib"])


def median_seconds(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5) -> float:
    """Median wall time of `repeats` calls of fn after `warmup` untimed ones (allocator, kernels)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def interleaved_seconds(
    fns: Mapping[str, Callable[[], object]], *, warmup: int = 3, repeats: int = 15
) -> dict[str, list[float]]:
    """Wall seconds of each call of each of `fns`, called in turn (a, b, a, b, ...) `repeats`
    times after `warmup` untimed rounds, with Python's garbage collector off while timing:
    {name: [seconds of round 1, round 2, ...]}.

    To compare two steps on a machine others share: run one batch after the other, and a burst
    of load lands on one of them and moves their ratio; interleaved, round i of each ran moments
    apart, so the median over rounds of their ratio (`median_ratio`) sees load hit both alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    collecting = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)
    finally:
        if collecting:
            gc.enable()
    return samples


def median_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """The median over rounds of numerator[i] / denominator[i] (`interleaved_seconds`' rounds)."""
    return statistics.median(n / d for n, d in zip(numerator, denominator, strict=True))


def synthetic_frames(num_frames: int, size: int, *, chunk: int = 32) -> Iterator[np.ndarray]:
    """(t, size, size, 3) uint8 chunks of a video, never held whole: a fixed texture drifting over
    a moving colour ramp (real motion and detail, so the codec and the model have work to do)."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (size, 2 * size, 3))
    yy, xx = np.mgrid[0:size, 0:size]
    for start in range(0, num_frames, chunk):
        frames = []
        for t in range(start, min(start + chunk, num_frames)):
            ramp = np.stack([(xx + 2 * t) % 128, (yy + t) % 128, (xx + yy + 3 * t) % 128], axis=-1)
            shift = t % size
            frames.append(0.5 * texture[:, shift : shift + size] + ramp)
        yield np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def require_checkpoint(path: Path) -> None:
    """Stop with one line (exit 2) when the benchmark's stage-2 checkpoint is missing, before any work."""
    if not path.is_file():
        print(
            f"error: --checkpoint {path}: no stage-2 checkpoint there; train one with `make quickstart` "
            "(from the repository root) or pass --checkpoint PATH",
            file=sys.stderr,
        )
        raise SystemExit(2)


def bench_parser(description: str, *, lengths: tuple[int, int] | None = None) -> argparse.ArgumentParser:
    """A benchmark's command line with the options the benchmarks share already on it: `--json PATH`
    (the figures as a flat dict, `write_figures`) and, for one that compares a short video with a
    long one, `--frames-small` / `--frames-large` with `lengths` as their defaults."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if lengths is not None:
        parser.add_argument("--frames-small", type=int, default=lengths[0])
        parser.add_argument("--frames-large", type=int, default=lengths[1])
    parser.add_argument("--json", type=Path, help="also write the figures here as a flat JSON dict")
    return parser


def write_figures(path: Path, figures: Mapping[str, float]) -> None:
    """The `--json` file of every benchmark: a flat dict, keys sorted, written atomically."""
    from hypernet.runs import atomic_write_text

    atomic_write_text(path, json.dumps(dict(figures), indent=2, sort_keys=True) + "\n")


def main(argv: list[str]) -> None:
    """The measured side of `run_measured`: run the command as __main__, then record VmHWM."""
    peak_file, target, *args = argv
    try:
        if target == "-m":
            module, *args = args
            sys.argv = [module, *args]
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            sys.argv = [target, *args]
            runpy.run_path(target, run_name="__main__")
    finally:
        from hypernet.files import atomic_write_text
        from hypernet.memory import peak_rss_mib

        atomic_write_text(Path(peak_file), json.dumps({"peak_mib": peak_rss_mib()}))


if __name__ == "__main__":
    main(sys.argv[1:])
