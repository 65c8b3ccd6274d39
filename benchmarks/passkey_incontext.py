"""Can a model of the memory bench's width learn passkey retrieval *inside* its context when
every training row is a passkey item? A plain byte transformer (d=64, 2 layers, 4 heads)
against the memoryless PD-CLM of the tiny preset (encoder d=32, latent d=64 x 2 layers), the
PD-CLM patching with a given trained PSE (its entropy model, rule and threshold).

    PSE=runs/bench-cpu/pse   # any `pse` folder, e.g. from `pdclm bench pretrain --preset cpu`
    python benchmarks/passkey_incontext.py byte 5
    python benchmarks/passkey_incontext.py pdclm 5 --pse $PSE
    python benchmarks/passkey_incontext.py pdclm 1 --pse $PSE
    python benchmarks/passkey_incontext.py pdclm 5 --pse $PSE --rule global --threshold 4.27
    python benchmarks/passkey_incontext.py hmr 5 --pse $PSE --rule global --threshold 4.27 \
        --seconds 540

Arguments: the arm, the key's digits; options: rows per step (32), seconds (150), context
(128). Prints the patching of one item (pdclm, hmr), then every 200 steps the loss and the held-out
greedy accuracy on 64 fixed items (random key depths): whole key, per digit, and per
digit position. The ``hmr`` arm is the same PD-CLM with the memory on (segments of 64, a
16-patch window, phases up to 16 patches): it reads each 128-symbol row as two segments and is
also scored at 4x its context.
Output of the runs above: ``benchmarks/passkey_incontext.txt`` (the first four were printed
before the ``hmr`` arm was added, with the same evaluation and an older wording of the final
line).
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pdclm.bench.baselines import TokenTransformer
from pdclm.config import load_preset
from pdclm.memory.tasks import greedy_hits, passkey
from pdclm.model.io import load_model
from pdclm.model.pdclm import PDCLM


def pdclm_model(pse_dir: Path, rule: str | None, threshold: float | None, memory: bool) -> PDCLM:
    pse, pcfg = load_model(pse_dir)
    cfg = load_preset("tiny")
    cfg.pse.entropy, cfg.pse.patcher = pcfg.pse.entropy, pcfg.pse.patcher
    if rule:
        cfg.pse.patcher.rule = rule
    if memory:  # two segments per training row; a window too short to reach the first one
        mem = cfg.model.memory
        mem.enabled, mem.segment, mem.window, mem.max_phase = True, 64, 16, 16
    model = PDCLM(cfg.pse, cfg.model)
    model.entropy.load_state_dict(pse.entropy.state_dict())
    model.threshold.copy_(pse.threshold if threshold is None else torch.tensor(threshold))
    model.freeze_entropy()
    return model


def show_patches(model: PDCLM, stream: list[int]) -> str:
    starts = model.patch(torch.tensor([stream]))[0].tolist()
    pairs = zip(starts, stream, strict=True)
    text = "".join(("|" if s else "") + (chr(c) if c < 256 else "") for s, c in pairs)
    return text.replace("\n", "\\n")


def evaluate(model, n: int, digits: int, k: int = 64) -> tuple[float, float, list[float]]:
    rng = np.random.default_rng(123)
    items = [passkey(rng, n, digits=digits) for _ in range(k)]
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([s for s, _ in items]))
    model.train()
    hits = np.array([greedy_hits(logits[i], s, a) for i, (s, a) in enumerate(items)])
    return float(hits.all(1).mean()), float(hits.mean()), hits.mean(0).round(2).tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("arm", choices=("byte", "pdclm", "hmr"))
    ap.add_argument("digits", type=int)
    ap.add_argument("--pse", type=Path)
    ap.add_argument("--rule")
    ap.add_argument("--threshold", type=float)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=150)
    ap.add_argument("--context", type=int, default=128)
    args = ap.parse_args()
    n, digits = args.context, args.digits
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    if args.arm == "byte":
        model = TokenTransformer(64, 2, 4)
    else:
        if args.pse is None:
            ap.error(f"the {args.arm} arm needs --pse DIR (a trained PSE)")
        model = pdclm_model(args.pse, args.rule, args.threshold, args.arm == "hmr")
        item, _ = passkey(np.random.default_rng(5), n, None, digits)
        print("patches:", show_patches(model, item))
    print(f"{args.arm}: {sum(p.numel() for p in model.parameters() if p.requires_grad)} params")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    lengths = (1, 4) if args.arm == "hmr" else (1,)  # only memory reads past its context
    t0, step = time.time(), 0
    while time.time() - t0 < args.seconds:
        x = torch.tensor([passkey(rng, n, digits=digits)[0] for _ in range(args.rows)])
        with torch.autocast("cpu", torch.bfloat16):
            logits = model(x).float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 200 == 0:
            print(
                f"step {step} {time.time() - t0:.0f}s loss {loss.item():.3f} "
                + report(model, n, digits, lengths),
                flush=True,
            )
    print(f"final step {step}: " + report(model, n, digits, lengths))


def report(model, n: int, digits: int, lengths: tuple[int, ...]) -> str:
    out = []
    for mult in lengths:
        whole, digit, per_pos = evaluate(model, n * mult, digits)
        at = f"{mult}x: " if len(lengths) > 1 else ""
        out.append(f"{at}key {whole:.2f} digit {digit:.2f} by position {per_pos}")
    return "; ".join(out)


if __name__ == "__main__":
    main()
