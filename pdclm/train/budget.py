"""Fitting the main job to a wall-clock budget on whatever machine runs it.

A preset's step counts were sized on one machine; the same counts take 1.4x as long on a CPU
without AMX. With ``run.budget`` set, ``pdclm run`` first times a few Phase 1 training steps
of the configured model on random bytes (the probe, ~10 s), compares that with the same
step's time on the reference machine (``run.reference_step_seconds``), and scales every
phase's step counts by one factor so that the reference timings of the phases (their fixed
work and their steps, ``run.reference_fixed`` and ``run.reference_stepped``), stretched to
this machine's speed, fit the budget.

A probe of a few seconds can misread: a process that runs beside it for a moment makes the
machine look slower than it is (a fresh-clone run read x1.13 the reference where its phases
then ran at x0.95, so it cut every phase to x0.60 of its steps and ended 130 s inside its 720
s budget). So before each later phase the run fits again (:func:`refit_to_budget`): the
phases done so far, timed against their reference timings at the factor they ran at, give
the machine's speed over minutes of real work, and the phases still to run are scaled to the
time that is left.

The resolved counts are written into the run's ``config.json`` with the factors and the
probe's figure (``run.scale``, ``run.scales``, ``run.probe_step_seconds``), so a resumed run
replays exactly the same steps: a refit reads only what the run has on disk (the phases'
recorded seconds and factors), so refitting again on resume gives the same counts.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Any

import torch

from pdclm.config import PHASES, Config
from pdclm.model.pdclm import PDCLM
from pdclm.train.loop import make_optimizer, resolve_device
from pdclm.train.objectives import lm_loss

PROBE_STEPS = 9
"""Training steps the probe times (the first two warm the kernels up and are not counted)."""
PROBE_SYMBOLS = 8192
"""Symbols per probe step at least: a step of a few rows lasts ~0.1 s on 2 cores and its time
swings by a third between processes; a step of 8k symbols is steady to a few percent."""
MIN_SCALE = 0.1
"""Below this the phases would not learn anything: the run then overshoots its budget."""

STEP_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "pretrain": (("pse.entropy", "steps"), ("train", "steps")),
    "cognitive": (("cognitive", "steps"),),
    "reflective": (("rl", "steps"),),
}
"""The step counts each phase's time grows with, as (config section, field)."""


