"""``pdclm bench generate`` and ``pdclm bench noise``: the models ``bench pretrain`` trained
and saved (``OUT/models/<name>``), measured again rather than retrained.

``generate``: bytes/s of KV-cached generation, one sequence at a time, after the same
prompts: PD-CLM's incremental stream (one encoder, entropy and decoder step per byte, one
latent step per patch) against the baselines' cached transformer steps (one per byte, or one
per BPE token, whose bytes are counted).

``noise``: held-out bits per byte on the same windows with character noise (typos, case
flips, doubled spaces, dropped bytes; :mod:`pdclm.eval.noise`) at several rates, for every
model; each model reads the same noisy bytes (PD-CLM re-profiles and re-patches them, the
BPE model re-tokenizes them) and the relative rise over its clean figure is its robustness
number. With ``--ckpt RUN`` it also measures held-out task accuracy of that run's model
(Phase 2/3) on questions whose instruction words carry the noise; the baselines are only
pretrained and cannot answer, so no accuracy is reported for them.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pdclm.bench.baselines import BPETokenizer, bpe_bpb, load_baseline
from pdclm.bench.common import LABELS, pyplot, stamp
from pdclm.config import BENCH_ARMS, Config, ConfigError
from pdclm.data.shards import BatchSampler, ShardSet
from pdclm.data.tasks import make_source
from pdclm.eval.claims import row, threshold_verdict
from pdclm.eval.noise import KINDS, MIXED, add_noise, noisy_symbols
from pdclm.eval.robustness import _WORD, template_words
from pdclm.eval.tasks import autocast_context, correct, eval_budget, held_out_sets, solve_sets
from pdclm.io import write_json_atomic
from pdclm.model.io import load_model
from pdclm.train.objectives import lm_loss


def load_arms(
    out_dir: Path, names: tuple[str, ...] = BENCH_ARMS
) -> dict[str, tuple[nn.Module, Any]]:
    """The saved models of ``bench pretrain`` in ``out_dir``: name -> (model, BPE tokenizer or
    None)."""

    found = {}
    for name in names:
        folder = out_dir / "models" / name
        if (folder / "baseline.json").exists():
            model, _ = load_baseline(folder)
            tok = BPETokenizer.load(out_dir / "bpe" / "tokenizer.json") if name == "bpe" else None
            found[name] = (model, tok)
        elif (folder / "config.json").exists():
            found[name] = (load_model(folder)[0], None)
    if not found:
        raise ConfigError(
            f"{out_dir} holds no models of `pdclm bench pretrain`; run it with the same --out first"
        )
    return found


def val_windows(cfg: Config, length: int, batches: int) -> list[np.ndarray]:

    val = ShardSet.open(cfg.data.dir, "val")
    return [
        w
        for tokens, _ in BatchSampler(val, length - 1, cfg.train.batch, 1).fixed_batches(batches)
        for w in tokens
    ]


# --------------------------------------------------------------------------------- generate


@torch.no_grad()
def generation_speed(
    model: nn.Module, tok, prompts: list[np.ndarray], n_bytes: int
) -> dict[str, float]:
    """Greedy cached generation of ``n_bytes`` bytes after each prompt, one row at a time."""

    model.eval()
    gen_s = pre_s = 0.0
    made = read = 0
    token_bytes = None if tok is None else tok.token_bytes
    for p in prompts:
        ids = tok.encode_symbols(p) if tok is not None else p.tolist()
        t0 = time.perf_counter()
        stream = model.start_stream(1)
        for s in ids:
            logits = stream.push(torch.tensor([int(s)]))
        t1 = time.perf_counter()
        got = 0
        while got < n_bytes:
            nxt = int(logits[0].argmax())
            got += 1 if token_bytes is None else int(token_bytes[nxt])
            logits = stream.push(torch.tensor([nxt]))
        t2 = time.perf_counter()
        pre_s, gen_s = pre_s + t1 - t0, gen_s + t2 - t1
        made, read = made + got, read + len(p)
    return {
        "bytes_per_s": made / gen_s,
        "prompt_bytes_per_s": read / pre_s,
        "bytes": made,
        "seconds": gen_s,
    }


def bench_generate(cfg: Config, out: Path) -> dict[str, Any]:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    arms = load_arms(out)
    prompts = [
        w[: cfg.bench.prompt_bytes]
        for w in val_windows(cfg, cfg.bench.prompt_bytes + 1, 1 + cfg.bench.gen_prompts)
    ][: cfg.bench.gen_prompts]
    rows = {}
    for name, (model, tok) in arms.items():
        generation_speed(model, tok, prompts[:1], 16)  # warm-up
        rows[name] = {
            "label": LABELS[name],
            **generation_speed(model, tok, prompts, cfg.bench.gen_bytes),
        }
        print(f"{LABELS[name]:>30}: {rows[name]['bytes_per_s']:,.0f} bytes/s generated")
    goals = []
    if "pdclm" in rows and "byte" in rows:
        pd, by = rows["pdclm"]["bytes_per_s"], rows["byte"]["bytes_per_s"]
        goals.append(
            row(
                "cached generation >= 2x byte transformer",
                "greedy cached generation bytes/s, one sequence",
                pd,
                by,
                threshold_verdict(pd / by, 2.0, True),
                "pdclm bench generate",
            )
        )
    result = stamp(
        {
            "prompts": len(prompts),
            "prompt_bytes": cfg.bench.prompt_bytes,
            "gen_bytes": cfg.bench.gen_bytes,
            "models": rows,
            "ratios": {
                n: rows["pdclm"]["bytes_per_s"] / r["bytes_per_s"]
                for n, r in rows.items()
                if n != "pdclm" and "pdclm" in rows
            },
            "goals": goals,
        },
        cfg,
    )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    names = list(rows)
    ax.barh([LABELS[n] for n in names], [rows[n]["bytes_per_s"] for n in names], color="C0")
    ax.set_xlabel("generated bytes/s (cached, greedy, batch 1)")
    fig.tight_layout()
    fig.savefig(out / "bench_generate.png", dpi=110)
    plt.close(fig)
    write_json_atomic(out / "bench_generate.json", result)
    return result


# ------------------------------------------------------------------------------------ noise


@torch.no_grad()
def window_bpb(model: nn.Module, tok, windows: list[np.ndarray], batch: int, bf16: bool) -> float:

    model.eval()
    with autocast_context(bf16):
        if tok is not None:
            return bpe_bpb(model, tok, windows, batch)
        vals = []
        for i in range(0, len(windows), batch):
            t = torch.from_numpy(np.stack(windows[i : i + batch]).astype(np.int64))
            vals.append(lm_loss(model, (t,))[1]["bpb"])  # PD-CLM profiles the noisy bytes
    return float(np.mean(vals))


def conditions(cfg: Config) -> list[tuple[str, float]]:

    kind_rate = 0.05
    return [
        ("clean", 0.0),
        *((MIXED, r) for r in cfg.bench.noise_rates),
        *((k, kind_rate) for k in KINDS),
    ]


def noisy_task_accuracy(cfg: Config, ckpt: str, rates: list[float]) -> dict[str, Any]:
    """Held-out accuracy of a run's model with mixed noise in the questions' instruction words
    (never in what a question asks about, so the gold answers stay right)."""
    import dataclasses

    model, _ = load_model(ckpt)
    tcfg = dataclasses.replace(cfg.tasks, eval_items=cfg.bench.noise_task_items)
    sets = held_out_sets(tcfg)
    out = {}
    for rate in [0.0, *rates]:
        noisy = {}
        for name, items in sets.items():
            rng = random.Random(f"{cfg.train.seed}:{name}:{rate}")
            template = template_words([it.question for it in items])
            noisy[name] = []
            for it in items:
                q = it.question.encode()
                mask = np.zeros(len(q), dtype=bool)
                for m in _WORD.finditer(it.question):
                    if m.group() in template:
                        a = len(it.question[: m.start()].encode())
                        mask[a : a + len(m.group().encode())] = True
                new = add_noise(q, rate, MIXED, rng, mask).decode("utf-8", "replace")
                noisy[name].append(dataclasses.replace(it, question=new))
        sols = solve_sets(model, noisy, eval_budget(tcfg), tcfg.batch)
        right = n = 0
        for name, items in noisy.items():
            ok = correct(make_source(name), items, sols[name])
            right, n = right + sum(ok), n + len(ok)
        out[str(rate)] = {"accuracy": right / max(1, n), "right": right, "n": n}
    return {"ckpt": ckpt, "by_rate": out}


def bench_noise(cfg: Config, out: Path, ckpt: str | None = None) -> dict[str, Any]:

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    arms = load_arms(out)
    length = cfg.train.seq_len + 1
    slack = length // 2 + 16  # room for dropped bytes before cutting to the window
    base = val_windows(cfg, length + slack, cfg.bench.noise_batches)
    rows: dict[str, dict[str, Any]] = {n: {"label": LABELS[n], "bpb": {}} for n in arms}
    for kind, rate in conditions(cfg):
        key = f"{kind}@{rate:g}"
        rng = random.Random(f"{cfg.train.seed}:{kind}:{rate}")
        noise = MIXED if kind == "clean" else kind
        windows = [noisy_symbols(w, rate, noise, rng, length) for w in base]
        for name, (model, tok) in arms.items():
            rows[name]["bpb"][key] = window_bpb(
                model, tok, windows, cfg.train.batch, cfg.train.bf16
            )
        print(key, {n: round(r["bpb"][key], 3) for n, r in rows.items()})
    for r in rows.values():
        clean = r["bpb"]["clean@0"]
        r["degradation"] = {k: v / clean - 1 for k, v in r["bpb"].items() if k != "clean@0"}
    goals = []
    key = "mixed@0.05"
    if "pdclm" in rows and "bpe" in rows and key in rows["pdclm"]["degradation"]:
        pd, bpe = rows["pdclm"]["degradation"][key], rows["bpe"]["degradation"][key]
        goals.append(
            row(
                "5 % character noise: bpb degradation <= 0.5x BPE's",
                "relative rise of held-out bits per byte under mixed noise touching 5 % of bytes",
                pd,
                bpe,
                threshold_verdict(pd / bpe if bpe > 0 else None, 0.5, False),
                "pdclm bench noise",
            )
        )
    tasks = None
    if ckpt:
        tasks = noisy_task_accuracy(cfg, ckpt, cfg.bench.noise_rates)
    result = stamp(
        {
            "windows": len(base),
            "window_symbols": length,
            "conditions": [f"{k}@{r:g}" for k, r in conditions(cfg)],
            "models": rows,
            "task_accuracy": {
                "pdclm_run": tasks,
                "baselines": "not measured: the baselines are only pretrained and cannot answer "
                "the task format, so accuracy under noise compares nothing",
            },
            "goals": goals,
        },
        cfg,
    )
    plot_noise(rows, cfg, out / "bench_noise.png")
    write_json_atomic(out / "bench_noise.json", result)
    return result


def plot_noise(rows: dict[str, Any], cfg: Config, path: Path) -> None:
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.6))
    rates = [0.0, *cfg.bench.noise_rates]
    for name, r in rows.items():
        ys = [r["bpb"]["clean@0"], *(r["bpb"][f"mixed@{x:g}"] for x in cfg.bench.noise_rates)]
        ax.plot(rates, ys, "o-", label=LABELS[name])
    ax.set_xlabel("share of bytes touched by mixed noise")
    ax.set_ylabel("held-out bits per byte")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    kinds = [k for k in next(iter(rows.values()))["degradation"] if not k.startswith("mixed")]
    width = 0.8 / len(rows)
    for i, (name, r) in enumerate(rows.items()):
        xs = np.arange(len(kinds)) + i * width
        bx.bar(xs, [r["degradation"][k] * 100 for k in kinds], width, label=LABELS[name])
    bx.set_xticks(np.arange(len(kinds)) + 0.4 - width / 2, [k.split("@")[0] for k in kinds])
    bx.set_ylabel("bits/byte rise at 5 % (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
