"""``pdclm bench chars``: character-level skill (CUTE-style tasks, :mod:`pdclm.data.chars`) of
PD-CLM, the byte transformer and the BPE transformer after the same fine-tuning budget.

Each model starts from the weights ``bench pretrain`` saved in the same folder (it is run
first when any of the three is missing), so all three were pretrained on the same data for the
same wall-clock. Each is then fine-tuned on generated training items for ``bench.chars_seconds``
of wall-clock through the shared loop, its schedule sized by a short timing probe as in
``bench pretrain``, and answers held-out items (no held-out word or number is in any training
item) greedily; accuracy is the exact match of the answer, per task.

Every model reads the same items: a training row is a document start (BOS; the separator for
BPE) followed by whole items ``question\\n=> answer\\n`` filling at most ``train.seq_len``
bytes. The byte models read the bytes (rows padded to ``seq_len + 1`` symbols, as in
pretraining); the BPE model reads each item's prompt and answer encoded separately (so that
its answer starts a token exactly as when it generates after the prompt), rows padded to the
longest of the batch. The loss is on the answer and its closing newline only: the question's
words are random draws that hold nothing to learn, and an answer-only loss spends every
model's budget on the skill that is measured. Generation stops at a newline (BPE: a token
containing one) or a control symbol.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pdclm.bench.baselines import BPETokenizer, TokenTransformer
from pdclm.bench.common import LABELS, pyplot, stamp, steps_for_budget
from pdclm.bench.generate import load_arms
from pdclm.bench.pretrain import bench_pretrain
from pdclm.config import BENCH_ARMS, Config, ConfigError
from pdclm.data.chars import MAX_WORD, MIN_WORD, TASKS, CharItem, held_out_items, pools
from pdclm.data.chars import training_rows as char_rows
from pdclm.eval.claims import row, threshold_verdict
from pdclm.io import write_json_atomic
from pdclm.model.pdclm import PDCLM, complete
from pdclm.train.loop import Trainer, resolve_device
from pdclm.train.objectives import weighted_lm_loss
from pdclm.train.phase import for_steps
from pdclm.vocab import BOS, EOS, NEWLINE, VOCAB_SIZE

ARMS = ("pdclm", "byte", "bpe")
"""The models compared: PD-CLM and the two baselines of ``bench pretrain``."""
STOP = frozenset({NEWLINE, *range(256, VOCAB_SIZE)})
"""Byte-level generation ends at a newline or a control symbol."""
EXAMPLES = 3
"""Answers kept per task and model in the JSON, to read what a model writes."""


# ------------------------------------------------------------------------------- encoding


class Encoding:
    """How one model reads text: bytes after BOS, or BPE ids after the separator."""

    def __init__(self, tok: BPETokenizer | None) -> None:
        self.tok = tok
        self.start = BOS if tok is None else tok.sep
        self.pad = EOS if tok is None else tok.sep

    def encode(self, text: str) -> list[int]:
        data = text.encode()
        return list(data) if self.tok is None else self.tok.encode(data)

    def row(self, items: list[CharItem]) -> tuple[list[int], list[float]]:
        """Symbols of a training row and the loss weight of each target (``symbols[1:]``):
        1 on answers and their newlines, 0 on questions."""
        ids, weights = [self.start], []
        for it in items:
            prompt, answer = self.encode(it.prompt), self.encode(f"{it.answer}\n")
            ids += prompt + answer
            weights += [0.0] * len(prompt) + [1.0] * len(answer)
        return ids, weights


def batch_sampler(cfg: Config, enc: Encoding) -> Callable[[int, slice], tuple[Tensor, Tensor]]:
    """The loop's ``sample(step, rows)``: a batch of training rows and their target weights."""
    t, b = cfg.train, cfg.bench

    def sample(step: int, rows: slice) -> tuple[Tensor, Tensor]:
        which = range(t.batch)[rows]
        items = char_rows(b.chars_tasks, b.chars_held_out, t.seed, step, which, t.seq_len)
        encoded = [enc.row(r) for r in items]
        n = t.seq_len + 1 if enc.tok is None else max(len(ids) for ids, _ in encoded)
        tokens = torch.full((len(encoded), n), enc.pad, dtype=torch.long)
        weights = torch.zeros(len(encoded), n - 1)
        for i, (ids, w) in enumerate(encoded):
            tokens[i, : len(ids)] = torch.tensor(ids)
            weights[i, : len(w)] = torch.tensor(w)
        return tokens, weights

    return sample


# ------------------------------------------------------------------------------ fine-tune


