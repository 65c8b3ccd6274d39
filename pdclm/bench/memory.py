"""``pdclm bench memory``: the Hierarchical Memory Router against its ablations and no memory.

Every variant (full HMR; without SSM, MSM or LSM; fixed equal mixing; no memory, the plain
PD-CLM) starts from the same frozen PSE and the same initial weights and trains for the same
wall-clock budget (``bench.memory_seconds``); beside them the plain PD-CLM trains once more
for as many training FLOPs as the full HMR spent (``none_equal_flops``), so long-document bits
per byte are compared at equal seconds and at equal FLOPs. All train on the same mix: passkey
items, associative-recall items and text from the corpus, each a training sequence of
``train.seq_len`` symbols (``seq_len / memory.segment`` segments, memory carried and
backpropagated through all of them). The first ``bench.memory_warmup`` of the steps weigh only
the passkey rows' first key digit (the curriculum without which no variant left chance); the
rest weigh it ``bench.memory_key_weight`` and the other targets rise linearly, over the next
``bench.memory_ramp`` of the steps, to their full weight (the other key digits
``memory_key_weight``, every other symbol one). The PSE is trained
from the preset, or ``bench.memory_pse`` names a trained one (with ``pse.patcher.rule`` /
``pse.patcher.threshold`` to choose its patches). Each variant runs in its own spawned
process, so its peak resident memory is its own. Then, for each:

- passkey accuracy at 1x, 4x, 16x and 64x the training sequence length (key depths spread
  evenly), whole key right under greedy decoding;
- associative recall at 1x, 4x and 16x (facts first, queries after the filler);
- bits per byte on the longest files of the standard library that training never saw, read
  whole (memory) or in independent windows of the training length (no memory: what a model
  without memory can do past its context);
- cost: training and reading bytes/s and peak RSS; router read shares and write rate.

Beside them: long-term store lookup latency as it grows to 10^6 rows (stored patches), exact
torch search against the faiss IVF index, with the index's recall of the exact top-k.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pdclm.bench.common import peak_rss_mb, run_spawned, stamp, steps_for_budget
from pdclm.config import Config, load_preset, resolve
from pdclm.data.ingest import read_manifest, stdlib_sources
from pdclm.data.shards import BatchSampler, ShardSet
from pdclm.io import write_json_atomic
from pdclm.memory.store import LongTermStore
from pdclm.memory.tasks import assoc_recall, greedy_hits, passkey, whole_items
from pdclm.model.io import load_model, save_model
from pdclm.model.pdclm import PDCLM, next_symbol_loss
from pdclm.train.loop import MetricsLog, Trainer
from pdclm.train.objectives import weighted_lm_loss
from pdclm.train.phase import RunContext, for_steps
from pdclm.train.pretrain import prepare_pse, prepare_shared
from pdclm.vocab import BOS

VARIANTS: dict[str, dict[str, Any]] = {
    "full": {},
    "no_ssm": {"ssm": False},
    "no_msm": {"msm": False},
    "no_lsm": {"lsm": False},
    "equal_mix": {"router": "equal"},
    "none": {"enabled": False},
}
PASSKEY_LENGTHS = (1, 4, 16, 64)
RECALL_LENGTHS = (1, 4, 16)
KIND_SHARES = (0.4, 0.3, 0.3)
"""Training rows: passkey, associative recall, corpus text."""
RECALL_PAIRS = 8
EQUAL_FLOPS = "none_equal_flops"
"""No memory, trained for the full HMR's training FLOPs (the others: for its seconds)."""


def variant_config(cfg: Config, overrides: dict[str, Any]) -> Config:
    vcfg = copy.deepcopy(cfg)
    vcfg.model.memory.enabled = True
    for k, v in overrides.items():
        setattr(vcfg.model.memory, k, v)
    return vcfg


