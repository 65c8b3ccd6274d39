"""Hierarchical Memory Router: exact streaming, causality, persistence, the store, the router."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from pdclm.bench.memory import EQUAL_FLOPS, VARIANTS, bench_pse, task_batch
from pdclm.cli import main
from pdclm.config import ConfigError, load_preset, validate
from pdclm.memory.store import LongTermStore
from pdclm.memory.tasks import greedy_correct, greedy_hits, passkey
from pdclm.model.io import load_model, save_model
from pdclm.model.pdclm import PDCLM
from pdclm.model.segments import MemoryStream
from pdclm.train.loop import make_optimizer
from pdclm.vocab import VOCAB_SIZE


def memory_model(
    segment: int = 64, seed: int = 0, decoder_window: int = 0, **memory
) -> tuple[PDCLM, object]:
    """A tiny memory model with stride patches (so cuts line up) and non-silent memory reads."""
    cfg = load_preset("tiny")
    cfg.model.decoder.window = decoder_window
    mc = cfg.model.memory
    mc.enabled, mc.segment, mc.window, mc.max_phase = True, segment, 128, 4
    for k, v in memory.items():
        setattr(mc, k, v)
    cfg.pse.patcher.rule, cfg.pse.patcher.max_len, cfg.pse.patcher.target_mean = "stride", 4, 4.0
    torch.manual_seed(seed)
    model = PDCLM(cfg.pse, cfg.model)
    with torch.no_grad():
        for p in model.memory.parameters():
            p.normal_(std=0.3)
        model.memory.write.weight.mul_(0.1)
        model.memory.write.bias.fill_(3.0)  # phases get written
    return model.eval(), cfg


def letters(n: int, rows: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(97, 123, (rows, n), generator=g)


def test_disabled_memory_leaves_the_model_unchanged():
    cfg = load_preset("tiny")
    torch.manual_seed(0)
    plain = PDCLM(cfg.pse, cfg.model)
    assert plain.memory is None
    assert not any(k.startswith("memory") for k in plain.state_dict())
    cfg.model.memory.enabled = True
    torch.manual_seed(0)
    mem = PDCLM(cfg.pse, cfg.model)
    # the memory's parameters come last: everything else starts identical
    for k, v in plain.state_dict().items():
        assert torch.equal(v, mem.state_dict()[k]), k


def test_config_checks_segment_against_seq_len():
    cfg = load_preset("tiny")
    cfg.model.memory.enabled = True
    cfg.model.memory.segment = 48  # tiny seq_len 128 is no multiple
    with pytest.raises(ConfigError, match="multiple of model.memory.segment"):
        validate(cfg)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("model.memory.slot_carry", 1.5, "slot_carry must be in"),
        ("bench.memory_ramp", -0.1, "memory_ramp must be >= 0"),
        ("bench.memory_ramp", 0.8, "sum to less than 1"),
    ],
)
def test_config_rejects_out_of_range_carry_and_ramp(key, value, message):
    cfg = load_preset("tiny")
    cfg.model.memory.enabled = True
    section, name = key.rsplit(".", 1)
    obj = cfg
    for part in section.split("."):
        obj = getattr(obj, part)
    setattr(obj, name, value)
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


@pytest.mark.parametrize("tiers", [{}, {"msm": False}, {"lsm": False}, {"router": "equal"}])
def test_segments_equal_one_pass_when_the_window_covers_all(tiers):
    one, _ = memory_model(256, **tiers)
    seg, _ = memory_model(64, **tiers)
    seg.load_state_dict(one.state_dict())
    tokens = letters(257)
    with torch.no_grad():
        a, b = one(tokens), seg(tokens)
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert one.memory.last_stats["read_lsm"] == pytest.approx(seg.memory.last_stats["read_lsm"])


def test_without_ssm_segments_do_not_see_each_other():
    one, _ = memory_model(256, ssm=False, msm=False, lsm=False)
    seg, _ = memory_model(64, ssm=False, msm=False, lsm=False)
    seg.load_state_dict(one.state_dict())
    tokens = letters(257)
    with torch.no_grad():
        assert not torch.allclose(one(tokens)[:, 70:], seg(tokens)[:, 70:], atol=1e-4)


def test_generation_stream_equals_the_forward():
    model, _ = memory_model(32)
    tokens = letters(120)
    with torch.no_grad():
        full = model(tokens)
    stream = MemoryStream(model, 2)
    steps = torch.stack([stream.push(tokens[:, t]) for t in range(100)], 1)
    assert torch.allclose(steps, full[:, :100], atol=1e-5)


def test_prefill_of_a_memory_stream_equals_pushing_the_prompt():
    """With memory a prompt is still read symbol by symbol (computing only the segment ends
    and the last symbol): the same logits, state and continuation as pushing it all."""
    model, _ = memory_model(32, decoder_window=40)
    tokens = letters(100)
    with torch.no_grad():
        full = model(tokens)
    pushed, filled = MemoryStream(model, 2), MemoryStream(model, 2)
    for t in range(77):  # two whole segments and part of the third
        ref = pushed.push(tokens[:, t])
    logits = filled.prefill(tokens[:, :77])
    assert filled.state.pos == pushed.state.pos == 64
    torch.testing.assert_close(filled.pending, pushed.pending)
    for t in range(77, 99):
        torch.testing.assert_close(logits, ref, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(logits, full[:, t - 1], atol=1e-5, rtol=1e-5)
        ref, logits = pushed.push(tokens[:, t]), filled.push(tokens[:, t])


@pytest.mark.parametrize(("train", "decoder_window"), [(False, 0), (True, 0), (True, 40)])
def test_future_symbols_never_change_past_outputs(train, decoder_window):
    model, _ = memory_model(32, decoder_window=decoder_window)
    model.train(train)
    a = letters(160, seed=3)
    b = a.clone()
    b[:, 90:] = letters(70, seed=4)  # a different future from symbol 90 on
    b[:, 95] = ord(".")  # including phase ends the past never saw
    # in training most rows start from the slots a previous forward left: the same for both
    carried = torch.randn(a.shape[0], model.memory.cfg.slots, model.memory.dim)
    outs = []
    for x in (a, b):
        torch.manual_seed(0)  # the same rows carried
        model.memory.carried_slots = carried
        with torch.no_grad():
            outs.append(model(x))
    la, lb = outs
    # logits j predict symbol j+1 from symbols <= j: identical up to j = 89
    assert torch.allclose(la[:, :90], lb[:, :90], atol=1e-6)
    assert not torch.allclose(la[:, 90:], lb[:, 90:], atol=1e-3)


def test_training_rows_carry_their_slots_to_the_next_sequence():
    """``slot_carry``: a training forward leaves its final MSM slots; with carry 1 the next one
    starts every row from them (the slots it ends with follow from where it started), with
    carry 0 from the fresh slots; evaluation always starts fresh."""
    model, _ = memory_model(32, slot_carry=1.0)
    a, b = letters(96, seed=1), letters(96, seed=2)
    with torch.no_grad():
        fresh = model(b)  # eval: no carry kept
        assert model.memory.carried_slots is None
        model.train()
        model(a)
        after_a = model.memory.carried_slots
        assert after_a is not None and after_a.shape == (2, model.memory.cfg.slots, 64)
        carried = model(b)
        model.memory.carried_slots, model.memory.cfg.slot_carry = after_a, 0.0
        restarted = model(b)
        model.eval()
        model.memory.carried_slots = after_a
        assert torch.equal(model(b), fresh)
    assert not torch.allclose(carried, restarted, atol=1e-4)  # carry 1: a's slots read on
    model.train()
    with torch.no_grad():
        assert torch.allclose(model(b), restarted, atol=1e-6)  # carry 0: fresh, as in eval


def test_the_write_decision_does_not_shape_the_states():
    """The write logit learns from a zero-valued bias on its phase's recalled rows; that
    gradient must reach the write head only. Through the states it was ~35x the LM gradient
    on text rows and made training unstable, so the rest of the model's gradients may not
    depend on the write head's weights."""
    model, _ = memory_model(32, slot_carry=0.0)
    model.train()
    tokens = letters(96)

    def grads() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        model.zero_grad()
        model(tokens).float().logsumexp(-1).mean().backward()
        rest = {
            n: p.grad.clone()
            for n, p in model.named_parameters()
            if p.grad is not None and "memory.write" not in n
        }
        return rest, model.memory.write.weight.grad.clone()

    before, w_before = grads()
    with torch.no_grad():
        model.memory.write.weight.normal_(std=1.0)  # a different write decision
    after, w_after = grads()
    assert w_before.abs().sum() > 0  # the write head does learn
    assert not torch.allclose(w_before, w_after)
    for name, g in before.items():
        assert torch.allclose(g, after[name], atol=1e-6), name


