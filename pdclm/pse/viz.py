"""Seeing the pattern stream: the entropy curve with patch boundaries, and patch statistics."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from pdclm.config import PatcherConfig  # noqa: E402


def symbol_label(s: int) -> str:
    if s >= 256:
        return {256: "<bos>", 257: "<eos>", 258: "<think>", 259: "</think>", 260: "<ans>"}.get(
            s, f"<{s}>"
        )
    ch = chr(s)
    return {"\n": "\\n", "\t": "\\t", " ": "␣"}.get(
        ch, ch if ch.isprintable() and s < 128 else f"\\x{s:02x}"
    )


def patches_text(tokens: Tensor, starts: Tensor) -> list[str]:
    """The patches of a 1-D stream, each as printable text."""
    cut = torch.nonzero(starts).flatten().tolist() + [len(tokens)]
    return ["".join(symbol_label(int(t)) for t in tokens[a:b]) for a, b in itertools.pairwise(cut)]


def plot_profile(
    tokens: Tensor,
    entropy: Tensor,
    starts: Tensor,
    path: Path,
    patcher: PatcherConfig | None = None,
) -> None:
    """Entropy (bits) per symbol with patch starts as vertical lines, symbols along the x axis."""
    n = len(tokens)
    fig, ax = plt.subplots(figsize=(max(8, n * 0.11), 3.2))
    ax.plot(range(n), entropy.tolist(), marker=".", lw=1, color="tab:blue", label="entropy (bits)")
    for i in torch.nonzero(starts).flatten().tolist():
        ax.axvline(i - 0.5, color="tab:red", lw=0.7, alpha=0.6)
    if patcher is not None and patcher.rule == "global":
        ax.axhline(patcher.threshold, color="gray", ls="--", lw=0.8, label="threshold")
    ax.set_xticks(range(n))
    ax.set_xticklabels([symbol_label(int(t)) for t in tokens], fontsize=6, family="monospace")
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylabel("bits")
    title = (
        f"bit-entropy profile; red lines = patch starts ({int(starts.sum())} patches, {n} symbols)"
    )
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_patch_lengths(pid: Tensor, path: Path) -> None:
    lengths = torch.cat([torch.bincount(row - row.min()) for row in pid]).clamp(min=1)
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(
        lengths.tolist(), bins=range(1, int(lengths.max()) + 2), color="tab:green", align="left"
    )
    ax.set_xlabel("patch length (symbols)")
    ax.set_ylabel("patches")
    ax.set_title(f"patch lengths (mean {lengths.float().mean():.2f})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
