"""The configs/ folder, composed without a command line: `make quickstart`, the benchmark scripts
and the tests build their runs and systems from the same configs `python -m hypernet.train` reads,
through Hydra's compose API."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


def compose_config(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """configs/<name>.yaml with Hydra overrides, e.g. compose_config("train", ["stage=hyper"])."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))