def test_memory_saves_and_loads_exactly(tmp_path):
    model, _ = memory_model(32)
    tokens = letters(150, rows=1)
    whole = MemoryStream(model, 1)
    ref = [whole.push(tokens[:, t]) for t in range(150)]
    first = MemoryStream(model, 1)
    for t in range(77):  # stops mid-segment: the open segment is saved too
        first.push(tokens[:, t])
    first.save(tmp_path / "mem")
    again = MemoryStream.load(model, tmp_path / "mem")
    assert again.state.lsm is not None and int(again.state.lsm.counts().sum()) > 0
    rest = [again.push(tokens[:, t]) for t in range(77, 150)]
    assert torch.allclose(torch.stack(rest), torch.stack(ref[77:]), atol=1e-6)
    # reset: a fresh stream is the fresh model again
    fresh = MemoryStream(model, 1)
    assert torch.allclose(fresh.push(tokens[:, 0]), ref[0])
    other, _ = memory_model(32, slots=4)
    with pytest.raises(ConfigError, match="different memory config"):
        MemoryStream.load(other, tmp_path / "mem")


def test_a_decoder_window_carries_across_segments_exactly(tmp_path):
    """The decoder's byte window crosses segment cuts through carried keys/values: segments
    equal one pass when the SSM window covers all, generation equals the forward, and a saved
    and loaded stream goes on exactly."""
    one, _ = memory_model(256, decoder_window=40)
    seg, _ = memory_model(64, decoder_window=40)
    seg.load_state_dict(one.state_dict())
    tokens = letters(257)
    with torch.no_grad():
        torch.testing.assert_close(seg(tokens), one(tokens), atol=1e-5, rtol=1e-5)
    model, _ = memory_model(32, decoder_window=40)
    with torch.no_grad():
        full = model(tokens[:, :120])
    stream = MemoryStream(model, 2)
    steps = torch.stack([stream.push(tokens[:, t]) for t in range(77)], 1)
    torch.testing.assert_close(steps, full[:, :77], atol=1e-5, rtol=1e-5)
    stream.save(tmp_path / "mem")
    again = MemoryStream.load(model, tmp_path / "mem")
    assert len(again.state.dec_k) == len(model.decoder.blocks)
    rest = torch.stack([again.push(tokens[:, t]) for t in range(77, 119)], 1)
    torch.testing.assert_close(rest, full[:, 77:119], atol=1e-5, rtol=1e-5)


