"""Peak resident memory of a memory bench variant's evaluation, stage by stage: passkey reads
at 1x-64x the training context (32 items, 16 rows a batch), then the long documents. Reads a
variant's saved model, so nothing is retrained.

    .venv/bin/python benchmarks/memory_eval_rss.py OUT/full/model   # OUT: a bench memory --out
"""

import sys
import time

import numpy as np
import torch

from pdclm.bench.common import peak_rss_mb
from pdclm.bench.memory import PASSKEY_LENGTHS, accuracy, long_bpb, long_documents
from pdclm.memory.tasks import passkey
from pdclm.model.io import load_model


def main(folder: str) -> None:
    model, cfg = load_model(folder)
    model.eval()
    n, trials, batch = cfg.train.seq_len, 32, 16
    print(f"loaded: peak {peak_rss_mb():.0f} MB")
    for mult in PASSKEY_LENGTHS:
        rng = np.random.default_rng([0, 101, mult])
        items = [passkey(rng, n * mult, (i + 0.5) / trials) for i in range(trials)]
        t0 = time.perf_counter()
        with torch.no_grad():
            whole, _ = accuracy(model, items, 5, None, batch)
        seconds = time.perf_counter() - t0
        print(f"passkey {mult}x: {whole:.2f}, peak {peak_rss_mb():.0f} MB, {seconds:.1f} s")
    long_bpb(model, long_documents(cfg, 2, n * 64), None)
    print(f"long documents: peak {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main(sys.argv[1])
