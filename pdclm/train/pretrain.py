"""Phase 1, continuous stream pretraining.

1. ingest the corpus into byte shards (``pdclm prepare``; reused if already there);
2. train the PSE entropy model, then freeze it;
3. store its bit-entropy profile beside every shard;
4. calibrate the patch threshold on held-out bytes to the target mean patch length;
5. train PD-CLM on next-byte prediction, validating in bits per byte.
Every step runs through the shared :class:`~pdclm.train.loop.Trainer` and resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pdclm import dist
from pdclm.config import Config
from pdclm.data.ingest import prepare
from pdclm.data.shards import BatchSampler, ShardSet, write_profiles
from pdclm.eval.tasks import evaluate_tasks, held_out_sets
from pdclm.model.io import save_model
from pdclm.model.pdclm import PDCLM
from pdclm.pse.entropy import EntropyModel
from pdclm.pse.patcher import calibrate, mean_patch_length, patch_ids
from pdclm.pse.viz import plot_patch_lengths, plot_profile
from pdclm.train.loop import Trainer, resolve_device
from pdclm.train.objectives import causal_lm_loss, lm_loss, mean_bpb
from pdclm.train.phase import RunContext, for_steps


def as_batch(tokens: np.ndarray, entropy: np.ndarray | None) -> tuple[Tensor, ...]:
    t = torch.from_numpy(tokens)
    return (t,) if entropy is None else (t, torch.from_numpy(entropy))


def held_out_batches(
    val: ShardSet, seq_len: int, batch: int, n: int, tag: str | None = None
) -> list[tuple[Tensor, ...]]:
    """The same ``n`` validation batches on every call (with the entropy profile if tagged)."""
    return [as_batch(*b) for b in BatchSampler(val, seq_len, batch, 1, tag).fixed_batches(n)]


def weights_tag(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def train_entropy_model(
    ctx: RunContext, train: ShardSet, val: ShardSet
) -> tuple[EntropyModel, dict]:
    cfg = ctx.cfg
    ecfg = cfg.pse.entropy
    tcfg = for_steps(
        cfg.train,
        ecfg.steps,
        evals=4,
        ckpts=2,
        batch=ecfg.batch,
        lr=ecfg.lr,
        seq_len=ecfg.context,
        grad_accum=1,
    )
    torch.manual_seed(cfg.train.seed)  # a rerun trains the same entropy model, hence same patches
    model = EntropyModel(ecfg, cfg.model.mlp_ratio)
    sampler = BatchSampler(train, ecfg.context, ecfg.batch, cfg.train.seed)
    val_batches = held_out_batches(val, ecfg.context, ecfg.batch, cfg.train.eval_batches)
    trainer = Trainer(
        "phase1/entropy",
        model,
        tcfg,
        ctx.run_dir / "entropy",
        sample=lambda i, rows: as_batch(*sampler.batch(i, rows)),
        loss_fn=causal_lm_loss,
        log=ctx.log,
        evaluate=mean_bpb(val_batches, resolve_device(tcfg.device), causal_lm_loss),
        progress=ctx.progress,
    )
    result = trainer.fit(resume=ctx.resume)
    model.eval().cpu()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, {
        "params": sum(p.numel() for p in model.parameters()),
        "steps": result["steps"],
        "val_bpb": result.get("val_bpb"),
    }


def calibration_sample(val: ShardSet, cfg: Config, tag: str) -> tuple[Tensor, Tensor]:
    n = max(1, cfg.pse.patcher.calibration_bytes // cfg.train.seq_len)
    toks, ents = [], []
    for tokens, entropy in BatchSampler(val, cfg.train.seq_len, 1, 2, tag).fixed_batches(n):
        toks.append(tokens)
        ents.append(entropy)
    return torch.from_numpy(np.concatenate(toks)), torch.from_numpy(np.concatenate(ents))


def patch_stats(starts: Tensor) -> dict[str, Any]:
    lengths = torch.diff(torch.nonzero(starts.flatten()).flatten()).float()
    hist = torch.bincount(lengths.long()).tolist()
    return {
        "mean_len": mean_patch_length(starts),
        "median_len": float(lengths.median()),
        "max_len": int(lengths.max()),
        "length_hist": hist,
    }


@dataclasses.dataclass
class PreparedPSE:
    """Everything Phase 1 sets up before the LM trains: shards, frozen PSE, calibration."""

    model: PDCLM
    """A fresh PD-CLM holding the frozen entropy model and the calibrated threshold."""
    tag: str
    """Which entropy profile the shards carry (a hash of the entropy model's weights)."""
    train: ShardSet
    val: ShardSet
    manifest: dict[str, Any]
    entropy_info: dict[str, Any]
    cal_tokens: Tensor
    cal_entropy: Tensor


def prepare_shared(cfg: Config, progress: bool) -> dict[str, Any]:
    """Ingest the corpus (rank 0 builds the shards; the other ranks then find them ready)."""
    with dist.main_first():
        return prepare(cfg.data, progress=progress)


def store_profiles(cfg: Config, entropy: EntropyModel, progress: bool) -> str:
    """Make sure every shard carries this entropy model's profile (a no-op when it does, as
    after Phase 1); returns the profile's tag. Ranks split the shards between them."""
    device = resolve_device(cfg.train.device)
    prepare_shared(cfg, progress)
    tag = weights_tag(entropy)
    entropy.to(device)
    part = dist.part()
    write_profiles(
        cfg.data.dir,
        tag,
        lambda s: (
            entropy.profile(torch.from_numpy(s.astype(np.int64)).to(device)[None])[0].cpu().numpy()
        ),
        progress=progress,
        share=(part.rank, part.world),
    )
    dist.barrier()  # every profile is complete before anyone samples from them
    entropy.cpu()
    return tag


def prepare_pse(ctx: RunContext) -> PreparedPSE:
    """Ingest, train + freeze the entropy model, profile every shard, calibrate the patcher."""
    cfg = ctx.cfg
    manifest = prepare_shared(cfg, ctx.progress)
    train, val = ShardSet.open(cfg.data.dir, "train"), ShardSet.open(cfg.data.dir, "val")

    entropy, entropy_info = train_entropy_model(ctx, train, val)
    tag = store_profiles(cfg, entropy, ctx.progress)

    cal_tokens, cal_entropy = calibration_sample(val, cfg, tag)
    cfg.pse.patcher.threshold = calibrate(cal_tokens, cal_entropy, cfg.pse.patcher)
    torch.manual_seed(cfg.train.seed)
    model = PDCLM(cfg.pse, cfg.model)
    model.entropy.load_state_dict(entropy.state_dict())
    return PreparedPSE(model, tag, train, val, manifest, entropy_info, cal_tokens, cal_entropy)


class Pretrain:
    name = "pretrain"
    key = "phase1"
    folders = ("entropy", "pretrain")

    def run(self, ctx: RunContext) -> dict[str, Any]:
        cfg, run_dir = ctx.cfg, ctx.run_dir
        device = resolve_device(cfg.train.device)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        pse = prepare_pse(ctx)
        model, tag, train, val = pse.model, pse.tag, pse.train, pse.val
        cal_tokens, cal_entropy = pse.cal_tokens, pse.cal_entropy
        train_sampler = BatchSampler(train, cfg.train.seq_len, cfg.train.batch, cfg.train.seed, tag)
        val_batches = held_out_batches(
            val, cfg.train.seq_len, cfg.train.batch, cfg.train.eval_batches, tag
        )
        trainer = Trainer(
            "phase1/lm",
            model,
            cfg.train,
            run_dir / "pretrain",
            sample=lambda i, rows: as_batch(*train_sampler.batch(i, rows)),
            loss_fn=lm_loss,
            log=ctx.log,
            evaluate=mean_bpb(val_batches, device),
            progress=ctx.progress,
        )
        result = trainer.fit(resume=ctx.resume)
        model.eval().cpu()
        starts = model.patch(cal_tokens, cal_entropy)
        history = result.pop("history")
        save_model(model, cfg, run_dir / "model")  # the run's latest model
        save_model(model, cfg, run_dir / "phase1_model")  # what later phases start from
        plots = []
        if dist.is_main():  # drawn for the report, which rank 0 writes
            plots = self.plots(model, cal_tokens, cal_entropy, starts, run_dir)
        # held-out task accuracy of the stream model: what the later phases are measured against
        # (greedy only: it has not learned to write a chain of thought to check)
        tasks = evaluate_tasks(model, held_out_sets(cfg.tasks), cfg.tasks, checked=False)
        return {
            **tasks,
            "data": {
                "train_bytes": train.n_bytes,
                "val_bytes": val.n_bytes,
                "train_docs": pse.manifest["totals"]["train"]["docs"],
                "val_docs": pse.manifest["totals"]["val"]["docs"],
                "sources": cfg.data.sources,
            },
            "entropy_model": pse.entropy_info,
            "patcher": {
                "rule": cfg.pse.patcher.rule,
                "threshold": cfg.pse.patcher.threshold,
                "target_mean": cfg.pse.patcher.target_mean,
                **patch_stats(starts),
            },
            "model": {
                "params": model.num_params(),
                "params_with_entropy": model.num_params(False),
                "latent_params": sum(p.numel() for p in model.latent.parameters()),
            },
            "train": {
                "steps": result["steps"],
                "seconds": round(result["train_seconds"], 1),
                "bytes_per_s": round(result.get("bytes_per_s", 0.0), 1),
                "final_loss": result.get("loss"),
            },
            "val_bpb_initial": history[0]["val_bpb"] if history else None,
            "val_bpb": result["val_bpb"],
            "val_history": history,
            "plots": plots,
        }

    @staticmethod
    def plots(
        model: PDCLM, tokens: Tensor, entropy: Tensor, starts: Tensor, run_dir: Path
    ) -> list[str]:

        plot_profile(
            tokens[0, :160],
            entropy[0, :160],
            starts[0, :160],
            run_dir / "phase1_entropy_profile.png",
            model.pse_cfg.patcher,
        )
        plot_patch_lengths(patch_ids(starts), run_dir / "phase1_patch_lengths.png")
        return ["phase1_entropy_profile.png", "phase1_patch_lengths.png"]