def test_router_gate_sums_to_one_and_starts_local():
    cfg = load_preset("tiny")
    cfg.model.memory.enabled = True
    model = PDCLM(cfg.pse, cfg.model)
    src = torch.randn(3, 5, cfg.model.latent.dim)
    g = model.memory.gate(src)
    assert torch.allclose(g.sum(-1), torch.ones(3, 5))
    assert (g[..., 0] > 0.7).all()  # favours the SSM at init
    model.memory.cfg = dataclasses.replace(model.memory.cfg, msm=False, router="equal")
    g = model.memory.gate(src)
    assert torch.allclose(g, torch.tensor([0.5, 0.0, 0.5]).expand_as(g))
    # however far the router leans, a tier that is on keeps its floor, and one off gets none
    model.memory.cfg = dataclasses.replace(model.memory.cfg, router="learned")
    with torch.no_grad():
        model.memory.router.bias.copy_(torch.tensor([40.0, 0.0, -40.0]))
    g = model.memory.gate(src)
    floor = model.memory.cfg.gate_floor
    assert torch.allclose(g.sum(-1), torch.ones(3, 5))
    assert torch.allclose(g[..., 2], torch.full((3, 5), floor)) and (g[..., 1] == 0).all()


def test_eval_top_k_sets_how_many_patches_are_recalled_outside_training():
    model, _ = memory_model(64, top_k=8, msm=False)
    x = torch.randint(0, 256, (2, 256), generator=torch.Generator().manual_seed(3))

    def logits(eval_top_k: int, train: bool = False) -> torch.Tensor:
        model.memory.cfg.eval_top_k = eval_top_k
        model.train(train)
        torch.manual_seed(0)
        with torch.no_grad():
            return model(x)

    assert torch.equal(logits(0), logits(8))  # 0: as in training
    assert not torch.allclose(logits(1), logits(8))  # fewer recalled rows, another read
    assert torch.equal(logits(1, train=True), logits(8, train=True))  # training: top_k
    model.eval()


