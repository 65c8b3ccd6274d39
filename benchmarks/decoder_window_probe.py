"""Does a decoder that reads earlier bytes across patches copy better? A fixed-step probe.

Trains PD-CLM at the ``cpu`` preset's widths from scratch, with an untrained entropy model
and stride patches of the preset's target mean length (so every arm sees the same patches),
on spell_backward gold episodes (question, ``letters: h o u s e``, ``reversed: e s u o h``,
answer) for the same number of steps and seed, once per decoder setting; then scores
teacher-forced exact match of the whole thinking and answer on held-out words (every target
byte the argmax) and the per-byte accuracy on those targets. Copying the word into the
thinking needs bytes of the question several patches back.

    .venv/bin/python benchmarks/decoder_window_probe.py --steps 300 \
        > benchmarks/decoder_window_probe.txt
"""

from __future__ import annotations

import argparse
import copy
import random
import time

import torch

from pdclm.config import load_preset
from pdclm.data.episodes import Episode, format_episode, pack, weighted_symbols
from pdclm.data.tasks import held_out, make_source, training_items
from pdclm.model.pdclm import PDCLM
from pdclm.train.loop import make_optimizer
from pdclm.train.objectives import weighted_lm_loss

ARMS = {  # name: (decoder window in bytes, decoder layers)
    "within patch, 1 layer (cpu preset)": (0, 1),
    "window 256, 1 layer": (256, 1),
    "within patch, 3 layers": (0, 3),
    "window 256, 3 layers": (256, 3),
}


def episodes(items) -> list[tuple[list[int], list[float]]]:
    return [weighted_symbols(Episode(it.question, it.steps, it.answer), 0.1) for it in items]


def exact_match(model: PDCLM, items, batch: int = 32) -> tuple[float, float]:
    """Share of episodes whose every thinking/answer byte is the argmax; per-byte accuracy."""
    exact = right = total = 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(items), batch):
            chunk = items[i : i + batch]
            rows = [format_episode(Episode(it.question, it.steps, it.answer)) for it in chunk]
            n = max(map(len, rows))
            tokens = torch.tensor([r + [r[-1]] * (n - len(r)) for r in rows])
            pred = model(tokens).argmax(-1)
            for j, it in enumerate(chunk):
                q = len(format_episode(Episode(it.question, (), ""))) - 4  # THINK
                hit = pred[j, q : len(rows[j]) - 1] == tokens[j, q + 1 : len(rows[j])]
                exact += bool(hit.all())
                right += int(hit.sum())
                total += hit.numel()
    model.train()
    return exact / len(items), right / total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--held-out", type=int, default=200)
    args = ap.parse_args()
    base = load_preset("cpu")
    base.pse.patcher.rule, base.pse.patcher.max_len = "stride", 5
    source = make_source("spell_backward")
    test = held_out(source, 1, args.held_out)
    train = training_items(source, 1, 20_000, 0, {it.question for it in test})
    print(f"spell_backward: {len(train)} training items, {len(test)} held out; {args.steps} steps")
    for name, (window, layers) in ARMS.items():
        cfg = copy.deepcopy(base)
        cfg.model.decoder.window, cfg.model.decoder.layers = window, layers
        torch.manual_seed(0)
        model = PDCLM(cfg.pse, cfg.model)
        opt = make_optimizer(model, cfg.train)
        rng = random.Random(0)
        t0 = time.perf_counter()
        for step in range(args.steps):
            lr = cfg.train.lr * min(1.0, (step + 1) / 30)
            for g in opt.param_groups:
                g["lr"] = lr
            tokens, weights = pack(episodes(rng.sample(train, 400)), args.batch, args.seq_len)
            batch = (torch.tensor(tokens), torch.tensor(weights))
            with torch.autocast("cpu", torch.bfloat16, enabled=cfg.train.bf16):
                loss, _ = weighted_lm_loss(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opt.step()
        seconds = time.perf_counter() - t0
        em, byte_acc = exact_match(model, test)
        print(
            f"{name:>36}: exact match {em:.3f}, byte accuracy {byte_acc:.3f}, final loss "
            f"{loss.item():.3f}, {seconds / args.steps * 1000:.0f} ms/step"
        )


if __name__ == "__main__":
    main()
