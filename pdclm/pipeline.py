"""``pdclm run``: the phases in order, in one run folder, then the report.

A phase is an object with a ``name`` (what the config and CLI call it), a ``key`` (its section
in ``report.json``, e.g. ``phase1``), its ``folders`` in the run folder (one being there means
it has begun) and ``run(ctx) -> dict`` returning its results
(:class:`~pdclm.train.phase.Phase`). Adding a phase means writing that object, adding it to
:func:`phase_registry` and its name to ``config.PHASES``; nothing else here changes.
A finished phase leaves ``phases/<name>.json``; resuming a run skips finished phases and the
unfinished one resumes from its own checkpoints.

A resume runs with the run's own ``config.json`` (:func:`run_config`; the CLI overrides it
with the command line's flags) and refuses settings that differ from it: the phases that have
begun must go on as they started. Only three kinds of change pass (:func:`check_resume`):
where and how fast the run computes (:data:`FREE_ON_RESUME`, e.g. ``train.parallel``, to
resume on another number of ranks), settings no phase reads (``bench.*``), and any setting
but ``model.*`` and ``pse.*`` when none of the phases to run has begun (``pdclm train PHASE
--resume RUN`` of a phase the run has not reached yet: its settings are still open).

Under ``torchrun`` every rank runs this; rank 0 alone writes the run's files.
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from typing import Any

from pdclm import dist
from pdclm.config import Config, ConfigError, from_saved, resolve, to_dict, validate
from pdclm.eval.report import write_report
from pdclm.io import main_writes, write_json_atomic
from pdclm.train.budget import fit_to_budget, probe_step_seconds, refit_to_budget
from pdclm.train.cognitive import Cognitive
from pdclm.train.loop import MetricsLog
from pdclm.train.phase import RunContext
from pdclm.train.pretrain import Pretrain
from pdclm.train.reflective import Reflective


def phase_registry() -> dict[str, type]:
    """Every phase ``pdclm run`` knows, by name, in the order they run."""
    return {cls.name: cls for cls in (Pretrain, Cognitive, Reflective)}


FREE_ON_RESUME = (
    "phases",
    "train.device",
    "train.parallel",
    "train.threads",
    "train.bf16",
    "train.activation_checkpointing",
    "train.compile",
    "train.keep_ckpts",
    "train.log_every",
    "bench.",
    "human.counts",
    "human.seeds",
    "human.steps",
    "human.questions",
    "human.samples",
)
"""Settings (or ``section.`` prefixes) a resume may change: which phases run, where and how
fast (another machine or number of ranks; bf16 because a CPU without fast bf16 resumes a GPU
run in fp32), what is logged and kept, and what only ``bench`` and ``label`` read."""

FIXED = ("model.", "pse.")
"""Settings no resume may change: the run's trained weights are built from them."""


def new_run_dir(out: str | None) -> Path:
    return Path(out) if out else Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def run_config(run_dir: Path) -> Config | None:
    """The settings ``run_dir`` was started with (its ``config.json``), to resume it with.
    None for a run folder that has lost its ``config.json`` (its ``phases/`` remain): the
    given settings then apply. A folder that is not a run is refused."""
    if not run_dir.is_dir():  # a ConfigError: the CLI reads it while parsing the flags
        raise ConfigError(f"--resume: no such run folder {run_dir}")
    path = run_dir / "config.json"
    model = (run_dir / "model.safetensors").exists()
    if model or not (path.is_file() or (run_dir / "phases").is_dir()):
        what = "a model folder" if model else "not a run folder"
        raise ConfigError(
            f"--resume: {run_dir} is {what} (a run folder holds the config.json and phases/ "
            "that `pdclm run` writes first); give a run folder, or start a new run with --out"
        )
    if not path.is_file():
        return None
    try:
        return from_saved(json.loads(path.read_text()))
    except (OSError, ValueError) as e:  # ConfigError is a ValueError
        raise ConfigError(f"--resume: cannot read {path}: {e}") from e


