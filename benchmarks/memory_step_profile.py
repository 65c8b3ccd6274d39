"""Where a memory training step's time goes: forward + backward of the tiny preset's PD-CLM on
16 passkey rows of 128 symbols (global patches at 3.5 bits, an untrained entropy model), without
and with memory, then the top operators of the memory step by self CPU time.

    python benchmarks/memory_step_profile.py
"""

import time

import numpy as np
import torch
from torch.profiler import profile

from pdclm.config import load_preset
from pdclm.memory.tasks import passkey
from pdclm.model.pdclm import PDCLM


def step(model: PDCLM, tokens: torch.Tensor, entropy: torch.Tensor) -> None:
    model(tokens, entropy).float().logsumexp(-1).mean().backward()


def main() -> None:
    cfg = load_preset("tiny")
    cfg.pse.patcher.rule = "global"
    rng = np.random.default_rng(0)
    tokens = torch.tensor([passkey(rng, cfg.train.seq_len)[0] for _ in range(16)])
    for enabled in (False, True):
        cfg.model.memory.enabled = enabled
        torch.manual_seed(0)
        model = PDCLM(cfg.pse, cfg.model)
        model.threshold.fill_(3.5)
        entropy = model.entropy.profile(tokens).detach()
        for _ in range(3):
            step(model, tokens, entropy)
        t0 = time.perf_counter()
        for _ in range(10):
            step(model, tokens, entropy)
        ms = (time.perf_counter() - t0) / 10 * 1e3
        print(f"{'memory' if enabled else 'plain'}: {ms:.0f} ms/step")
    with profile() as prof:  # the memory model, the last one built
        for _ in range(3):
            step(model, tokens, entropy)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