def test_router_learns_at_its_own_rate_without_weight_decay():
    cfg = load_preset("tiny")
    cfg.model.memory.enabled, cfg.model.memory.router_lr_scale = True, 10.0
    model = PDCLM(cfg.pse, cfg.model)
    groups = make_optimizer(model, cfg.train).param_groups
    fast = [g for g in groups if g.get("lr_scale")]
    assert len(fast) == 1 and fast[0]["weight_decay"] == 0.0
    assert fast[0]["lr_scale"] == 10.0
    ids = {id(p) for p in fast[0]["params"]}
    assert id(model.memory.router.bias) in ids and id(model.memory.write.weight) in ids


def unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(1, n, d, generator=g), dim=-1)


def filled_store(keys: torch.Tensor, capacity: int | None = None) -> LongTermStore:
    store = LongTermStore.of_keys(keys, faiss_threshold=keys.shape[1], nprobe=32)
    store.capacity = capacity or store.capacity
    return store


def add_keys(store: LongTermStore, keys: torch.Tensor, clock: int) -> None:
    """Append written one-row entries with these keys (1, n, K) and no values."""
    n = keys.shape[1]
    ones = torch.ones(1, n, 1, dtype=torch.bool)
    store.add(
        keys[:, :, None],
        ones,
        torch.zeros(1, n, 1, 1),
        ones,
        torch.zeros(1, n),
        ones[..., 0],
        clock,
    )


def test_store_exact_search_returns_true_nearest_neighbours():
    keys, q = unit(500, 16, 0), unit(20, 16, 1)
    scores, pos = filled_store(keys).search(q, 5)
    true = (q[0] @ keys[0].T).topk(5, dim=-1)
    assert torch.equal(pos[0], true.indices)
    assert torch.allclose(scores[0], true.values, atol=1e-6)


def test_store_faiss_mode_has_high_recall():
    keys = unit(20_000, 16, 2)
    q = torch.nn.functional.normalize(keys[:, :200] + 0.3 * unit(200, 16, 3), dim=-1)
    store = filled_store(keys)
    with torch.no_grad():
        _, exact = store.search(q, 4)
        store.faiss_threshold = 0
        _, approx = store.search(q, 4)
    recall = np.mean(
        [
            len(set(a.tolist()) & set(b.tolist())) / 4
            for a, b in zip(exact[0], approx[0], strict=True)
        ]
    )
    assert recall >= 0.9


