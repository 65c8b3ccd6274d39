"""``pdclm bench pretrain`` and ``scaling``: PD-CLM against baselines, each measured in one run
on the same machine.

``pretrain`` trains every model of ``bench.models`` on the same shards for the same
wall-clock budget, each in its own spawned process (so peak resident memory is each model's
own), through the shared training loop: PD-CLM, PD-CLM with fixed-stride and with
whitespace patching (ablations of the entropy patcher), a byte transformer and a BPE
transformer (:mod:`pdclm.bench.baselines`), the last two with PD-CLM's non-embedding parameter
count. Per model: held-out bits per byte over the same bytes, training bytes/s with and
without data preparation (PD-CLM: training the entropy model and profiling the shards; BPE:
training the tokenizer and encoding the split), peak RSS, model FLOP/s (PyTorch's FLOP
counter) and that over the matmul FLOP/s measured here in the same run. The trained models
are saved, and ``generate`` and ``noise`` (:mod:`pdclm.bench.generate`) measure them.

``scaling`` trains PD-CLM and both baselines at several latent widths for the same wall-clock
each (in this process: no memory figure is taken) to show which way the gap moves.

Each writes ``bench_<name>.json`` and ``bench_<name>.png`` in its folder; the JSONs carry the
claim and goal rows of :mod:`pdclm.eval.claims`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pdclm.bench.baselines import (
    BPETokenizer,
    TokenSplit,
    TokenTransformer,
    bpe_bpb,
    bpe_loss_fn,
    matched_transformer,
    non_embedding_params,
    save_baseline,
    train_bpe,
)
from pdclm.bench.common import LABELS, peak_rss_mb, pyplot, run_spawned, stamp, steps_for_budget
from pdclm.config import BENCH_ARMS, Config, ConfigError, to_dict
from pdclm.data.shards import BatchSampler, ShardSet, profile_dir
from pdclm.eval.claims import CLAIMS, row, threshold_verdict
from pdclm.io import write_json_atomic
from pdclm.model.io import load_model, save_model
from pdclm.model.pdclm import PDCLM
from pdclm.pse.patcher import calibrate, mean_patch_length
from pdclm.train.flops import matmul_flops
from pdclm.train.loop import Trainer, resolve_device
from pdclm.train.objectives import lm_loss, mean_bpb
from pdclm.train.phase import RunContext, for_steps
from pdclm.train.pretrain import (
    as_batch,
    calibration_sample,
    held_out_batches,
    prepare_shared,
    store_profiles,
    train_entropy_model,
    weights_tag,
)

# ----------------------------------------------------------------------------- preparation


def _prep_key(cfg: Config) -> str:
    keys = {"data": to_dict(cfg.data), "pse": to_dict(cfg.pse), "vocab": cfg.bench.bpe_vocab}
    keys["seed"] = cfg.train.seed
    keys["pse"]["patcher"].pop("threshold")
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def prepare_bench(cfg: Config, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Shards, the frozen entropy model with its profiles and calibrated patcher (PD-CLM's data
    preparation), and the BPE tokenizer with the encoded training split (the BPE model's).
    Each is timed from scratch; the result is kept in ``out_dir`` and reused by later
    benchmarks in the same folder."""

    path = out_dir / "prep.json"
    key = _prep_key(cfg)
    if path.exists() and (out_dir / "pse" / "model.safetensors").exists():
        prep = json.loads(path.read_text())
        if prep.get("key") == key:
            return prep
    out_dir.mkdir(parents=True, exist_ok=True)
    prepare_shared(cfg, progress)
    train, val = ShardSet.open(cfg.data.dir, "train"), ShardSet.open(cfg.data.dir, "val")
    t0 = time.perf_counter()
    entropy, entropy_info = train_entropy_model(
        RunContext(cfg, out_dir, progress=progress), train, val
    )
    t1 = time.perf_counter()
    tag = weights_tag(entropy)
    shutil.rmtree(profile_dir(cfg.data.dir, tag), ignore_errors=True)  # time profiling for real
    store_profiles(cfg, entropy, progress)
    cal_tokens, cal_entropy = calibration_sample(val, cfg, tag)
    pcfg = copy.deepcopy(cfg)
    pcfg.pse.patcher.threshold = calibrate(cal_tokens, cal_entropy, pcfg.pse.patcher)
    t2 = time.perf_counter()
    torch.manual_seed(cfg.train.seed)
    model = PDCLM(pcfg.pse, pcfg.model)
    model.entropy.load_state_dict(entropy.state_dict())
    save_model(model, pcfg, out_dir / "pse")
    bpe = train_bpe(train.shards, cfg.bench.bpe_vocab, out_dir / "bpe")
    prep = {
        "key": key,
        "tag": tag,
        "threshold": pcfg.pse.patcher.threshold,
        "entropy_model": entropy_info,
        "entropy_train_seconds": t1 - t0,
        "profile_seconds": t2 - t1,
        "pse_seconds": t2 - t0,
        "bpe": bpe,
        "bpe_seconds": bpe["train_seconds"] + bpe["encode_seconds"],
        "train_bytes": train.n_bytes,
        "val_bytes": val.n_bytes,
    }
    write_json_atomic(path, prep)
    return prep