def probe_step_seconds(cfg: Config) -> float:
    """Seconds per Phase 1 training step of ``cfg``'s model on this machine, at
    ``train.batch`` rows or enough for ``PROBE_SYMBOLS`` symbols, whichever is more: the median
    of a few timed steps (after two that warm the kernels up) on random bytes with a stored
    (zero) profile, patched at a fixed stride of the target mean patch length (the patch count sets
    the latent's cost; the entropy model is not trained yet)."""
    pse = dataclasses.replace(
        cfg.pse,
        patcher=dataclasses.replace(
            cfg.pse.patcher, rule="stride", max_len=max(1, round(cfg.pse.patcher.target_mean))
        ),
    )
    with torch.random.fork_rng():
        torch.manual_seed(cfg.train.seed)
        model = PDCLM(pse, cfg.model).to(resolve_device(cfg.train.device))
        rows = max(cfg.train.batch, -(-PROBE_SYMBOLS // cfg.train.seq_len))
        tokens = torch.randint(0, 256, (rows, cfg.train.seq_len + 1))
    batch = (tokens.to(model.head.weight.device), torch.zeros(tokens.shape, device=tokens.device))
    opt = make_optimizer(model, cfg.train)
    times = []
    for _ in range(PROBE_STEPS):
        t0 = time.perf_counter()
        with torch.autocast(batch[0].device.type, torch.bfloat16, enabled=cfg.train.bf16):
            loss, _ = lm_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


def _scale_phase(cfg: Config, name: str, factor: float) -> dict[str, int]:
    """Multiply phase ``name``'s step counts by ``factor`` in place (at least 1 step each)
    and shorten what must stay below them; returns the new counts by dotted key."""
    steps = {}
    for section, key in STEP_FIELDS[name]:
        obj = cfg
        for part in section.split("."):
            obj = getattr(obj, part)
        setattr(obj, key, max(1, math.floor(getattr(obj, key) * factor)))
        steps[f"{section}.{key}"] = getattr(obj, key)
    cg, rl = cfg.cognitive, cfg.rl
    if name == "pretrain":
        cfg.train.warmup = min(cfg.train.warmup, cfg.train.steps // 5)
    elif name == "cognitive":
        cg.steps = max(cg.steps, cg.rounds)  # every round trains at least one step
        cg.warmup = min(cg.warmup, cg.steps // 5)
        steps["cognitive.steps"] = cg.steps
    elif name == "reflective":
        rl.reflect_every = min(rl.reflect_every, rl.steps)
    return steps


def _clamp(scale: float) -> float:
    return round(min(1.0, max(MIN_SCALE, scale)), 4)


def fit_to_budget(cfg: Config, step_seconds: float) -> dict[str, Any]:
    """Scale ``cfg``'s step counts in place so the configured phases fit ``run.budget`` on a
    machine whose probe step takes ``step_seconds``; returns what was resolved (also kept in
    ``run.scale``, ``run.scales`` and ``run.probe_step_seconds``)."""
    run = cfg.run
    speed = step_seconds / run.reference_step_seconds  # > 1: slower than the reference
    fixed = speed * sum(run.reference_fixed[PHASES.index(n)] for n in cfg.phases)
    stepped = speed * sum(run.reference_stepped[PHASES.index(n)] for n in cfg.phases)
    scale = _clamp((run.budget - fixed) / stepped if stepped else 1.0)
    steps = {}
    for name in cfg.phases:
        steps |= _scale_phase(cfg, name, scale)
    run.scale, run.probe_step_seconds = scale, round(step_seconds, 4)
    run.scales = [scale if n in cfg.phases else 0.0 for n in PHASES]
    return {
        "budget_seconds": run.budget,
        "probe_step_seconds": run.probe_step_seconds,
        "speed_vs_reference": round(speed, 3),
        "scale": run.scale,
        "expected_seconds": round(fixed + scale * stepped, 1),
        "steps": steps,
    }


def refit_to_budget(cfg: Config, spent: dict[str, float]) -> dict[str, Any] | None:
    """Before the next phase of a budgeted run: ``spent`` holds the seconds each finished
    phase took. Their sum against their reference timings at the factors they ran at is this
    machine's speed; the phases still to run get one new factor so that they fit the time
    left, and their step counts are rescaled in place (``run.scales``). None when there is
    nothing to refit (no budget, no finished phase or none left); else what was resolved."""
    run = cfg.run
    if not (run.budget > 0 and run.scale > 0 and len(run.scales) == len(PHASES)):
        return None
    done = [n for n in cfg.phases if n in spent]
    left = [n for n in cfg.phases if n not in spent]
    index = {n: PHASES.index(n) for n in cfg.phases}
    reference = sum(
        run.reference_fixed[index[n]] + run.reference_stepped[index[n]] * run.scales[index[n]]
        for n in done
    )
    if not done or not left or reference <= 0:
        return None
    used = sum(spent[n] for n in done)
    speed = used / reference
    fixed = speed * sum(run.reference_fixed[index[n]] for n in left)
    stepped = speed * sum(run.reference_stepped[index[n]] for n in left)
    scale = _clamp((run.budget - used - fixed) / stepped if stepped else 1.0)
    steps = {}
    for name in left:
        was = run.scales[index[name]]
        if scale != was:  # refitting again with the same inputs (a resume) changes nothing
            steps |= _scale_phase(cfg, name, scale / was)
            run.scales[index[name]] = scale
    return {
        "after": done[-1],
        "speed_vs_reference": round(speed, 3),
        "scale": scale,
        "expected_seconds": round(used + fixed + scale * stepped, 1),
        "steps": steps,
    }