def finetune(name: str, model: nn.Module, enc: Encoding, cfg: Config, work: Path) -> dict:
    """Train ``model`` on the character tasks for ``bench.chars_seconds`` of wall-clock, its
    cosine schedule sized to the budget from a timing probe (whose steps are undone)."""
    seconds = cfg.bench.chars_seconds
    sample = batch_sampler(cfg, enc)
    steps = steps_for_budget(f"chars-{name}", model, cfg, work, sample, weighted_lm_loss, seconds)
    trainer = Trainer(
        f"chars-{name}",
        model,
        for_steps(cfg.train, steps),
        work,
        sample,
        weighted_lm_loss,
        max_seconds=seconds,
        checkpoints=False,
        progress=True,
    )
    result = trainer.fit(resume=False)
    return {
        "steps": result["steps"],
        "planned_steps": steps,
        "train_seconds": result["train_seconds"],
        "seconds_per_step": result["train_seconds"] / max(1, result["steps"]),
        "final_loss": result.get("loss"),
        "answer_bits_per_symbol": result.get("bpb"),
    }


# ------------------------------------------------------------------------------- evaluate


@torch.no_grad()
def token_answer(model: TokenTransformer, enc: Encoding, prompt: str, limit: int) -> bytes:
    """A baseline's greedy answer after ``prompt``: cached steps, one row at a time."""
    stream = model.start_stream(1)
    for s in [enc.start, *enc.encode(prompt)]:
        logits = stream.push(torch.tensor([s]))
    out = b""
    for _ in range(limit):
        nxt = int(logits[0].argmax())
        piece = enc.tok.pieces[nxt] if enc.tok is not None else bytes([nxt] if nxt < 256 else [])
        if not piece or b"\n" in piece:  # a control symbol (BPE: the separator) or a newline
            return out + piece.split(b"\n")[0]
        out += piece
        logits = stream.push(torch.tensor([nxt]))
    return out


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run on one CPU thread. Greedy answers are thousands of tiny steps: threads only add a
    fork and join per op (measured on 2 busy cores: 42 ms per cached step with 2 threads,
    1.1 ms with 1). Only accuracy is measured here, not speed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def answers(model: nn.Module, enc: Encoding, items: list[CharItem]) -> list[bytes]:
    """Greedy answers to ``items``; at most one symbol more than the longest gold answer is
    generated (enough to tell a right answer that does not stop from a right one)."""
    model.eval()
    limit = max(len(it.answer.encode()) for it in items) + 1
    with one_thread():
        if isinstance(model, PDCLM):
            prompts = [[BOS, *it.prompt.encode()] for it in items]
            return [bytes(o) for o in complete(model, prompts, limit, STOP, temperature=0.0)]
        return [token_answer(model, enc, it.prompt, limit) for it in items]


def score(items: list[CharItem], got: list[bytes]) -> list[bool]:
    """Each answer checked by its task's verifier (the exact gold answer)."""
    ok = []
    for it, g in zip(items, got, strict=True):
        try:
            ok.append(TASKS[it.task].verify(it.question, g.decode("utf-8")))
        except UnicodeDecodeError:
            ok.append(False)
    return ok


# ---------------------------------------------------------------------------------- bench


def pretrained(cfg: Config, out: Path) -> dict[str, tuple[nn.Module, Any]]:
    """The three models ``bench pretrain`` saved in ``out``; when any is missing, ``bench
    pretrain`` runs there first (the configured models and these three)."""
    folders = [out / "models" / n for n in ARMS]
    if not all((f / "baseline.json").exists() or (f / "config.json").exists() for f in folders):
        pcfg = copy.deepcopy(cfg)
        pcfg.bench.models = [m for m in BENCH_ARMS if m in cfg.bench.models or m in ARMS]
        print(f"bench chars: no pretrained {', '.join(ARMS)} in {out}; running bench pretrain")
        bench_pretrain(pcfg, out)
    return load_arms(out, ARMS)


def eval_sets(cfg: Config) -> dict[str, list[CharItem]]:
    b = cfg.bench
    sets = {
        n: held_out_items(n, b.chars_items, cfg.train.seed, b.chars_held_out) for n in b.chars_tasks
    }
    longest = max(len(it.text.encode()) for items in sets.values() for it in items)
    if longest > cfg.train.seq_len:
        raise ConfigError(
            f"bench chars: items up to {longest} bytes do not fit a training row of "
            f"train.seq_len={cfg.train.seq_len} bytes; raise train.seq_len or drop the task"
        )
    return sets


