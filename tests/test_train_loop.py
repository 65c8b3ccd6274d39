"""The shared loop: loss goes down, resume is bit-exact, NaN stops before poisoning."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from pdclm.config import TrainConfig
from pdclm.train.checkpoint import latest_checkpoint, load_checkpoint
from pdclm.train.loop import MetricsLog, NonFiniteLossError, Trainer, lr_factor
from pdclm.train.objectives import lm_loss
from tests.test_model import small_model


def sampler(i: int, rows: slice = slice(None), batch: int = 2) -> tuple[torch.Tensor]:
    """Batches that depend only on their index, with learnable structure (a repeated motif)."""
    g = torch.Generator().manual_seed(i)
    motif = torch.tensor([66, 67, 68, 69, 32, 70, 10])
    start = torch.randint(0, 7, (batch,), generator=g)
    return (torch.stack([motif.roll(-int(s)).repeat(10)[:48] for s in start])[rows],)


def cfg(**kw) -> TrainConfig:
    base = TrainConfig(
        seq_len=47,
        batch=2,
        steps=12,
        lr=3e-3,
        warmup=2,
        eval_every=6,
        ckpt_every=4,
        log_every=2,
        bf16=False,
        keep_ckpts=5,
    )
    return dataclasses.replace(base, **kw)


def trainer(tmp_path, model, c: TrainConfig, **kw) -> Trainer:
    def evaluate(m):
        return lm_loss(m, sampler(10_000))[1]

    return Trainer(
        "t",
        model,
        c,
        tmp_path,
        sampler,
        lm_loss,
        log=MetricsLog(tmp_path, False),
        evaluate=evaluate,
        progress=False,
        **kw,
    )


def fresh_model():
    torch.manual_seed(0)
    m = small_model()
    for p in m.parameters():
        if p.requires_grad and p.dim() >= 2:
            torch.nn.init.normal_(p, 0, 0.02)
    return m


def test_loss_goes_down_and_metrics_are_logged(tmp_path):
    result = trainer(tmp_path, fresh_model(), cfg(steps=40, lr=1e-2)).fit()
    hist = result["history"]
    assert hist[-1]["val_bpb"] < hist[0]["val_bpb"] - 1.0, hist
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("val_bpb" in r for r in records) and any("loss" in r for r in records)


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    straight = fresh_model()
    trainer(tmp_path / "a", straight, cfg()).fit()

    def killed_at_7(i: int, rows: slice):
        if i == 7:
            raise KeyboardInterrupt  # the process dies while training step 7
        return sampler(i, rows)

    first = fresh_model()
    t = trainer(tmp_path / "b", first, cfg())
    t.sample = killed_at_7
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    assert latest_checkpoint(tmp_path / "b" / "ckpt").name == "step_0000004"
    resumed = fresh_model()  # a new process: fresh weights, state comes from the checkpoint
    trainer(tmp_path / "b", resumed, cfg()).fit(resume=True)
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b), f"{name} differs after resume"


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path):
    model = fresh_model()
    calls = {"n": 0}

    def poisoned(m, batch):
        loss, metrics = lm_loss(m, batch)
        calls["n"] += 1
        # call 1 counts the first batch's FLOPs; calls 2-6 train steps 0-4
        return (loss * float("nan") if calls["n"] > 6 else loss), metrics

    c = cfg(ckpt_every=4)
    t = Trainer("t", model, c, tmp_path, sampler, poisoned, progress=False)
    with pytest.raises(NonFiniteLossError, match="step 5"):
        t.fit()
    last = latest_checkpoint(tmp_path / "ckpt")
    assert last is not None and last.name == "step_0000004"
    check = fresh_model()
    load_checkpoint(last, check)
    assert all(torch.isfinite(p).all() for p in check.parameters())


def test_schedule_warms_up_then_decays():
    c = cfg(warmup=4, steps=20, min_lr_ratio=0.1)
    f = [lr_factor(s, c, 20) for s in range(20)]
    assert f[0] < f[3] <= 1.0 and f[4] >= f[10] >= f[19] >= 0.1
