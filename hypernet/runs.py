"""Everything a run leaves in its output folder so it can be understood and rerun months later:
the resolved config, the command line, the git commit and diff, the seed, the environment's
versions, the logger's run id, and at the end `metrics.json` (a flat dict, keys as logged).

`run.json` keeps every attempt of the run (a resume in place adds one): its status (`running`,
`finished`, `failed` with the error, `terminated` by SIGTERM or Ctrl-C), start and end time,
process id and host. A process killed outright (SIGKILL, out of memory) cannot say so itself:
`read_run` reports a `running` attempt whose process is gone from this host as `killed`.

The Hydra entry points (`python -m hypernet.train`, `hypernet.eval`) share their command-line
behaviour here: `run_command` turns a bad override or a refused run into one line `error: ...`
and exit code 2, with no run folder left behind (`NoteNewRunFolders`), and SIGTERM and Ctrl-C
into one line and exit code 143 or 130; `check_run_folder` keeps a new run out of a folder that holds another run's results."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from hypernet.files import atomic_write_bytes, atomic_write_text, default_file_mode  # noqa: F401 (re-exported)

# The stage-2 checkpoint `make quickstart` writes (chosen on the validation scenes), relative to the
# repository root where the README's commands run: what specialise and finetune use by default.
DEFAULT_CHECKPOINT = Path("outputs/quickstart/hyper/checkpoints/best.ckpt")


# What a run's code is: the tree without results and run outputs. A diff of the whole tree would
# carry earlier runs' committed results (and their own diffs) into every new run folder.
SOURCE_PATHSPEC = (".", ":(exclude)experiments", ":(exclude)outputs")


def _git(*args: str) -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout


def environment_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for package in (
        "torch",
        "torchvision",
        "lightning",
        "hydra-core",
        "omegaconf",
        "numpy",
        "av",
        "wandb",
        "einops",
    ):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = "not installed"
    try:
        import torch

        versions["cuda"] = str(torch.version.cuda)
        versions["cuda_available"] = str(torch.cuda.is_available())
    except ImportError:
        pass
    return versions


# ----------------------------------------------------------------------------------------------
# run.json: one record per attempt of the run

# what marks a folder as holding a run's results, which a new run there would replace
RUN_MARKERS = ("run.json", "metrics.json", "checkpoints")
# ckpt_path values that Lightning resolves inside the run's own checkpoints/ folder
IN_PLACE_CKPT_NAMES = ("last", "best", "hpc")
# fields of run.json that belong to the run, not to one attempt
RUN_FIELDS = ("seed", "environment", "attempts")


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")  # local time, with its offset


def command_overrides() -> list[str]:
    """The overrides of the command line that started this Hydra run; [] when composed without
    @hydra.main (tests, notebooks)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


def start_attempt(output_dir: str | Path, cfg: DictConfig, *, logger_ids: Mapping[str, str]) -> None:
    """Record a new attempt of the run (rank 0, before training): config.yaml, git.diff and
    run.json. A resume in place keeps the earlier attempts of run.json (`read_run`: one that was
    killed is recorded so); config.yaml and git.diff are the latest attempt's."""
    output_dir = Path(output_dir)
    earlier = read_run(output_dir)
    atomic_write_text(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    overrides = command_overrides()
    attempt = {
        "status": "running",  # rewritten by end_attempt: "finished", "terminated", or "failed" with the error
        "started": _now(),
        "ended": None,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "overrides": overrides,
        "ckpt_path": None if cfg.get("ckpt_path") is None else str(cfg.ckpt_path),
        "git_commit": _git("rev-parse", "HEAD").strip() or "unknown",
        "git_dirty": bool(_git("status", "--porcelain", "--", *SOURCE_PATHSPEC).strip()),
        "logger_run_ids": dict(logger_ids),
    }
    attempts = [*(earlier["attempts"] if earlier else []), attempt]
    _write_run(
        output_dir, {"seed": int(cfg.seed), "environment": environment_versions(), "attempts": attempts}
    )
    atomic_write_text(output_dir / "git.diff", _git("diff", "HEAD", "--", *SOURCE_PATHSPEC))


def _write_run(output_dir: Path, record: Mapping[str, Any]) -> None:
    """run.json: the latest attempt's fields at the top level (status, error, command: what a
    reader of one run wants), then the seed, the environment and every attempt, oldest first."""
    text = json.dumps({**record["attempts"][-1], **{k: record[k] for k in RUN_FIELDS}}, indent=2)
    atomic_write_text(output_dir / "run.json", text)


def read_run(output_dir: str | Path) -> dict[str, Any] | None:
    """The run's record in `output_dir/run.json` (None when there is none), every attempt under
    "attempts". A `running` attempt whose process is gone from this host reads as `killed`:
    SIGKILL, the out-of-memory killer or a crashed machine leave no handler to say so. What runs
    on another host cannot be seen from here and stays `running`."""
    path = Path(output_dir) / "run.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{path} cannot be read as a run record ({e}); move it aside to reuse its folder"
        ) from e
    attempts = record.get("attempts")
    if attempts is None:  # written before run.json kept attempts: the record is its one attempt
        attempts = [{k: v for k, v in record.items() if k not in RUN_FIELDS}]
    for attempt in attempts:
        if attempt.get("status") == "running" and process_gone(attempt):
            attempt["status"] = "killed"
    return {
        **attempts[-1],
        "seed": record.get("seed"),
        "environment": record.get("environment"),
        "attempts": attempts,
    }