def arm_config(cfg: Config, arm: str, prep: dict[str, Any]) -> Config:
    """The config a PD-CLM arm is built with: the calibrated threshold, and for the ablations
    the patch rule (fixed stride at the target mean patch length, or whitespace)."""
    acfg = copy.deepcopy(cfg)
    p = acfg.pse.patcher
    p.threshold = prep["threshold"]
    if arm == "pdclm_stride":
        p.rule, p.max_len = "stride", math.ceil(p.target_mean)
        p.target_mean = min(p.target_mean, p.max_len)
    elif arm == "pdclm_whitespace":
        p.rule = "whitespace"
    return acfg


@dataclasses.dataclass
class Arm:
    """One model of a benchmark with everything the loop needs to train and evaluate it."""

    name: str
    model: nn.Module
    cfg: Config
    sample: Callable
    loss_fn: Callable
    evaluate: Callable[[nn.Module], dict[str, float]]
    bytes_per_symbol: float
    """Bytes one position stands for (1 for byte models; bytes per token for BPE)."""
    seq_len: int
    prep_seconds: float
    extra: dict[str, Any]


def pdclm_target(cfg: Config) -> int:
    """PD-CLM's non-embedding parameter count at this config (what baselines match)."""

    return non_embedding_params(PDCLM(cfg.pse, cfg.model))


def build_arm(name: str, cfg: Config, out_dir: Path, prep: dict[str, Any]) -> Arm:

    device = resolve_device(cfg.train.device)
    t = cfg.train
    train, val = ShardSet.open(cfg.data.dir, "train"), ShardSet.open(cfg.data.dir, "val")
    lat = cfg.model.latent
    if name.startswith("pdclm") or name == "byte":
        tag = prep["tag"] if name != "byte" else None  # PD-CLM reads the stored profiles
        sampler = BatchSampler(train, t.seq_len, t.batch, t.seed, tag)
        val_batches = held_out_batches(val, t.seq_len, t.batch, t.eval_batches, tag)
        if name == "byte":
            target = pdclm_target(cfg)
            model = matched_transformer(target, lat.dim, lat.heads, cfg.model.mlp_ratio)
            acfg, prep_seconds, extra = cfg, 0.0, {}
        else:
            acfg = arm_config(cfg, name, prep)
            torch.manual_seed(t.seed)  # every PD-CLM arm starts from the same weights
            model = PDCLM(acfg.pse, acfg.model)
            model.entropy.load_state_dict(load_model(out_dir / "pse")[0].entropy.state_dict())
            model.threshold.fill_(prep["threshold"])
            with torch.no_grad():
                mean_patch = mean_patch_length(model.patch(*val_batches[0]))
            prep_seconds = prep["pse_seconds"]
            extra = {"patch_rule": acfg.pse.patcher.rule, "mean_patch_len": mean_patch}
        return Arm(
            name,
            model,
            acfg,
            lambda i, rows: as_batch(*sampler.batch(i, rows)),
            lm_loss,
            mean_bpb(val_batches, device),
            1.0,
            t.seq_len,
            prep_seconds,
            extra,
        )
    if name != "bpe":
        raise ConfigError(f"unknown bench model '{name}' (known: {', '.join(BENCH_ARMS)})")
    tok = BPETokenizer.load(out_dir / "bpe" / "tokenizer.json")
    ids = np.load(out_dir / "bpe" / "train_ids.npy")
    bpt = prep["bpe"]["bytes_per_token"]
    seq = max(8, math.ceil(t.seq_len / bpt))  # the same bytes per sequence as the byte models
    target = pdclm_target(cfg)
    model = matched_transformer(target, lat.dim, lat.heads, cfg.model.mlp_ratio, tok.vocab_size)
    sampler = BatchSampler(TokenSplit([ids], "train", out_dir, len(ids)), seq, t.batch, t.seed)
    windows = [
        w
        for tokens, _ in BatchSampler(val, t.seq_len, t.batch, 1).fixed_batches(t.eval_batches)
        for w in tokens
    ]
    return Arm(
        name,
        model,
        cfg,
        lambda i, rows: as_batch(*sampler.batch(i, rows)),
        bpe_loss_fn(torch.from_numpy(tok.token_bytes)),
        lambda m: {"bpb": bpe_bpb(m, tok, windows, t.batch)},
        bpt,
        seq,
        prep["bpe_seconds"],
        {"vocab": tok.vocab_size, "bytes_per_token": bpt},
    )