def test_store_searches_rows_alike_in_torch_and_faiss_across_evictions():
    """Entries of several rows: faiss (every list probed, so exact) returns the same rows as
    torch, unfindable rows never come back, and evicted entries leave the index."""
    g = torch.Generator().manual_seed(7)
    R, K = 4, 8

    def entries(n: int, seed: int):
        keys = unit(n * R, K, seed).view(1, n, R, K)
        kmask = torch.rand(1, n, R, generator=g) > 0.3
        ones = torch.ones(1, n, dtype=torch.bool)
        return keys, kmask, torch.zeros(1, n, R, 1), kmask, torch.zeros(1, n), ones

    store = LongTermStore(1, capacity=300, faiss_threshold=0, nprobe=10_000)
    store.add(*entries(300, 8), clock=0)
    q = unit(50, K, 9)
    with torch.no_grad():
        store.search(q, 6)  # builds the index
        store.add(*entries(100, 10), clock=1)  # evicts the 100 oldest entries
        _, approx = store.search(q, 6)
        store.faiss_threshold = 10**9
        s_exact, exact = store.search(q, 6)
    assert len(store) == 300 and int(store.ids.min()) == 100
    assert torch.equal(approx, exact)
    assert store.findable()[0, exact.flatten()].all() and torch.isfinite(s_exact).all()
    true = (q[0] @ store.keys.flatten(1, 2)[0].T).masked_fill(~store.findable(), -9)
    assert torch.equal(exact[0], true.topk(6, dim=-1).indices)


def test_store_evicts_the_least_recently_used():
    store = filled_store(unit(8, 4, 4), capacity=8)
    store.touch(torch.tensor([[1, 2]]), torch.tensor([[True, True]]), clock=5)
    new = unit(3, 4, 5)
    ones = torch.ones(1, 3, 1, dtype=torch.bool)
    store.add(
        new[:, :, None], ones, torch.zeros(1, 3, 1, 1), ones, torch.zeros(1, 3), ones[..., 0], 6
    )
    assert len(store) == 8
    kept = store.ids[0].tolist()
    assert 1 in kept and 2 in kept  # recently retrieved survive
    assert all(i not in kept for i in (0, 3, 4))  # the oldest unused go first
    assert kept == sorted(kept)


def test_store_evicts_phases_the_router_did_not_write_first():
    store = filled_store(unit(6, 4, 4), capacity=6)  # of_keys stores log p = 0: written
    store.logw[0, 4] = -3.0  # the router's decision: not written (p < 0.5), yet most recent
    store.touch(torch.tensor([[4]]), torch.tensor([[True]]), clock=5)
    new = unit(2, 4, 5)
    ones = torch.ones(1, 2, 1, dtype=torch.bool)
    store.add(
        new[:, :, None], ones, torch.zeros(1, 2, 1, 1), ones, torch.zeros(1, 2), ones[..., 0], 6
    )
    kept = store.ids[0].tolist()
    assert len(kept) == 6 and 4 not in kept  # the undecided phase goes before any written one
    assert 0 not in kept and all(i in kept for i in (1, 2, 3, 5, 6, 7))


def test_generate_keeps_memory_across_processes(tmp_path, capsys):
    from pdclm.cli import main
    from pdclm.model.io import save_model

    model, cfg = memory_model(32)
    save_model(model, cfg, tmp_path / "model")
    mem = tmp_path / "mem"
    args = ["generate", "--preset", "tiny", "--ckpt", str(tmp_path / "model"), "--memory", str(mem)]
    assert main([*args, "The pass key is 12345. Remember it.", "--max-bytes", "8"]) == 0
    first = json.loads((mem / "memory.json").read_text())
    assert main([*args, "What is the pass key?", "--max-bytes", "8"]) == 0
    second = json.loads((mem / "memory.json").read_text())
    assert second["pos"] > first["pos"] >= 32  # the second process went on from the first
    assert sum(second["stored_phases"]) >= sum(first["stored_phases"]) > 0
    plain = tmp_path / "plain"
    save_model(
        PDCLM(load_preset("tiny").pse, load_preset("tiny").model), load_preset("tiny"), plain
    )
    assert (
        main(["generate", "--preset", "tiny", "--ckpt", str(plain), "--memory", str(mem), "x"]) == 2
    )
    assert "model.memory.enabled" in capsys.readouterr().err


