"""Benchmarks and baselines: BPE units and round trips, noise rates, cached baseline
generation, every ``pdclm bench`` end to end on the tiny preset, the claims table."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from pdclm.bench.baselines import (
    BPETokenizer,
    TokenTransformer,
    bpe_bpb,
    byte_runs,
    matched_transformer,
    non_embedding_params,
)
from pdclm.eval import claims
from pdclm.eval.noise import KINDS, MIXED, add_noise, noisy_symbols
from pdclm.vocab import BOS, EOS

TEXT = (
    "def f(x):\n    return x * 2  # double it\n\nclass Point:\n    'a point'\n" * 30
).encode() + "naïve café — ünïcode\n".encode()


def symbols(data: bytes) -> np.ndarray:
    return np.array([BOS, *data, EOS, BOS, *data[:50], EOS], dtype=np.uint16)


def test_bpe_round_trips_any_bytes_and_counts_them():
    tok = BPETokenizer.train(byte_runs(symbols(TEXT)), 400)
    assert 257 < tok.vocab_size <= 400  # merges stop when no pair repeats
    rng = random.Random(0)
    for data in (TEXT, bytes(range(256)), bytes(rng.randrange(256) for _ in range(500)), b""):
        ids = tok.encode(data)
        assert tok.decode(ids) == data
        assert int(tok.token_bytes[ids].sum()) == len(data)
    s = symbols(TEXT)
    ids = tok.encode_symbols(s)
    assert ids.count(tok.sep) == int((s >= 256).sum())
    assert tok.decode(ids) == bytes(int(x) for x in s if x < 256)
    assert len(ids) < 0.6 * len(s)  # merges were learnt: fewer tokens than bytes


@pytest.mark.parametrize("vocab", [257, 400])
def test_bpe_bits_per_byte_of_a_uniform_model(vocab):
    """A model that gives every token the same probability costs log2(V) bits per token, so
    its bits per byte are log2(V) * tokens / bytes; with no merges (V = 256 + separator) that
    is ~8, the byte models' uniform figure: the units are right."""
    tok = BPETokenizer.train(byte_runs(symbols(TEXT)), vocab)
    model = TokenTransformer(16, 1, 2, vocab=tok.vocab_size)
    torch.nn.init.zeros_(model.head.weight)  # uniform logits
    windows = [symbols(TEXT)[i : i + 200] for i in range(0, 1000, 200)]
    got = bpe_bpb(model, tok, windows)
    tokens = bytes_ = 0
    for w in windows:
        ids = tok.encode_symbols(w)[1:]  # the first token of a window is not predicted
        real = [i for i in ids if tok.token_bytes[i] > 0]
        tokens, bytes_ = tokens + len(real), bytes_ + int(tok.token_bytes[real].sum())
    assert got == pytest.approx(math.log2(tok.vocab_size) * tokens / bytes_, rel=1e-4)
    if vocab == 257:
        assert got == pytest.approx(8.0, abs=0.01)