def task_batch(
    step: int, cfg: Config, text, warmup: int = 0, ramp: int = 0
) -> tuple[torch.Tensor, ...]:
    """Training batch ``step`` (depends on step only): a mix of passkey, recall and text rows,
    and a weight per target. For the first ``warmup`` steps only the passkey rows' first key
    digit weighs (the curriculum of ``benchmarks/passkey_memory.py``: that digit's recall
    needs memory alone, the later ones follow it); then the first key digit weighs
    ``bench.memory_key_weight`` and every other target rises linearly over ``ramp`` steps to
    its full weight (the other key digits ``memory_key_weight``, the rest one), so the loss
    changes from the warm-up's by degrees. Switched on at once, the new targets' loss once
    undid the first-digit recall the warm-up had learnt."""
    rng = np.random.default_rng([cfg.train.seed, 31, step])
    n, B = cfg.train.seq_len, cfg.train.batch
    kinds = rng.choice(3, size=B, p=KIND_SHARES)
    rows = text.batch(step)[0].tolist()
    keys: list[list[int]] = []  # target indices of each passkey row's key digits
    for r, kind in enumerate(kinds):
        if kind == 0:
            rows[r], answers = passkey(rng, n)
            keys.append([a - 1 for a in answers])
        elif kind == 1:
            rows[r] = assoc_recall(rng, n, RECALL_PAIRS)[0]
    tokens = torch.tensor(rows)
    key_rows = torch.from_numpy(np.flatnonzero(kinds == 0))
    warm = step < warmup
    rise = 1.0 if warm or not ramp else min(1.0, (step - warmup + 1) / ramp)
    weights = torch.zeros(B, n) if warm else torch.full((B, n), rise)
    if keys:
        at, kw = torch.tensor(keys, dtype=torch.long), cfg.bench.memory_key_weight
        if not warm:
            weights[key_rows[:, None], at[:, 1:]] = rise * kw
        weights[key_rows, at[:, 0]] = 1.0 if warm else kw
    return tokens, weights


@torch.no_grad()
def read_logits(model, tokens: torch.Tensor, window: int | None) -> torch.Tensor:
    """Logits (B, N-1, V): the whole stream (memory reads it in segments) or, for a model
    without memory, independent windows of ``window`` symbols."""
    if window is None:
        return model(tokens)
    N = tokens.shape[1]
    return torch.cat(
        [model(tokens[:, a : min(a + window, N - 1) + 1]) for a in range(0, N - 1, window)], 1
    )


def accuracy(model, items: list, group: int, window: int | None, batch: int) -> tuple[float, float]:
    """Share of items whose ``group`` answer symbols are all greedy-right, and share of answer
    symbols right (chance 0.1 for a digit: a finer signal while whole keys are still 0)."""
    hits: list[bool] = []
    for i in range(0, len(items), batch):
        part = items[i : i + batch]
        tokens = torch.tensor([s for s, _ in part])
        logits = read_logits(model, tokens, window)
        for row, (s, ans) in enumerate(part):
            hits += greedy_hits(logits[row], s, ans)
    return float(np.mean(whole_items(hits, group))), float(np.mean(hits))


def long_documents(cfg: Config, n_docs: int, max_bytes: int) -> list[tuple[str, bytes]]:
    """The longest standard-library files that are not in the training split."""

    manifest = read_manifest(cfg.data.dir) or {"documents": []}
    trained = {d["name"] for d in manifest["documents"] if d.get("split") == "train"}
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib_sources(), key=lambda p: p.stat().st_size, reverse=True)
    out = []
    for p in files:
        name = f"stdlib:{p.relative_to(root).as_posix()}"
        if name not in trained:
            out.append((name, p.read_bytes()[:max_bytes]))
        if len(out) == n_docs:
            break
    return out


@torch.no_grad()
def long_bpb(model, docs: list[tuple[str, bytes]], window: int | None) -> tuple[float, float]:
    """Bits per byte over the documents and reading speed (bytes/s)."""

    bits, count, t0 = 0.0, 0, time.perf_counter()
    for _, data in docs:
        tokens = torch.tensor([[BOS, *data]])
        _, bpb = next_symbol_loss(read_logits(model, tokens, window), tokens[:, 1:])
        bits += float(bpb) * len(data)
        count += len(data)
    return bits / count, count / (time.perf_counter() - t0)


