"""``pdclm run``: the phases in order, in one run folder, then the report.

A phase is an object with a ``name`` (what the config and CLI call it), a ``key`` (its section
in ``report.json``, e.g. ``phase1``) and ``run(ctx) -> dict`` returning its results
(:class:`~pdclm.train.phase.Phase`). Adding a phase means writing that object, adding it to
:func:`phase_registry` and its name to ``config.PHASES``; nothing else here changes.
A finished phase leaves ``phases/<name>.json``; resuming a run skips finished phases and the
unfinished one resumes from its own checkpoints.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pdclm import dist
from pdclm.config import Config, resolve, to_dict
from pdclm.eval.report import write_report
from pdclm.io import write_json_atomic
from pdclm.train.cognitive import Cognitive
from pdclm.train.loop import MetricsLog
from pdclm.train.phase import RunContext
from pdclm.train.pretrain import Pretrain
from pdclm.train.reflective import Reflective


def phase_registry() -> dict[str, type]:
    """Every phase ``pdclm run`` knows, by name, in the order they run."""
    return {cls.name: cls for cls in (Pretrain, Cognitive, Reflective)}


def new_run_dir(out: str | None) -> Path:
    return Path(out) if out else Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def run_phases(
    cfg: Config,
    run_dir: Path,
    resume: bool = False,
    progress: bool = True,
    only: list[str] | None = None,
) -> dict[str, Any]:
    """Run the configured phases (or ``only`` those) and write the report. Returns report.json."""
    resolve(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.json"
    if resume and config_path.exists():
        saved = json.loads(config_path.read_text())
        if saved.get("model") != to_dict(cfg.model) or saved.get("pse", {}).get(
            "encoder"
        ) != to_dict(cfg.pse.encoder):
            raise ValueError(
                f"{run_dir} was started with a different model config; resume it with the same "
                "--preset and overrides (see its config.json)"
            )
    main = dist.is_main()  # under torchrun, rank 0 alone writes the run's files and logs
    if main:
        write_json_atomic(config_path, to_dict(cfg))
    log = MetricsLog(run_dir) if main else None
    ctx = RunContext(cfg, run_dir, resume=resume, progress=progress and main, log=log)
    registry = phase_registry()
    done_dir = run_dir / "phases"
    done_dir.mkdir(exist_ok=True)
    started = time.time()
    try:
        for name in only or cfg.phases:
            phase = registry[name]()
            marker = done_dir / f"{name}.json"
            if resume and marker.exists():
                ctx.results[phase.key] = json.loads(marker.read_text())
                continue
            t0 = time.time()
            result = phase.run(ctx)
            result["seconds"] = round(time.time() - t0, 1)
            ctx.results[phase.key] = result
            if main:
                write_json_atomic(marker, result)
            dist.barrier()
    finally:
        if log:
            log.close()
    report = write_report(run_dir, cfg, ctx.results, time.time() - started) if main else None
    return dist.broadcast(report)
