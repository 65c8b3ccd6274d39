"""Control for `pdclm bench memory`: can a plain byte transformer (d=64, 2 layers, 4 heads)
learn in-context passkey retrieval at 128 symbols when every training row is a passkey item?

    .venv/bin/python benchmarks/passkey_control.py 32 150 > benchmarks/passkey_control.txt

Arguments: rows per step, seconds of training. Prints, every 200 steps, the loss and the
held-out (whole-key, per-digit) greedy accuracy on 64 fixed items.
"""

import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from pdclm.eval.baselines import TokenTransformer
from pdclm.memory.tasks import greedy_correct, passkey


def evaluate(model: TokenTransformer, n: int, k: int = 64) -> tuple[float, float]:
    rng = np.random.default_rng(123)
    items = [passkey(rng, n) for _ in range(k)]
    with torch.no_grad():
        logits = model(torch.tensor([s for s, _ in items]))
    whole = [greedy_correct(logits[i], s, a, 5)[0] for i, (s, a) in enumerate(items)]
    digit = [
        np.mean([int(logits[i][p - 1].argmax()) == s[p] for p in a])
        for i, (s, a) in enumerate(items)
    ]
    return float(np.mean(whole)), float(np.mean(digit))


def main(rows: int, seconds: float, n: int = 128) -> None:
    torch.manual_seed(0)
    model = TokenTransformer(64, 2, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    t0, step = time.time(), 0
    while time.time() - t0 < seconds:
        x = torch.tensor([passkey(rng, n)[0] for _ in range(rows)])
        with torch.autocast("cpu", torch.bfloat16):
            logits = model(x).float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 200 == 0:
            whole, digit = evaluate(model, n)
            print(
                f"step {step} {time.time() - t0:.0f}s loss {loss.item():.3f} "
                f"key {whole:.2f} digit {digit:.2f}",
                flush=True,
            )
    whole, digit = evaluate(model, n)
    print(f"final step {step}: whole key {whole:.2f}, per digit {digit:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]))
