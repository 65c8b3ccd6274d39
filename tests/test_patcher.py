"""Patcher properties: cover every byte once, cap, prefix stability, calibration to target."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pdclm.config import PatcherConfig
from pdclm.pse.patcher import calibrate, mean_patch_length, patch_ids, patch_starts

RULES = ("entropy_jump", "global", "stride", "whitespace")

streams = st.lists(
    st.tuples(st.sampled_from([10, 32, 65, 97, 98, 0, 255, 257]), st.floats(0, 8)),
    min_size=1,
    max_size=120,
)


def as_tensors(stream):
    tokens = torch.tensor([[t for t, _ in stream]])
    entropy = torch.tensor([[e for _, e in stream]], dtype=torch.float32)
    return tokens, entropy


@settings(max_examples=60, deadline=None)
@given(
    stream=streams,
    rule=st.sampled_from(RULES),
    max_len=st.integers(1, 9),
    threshold=st.floats(-2, 6),
)
def test_patches_cover_every_byte_once_and_respect_max_len(stream, rule, max_len, threshold):
    tokens, entropy = as_tensors(stream)
    cfg = PatcherConfig(rule=rule, max_len=max_len)
    starts = patch_starts(tokens, entropy, cfg, threshold)
    assert starts[0, 0]
    pid = patch_ids(starts)[0]
    # ids are 0..P-1, non-decreasing by steps of 0/1: each byte in exactly one contiguous patch
    assert pid[0] == 0 and set(torch.diff(pid).tolist()) <= {0, 1}
    assert torch.bincount(pid).max() <= max_len


@settings(max_examples=60, deadline=None)
@given(
    stream=streams,
    extra=streams,
    rule=st.sampled_from(RULES),
    max_len=st.integers(1, 9),
    threshold=st.floats(-2, 6),
)
def test_patching_a_prefix_never_changes_when_bytes_are_appended(
    stream, extra, rule, max_len, threshold
):
    cfg = PatcherConfig(rule=rule, max_len=max_len)
    tokens, entropy = as_tensors(stream)
    longer_t, longer_e = as_tensors(stream + extra)
    short = patch_starts(tokens, entropy, cfg, threshold)
    longer = patch_starts(longer_t, longer_e, cfg, threshold)
    assert torch.equal(short[0], longer[0, : len(stream)])


def test_forced_starts_after_newline_and_control_symbols():
    tokens = torch.tensor([[65, 10, 66, 67, 257, 256, 68]])
    entropy = torch.zeros(1, 7)
    starts = patch_starts(tokens, entropy, PatcherConfig(rule="global", max_len=16), 100.0)
    assert starts[0].tolist() == [True, False, True, False, False, True, True]


def test_calibration_hits_the_target_mean_length():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 256, (8, 2048), generator=gen)
    # a bumpy profile like a real entropy model's: smooth drift plus spikes
    entropy = torch.rand(8, 2048, generator=gen) * 2 + 3 * (
        torch.rand(8, 2048, generator=gen) > 0.8
    )
    for rule in ("entropy_jump", "global"):
        for target in (3.0, 4.5, 6.0):
            cfg = PatcherConfig(rule=rule, target_mean=target, max_len=16)
            thr = calibrate(tokens, entropy, cfg)
            got = mean_patch_length(patch_starts(tokens, entropy, cfg, thr))
            assert abs(got - target) / target < 0.10, (rule, target, got)