def test_baselines_match_params_and_stream_equals_forward():
    m = matched_transformer(500_000, 64, 2, 8 / 3, vocab=1000)
    per_layer = sum(p.numel() for p in m.stack.blocks[0].parameters())
    assert abs(non_embedding_params(m) - 500_000) <= per_layer
    model = TokenTransformer(32, 2, 2, vocab=300).eval()
    x = torch.randint(0, 300, (2, 30))
    with torch.no_grad():
        full = model(x)
        stream = model.start_stream(2)
        steps = torch.stack([stream.push(x[:, t]) for t in range(29)], dim=1)
    torch.testing.assert_close(steps, full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", [*KINDS, MIXED])
@pytest.mark.parametrize("rate", [0.02, 0.05, 0.1])
def test_noise_touches_the_stated_share_of_bytes(kind, rate):
    data = TEXT[:2000]
    n = len(data)
    out = add_noise(data, rate, kind, random.Random(1))
    k = round(rate * n)
    if kind == "drop":
        assert len(out) == n - k
    elif kind == "space":
        assert len(out) == n + k and out.replace(b"  ", b" ") != out
    elif kind in ("case", "typo"):
        assert len(out) == n
        changed = sum(a != b for a, b in zip(data, out, strict=True))
        assert abs(changed - k) <= 1, (changed, k)
        assert out.lower() == data.lower() if kind == "case" else sorted(out) == sorted(data)
    else:
        assert out != data
        assert abs(len(out) - n) <= k
    assert add_noise(data, 0.0, kind, random.Random(1)) == data


def test_noise_respects_the_allowed_mask_and_control_symbols():
    data = TEXT[:400]
    allowed = np.zeros(len(data), dtype=bool)
    allowed[:100] = True
    out = add_noise(data, 0.1, "case", random.Random(0), allowed)
    assert out[100:] == data[100:] and out[:100] != data[:100]
    s = np.concatenate([symbols(TEXT[:200])] * 3).astype(np.int64)
    noisy = noisy_symbols(s, 0.1, MIXED, random.Random(0), 600)
    controls = noisy[noisy >= 256]
    assert len(noisy) == 600 and len(controls) >= 8  # control symbols stay, in order
    assert (controls == s[s >= 256][: len(controls)]).all()
    with pytest.raises(ValueError, match="unknown noise kind"):
        add_noise(data, 0.1, "shout", random.Random(0))


def test_claim_verdicts_follow_the_numbers(tmp_path):
    assert claims.threshold_verdict(1.2, 1.15, True) == "holds"
    assert claims.threshold_verdict(1.1, 1.15, True) == "does not hold"
    assert claims.threshold_verdict(0.85, 0.9, False) == "holds"
    assert claims.threshold_verdict(None, 0.9, False) == "not measurable at this size"
    # 3 of 78 right either way: a ratio of 1.5 inside the noise is not a verdict
    small = {
        "items": 78,
        "plain": {"clean": 0.077, "perturbed": 0.038, "retained": 0.5},
        "reflect": {"clean": 0.051, "perturbed": 0.038, "retained": 0.75},
    }
    assert claims.robustness_row(small, "x")["verdict"] == "not measurable at this size"
    big = {
        "items": 1000,
        "plain": {"clean": 0.6, "perturbed": 0.3, "retained": 0.5},
        "reflect": {"clean": 0.6, "perturbed": 0.45, "retained": 0.75},
    }
    assert claims.robustness_row(big, "x")["verdict"] == "holds"
    with pytest.raises(ValueError):
        claims.row("c", "m", 1.0, 1.0, "probably", "s")
    # bench JSONs with rows are read and labelled; run reports and claim tables are not
    r = claims.row(claims.CLAIMS["human"], "m", 2.0, 4.0, "holds", "pdclm bench human")
    (tmp_path / "human_cpu.json").write_text(json.dumps({"claims": [r], "finished": "today"}))
    saved_run = {"run": {}, "config": {}, "claims": {"claims": [r]}, "phase3": {"robustness": big}}
    (tmp_path / "main_cpu_report.json").write_text(json.dumps(saved_run))
    got = claims.collect({"phase3": {"robustness": small}}, tmp_path)
    names = [c["claim"] for c in got["claims"]]
    keys = ("speed", "memory", "robustness", "robustness", "human")
    assert names == [claims.CLAIMS[k] for k in keys]  # one row per claim and source
    human = got["claims"][-1]
    assert human["ratio"] == 0.5 and "human_cpu.json" in human["source"]
    assert got["claims"][0]["verdict"] == "not measurable at this size"  # no speed figure
    robust = [c for c in got["claims"] if c["claim"] == claims.CLAIMS["robustness"]]
    assert [c["source"] for c in robust] == [
        "this run (Phase 3 robustness)",
        f"{(tmp_path / 'main_cpu_report.json').as_posix()} (saved run report)",
    ]
    assert "| claim |" in claims.markdown(got)


def test_every_bench_runs_end_to_end_on_tiny(tmp_path, corpus):
    """pretrain (every model, spawned), generate and noise on its saved models, scaling at
    three sizes: one folder, each JSON with every field, the claims table from them."""
    from pdclm.cli import main
    from tests.test_pipeline import common

    out = tmp_path / "b"
    args = [
        *common(tmp_path, corpus)[:-1],  # no --no-progress: bench shows the trainers' bars
        "--bench.seconds",
        "1",
        "--bench.scaling-seconds",
        "0.5",
        "--bench.scaling-dims",
        "32",
        "64",
        "96",
        "--bench.bpe-vocab",
        "300",
        "--bench.gen-bytes",
        "24",
        "--bench.gen-prompts",
        "2",
        "--bench.noise-batches",
        "1",
        "--bench.noise-rates",
        "0.05",
        "--train.eval-batches",
        "1",
        "--out",
        str(out),
        "--publish",
        str(tmp_path / "pub"),
        "--json",
        str(tmp_path / "all.json"),
    ]
    assert main(["bench", "all", *args]) == 0
    pre = json.loads((out / "bench_pretrain.json").read_text())
    assert set(pre["models"]) == {"pdclm", "pdclm_stride", "pdclm_whitespace", "byte", "bpe"}
    fields = ("val_bpb", "bytes_per_s", "bytes_per_s_with_prep", "peak_rss_mb", "flops_per_s")
    for name, r in pre["models"].items():
        for f in (*fields, "mfu", "params", "non_embedding_params", "flops_per_byte"):
            assert r[f] > 0, (name, f)
        assert 0 < r["val_bpb"] < 9 and len(r["curve"]) >= 2
    assert pre["models"]["pdclm_stride"]["patch_rule"] == "stride"
    assert pre["models"]["bpe"]["prep_seconds"] > 0 and pre["prep"]["pse_seconds"] > 0
    target = pre["models"]["pdclm"]["non_embedding_params"]
    for base in ("byte", "bpe"):  # equal non-embedding parameters, within one layer
        assert abs(pre["models"][base]["non_embedding_params"] - target) < 0.5 * target
    assert {r["claim"] for r in pre["claims"]} == {claims.CLAIMS["speed"], claims.CLAIMS["memory"]}
    gen = json.loads((out / "bench_generate.json").read_text())
    for r in gen["models"].values():
        assert r["bytes_per_s"] > 0 and r["bytes"] >= 2 * 24
    noise = json.loads((out / "bench_noise.json").read_text())
    assert "mixed@0.05" in noise["models"]["bpe"]["degradation"]
    for r in noise["models"].values():
        assert set(r["bpb"]) == set(noise["conditions"])
    sc = json.loads((out / "bench_scaling.json").read_text())
    assert [s["latent_dim"] for s in sc["sizes"]] == [32, 64, 96]
    params = [s["models"]["pdclm"]["non_embedding_params"] for s in sc["sizes"]]
    assert params == sorted(params) and set(sc["gap_direction"]) == {"byte", "bpe"}
    for w in ("pretrain", "generate", "noise", "scaling"):
        assert (out / f"bench_{w}.png").exists()
        assert (tmp_path / "pub" / f"{w}_tiny.json").exists()
    table = (out / "claims.md").read_text()
    assert "No tokenizer" in table and "cached generation" in table
