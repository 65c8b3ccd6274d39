"""Time to first byte for a long prompt: pushed byte by byte vs read in one pass (prefill).

Builds an untrained model at the ``cpu`` preset's sizes (speed does not depend on the
weights), calibrates the patch threshold on the prompt itself so patches have the preset's
target mean length (as a trained entropy model's would), and times reading a ~4 KB prompt
(this repository's model source) up to the logits of the first new byte, under the bf16
autocast generation uses, on 2 threads. Both ways run in the same process, alternating, so
the ratio holds on a machine shared with other jobs.

    .venv/bin/python benchmarks/prefill_probe.py --repeats 3 > benchmarks/prefill.txt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from pdclm.config import load_preset
from pdclm.model.pdclm import PDCLM
from pdclm.pse.patcher import calibrate, mean_patch_length
from pdclm.vocab import BOS


def first_byte_logits(model: PDCLM, prompt: torch.Tensor, prefill: bool) -> torch.Tensor:
    """Logits (V,) for the byte after ``prompt`` (1, T), read by a fresh stream."""
    stream = model.start_stream()
    if prefill:
        return stream.prefill(prompt)[0]
    for t in range(prompt.shape[1]):
        logits = stream.push(prompt[:, t])
    return logits[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bytes", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_preset("cpu")
    model = PDCLM(cfg.pse, cfg.model).eval()
    text = Path(__file__).resolve().parents[1].joinpath("pdclm/model/pdclm.py").read_bytes()
    prompt = torch.tensor([[BOS, *text[: args.bytes - 1]]])
    with torch.no_grad():
        entropy = model.entropy.profile(prompt)
        model.threshold.fill_(calibrate(prompt, entropy, cfg.pse.patcher))
        mean = mean_patch_length(model.patch(prompt, entropy))
    print(
        f"prompt {prompt.shape[1]} symbols, {cfg.pse.patcher.rule} patches of mean length "
        f"{mean:.2f}; cpu preset sizes, untrained; {args.threads} threads, bf16 autocast"
    )
    times: dict[bool, list[float]] = {False: [], True: []}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        first_byte_logits(model, prompt[:, :64], True)  # warm up the kernels
        for r in range(args.repeats):
            out = {}
            for prefill in (False, True):
                t0 = time.perf_counter()
                out[prefill] = first_byte_logits(model, prompt, prefill).float()
                times[prefill].append(time.perf_counter() - t0)
            diff = (out[True] - out[False]).abs().max().item()
            same = out[True].argmax() == out[False].argmax()
            print(
                f"run {r + 1}: pushes {times[False][-1]:.2f} s, prefill {times[True][-1]:.3f} s, "
                f"ratio {times[False][-1] / times[True][-1]:.0f}x (logits max diff {diff:.4f}, "
                f"same argmax {bool(same)})"
            )
    push, fill = min(times[False]), min(times[True])
    print(
        f"best of {args.repeats}: pushes {push:.2f} s ({prompt.shape[1] / push:.0f} bytes/s), "
        f"prefill {fill:.3f} s ({prompt.shape[1] / fill:.0f} bytes/s): {push / fill:.0f}x faster"
    )


if __name__ == "__main__":
    main()
