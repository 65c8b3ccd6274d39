"""Train chosen `pdclm bench memory` variants with config overrides, one after another, and
print each one's measurements (a quicker probe than the full six-variant bench).

    .venv/bin/python benchmarks/memory_variants.py OUT none,full train.batch=32 \
        bench.memory_seconds=150 bench.memory_trials=16 bench.memory_docs=1
    # the memory preset's settings, one variant, another seed (preset= picks the base preset)
    .venv/bin/python benchmarks/memory_variants.py OUT full preset=memory train.seed=1
    # with a trained PSE and global patches at 3.5 bits, as in the README's bench run
    .venv/bin/python benchmarks/memory_variants.py OUT full bench.memory_pse=runs/pse/phase1_model \
        pse.patcher.rule=global pse.patcher.threshold=3.5 train.batch=16 train.lr=2e-3
"""

import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

from pdclm.bench.memory import VARIANTS, _run_variant, bench_pse, variant_config
from pdclm.config import from_dict, load_preset, resolve


def main(out: Path, variants: list[str], overrides: list[str]) -> None:
    preset = next((kv.split("=", 1)[1] for kv in overrides if kv.startswith("preset=")), "tiny")
    cfg = load_preset(preset)
    for kv in (kv for kv in overrides if not kv.startswith("preset=")):
        key, value = kv.split("=")
        *path, last = key.split(".")
        obj = cfg
        for p in path:
            obj = getattr(obj, p)
        cur = getattr(obj, last)
        setattr(obj, last, value == "true" if isinstance(cur, bool) else type(cur)(value))
    resolve(cfg)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "pse").exists():
        bench_pse(cfg, out, progress=False)
    # the PSE's entropy model and patcher (calibrated threshold included), as the bench reads
    cfg.pse = from_dict(json.loads((out / "pse/config.json").read_text())).pse
    for name in variants:
        queue = mp.get_context("spawn").Queue()
        t0 = time.time()
        _run_variant(name, variant_config(cfg, VARIANTS[name]), str(out), 0, queue)
        result = queue.get()
        result.pop("router")
        print(name, json.dumps(result), f"{time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3:])