def test_bench_memory_runs_end_to_end_on_tiny(tmp_path):
    out = tmp_path / "out"
    argv = ["bench", "memory", "--preset", "tiny", "--data.dir", str(tmp_path / "data")]
    argv += ["--bench.memory-seconds=2", "--bench.memory-trials=2", "--bench.memory-docs=1"]
    argv += ["--bench.memory-store-sizes", "500", "1000", "--out", str(out)]
    assert main(argv) == 0
    result = json.loads((out / "bench_memory.json").read_text())
    assert (out / "bench_memory.png").exists() and result["finished"]
    assert set(result["variants"]) == set(VARIANTS) | {EQUAL_FLOPS}
    full, flops = result["variants"]["full"], result["variants"][EQUAL_FLOPS]
    # the equal-FLOPs baseline spends the full HMR's training FLOPs, to within one step
    spent = flops["steps"] * flops["flops_per_step"]
    assert abs(spent - full["steps"] * full["flops_per_step"]) <= flops["flops_per_step"]
    for row in result["variants"].values():
        assert set(row["passkey"]) == {"1", "4", "16", "64"} and row["long_bpb"] > 0
        assert set(row["passkey_digit"]) == set(row["passkey"])
        # a whole key right means its every digit right
        assert all(row["passkey_digit"][m] >= row["passkey"][m] for m in row["passkey"])
    assert [r["entries"] for r in result["lsm_latency"]] == [500, 1000]
    assert len(result["goals"]) == 4


@pytest.mark.parametrize("digits", [1, 5])
def test_passkey_scoring_accepts_the_key_and_rejects_a_wrong_digit(digits):
    stream, answers = passkey(np.random.default_rng(0), 256, digits=digits)
    assert len(stream) == 257 and len(answers) == digits
    key = bytes(stream[a] for a in answers)
    assert key.isdigit() and bytes(stream[1:]).count(key) >= 3  # stated twice, answered once
    perfect = torch.nn.functional.one_hot(torch.tensor(stream[1:]), VOCAB_SIZE).float()
    assert greedy_correct(perfect, stream, answers, digits) == [True]
    wrong = perfect.clone()
    last = answers[-1] - 1
    wrong[last] = 0
    wrong[last, ord("0") + (stream[answers[-1]] - ord("0") + 1) % 10] = 1  # next digit
    assert greedy_hits(wrong, stream, answers) == [True] * (digits - 1) + [False]
    assert greedy_correct(wrong, stream, answers, digits) == [False]


def test_bench_memory_reads_with_a_given_pse(tmp_path):
    """``bench.memory_pse``: the bench's model gets the given entropy model, with the patch
    rule and threshold asked for, or the PSE's own threshold when none is."""
    cfg = load_preset("tiny")
    torch.manual_seed(3)
    src = PDCLM(cfg.pse, cfg.model)
    src.threshold.fill_(2.5)
    save_model(src, cfg, tmp_path / "given")
    for threshold, rule, want in ((3.5, "global", 3.5), (0.0, "entropy_jump", 2.5)):
        bench = load_preset("tiny")
        bench.data.dir = str(tmp_path / "data")
        bench.bench.memory_pse = str(tmp_path / "given")
        bench.pse.patcher.rule, bench.pse.patcher.threshold = rule, threshold
        bench_pse(bench, tmp_path / rule)
        model, saved = load_model(tmp_path / rule / "pse")
        assert saved.pse.patcher.rule == rule and float(model.threshold) == want
        for k, v in src.entropy.state_dict().items():
            assert torch.equal(model.entropy.state_dict()[k], v), k
    bench.bench.memory_pse = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="holds no model"):
        bench_pse(bench, tmp_path / "missing-out")