def train_arm(
    name: str,
    cfg: Config,
    out_dir: Path,
    prep: dict[str, Any],
    seconds: float,
    save: bool,
    work: Path | None = None,
) -> dict[str, Any]:
    """Build, time-calibrate, train for ``seconds``, evaluate; save the model (into
    ``out_dir/models``) if asked. ``work``: the trainer's folder (default ``out_dir/work``)."""

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    arm = build_arm(name, cfg, out_dir, prep)
    model, device = arm.model, resolve_device(cfg.train.device)
    model.to(device)
    work = (work or out_dir / "work") / name
    # size the cosine schedule to the budget; 7 validations of eval_batches forward passes
    # (~1/3 of a training step each) share it
    fit = steps_for_budget(name, model, cfg, work, arm.sample, arm.loss_fn, seconds)
    steps = max(10, fit - int(7 * cfg.train.eval_batches / 3))
    tcfg = for_steps(cfg.train, steps, evals=6)
    trainer = Trainer(
        name,
        model,
        tcfg,
        work,
        arm.sample,
        arm.loss_fn,
        evaluate=arm.evaluate,
        max_seconds=seconds,
        checkpoints=False,
        progress=True,
    )
    t_start = time.perf_counter()
    result = trainer.fit(resume=False)
    wall = time.perf_counter() - t_start
    flops = trainer.flops_per_step  # counted by the loop on the first batch
    bytes_per_step = (
        cfg.train.batch * cfg.train.grad_accum * (arm.seq_len + 1) * arm.bytes_per_symbol
    )
    bytes_per_s = result["bytes_per_s"] * arm.bytes_per_symbol
    trained = bytes_per_s * result["train_seconds"]
    if save:
        folder = out_dir / "models" / name
        if isinstance(model, TokenTransformer):
            save_baseline(model.cpu(), folder, {"kind": name, **arm.extra})
        else:
            save_model(model.cpu(), arm.cfg, folder)
    return {
        "model": name,
        "label": LABELS[name],
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "non_embedding_params": non_embedding_params(model),
        "steps": result["steps"],
        "val_bpb": result["val_bpb"],
        "bytes_per_s": bytes_per_s,
        "prep_seconds": arm.prep_seconds,
        "bytes_per_s_with_prep": trained / (result["train_seconds"] + arm.prep_seconds),
        "train_seconds": result["train_seconds"],
        "flops_per_step": flops,
        "flops_per_s": flops * result["steps"] / result["train_seconds"],
        "flops_per_byte": flops / bytes_per_step,
        "peak_rss_mb": peak_rss_mb(),
        "wall_seconds": wall,
        "curve": [(h["step"], h["val_bpb"]) for h in result["history"]],
        "seconds_per_step": result["train_seconds"] / max(1, result["steps"]),
        "seq_len": arm.seq_len,
        # other processes on the machine would show here (> the threads used): a check that
        # the timing had the cores to itself
        "load_avg_1min": os.getloadavg()[0],
        **arm.extra,
    }


def _child(name: str, cfg: Config, out_dir: str, prep: dict, seconds: float, queue) -> None:
    queue.put(train_arm(name, cfg, Path(out_dir), prep, seconds, save=True))


def train_spawned(name: str, cfg: Config, out_dir: Path, prep: dict, seconds: float) -> dict:
    """:func:`train_arm` in a fresh process: its peak RSS is this model's alone."""
    return run_spawned(name, _child, name, cfg, str(out_dir), prep, seconds)


# --------------------------------------------------------------------------------- pretrain