def changed(saved: Config, given: Config) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (saved, given) for every setting that differs."""

    def flat(d: dict[str, Any], where: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out |= flat(v, f"{where}{k}.") if isinstance(v, dict) else {f"{where}{k}": v}
        return out

    a, b = flat(to_dict(saved)), flat(to_dict(given))
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def begun(run_dir: Path, names: list[str]) -> list[str]:
    """Those of phases ``names`` that have finished or started in ``run_dir`` (their marker
    or one of their folders is there)."""
    registry = phase_registry()
    return [
        n
        for n in names
        if (run_dir / "phases" / f"{n}.json").exists()
        or any((run_dir / f).exists() for f in registry[n].folders)
    ]


def check_resume(cfg: Config, run_dir: Path, names: list[str]) -> None:
    """Refuse to resume ``run_dir`` (phases ``names``) with settings other than its
    ``config.json`` (see the module's docstring for what may change); one line naming every
    refused key with both values. A new or empty folder has nothing to resume: it passes."""
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return
    saved = run_config(run_dir)
    if saved is None:
        return
    started = begun(run_dir, names)
    refused = {
        k: v
        for k, v in changed(saved, cfg).items()
        if k.startswith(FIXED) or (started and not k.startswith(FREE_ON_RESUME))
    }
    if refused:
        keys = ", ".join(f"{k} (run: {a!r}, given: {b!r})" for k, (a, b) in refused.items())
        why = (
            f"phase {started[0]} has begun with the run's settings"
            if started
            else "the run's trained model is built with them"
        )
        raise ConfigError(
            f"--resume {run_dir}: {keys} differ from its config.json and {why}; drop these "
            "flags (a resume reads config.json), or start a new run with --out"
        )


def refit(cfg: Config, spent: dict[str, float], show: bool) -> bool:
    """Refit a budgeted run's remaining phases to the time left (:func:`refit_to_budget`);
    True when a step count changed (config.json must then be written again)."""
    fitted = refit_to_budget(cfg, spent)
    if fitted is None:
        return False
    validate(cfg)
    if show:
        steps = ", ".join(f"{k} {v}" for k, v in fitted["steps"].items()) or "unchanged"
        print(
            f"budget {cfg.run.budget:.0f} s after {fitted['after']}: this machine runs at "
            f"x{fitted['speed_vs_reference']:.2f} the reference, so the phases left take "
            f"x{fitted['scale']:.2f} of their steps, expected {fitted['expected_seconds']:.0f} "
            f"s in all: {steps}"
        )
    return bool(fitted["steps"])


def run_phases(
    cfg: Config,
    run_dir: Path,
    resume: bool = False,
    progress: bool = True,
    only: list[str] | None = None,
) -> dict[str, Any]:
    """Run the configured phases (or ``only`` those) and write the report. Returns report.json."""
    resolve(cfg)
    names = only or cfg.phases
    if resume:
        check_resume(cfg, run_dir, names)
    if cfg.run.budget > 0 and not cfg.run.scale and only is None:  # size a whole run, once
        probed = probe_step_seconds(cfg) if dist.is_main() else 0.0  # the others wait
        sized = fit_to_budget(cfg, dist.broadcast(probed))
        validate(cfg)
        if progress and dist.is_main():
            steps = ", ".join(f"{k} {v}" for k, v in sized["steps"].items())
            print(
                f"budget {cfg.run.budget:.0f} s: a training step here takes "
                f"{sized['probe_step_seconds']:.3f} s (x{sized['speed_vs_reference']:.2f} the "
                f"reference machine), so every phase's steps x{sized['scale']:.2f}, expected "
                f"{sized['expected_seconds']:.0f} s: {steps}"
            )
    done_dir = run_dir / "phases"

    def start() -> None:  # what a run folder holds from the start (see run_config)
        done_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / "config.json", to_dict(cfg))

    main_writes(start)
    main = dist.is_main()  # under torchrun, rank 0 alone writes the run's files and logs
    log = MetricsLog(run_dir) if main else None
    ctx = RunContext(cfg, run_dir, resume=resume, progress=progress and main, log=log)
    registry = phase_registry()
    started = time.time()
    spent: dict[str, float] = {}  # seconds of each finished phase, for the budget's refits
    try:
        for name in names:
            phase = registry[name]()
            marker = done_dir / f"{name}.json"
            if resume and marker.exists():
                ctx.results[phase.key] = json.loads(marker.read_text())
                spent[name] = ctx.results[phase.key].get("seconds", 0.0)
                continue
            if only is None and refit(cfg, dist.broadcast(spent), progress and main):
                main_writes(start)  # the refitted counts, before the phase uses them
            t0 = time.time()
            result = phase.run(ctx)
            result["seconds"] = round(time.time() - t0, 1)
            ctx.results[phase.key] = result
            main_writes(partial(write_json_atomic, marker, result))
            spent[name] = result["seconds"]
    finally:
        if log:
            log.close()
    report = write_report(run_dir, cfg, ctx.results, time.time() - started) if main else None
    return dist.broadcast(report)