def test_bench_warmup_weighs_only_the_first_key_digit_of_passkey_rows():
    """``pdclm bench memory``'s curriculum: during the warm-up a batch's loss weight sits on
    exactly one target per passkey row, its first key digit; after it on every target."""
    cfg = load_preset("tiny")
    cfg.train.batch = 16
    n = cfg.train.seq_len

    class Text:  # corpus rows: all "a", so any other symbol comes from a task row
        def batch(self, step):
            return (torch.full((cfg.train.batch, n + 1), 97),)

    tokens, weights = task_batch(3, cfg, Text(), warmup=10)
    assert tokens.shape == (16, n + 1) and weights.shape == (16, n)
    key_rows = [r for r in range(16) if b"pass key" in bytes(tokens[r].clamp(max=255).tolist())]
    assert key_rows and weights.sum() == len(key_rows)
    for r in range(16):
        hot = weights[r].nonzero().flatten().tolist()
        if r not in key_rows:
            assert hot == []
            continue
        (t,) = hot
        target, before = tokens[r, t + 1], bytes(tokens[r, t - 15 : t + 1].tolist())
        assert chr(target).isdigit() and before.endswith(b"The pass key is ")
        assert t == n - 7  # the asked key (5 digits and ".\n" end the row), not a mention
    tokens_after, weights_after = task_batch(3, cfg, Text(), warmup=3)
    assert torch.equal(tokens_after, tokens)
    heavy = (weights_after == cfg.bench.memory_key_weight).nonzero().tolist()
    assert sorted(heavy) == [[r, n - 7 + d] for r in key_rows for d in range(5)]
    assert bool((weights_after[weights_after != cfg.bench.memory_key_weight] == 1).all())
    # with a ramp every target but the first key digit rises linearly to its full weight
    kw = cfg.bench.memory_key_weight
    for step, rise in ((3, 0.25), (4, 0.5), (6, 1.0), (9, 1.0)):
        tokens_s, ramped = task_batch(step, cfg, Text(), warmup=3, ramp=4)
        _, full = task_batch(step, cfg, Text(), warmup=3)
        rows = [r for r in range(16) if b"pass key" in bytes(tokens_s[r].clamp(max=255).tolist())]
        first = torch.zeros_like(full, dtype=torch.bool)
        first[rows, n - 7] = True
        assert bool((ramped[first] == kw).all()) and bool((full[first] == kw).all())
        assert torch.allclose(ramped[~first], rise * full[~first])


def test_a_tiny_run_learns_passkey_retrieval_beyond_its_window():
    """Every row is a 1-digit passkey item read as two segments with a 4-patch SSM window, so
    when the key is asked both of its mentions are out of the window's reach: only memory can
    answer. 120 steps on the answer's loss (the warm-up of benchmarks/passkey_memory.py) take
    the held-out accuracy from chance (0.1) to most items, at the training length and at 4x."""
    cfg = load_preset("tiny")
    mc = cfg.model.memory
    mc.enabled, mc.segment, mc.window, mc.max_phase, mc.msm, mc.top_k = True, 64, 4, 16, False, 8
    cfg.pse.patcher.rule = "whitespace"  # "is |7. ": the key is the patch after "is "
    torch.manual_seed(0)
    model = PDCLM(cfg.pse, cfg.model)
    opt = make_optimizer(model, dataclasses.replace(cfg.train, lr=3e-3, weight_decay=0.0))
    rng = np.random.default_rng(0)

    def accuracy(n: int) -> float:
        items = [passkey(np.random.default_rng(n), n, digits=1) for _ in range(40)]
        model.eval()
        with torch.no_grad():
            logits = model(torch.tensor([s for s, _ in items]))
        model.train()
        hits = [greedy_hits(lg, s, a) for lg, (s, a) in zip(logits, items, strict=True)]
        return float(np.mean(hits))

    before = accuracy(128)
    for _ in range(120):
        items = [passkey(rng, 128, digits=1) for _ in range(16)]
        x, at = torch.tensor([s for s, _ in items]), torch.tensor([a[0] for _, a in items])
        logits = model(x)[torch.arange(len(x)), at - 1]
        loss = torch.nn.functional.cross_entropy(logits, x[torch.arange(len(x)), at])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert before < 0.3
    assert accuracy(128) >= 0.7
    assert accuracy(512) >= 0.4