def bench_pretrain(cfg: Config, out: Path | None = None) -> dict[str, Any]:

    out_dir = out or Path("runs") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    prep = prepare_bench(cfg, out_dir)
    peak = matmul_flops(cfg.train.bf16, resolve_device(cfg.train.device))
    rows: dict[str, Any] = {}
    for name in cfg.bench.models:
        rows[name] = train_spawned(name, cfg, out_dir, prep, cfg.bench.seconds)
        rows[name]["mfu"] = rows[name]["flops_per_s"] / peak
    result = stamp(
        {
            "budget_seconds": cfg.bench.seconds,
            "threads": torch.get_num_threads(),
            "matmul_flops_per_s": peak,
            "matmul_dtype": "bf16" if cfg.train.bf16 else "fp32",
            "prep": prep,
            "models": rows,
            "ratios": pretrain_ratios(rows),
        },
        cfg,
    )
    result["claims"], result["goals"] = pretrain_claims(rows)
    plot_pretrain(rows, out_dir / "bench_pretrain.png", cfg.bench.seconds)
    write_json_atomic(out_dir / "bench_pretrain.json", result)
    print(pretrain_table(result))
    return result


def pretrain_ratios(rows: dict[str, Any]) -> dict[str, dict[str, float]]:
    """PD-CLM over each other model, per figure."""
    if "pdclm" not in rows:
        return {}
    pd = rows["pdclm"]
    keys = ("val_bpb", "bytes_per_s", "bytes_per_s_with_prep", "peak_rss_mb", "flops_per_byte")
    out: dict[str, dict[str, float]] = {}
    for other, r in rows.items():
        if other == "pdclm":
            continue
        out[other] = {k: pd[k] / r[k] for k in keys if r.get(k)}
        # training time after which PD-CLM's bytes/s incl. preparation overtakes this model's
        a, b = pd["bytes_per_s"], r["bytes_per_s"]
        if a > b:
            t = (b * pd["prep_seconds"] - a * r["prep_seconds"]) / (a - b)
            out[other]["break_even_train_seconds"] = max(0.0, t)
    return out


def compare(
    claim: str, measure: str, pd: float, base: float, target: float, higher: bool, source: str
) -> dict[str, Any]:
    """A claim or goal row whose verdict is PD-CLM / baseline against ``target``."""
    return row(claim, measure, pd, base, threshold_verdict(pd / base, target, higher), source)


