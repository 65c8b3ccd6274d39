"""What every bench shares: model labels, the stamp each JSON carries, plotting, spawned
training processes and publishing the claims table."""

from __future__ import annotations

import multiprocessing as mp
import platform
import queue as queue_mod
import resource
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pdclm.config import Config
from pdclm.eval import claims
from pdclm.io import write_json_atomic
from pdclm.train.loop import Trainer
from pdclm.train.phase import for_steps

LABELS = {
    "pdclm": "PD-CLM",
    "pdclm_stride": "PD-CLM, fixed-stride patches",
    "pdclm_whitespace": "PD-CLM, whitespace patches",
    "byte": "byte transformer",
    "bpe": "BPE transformer",
}


def machine() -> str:
    return f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}"


def stamp(result: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """What every bench JSON records about how it was made."""
    return {
        "command": "pdclm " + " ".join(sys.argv[1:]) if "pdclm" in sys.argv[0] else None,
        "preset": cfg.preset,
        "machine": machine(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        **result,
    }


def pyplot():
    """matplotlib's pyplot on the file-only backend (benches run without a screen)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def peak_rss_mb() -> float:
    """This process's own peak resident memory (MB). On Linux the high-water mark of its
    address space (``VmHWM``): ``getrusage``'s ``ru_maxrss`` survives ``exec``, so a spawned
    child would report at least its parent's peak at the fork (measured: every bench arm read
    the parent's 2,138 MB after the parent had profiled the shards)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_spawned(name: str, target: Callable[..., None], *args: Any) -> Any:
    """``target(*args, queue)`` in a fresh process, so its peak RSS is its own; returns what it
    puts on the queue, or raises a clear error if the child dies before it does."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except queue_mod.Empty:
            if not proc.is_alive():
                raise RuntimeError(
                    f"bench: training '{name}' failed (exit code {proc.exitcode})"
                ) from None
    proc.join()
    return result


def publish(out_dir: Path, which: list[str], preset: str, to: str | None) -> dict[str, Any]:
    """The claims table of every bench JSON in ``out_dir`` (``claims.md``, ``claims.json``),
    printed; with ``to``, each bench's JSON and PNG copied there as ``<bench>_<preset>.*``."""
    if to:
        dest = Path(to)
        dest.mkdir(parents=True, exist_ok=True)
        for w in which:
            for ext in ("json", "png"):
                src = out_dir / f"bench_{w}.{ext}"
                if src.exists():
                    shutil.copyfile(src, dest / f"{w}_{preset}.{ext}")
    collected = claims.collect(None, Path(to) if to else out_dir)
    write_json_atomic(out_dir / "claims.json", collected)
    text = claims.markdown(collected)
    (out_dir / "claims.md").write_text(text)
    if to:
        (Path(to) / f"claims_{preset}.md").write_text(text)
    print(text)
    return collected


PROBE_STEPS = 20
"""Steps of the timing that sizes a bench arm's schedule to its budget: a 5-step timing was
off by up to 35 % either way, so one arm stopped early and another was cut by the budget
before its learning rate had decayed."""


def steps_for_budget(
    name: str,
    model: torch.nn.Module,
    cfg: Config,
    work: Path,
    sample: Callable,
    loss_fn: Callable,
    seconds: float,
) -> int:
    """Steps of ``model`` that fit ``seconds``, from the lower quartile of :data:`PROBE_STEPS`
    timed steps (the median over-read the step time in two runs: arms trained 75 of 100 s and
    156 of 180 s). The probe's updates are undone: the arm trains from the weights it was given."""
    init = {k: v.clone() for k, v in model.state_dict().items()}
    probe = Trainer(
        f"{name}-probe",
        model,
        for_steps(cfg.train, PROBE_STEPS, warmup=0),
        work,
        sample,
        loss_fn,
        checkpoints=False,
        progress=False,
    )
    step_time = probe.fit(resume=False)["seconds_per_step_q1"]
    model.load_state_dict(init)
    return max(10, int(seconds / step_time))