def bench_chars(cfg: Config, out: Path) -> dict[str, Any]:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    sets = eval_sets(cfg)
    arms = pretrained(cfg, out)
    device = resolve_device(cfg.train.device)
    rows: dict[str, dict[str, Any]] = {}
    for name, (model, tok) in arms.items():
        enc = Encoding(tok)
        model.to(device)
        trained = finetune(name, model, enc, cfg, out / "chars-work" / name)
        t0 = time.perf_counter()
        acc, right, examples = {}, {}, {}
        for task, items in sets.items():
            got = answers(model, enc, items)
            ok = score(items, got)
            acc[task], right[task] = sum(ok) / len(ok), sum(ok)
            examples[task] = [
                {"question": it.question, "gold": it.answer, "got": g.decode("utf-8", "replace")}
                for it, g in zip(items[:EXAMPLES], got, strict=False)
            ]
        rows[name] = {
            "label": LABELS[name],
            **trained,
            "eval_seconds": time.perf_counter() - t0,
            "accuracy": acc,
            "right": right,
            "mean_accuracy": float(np.mean(list(acc.values()))),
            "examples": examples,
        }
        model.cpu()
        print(f"{LABELS[name]:>18}: mean accuracy {rows[name]['mean_accuracy']:.3f}")
    train_pool, held_pool = pools(cfg.bench.chars_held_out)
    result = stamp(
        {
            "budget_seconds": cfg.bench.chars_seconds,
            "threads": torch.get_num_threads(),
            "load_avg_1min": os.getloadavg()[0],
            "pretrained": str(out / "models"),
            "tasks": list(sets),
            "items": {t: len(items) for t, items in sets.items()},
            "held_out_share": cfg.bench.chars_held_out,
            "words": {
                "source": "lowercase words of the Python standard library's comments",
                "training": len(train_pool.words),
                "held_out": len(held_pool.words),
            },
            "loss": "answer bytes (BPE: tokens) and their closing newline",
            "models": rows,
            "goals": chars_goals(rows),
        },
        cfg,
    )
    plot_chars(rows, list(sets), out / "bench_chars.png", cfg.bench.chars_seconds)
    write_json_atomic(out / "bench_chars.json", result)
    print(chars_table(rows, list(sets)))
    return result


def at_least(pd: list[float], base: list[float]) -> str:
    """PD-CLM's accuracies >= the baseline's, each. Nothing is compared while the two are equal
    everywhere below 1 (both at zero, or both giving the same trivial answer such as "1" to
    every count, as barely trained models do)."""
    if all(a == b < 1 for a, b in zip(pd, base, strict=True)):
        return "not measurable at this size"
    return "holds" if all(a >= b for a, b in zip(pd, base, strict=True)) else "does not hold"


def chars_goals(rows: dict[str, Any]) -> list[dict[str, Any]]:
    src = "pdclm bench chars"
    pd, byte, bpe = rows.get("pdclm"), rows.get("byte"), rows.get("bpe")
    goals: list[dict[str, Any]] = []
    if not pd:
        return goals
    if byte:
        tasks = list(pd["accuracy"])
        pd_acc, byte_acc = [pd["accuracy"][t] for t in tasks], [byte["accuracy"][t] for t in tasks]
        goals.append(
            row(
                "PD-CLM >= byte transformer on every task",
                "tasks where PD-CLM's held-out exact-match accuracy is at least the byte "
                f"transformer's, of {len(tasks)}, equal fine-tuning wall-clock; holds at all",
                sum(a >= b for a, b in zip(pd_acc, byte_acc, strict=True)),
                len(tasks),
                at_least(pd_acc, byte_acc),
                src,
            )
        )
    if bpe:
        goals.append(
            row(
                "PD-CLM >= BPE transformer on the mean",
                "held-out exact-match accuracy, mean over the character tasks, equal "
                "fine-tuning wall-clock",
                pd["mean_accuracy"],
                bpe["mean_accuracy"],
                at_least([pd["mean_accuracy"]], [bpe["mean_accuracy"]]),
                src,
            )
        )
    both = [t for t in ("copy", "reverse") if t in pd["accuracy"]]
    if both:
        worst = min(pd["accuracy"][t] for t in both)
        goals.append(
            row(
                f"PD-CLM >= 0.95 on copy and reverse of {MIN_WORD}-{MAX_WORD}-letter words",
                f"lower of PD-CLM's held-out exact-match accuracies on {' and '.join(both)}",
                worst,
                None,
                threshold_verdict(worst, 0.95, True),
                src,
            )
        )
    return goals


def chars_table(rows: dict[str, Any], tasks: list[str]) -> str:
    names = list(rows)
    lines = [
        "| task | " + " | ".join(rows[n]["label"] for n in names) + " |",
        "| --- |" + " --- |" * len(names),
    ]
    for t in tasks:
        lines.append(
            f"| {t} | " + " | ".join(f"{rows[n]['accuracy'][t]:.2f}" for n in names) + " |"
        )
    lines.append(
        "| **mean** | " + " | ".join(f"{rows[n]['mean_accuracy']:.2f}" for n in names) + " |"
    )
    lines.append("| steps | " + " | ".join(str(rows[n]["steps"]) for n in names) + " |")
    return "\n".join(lines)


def plot_chars(rows: dict[str, Any], tasks: list[str], path: Path, seconds: float) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(tasks) + 2), 3.6))
    groups = [*tasks, "mean"]
    width = 0.8 / len(rows)
    for i, (name, r) in enumerate(rows.items()):
        xs = np.arange(len(groups)) + i * width
        ys = [*(r["accuracy"][t] for t in tasks), r["mean_accuracy"]]
        ax.bar(xs, ys, width, label=LABELS[name])
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out exact match")
    ax.set_title(f"character tasks, equal fine-tuning wall-clock ({seconds:g} s each)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