def _run_variant(name: str, cfg: Config, out_dir: str, steps: int, queue) -> None:
    """Child process: train one variant for the wall-clock budget (``steps`` 0) or for
    ``steps`` steps (the equal-FLOPs baseline), then measure it."""

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    pse, _ = load_model(Path(out_dir) / "pse")
    torch.manual_seed(cfg.train.seed)
    model = PDCLM(cfg.pse, cfg.model)
    model.entropy.load_state_dict(pse.entropy.state_dict())  # the same frozen PSE for all
    model.threshold.copy_(pse.threshold)
    model.freeze_entropy()
    train = ShardSet.open(cfg.data.dir, "train")
    text = BatchSampler(train, cfg.train.seq_len, cfg.train.batch, cfg.train.seed)
    run = Path(out_dir) / name
    log = MetricsLog(run, tensorboard=False)
    seconds = cfg.bench.memory_seconds if not steps else None
    if not steps:
        sample = lambda i, rows: task_batch(i, cfg, text)
        steps = steps_for_budget(name, model, cfg, run, sample, weighted_lm_loss, seconds)
        if model.memory is not None:
            model.memory.carried_slots = None  # the probe's: every variant starts fresh
    warmup, ramp = int(cfg.bench.memory_warmup * steps), int(cfg.bench.memory_ramp * steps)
    sample = lambda i, rows: task_batch(i, cfg, text, warmup, ramp)
    tcfg = for_steps(cfg.train, steps, log_every=10)
    trainer = Trainer(
        f"memory/{name}",
        model,
        tcfg,
        run,
        sample,
        weighted_lm_loss,
        log=log,
        max_seconds=seconds,
        checkpoints=False,
        progress=True,
        postfix=("loss", "bpb", "read_lsm", "write_rate"),
    )
    result = trainer.fit(resume=False)
    log.close()
    save_model(model, cfg, run / "model")  # for re-measuring without retraining
    model.eval()
    memory = cfg.model.memory.enabled
    window = None if memory else cfg.train.seq_len
    n, trials, B = cfg.train.seq_len, cfg.bench.memory_trials, max(1, cfg.train.batch)
    row: dict[str, Any] = {
        "variant": name,
        "steps": result["steps"],
        "planned_steps": steps,  # more than steps: the budget ran out before the schedule
        "train_seconds": result["train_seconds"],
        "flops_per_step": trainer.flops_per_step,
    }
    row["train_bytes_per_s"] = result["bytes_per_s"]
    t0 = time.perf_counter()
    for key in ("passkey", "passkey_digit", "recall", "recall_symbol"):
        row[key] = {}
    for mult in PASSKEY_LENGTHS:
        rng = np.random.default_rng([cfg.train.seed, 101, mult])
        items = [passkey(rng, n * mult, (i + 0.5) / trials) for i in range(trials)]
        row["passkey"][str(mult)], row["passkey_digit"][str(mult)] = accuracy(
            model, items, 5, window, B
        )
    for mult in RECALL_LENGTHS:
        rng = np.random.default_rng([cfg.train.seed, 202, mult])
        gap = 1.0 if mult > 1 else None  # beyond the context: all filler between facts and queries
        items = [assoc_recall(rng, n * mult, RECALL_PAIRS, gap) for _ in range(trials)]
        row["recall"][str(mult)], row["recall_symbol"][str(mult)] = accuracy(
            model, items, 2, window, B
        )
    row["task_eval_seconds"] = time.perf_counter() - t0
    docs = long_documents(cfg, cfg.bench.memory_docs, n * 64)
    row["long_docs"] = [name for name, _ in docs]
    row["long_bpb"], row["read_bytes_per_s"] = long_bpb(model, docs, window)
    row["peak_rss_mb"] = peak_rss_mb()
    metrics = run / "metrics.jsonl"  # absent if the budget ended before the first log step
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    hist = [json.loads(line) for line in lines]
    keys = ("read_ssm", "read_msm", "read_lsm", "write_rate")
    row["router"] = [{k: h[k] for k in ("step", *keys) if k in h} for h in hist if "read_ssm" in h]
    row["params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    queue.put(row)


def lsm_latency(
    sizes: tuple[int, ...], dim: int, queries: int, k: int, nprobe: int
) -> list[dict[str, Any]]:
    """Top-k lookup time of ``queries`` patch queries as the store grows: exact torch search
    against the faiss IVF index, and the index's recall of the exact top-k."""

    rng = torch.Generator().manual_seed(0)
    rows = []
    for n in sizes:
        keys = torch.nn.functional.normalize(torch.randn(1, n, dim, generator=rng), dim=-1)
        q = torch.nn.functional.normalize(torch.randn(1, queries, dim, generator=rng), dim=-1)
        # queries near stored keys, as when a phase is recalled
        q = torch.nn.functional.normalize(
            q * 0.5 + keys[:, torch.randint(0, n, (queries,), generator=rng)], dim=-1
        )
        store = LongTermStore.of_keys(keys, faiss_threshold=n, nprobe=nprobe)
        with torch.no_grad():
            t0 = time.perf_counter()
            _, exact = store.search(q, k)
            t_torch = time.perf_counter() - t0
            store.faiss_threshold = 0
            t0 = time.perf_counter()
            store.search(q, k)  # builds (trains) the index
            t_build = time.perf_counter() - t0
            t0 = time.perf_counter()
            reps = 5
            for _ in range(reps):
                _, approx = store.search(q, k)
            t_faiss = (time.perf_counter() - t0) / reps
        recall = np.mean(
            [
                len(set(a.tolist()) & set(b.tolist())) / k
                for a, b in zip(exact[0], approx[0], strict=True)
            ]
        )
        rows.append(
            {
                "entries": n,
                "torch_ms": t_torch * 1e3,
                "faiss_ms": t_faiss * 1e3,
                "faiss_build_s": t_build,
                "faiss_recall": float(recall),
            }
        )
        print(
            f"LSM {n:>8} rows: torch {t_torch * 1e3:.1f} ms, "
            f"faiss {t_faiss * 1e3:.1f} ms, recall {recall:.3f}"
        )
        del store, keys
    return rows


def bench_pse(cfg: Config, out_dir: Path, progress: bool = True) -> None:
    """Save to ``out_dir/pse`` the PSE every variant reads with, and set ``cfg.pse`` to match:
    one trained from the preset, one trained as ``bench.memory_pse_preset``'s Phase 1 would
    (on ``bench.memory_pse_bytes`` of the same sources), or the trained one of
    ``bench.memory_pse`` (a model folder). From the last two the bench takes the entropy
    model, and its patch rule and threshold unless ``pse.patcher.threshold`` is set (then
    ``pse.patcher`` as given). Either way the corpus is ingested (text rows, held-out long
    documents)."""
    b = cfg.bench
    if not b.memory_pse and not b.memory_pse_preset:
        pse = prepare_pse(RunContext(cfg, out_dir, progress=progress))
        save_model(pse.model, cfg, out_dir / "pse")
        return
    if b.memory_pse:
        given, pcfg = load_model(b.memory_pse)  # a bad path fails before the ingest
        source = b.memory_pse
    else:
        pcfg = load_preset(b.memory_pse_preset)
        pcfg.data = dataclasses.replace(  # that preset's data settings, the bench's sources
            pcfg.data,
            sources=cfg.data.sources,
            jsonl_field=cfg.data.jsonl_field,
            dir="",
            max_bytes=b.memory_pse_bytes or pcfg.data.max_bytes,
        )
        resolve(pcfg)
        given = prepare_pse(RunContext(pcfg, out_dir / "pse-training", progress=progress)).model
        source = f"trained as preset {b.memory_pse_preset} on {pcfg.data.max_bytes:,} bytes"
    prepare_shared(cfg, progress=progress)
    cfg.pse.entropy = pcfg.pse.entropy
    if cfg.pse.patcher.threshold <= 0:
        cfg.pse.patcher = pcfg.pse.patcher
    model = PDCLM(cfg.pse, cfg.model)  # the bench's model around the given entropy model
    model.entropy.load_state_dict(given.entropy.state_dict())
    model.threshold.fill_(cfg.pse.patcher.threshold or float(given.threshold))
    print(f"PSE {source}: rule {cfg.pse.patcher.rule}, threshold {float(model.threshold):.2f} bits")
    save_model(model, cfg, out_dir / "pse")


def train_flops(r: dict[str, Any]) -> float:
    """Training FLOPs a variant's row spent."""
    return r["steps"] * r["flops_per_step"]


def report(r: dict[str, Any]) -> None:
    print(
        f"{r['variant']:>10}: {r['steps']} steps, passkey {r['passkey']}, recall {r['recall']}, "
        f"long bpb {r['long_bpb']:.3f}, "
        f"{r['train_bytes_per_s']:.0f} B/s train, peak RSS {r['peak_rss_mb']:.0f} MB"
    )


def bench_memory(cfg: Config, out: Path | None = None) -> dict[str, Any]:
    out_dir = out or Path("runs") / f"bench-memory-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    bench_pse(cfg, out_dir)
    pse_seconds = time.perf_counter() - t0
    rows: dict[str, Any] = {}
    for name, overrides in VARIANTS.items():
        vcfg = variant_config(cfg, overrides)
        rows[name] = run_spawned(name, _run_variant, name, vcfg, str(out_dir), 0)
        report(rows[name])
    # the same compute counted in FLOPs, not seconds: no memory for as many training FLOPs as
    # the full HMR spent (on a CPU the memory's gathers and small matmuls cost more time per
    # FLOP than the transformer's, so equal seconds give the plain model more FLOPs)
    full, none = rows["full"], rows["none"]
    steps = max(1, round(train_flops(full) / none["flops_per_step"]))
    vcfg = variant_config(cfg, VARIANTS["none"])
    rows[EQUAL_FLOPS] = run_spawned(
        EQUAL_FLOPS, _run_variant, EQUAL_FLOPS, vcfg, str(out_dir), steps
    )
    report(rows[EQUAL_FLOPS])
    mem = cfg.model.memory
    latency = lsm_latency(
        tuple(cfg.bench.memory_store_sizes), cfg.model.latent.dim, 64, mem.top_k, mem.nprobe
    )
    flops = rows[EQUAL_FLOPS]
    result = stamp(
        {
            "budget_seconds": cfg.bench.memory_seconds,
            "train_seq_len": cfg.train.seq_len,
            "segment": mem.segment,
            "trials": cfg.bench.memory_trials,
            "threads": torch.get_num_threads(),
            "pse_prep_seconds": pse_seconds,
            "variants": rows,
            "lsm_latency": latency,
            "ratios": {
                "long_bpb_full_over_none": full["long_bpb"] / none["long_bpb"],
                "long_bpb_full_over_none_equal_flops": full["long_bpb"] / flops["long_bpb"],
                "train_flops_full_over_none": train_flops(full) / train_flops(none),
                "train_bytes_per_s_full_over_none": full["train_bytes_per_s"]
                / none["train_bytes_per_s"],
                "peak_rss_full_over_none": full["peak_rss_mb"] / none["peak_rss_mb"],
            },
            "goal": {
                "passkey_16x_at_least_0.95": full["passkey"]["16"] >= 0.95,
                "passkey_64x_at_least_0.80": full["passkey"]["64"] >= 0.80,
                "lower_long_bpb_with_memory": full["long_bpb"] < none["long_bpb"],
                "lower_long_bpb_with_memory_equal_flops": full["long_bpb"] < flops["long_bpb"],
            },
            "goals": goal_rows(rows),
        },
        cfg,
    )
    plot_memory(result, out_dir / "bench_memory.png")
    write_json_atomic(out_dir / "bench_memory.json", result)
    print(table(result))
    return result


def goal_rows(rows: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's memory goals as rows of the claims report's goals table (memory against
    none, same budget)."""
    full, none = rows["full"], rows["none"]
    out = []
    for mult in ("16", "64"):
        goal = 0.95 if mult == "16" else 0.80
        p, b = full["passkey"][mult], none["passkey"][mult]
        out.append(
            {
                "claim": f"HMR retrieves a passkey at {mult}x the training context "
                f"(goal >= {goal})",
                "measure": "passkey accuracy (whole key, greedy)",
                "pdclm": p,
                "baseline": b,
                "ratio": p / b if b else None,
                "verdict": "holds" if p >= goal and p > b else "does not hold",
                "source": "pdclm bench memory",
            }
        )
    for base, compute in ((none, "wall-clock"), (rows[EQUAL_FLOPS], "training FLOPs")):
        p, b = full["long_bpb"], base["long_bpb"]
        out.append(
            {
                "claim": f"memory lowers bits per byte on long documents at equal {compute}",
                "measure": "bits per byte, longest held-out stdlib files",
                "pdclm": p,
                "baseline": b,
                "ratio": p / b,
                "verdict": "holds" if p < b else "does not hold",
                "source": "pdclm bench memory",
            }
        )
    return out


def table(result: dict[str, Any]) -> str:
    mults = [str(m) for m in PASSKEY_LENGTHS]
    rmults = [str(m) for m in RECALL_LENGTHS]
    head = (
        "| variant | steps | "
        + " | ".join(f"passkey {m}x (per digit)" for m in mults)
        + " | "
        + " | ".join(f"recall {m}x" for m in rmults)
        + " | long-doc bpb | train B/s | read B/s | peak RSS MB |"
    )
    lines = [head, "|" + " --- |" * (len(mults) + len(rmults) + 6)]
    for name, r in result["variants"].items():
        lines.append(
            f"| {name} | {r['steps']} | "
            + " | ".join(f"{r['passkey'][m]:.2f} ({r['passkey_digit'][m]:.2f})" for m in mults)
            + " | "
            + " | ".join(f"{r['recall'][m]:.2f}" for m in rmults)
            + f" | {r['long_bpb']:.3f} | {r['train_bytes_per_s']:.0f} | "
            f"{r['read_bytes_per_s']:.0f} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def plot_memory(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["variants"]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    tasks = (
        ("passkey", PASSKEY_LENGTHS, "passkey accuracy", "passkey retrieval (dashed: per digit)"),
        ("recall", RECALL_LENGTHS, "recall accuracy (per query)", "associative recall"),
    )
    for ax, (key, lengths, ylabel, title) in zip(axes[0, :2], tasks, strict=True):
        for i, (name, r) in enumerate(rows.items()):
            ax.plot(lengths, [r[key][str(m)] for m in lengths], "o-", color=f"C{i}", label=name)
            if key == "passkey":  # per digit, dashed (chance 0.1)
                digit = [r["passkey_digit"][str(m)] for m in lengths]
                ax.plot(lengths, digit, "x--", color=f"C{i}", alpha=0.6)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("length / training context")
        ax.set_ylabel(ylabel)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(title, fontsize=9)
    axes[0, 0].legend(fontsize=7)
    ax = axes[0, 2]
    names = list(rows)
    ax.bar(names, [rows[n]["long_bpb"] for n in names], color=[f"C{i}" for i in range(len(names))])
    lo = min(rows[n]["long_bpb"] for n in names)
    ax.set_ylim(lo * 0.9, max(rows[n]["long_bpb"] for n in names) * 1.02)
    ax.set_ylabel("bits per byte")
    ax.set_title("longest held-out stdlib files", fontsize=9)
    ax.tick_params(axis="x", labelsize=7, rotation=30)
    ax = axes[1, 0]
    for key, style in (
        ("read_ssm", "-"),
        ("read_msm", "--"),
        ("read_lsm", ":"),
        ("write_rate", "-."),
    ):
        hist = rows["full"]["router"]
        ax.plot(
            [h["step"] for h in hist if key in h],
            [h[key] for h in hist if key in h],
            style,
            label=key,
        )
    ax.set_xlabel("training step (full HMR)")
    ax.set_ylabel("share / rate")
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=7)
    ax.set_title("router: read share per tier, LSM write rate", fontsize=9)
    ax = axes[1, 1]
    ax.bar(
        names,
        [rows[n]["train_bytes_per_s"] for n in names],
        color=[f"C{i}" for i in range(len(names))],
    )
    ax.set_ylabel("training bytes/s")
    ax2 = ax.twinx()
    ax2.plot(names, [rows[n]["peak_rss_mb"] for n in names], "ko-")
    ax2.set_ylabel("peak RSS (MB)")
    ax.tick_params(axis="x", labelsize=7, rotation=30)
    ax.set_title("cost per tier configuration", fontsize=9)
    ax = axes[1, 2]
    lat = result["lsm_latency"]
    ax.plot([r["entries"] for r in lat], [r["torch_ms"] for r in lat], "o-", label="torch exact")
    ax.plot([r["entries"] for r in lat], [r["faiss_ms"] for r in lat], "s-", label="faiss IVF")
    for r in lat:
        ax.annotate(f"recall {r['faiss_recall']:.2f}", (r["entries"], r["faiss_ms"]), fontsize=6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("stored rows (patches)")
    ax.set_ylabel("ms per 64 queries (top-k)")
    ax.legend(fontsize=7)
    ax.set_title("LSM lookup latency", fontsize=9)
    fig.suptitle(
        f"HMR memory bench ({result['preset']}; training context {result['train_seq_len']} "
        f"symbols, {result['budget_seconds']:.0f} s per variant)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
