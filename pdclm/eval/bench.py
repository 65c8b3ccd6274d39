"""``pdclm bench``: measurements against a baseline, each in one run on the same machine.

``pdclm bench rewards`` runs Phase 3 twice from the same Phase 2 model on the same budget:
every reward channel against correctness alone (:func:`bench_rewards`).

``pdclm bench pretrain``: PD-CLM against a plain byte transformer.

Both models train on the same shards for the same wall-clock budget, each in its own spawned
process (so peak resident memory is each model's own), through the shared training loop.
Reported per model: held-out bits per byte, training bytes/s, peak RSS, model FLOP/s counted
with PyTorch's FLOP counter (:mod:`pdclm.train.flops`), and that as a fraction of the matmul
FLOP/s measured here in the same run. The byte transformer has PD-CLM's latent width and the
depth that matches PD-CLM's non-embedding parameter count (embedding tables are lookups, not
compute).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import resource
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pdclm.config import Config
from pdclm.train.flops import matmul_flops


def non_embedding_params(model: nn.Module) -> int:
    emb = sum(
        p.numel() for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()
    )
    return sum(p.numel() for p in model.parameters() if p.requires_grad) - emb


def _train_one(kind: str, cfg: Config, tag: str, seconds: float, out_dir: str, queue) -> None:
    """Child process: build, time-calibrate, train for ``seconds``, evaluate, report."""
    from pdclm.data.shards import BatchSampler, ShardSet
    from pdclm.eval.baselines import matched_byte_transformer
    from pdclm.model.io import load_model
    from pdclm.train.loop import Trainer, resolve_device
    from pdclm.train.objectives import lm_loss, mean_bpb
    from pdclm.train.pretrain import as_batch

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    pd_model, _ = load_model(Path(out_dir) / "pse")
    if kind == "pdclm":
        model = pd_model
        model.train()
        model.freeze_entropy()
    else:
        model = matched_byte_transformer(
            non_embedding_params(pd_model),
            cfg.model.latent.dim,
            cfg.model.latent.heads,
            cfg.model.mlp_ratio,
        )
    del pd_model
    train, val = ShardSet.open(cfg.data.dir, "train"), ShardSet.open(cfg.data.dir, "val")
    sampler = BatchSampler(train, cfg.train.seq_len, cfg.train.batch, cfg.train.seed, tag)
    val_batches = [
        as_batch(*b)
        for b in BatchSampler(val, cfg.train.seq_len, cfg.train.batch, 1, tag).fixed_batches(
            cfg.train.eval_batches
        )
    ]
    device = resolve_device(cfg.train.device)
    model.to(device)

    # size the cosine schedule to the budget from a short timing of a few steps
    init_state = {k: v.clone() for k, v in model.state_dict().items()}
    probe = Trainer(
        f"{kind}-probe",
        model,
        dataclasses.replace(cfg.train, steps=6, warmup=0),
        Path(out_dir) / kind,
        lambda i, rows: as_batch(*sampler.batch(i, rows)),
        lm_loss,
        checkpoints=False,
        progress=False,
    )
    step_time = probe.fit(resume=False)["seconds_per_step_steady"]
    model.load_state_dict(init_state)  # train from the same initial weights the probe started at
    # 7 validations of eval_batches forward passes (~1/3 of a training step each) share the budget
    steps = max(10, int(seconds / step_time - 7 * cfg.train.eval_batches / 3))
    tcfg = dataclasses.replace(
        cfg.train,
        steps=steps,
        warmup=min(cfg.train.warmup, steps // 10),
        eval_every=max(1, steps // 6),
    )
    trainer = Trainer(
        kind,
        model,
        tcfg,
        Path(out_dir) / kind,
        lambda i, rows: as_batch(*sampler.batch(i, rows)),
        lm_loss,
        evaluate=mean_bpb(val_batches, device),
        max_seconds=seconds,
        checkpoints=False,
        progress=True,
    )
    t_start = time.perf_counter()
    result = trainer.fit(resume=False)
    wall = time.perf_counter() - t_start
    flops = trainer.flops_per_step  # counted by the loop on the first batch
    symbols_per_step = cfg.train.batch * cfg.train.grad_accum * (cfg.train.seq_len + 1)
    queue.put(
        {
            "model": kind,
            "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "non_embedding_params": non_embedding_params(model),
            "steps": result["steps"],
            "val_bpb": result["val_bpb"],
            "bytes_per_s": result["bytes_per_s"],
            "flops_per_step": flops,
            "flops_per_s": flops * result["steps"] / result["train_seconds"],
            "flops_per_byte": flops / symbols_per_step,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20
            if device.type == "cuda"
            else 0.0,
            "wall_seconds": wall,
            "curve": [(h["step"], h["val_bpb"]) for h in result["history"]],
            "seconds_per_step": result["train_seconds"] / max(1, result["steps"]),
        }
    )


def bench_pretrain(cfg: Config, out: Path | None = None) -> dict[str, Any]:
    from pdclm.model.io import save_model
    from pdclm.pipeline import RunContext
    from pdclm.train.loop import resolve_device
    from pdclm.train.pretrain import prepare_pse

    out_dir = out or Path("runs") / f"bench-pretrain-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pse = prepare_pse(RunContext(cfg, out_dir))
    save_model(pse.model, cfg, out_dir / "pse")
    tag, pse_seconds = pse.tag, time.perf_counter() - t0
    peak = matmul_flops(cfg.train.bf16, resolve_device(cfg.train.device))
    ctx = mp.get_context("spawn")
    rows = {}
    for kind in ("pdclm", "byte"):
        queue = ctx.Queue()
        proc = ctx.Process(
            target=_train_one, args=(kind, cfg, tag, cfg.bench.seconds, str(out_dir), queue)
        )
        proc.start()
        rows[kind] = queue.get()
        proc.join()
        rows[kind]["mfu"] = rows[kind]["flops_per_s"] / peak
    pd, by = rows["pdclm"], rows["byte"]
    result = {
        "preset": cfg.preset,
        "budget_seconds": cfg.bench.seconds,
        "threads": torch.get_num_threads(),
        "matmul_flops_per_s": peak,
        "matmul_dtype": "bf16" if cfg.train.bf16 else "fp32",
        "pse_prep_seconds": pse_seconds,
        "models": rows,
        "ratios": {
            "bytes_per_s": pd["bytes_per_s"] / by["bytes_per_s"],
            "val_bpb": pd["val_bpb"] / by["val_bpb"],
            "peak_rss": pd["peak_rss_mb"] / by["peak_rss_mb"],
            "flops_per_byte": pd["flops_per_byte"] / by["flops_per_byte"],
        },
        "goal": {
            "pdclm_lower_bpb": pd["val_bpb"] < by["val_bpb"],
            "bytes_per_s_ratio_at_least_1.25": pd["bytes_per_s"] / by["bytes_per_s"] >= 1.25,
        },
    }
    plot_bench(rows, out_dir / "bench_pretrain.png", cfg.bench.seconds)
    (out_dir / "bench_pretrain.json").write_text(json.dumps(result, indent=2))
    print(table(result))
    return result


def table(result: dict[str, Any]) -> str:
    lines = [
        "| model | params (non-emb) | val bpb | bytes/s | peak RSS MB | GFLOP/s | MFU |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in result["models"].items():
        lines.append(
            f"| {name} | {r['params']:,} ({r['non_embedding_params']:,}) | {r['val_bpb']:.3f} | "
            f"{r['bytes_per_s']:.0f} | {r['peak_rss_mb']:.0f} | {r['flops_per_s'] / 1e9:.1f} | "
            f"{r['mfu']:.1%} |"
        )
    ra = result["ratios"]
    lines.append(
        f"\nPD-CLM / byte: bytes/s x{ra['bytes_per_s']:.2f}, bpb x{ra['val_bpb']:.3f}, "
        f"peak RSS x{ra['peak_rss']:.2f}, FLOPs/byte x{ra['flops_per_byte']:.2f}; "
        f"matmul peak {result['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s ({result['matmul_dtype']})"
    )
    return "\n".join(lines)


def plot_bench(rows: dict[str, Any], path: Path, seconds: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for name, r in rows.items():
        steps = max(1, r["steps"])
        xs = [s / steps * r["wall_seconds"] for s, _ in r["curve"]]
        ax.plot(xs, [b for _, b in r["curve"]], "o-", label=f"{name} ({r['bytes_per_s']:.0f} B/s)")
    ax.set_xlabel("training wall-clock (s)")
    ax.set_ylabel("held-out bits per byte")
    ax.set_title(f"equal wall-clock budget ({seconds:.0f} s each)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bench_rewards(cfg: Config, ckpt: str | None, out: Path | None = None) -> dict[str, Any]:
    """Phase 3 with all reward channels and with correctness alone, from the same Phase 2
    model with the same steps and seeds: held-out accuracy, mean thinking length, and the
    robustness figures of each."""
    import shutil

    from pdclm.model.io import find_model_dir
    from pdclm.pipeline import run_phases

    source = find_model_dir(ckpt)
    if (source.parent / "phase2_model").exists():  # a finished run: start where Phase 3 did
        source = source.parent / "phase2_model"
    out = out or Path("runs") / f"bench-rewards-{time.strftime('%Y%m%d-%H%M%S')}"
    variants = {
        "all channels": cfg.rl.rewards,
        "correctness only": dataclasses.replace(
            cfg.rl.rewards, consistency=0.0, justification=0.0, efficiency=0.0, hallucination=0.0
        ),
    }
    rows: dict[str, Any] = {}
    for name, rewards in variants.items():
        run = out / name.replace(" ", "_")
        if run.exists():
            shutil.rmtree(run)
        shutil.copytree(source, run / "model")
        vcfg = dataclasses.replace(cfg, rl=dataclasses.replace(cfg.rl, rewards=rewards))
        t0 = time.perf_counter()
        p3 = run_phases(vcfg, run, only=["reflective"])["phase3"]
        tasks = p3["tasks"]
        rows[name] = {
            "accuracy": sum(t["accuracy"] for t in tasks.values()) / len(tasks),
            "thinking_bytes": sum(t["thinking_bytes"] for t in tasks.values()) / len(tasks),
            "per_task": {n: t["accuracy"] for n, t in tasks.items()},
            "robustness": p3["robustness"],
            "rewards": p3["rewards"],
            "seconds": round(time.perf_counter() - t0, 1),
        }
    a, c = rows["all channels"], rows["correctness only"]
    result = {
        "start": str(source),
        "steps": cfg.rl.steps,
        "variants": rows,
        "accuracy_ratio": a["accuracy"] / c["accuracy"] if c["accuracy"] else None,
        "thinking_ratio": a["thinking_bytes"] / c["thinking_bytes"]
        if c["thinking_bytes"]
        else None,
    }
    (out / "bench_rewards.json").write_text(json.dumps(result, indent=2))
    plot_rewards_bench(rows, out / "bench_rewards.png")
    for name, r in rows.items():
        print(f"{name:>18}: accuracy {r['accuracy']:.3f}, thinking {r['thinking_bytes']:.0f} bytes")
    return result


def plot_rewards_bench(rows: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9, 3.6))
    names = list(rows)
    ax.bar(names, [rows[n]["accuracy"] for n in names], color=["C0", "C1"])
    ax.set_ylabel("mean held-out accuracy")
    bx.bar(names, [rows[n]["thinking_bytes"] for n in names], color=["C0", "C1"])
    bx.set_ylabel("mean thinking bytes")
    fig.suptitle("Phase 3: every reward channel vs correctness alone (same steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
