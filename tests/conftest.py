"""Shared fixtures: a tiny config and a tiny corpus prepared once per session."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from pdclm.config import Config, load_preset


def tiny_config(tmp: Path | None = None) -> Config:
    cfg = load_preset("tiny")
    if tmp is not None:
        cfg.data.dir = str(tmp / "data")
    return cfg


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return tiny_config(tmp_path)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A folder of small text files with learnable structure (repeated phrases)."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "print", "return", "value", "index", "(x)", "= 1"]
    for i in range(40):
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(60)]
        (root / f"doc{i:03d}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
