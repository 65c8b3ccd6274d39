"""Semantic phases: runs of patches that belong together, the unit the memory router works in.

A phase ends after a patch whose last symbol closes a line or a sentence (newline, ``.!?;``,
or one of ``.!?;:`` followed by a space), after a control symbol, where the next patch starts
with a surprise of at least ``phase_entropy`` bits (the PSE profile at a coarser level than
the patch rule), after ``max_phase`` patches, and at the end of every segment. Each rule reads
only the symbols of the patch that ends (and the entropy of the symbol after it, which is
computed from the past), so whether patch p ends a phase is known as soon as patch p is
complete: a phase boundary never depends on the future.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pdclm.vocab import NEWLINE

_CLOSERS = torch.tensor([ord(c) for c in ".!?;"])
_SOFT = torch.tensor([ord(c) for c in ".!?;:"])
_SPACE = ord(" ")


def closes_phase(inputs: Tensor) -> Tensor:
    """(B, T) bool: the symbol at t closes a line or sentence (reads t-1 and t only)."""
    closers, soft = _CLOSERS.to(inputs.device), _SOFT.to(inputs.device)
    prev = F.pad(inputs, (1, 0), value=0)[:, :-1]
    hard = (inputs == NEWLINE) | (inputs >= 256) | torch.isin(inputs, closers)
    return hard | ((inputs == _SPACE) & torch.isin(prev, soft))


def phase_ends(
    inputs: Tensor,
    starts: Tensor,
    entropy: Tensor,
    n_real: Tensor,
    n_patches: int,
    max_phase: int,
    phase_entropy: float,
    segment_complete: bool,
) -> Tensor:
    """(B, P) bool: patch p ends a phase.

    ``inputs`` (B, T) are the segment's symbols, ``starts``/``entropy`` (B, T + 1) cover them
    and the symbol after (whose patch start and entropy are known from the past). Padding
    patches (index >= ``n_real``) never end a phase.
    """
    B, T = inputs.shape
    last = starts[:, 1:]  # symbol t is the last of its patch
    pid = starts[:, :T].long().cumsum(1) - 1
    flag = closes_phase(inputs) & last
    if phase_entropy > 0:
        flag |= last & (entropy[:, 1:] >= phase_entropy)
    ends = torch.zeros(B, n_patches, dtype=torch.bool, device=inputs.device)
    ends = ends.scatter_reduce(1, pid, flag, reduce="amax")
    idx = torch.arange(n_patches, device=inputs.device)[None, :].expand(B, -1)
    real = idx < n_real[:, None]
    if segment_complete:  # the segment's last patch always ends a phase
        ends |= idx == (n_real[:, None] - 1)
    # the max_phase cap: count patches since the last end (phases restart after each end)
    prev_end = F.pad(ends, (1, 0), value=True)[:, :-1]
    run_start = torch.where(prev_end, idx, torch.zeros_like(idx)).cummax(1).values
    ends |= (idx - run_start + 1) % max_phase == 0
    return ends & real


def phase_ids(ends: Tensor) -> Tensor:
    """(B, P) index of each patch's phase within the segment (a phase starts after an end)."""
    start = F.pad(ends, (1, 0), value=True)[:, :-1]
    return start.long().cumsum(1) - 1