def pretrain_claims(rows: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    src = "pdclm bench pretrain"
    pd, bpe, byte = rows.get("pdclm"), rows.get("bpe"), rows.get("byte")
    claims, goals = [], []
    if not pd:
        return claims, goals
    if bpe:
        speed, rss = "bytes_per_s_with_prep", "peak_rss_mb"
        claims += [
            compare(
                CLAIMS["speed"],
                "training bytes/s incl. data preparation (PD-CLM: entropy model + profiles; "
                "BPE: tokenizer training + encoding), equal wall-clock and non-embedding "
                "params; holds at >= 1.15x the BPE transformer",
                *(pd[speed], bpe[speed], 1.15, True, src),
            ),
            compare(
                CLAIMS["memory"],
                "peak resident memory (MB) training at equal non-embedding params; holds at "
                "<= 0.9x the BPE transformer",
                *(pd[rss], bpe[rss], 0.9, False, src),
            ),
        ]
        goals.append(
            compare("peak memory <= 0.9x BPE", "peak RSS (MB)", pd[rss], bpe[rss], 0.9, False, src)
        )
    for other in (r for r in (byte, bpe) if r):
        goals.append(
            compare(
                f"bits/byte below the {other['label']}",
                "held-out bits per byte at equal wall-clock",
                *(pd["val_bpb"], other["val_bpb"], 1.0 - 1e-9, False, src),
            )
        )
    if byte:
        goals.append(
            compare(
                "training bytes/s >= 1.25x byte transformer",
                "training-loop bytes/s",
                *(pd["bytes_per_s"], byte["bytes_per_s"], 1.25, True, src),
            )
        )
    goals.append(
        compare(
            "FLOP utilisation >= 50 % of matmul peak",
            "model FLOP/s over the square-matmul FLOP/s measured in the same run",
            *(pd["mfu"], 1.0, 0.5, True, src),
        )
    )
    return claims, goals


def pretrain_table(result: dict[str, Any]) -> str:
    lines = [
        "| model | params (non-emb) | val bpb | bytes/s | bytes/s incl. prep | peak RSS MB "
        "| FLOPs/byte | MFU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["models"].values():
        lines.append(
            f"| {r['label']} | {r['params'] / 1e6:.2f} M ({r['non_embedding_params'] / 1e6:.2f} M)"
            f" | {r['val_bpb']:.3f} | {r['bytes_per_s']:,.0f} | {r['bytes_per_s_with_prep']:,.0f}"
            f" | {r['peak_rss_mb']:,.0f} | {r['flops_per_byte'] / 1e6:.1f} M | {r['mfu']:.1%} |"
        )
    lines.append(
        f"\nmatmul peak {result['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s "
        f"({result['matmul_dtype']}); PSE preparation {result['prep']['pse_seconds']:.1f} s, "
        f"BPE tokenizer + encoding {result['prep']['bpe_seconds']:.1f} s"
    )
    return "\n".join(lines)


def plot_pretrain(rows: dict[str, Any], path: Path, seconds: float) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for r in rows.values():
        steps = max(1, r["steps"])
        xs = [s / steps * r["wall_seconds"] for s, _ in r["curve"]]
        ax.plot(xs, [b for _, b in r["curve"]], "o-", ms=3, label=f"{r['label']}")
    ax.set_xlabel("training wall-clock (s)")
    ax.set_ylabel("held-out bits per byte")
    ax.set_title(f"equal wall-clock budget ({seconds:.0f} s each)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------- scaling


def sized(cfg: Config, dim: int) -> Config:
    """``cfg`` with latent width ``dim`` (heads scaled to keep the head size)."""
    base = cfg.model.latent
    if (dim * base.heads) % base.dim:
        raise ConfigError(
            f"bench.scaling_dims: {dim} does not keep the head size {base.dim // base.heads}"
        )
    scfg = copy.deepcopy(cfg)
    scfg.model.latent.dim, scfg.model.latent.heads = dim, dim * base.heads // base.dim
    return scfg


def bench_scaling(cfg: Config, out: Path | None = None) -> dict[str, Any]:
    out_dir = out or Path("runs") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    prep = prepare_bench(cfg, out_dir)
    names = ("pdclm", "byte", "bpe")
    sizes = []
    for dim in cfg.bench.scaling_dims:
        scfg = sized(cfg, dim)
        models = {}
        for name in names:
            work = out_dir / f"scaling-{dim}"
            r = train_arm(name, scfg, out_dir, prep, cfg.bench.scaling_seconds, False, work)
            models[name] = {
                k: r[k]
                for k in ("params", "non_embedding_params", "val_bpb", "steps", "bytes_per_s")
            }
        sizes.append({"latent_dim": dim, "models": models})
    gaps = {
        other: [s["models"][other]["val_bpb"] - s["models"]["pdclm"]["val_bpb"] for s in sizes]
        for other in ("byte", "bpe")
    }

    def direction(g: list[float]) -> str:
        """How (baseline - PD-CLM) bits per byte moves from the smallest to the largest size."""
        if len(g) < 2 or abs(g[-1] - g[0]) < 0.02:
            return "flat"
        return "moves towards PD-CLM" if g[-1] > g[0] else "moves towards the baseline"

    result = stamp(
        {
            "seconds_per_model": cfg.bench.scaling_seconds,
            "prep": {k: prep[k] for k in ("pse_seconds", "bpe_seconds")},
            "sizes": sizes,
            "gap_bpb": gaps,
            "gap_direction": {k: direction(g) for k, g in gaps.items()},
        },
        cfg,
    )
    plot_scaling(sizes, out_dir / "bench_scaling.png", cfg.bench.scaling_seconds)
    write_json_atomic(out_dir / "bench_scaling.json", result)
    for s in sizes:
        cells = ", ".join(f"{LABELS[n]} {m['val_bpb']:.3f}" for n, m in s["models"].items())
        print(f"latent {s['latent_dim']}: {cells}")
    print(f"gap to PD-CLM (bpb): {json.dumps(result['gap_direction'])}")
    return result


def plot_scaling(sizes: list[dict[str, Any]], path: Path, seconds: float) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name in sizes[0]["models"]:
        xs = [s["models"][name]["non_embedding_params"] for s in sizes]
        ax.plot(xs, [s["models"][name]["val_bpb"] for s in sizes], "o-", label=LABELS[name])
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding parameters")
    ax.set_ylabel("held-out bits per byte")
    ax.set_title(f"equal wall-clock per model ({seconds:.0f} s)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