def process_gone(attempt: Mapping[str, Any]) -> bool:
    """Whether the process of a `running` attempt is known to be gone: it ran on this host and no
    live process holds its id, or the one that does started after the attempt did (the id was
    reused). This very process counts as gone: its own earlier attempt is not another run."""
    pid, host = attempt.get("pid"), attempt.get("host")
    if not isinstance(pid, int) or host != socket.gethostname():
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: it exists
        pass
    info = _process_start_and_state(pid)
    if info is None:  # no /proc: the id is taken, so take it as the attempt's
        return False
    started, state = info
    if state in ("Z", "X"):  # a zombie, or dead: no longer running
        return True
    try:
        recorded = datetime.fromisoformat(attempt["started"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return False
    return started > recorded + 2  # times are kept to the second


def _process_start_and_state(pid: int) -> tuple[float, str] | None:
    """A process's start (Unix time) and state letter from Linux's /proc; None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (command) ": state is field 3
        ticks = int(fields[19])  # field 22: start time, clock ticks after boot
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK"), fields[0]
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def how_it_ended(error: BaseException | None) -> tuple[str, dict[str, str] | None]:
    """An attempt's status and error record: finished; terminated (SIGTERM or Ctrl-C: stopped from
    outside, resume it); or failed, with the error's type and message."""
    from hypernet.cli_checks import SIGTERM_EXIT  # imported here: this module stays free of torch

    if error is None:
        return "finished", None
    # SIGTERM: SystemExit(143) from cli_checks.sigterm_unwinds, or Lightning's own SIGTERMException
    if isinstance(error, SystemExit) and (
        error.code == SIGTERM_EXIT or type(error).__name__ == "SIGTERMException"
    ):
        return "terminated", {"type": "SIGTERM", "message": f"stopped by SIGTERM (exit code {SIGTERM_EXIT})"}
    # Lightning turns Ctrl-C into sys.exit(1): the interrupt is the cause, not "SystemExit: 1"
    cause = error.__context__ if isinstance(error, SystemExit) and error.__context__ is not None else error
    if isinstance(cause, KeyboardInterrupt):
        return "terminated", {"type": "KeyboardInterrupt", "message": "stopped by Ctrl-C"}
    return "failed", {"type": type(cause).__name__, "message": str(cause)}


def end_attempt(output_dir: str | Path, error: BaseException | None = None) -> None:
    """Record how the latest attempt ended (`how_it_ended`) and when, so that a folder left by a
    crash or a kill does not pass for a finished run."""
    path = Path(output_dir) / "run.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):  # never written (not rank 0) or unreadable: nothing to mark
        return
    status, detail = how_it_ended(error)
    latest = record["attempts"][-1]
    latest.update(status=status, ended=_now())
    if detail is not None:
        latest["error"] = detail
    _write_run(path.parent, record)


def check_run_folder(output_dir: str | Path, *, ckpt_path: str | None = None, resumable: bool = True) -> None:
    """Keep a new run out of a folder that holds another run's results (RUN_MARKERS): it would
    replace that run's checkpoints, metrics.json, run.json and config.yaml. A resume in place
    (`ckpt_path` inside that folder, or last/best/hpc) is allowed, unless the run is still
    running on this host. Called before anything is written, on a run's first process only (the
    others find the folder it has begun to fill)."""
    folder = Path(output_dir)
    where = f"the run folder {folder} (hydra.run.dir / paths.output_dir)"
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{where} is a file, not a folder: choose a folder for the run")
    found = [name for name in RUN_MARKERS if (folder / name).exists()]
    if not found:
        return
    record = read_run(folder) if (folder / "run.json").is_file() else None
    if record is not None and record["status"] == "running" and record.get("host") == socket.gethostname():
        raise ValueError(
            f"{where} holds a run that is still running (process {record.get('pid')}): stop it "
            "before resuming it, or choose another folder"
        )
    if resumable and ckpt_path is not None and resumes_in_place(folder, ckpt_path):
        return
    if resumable and not holds_results(folder, record):
        return  # an attempt that ended before any result (a job requeued early): start again, its record kept
    resume = (
        f", or resume that run in place with ckpt_path={folder / 'checkpoints' / 'last.ckpt'}"
        if resumable
        else ""
    )
    raise ValueError(
        f"{where} already holds a run ({', '.join(found)}), which a new run would overwrite: choose another "
        f"folder{resume}"
    )


def holds_results(folder: Path, record: dict | None) -> bool:
    """Whether a run folder holds what a new run would destroy: a finished run, its metrics, or
    any checkpoint. An attempt killed before its first checkpoint holds only its record, which a
    new attempt keeps (run.json's attempts)."""
    checkpoints = folder / "checkpoints"
    return (
        (record is not None and record["status"] == "finished")
        or (folder / "metrics.json").exists()
        or (checkpoints.is_dir() and any(checkpoints.iterdir()))
    )


def resumes_in_place(output_dir: str | Path, ckpt_path: str) -> bool:
    """Whether resuming from `ckpt_path` continues the run of `output_dir` (its file lies inside)."""
    if str(ckpt_path) in IN_PLACE_CKPT_NAMES:
        return True
    return Path(output_dir).resolve() in Path(ckpt_path).resolve().parents


def write_metrics(output_dir: str | Path, metrics: Mapping[str, Any]) -> None:
    flat = {k: float(v) for k, v in metrics.items()}
    atomic_write_text(Path(output_dir) / "metrics.json", json.dumps(flat, indent=2, sort_keys=True))


def read_table_csv(path: str | Path) -> list[dict[str, str]]:
    """A table write_table_csv wrote (a run's per-video tables, eval's results.csv): rows of
    dicts of strings."""
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def write_table_csv(path: str | Path, rows: list[Mapping[str, Any]]) -> None:
    """Rows of dicts (same keys) as CSV, numbers with 4 decimals; a text holding a comma or a
    quote is quoted (a guard's reason, say)."""
    if not rows:
        return
    keys = list(rows[0])
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(keys)
    for row in rows:
        writer.writerow(f"{row[k]:.4f}" if isinstance(row[k], float) else str(row[k]) for k in keys)
    atomic_write_text(path, text.getvalue())


# ----------------------------------------------------------------------------------------------
# the Hydra entry points as command-line tools


class RunRefused(SystemExit):
    """A run refused before it wrote anything: exit code 2, and `run_command` prints its one-line
    message as `error: ...`. A SystemExit, so that it passes Hydra's job runner and callbacks,
    which catch every Exception to print their own report or to swallow it as a warning."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def one_line(error: BaseException) -> str:
    """The message of a bad option as one line: Hydra's and OmegaConf's span several (the
    choices of a config group, the config search path, the key's context)."""
    from hydra.errors import InstantiationException, MissingConfigException, OverrideParseException
    from omegaconf.errors import MissingMandatoryValue

    if isinstance(error, MissingConfigException) and error.options and error.missing_cfg_file:
        group, _, name = error.missing_cfg_file.rpartition("/")
        return f"{group}={name} is not a choice of configs/{group}/; choose one of {', '.join(error.options)}"
    if isinstance(error, MissingMandatoryValue) and getattr(error, "full_key", None):
        return f"{error.full_key} must be given (it has no default), e.g. {error.full_key}=..."
    if isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    skipped = ("See https://", "full_key:", "object_type=", "reference_type=")
    lines = [line.strip() for line in str(error).splitlines()]
    message = (
        " ".join(line for line in lines if line and not line.startswith(skipped)) or type(error).__name__
    )
    if isinstance(error, OverrideParseException) and error.override and error.override not in message:
        message = f"cannot read the override {error.override!r}: {message}"
    return message


@contextlib.contextmanager
def refusals() -> Iterator[None]:
    """Inside: a bad option, input or folder (ValueError, TypeError, OSError, Hydra's, OmegaConf's
    and Lightning's configuration errors) becomes RunRefused with its one-line message. Wraps an
    entry point's checks on the command line; `run(cfg)` itself raises the errors as they are."""
    from hydra.errors import HydraException
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from omegaconf.errors import OmegaConfBaseException

    try:
        yield
    except (
        ValueError,
        TypeError,
        OSError,
        HydraException,
        OmegaConfBaseException,
        MisconfigurationException,
    ) as e:
        raise RunRefused(one_line(e)) from e


def launched_as_rank_zero() -> bool:
    """Whether this process is the first of its run, by what launchers set (torchrun: RANK,
    SLURM's srun: SLURM_PROCID, Lightning's ddp: LOCAL_RANK and NODE_RANK); read before any
    Trainer exists. A process started by hand is."""
    return all(
        os.environ.get(name, "0") == "0" for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")
    )


# The folders Hydra is about to make for this process's run (NoteNewRunFolders), innermost first:
# run_command removes them, still empty, when the run is refused.
_new_run_folders: list[Path] = []


class NoteNewRunFolders(Callback):
    """Hydra makes the run folder, and its missing parents, before it calls the task function,
    whose checks may then refuse the run. This Hydra callback notes which of those folders do not
    exist yet, so that `run_command` can remove them after a refusal: a refused run leaves nothing
    behind (configs/hydra/default.yaml turns off the rest of what Hydra writes, .hydra/ and its
    log file). Resolving hydra.run.dir here also fixes its `${now:...}` for Hydra, which reads
    the same config next."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(os.path.abspath(str(config.hydra.run.dir)))
        _new_run_folders[:] = [f for f in (folder, *folder.parents) if not f.exists()]


def _remove_new_run_folders() -> None:
    for folder in _new_run_folders:
        try:
            folder.rmdir()  # only while empty: whatever another process put there stays
        except OSError:
            break
    _new_run_folders.clear()


def run_command(hydra_main: Callable[[], Any]) -> None:
    """Run an entry point's @hydra.main function as a command-line tool by the house rules: a bad
    override (an unknown group choice or key, a syntax error) or a refused run (RunRefused) is
    one line `error: ...` on stderr and exit code 2, with nothing written; SIGTERM and Ctrl-C
    unwind, so that the run records them, and end in one line and exit code 143 or 130
    (cli_checks.signals_end_in_one_line); a warning the user acts on is one line too
    (cli_checks.warnings_as_lines). A crash keeps its traceback (exit code 1). Hydra would
    print its own multi-line report of a bad override and exit 1: with HYDRA_FULL_ERROR=1 it
    raises the error instead, here and in the processes DDP starts."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    os.environ["HYDRA_FULL_ERROR"] = "1"
    from hypernet.cli_checks import signals_end_in_one_line, warnings_as_lines

    try:
        with signals_end_in_one_line(), warnings_as_lines():
            try:
                hydra_main()
            except SystemExit as e:  # Lightning ends a fit stopped by Ctrl-C with sys.exit(1)
                if isinstance(e.__context__, KeyboardInterrupt) and not isinstance(e, RunRefused):
                    raise KeyboardInterrupt from None
                raise
    except RunRefused as e:
        _remove_new_run_folders()
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except (HydraException, OmegaConfBaseException) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None
