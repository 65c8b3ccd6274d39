"""Phase 2, the cognitive loop: the pretrained stream model learns to reason step by step.

The phase runs in rounds. Each round

1. *probes*: the model solves each task's development questions at the task's level (a set
   fixed per task and level, disjoint from the final evaluation's and, like it, never trained
   on, so a memorised question cannot raise a level); the curriculum moves each task's level
   with its success and favours tasks solved sometimes but not always;
2. *plays*: proposer/solver self-play over the project's generators and a multi-agent
   dialogue (:mod:`pdclm.cognition.selfplay`), keeping verified episodes only;
3. *writes its data*: gold-trace episodes for the tasks and levels the curriculum picks plus
   the round's self-play episodes, saved to ``cognitive/rounds/`` before any training;
4. *trains*: next-symbol loss on packed episodes (thinking and answer weighted 1, the
   question a little) mixed with rows of raw Phase 1 text, in the shared loop.

Because a round's data is on disk before its steps run, batch ``i`` is a pure function of the
round files and ``i``: a killed run resumes exactly. Afterwards: held-out accuracy per task
beside constant baselines, the probes' development accuracy against the optimizer step,
accuracy against thinking budget, how often the CCM's checks catch wrong answers, bits per
byte on Phase 1's held-out text before and after, and how many distinct questions each task
and level has (and how much of that the held-out sets take).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from pdclm.cognition.selfplay import Verified, dialogue, propose_and_solve
from pdclm.config import Config
from pdclm.data.episodes import Episode, pack, weighted_symbols
from pdclm.data.generators import GENERATORS
from pdclm.data.shards import BatchSampler, ShardSet
from pdclm.data.tasks import (
    Curriculum,
    Item,
    make_source,
    question_spaces,
    training_items,
    unanswerable,
)
from pdclm.eval.tasks import (
    agreement_check,
    autocast_context,
    budget_sweep,
    dev_sets,
    eval_budget,
    evaluate_tasks,
    gold_bits,
    held_out_sets,
    plot_accuracy_vs_steps,
    plot_budget_sweep,
    run_items,
    source_separation,
)
from pdclm.io import main_writes, write_json_atomic, write_jsonl_atomic
from pdclm.model.io import copy_model, load_model, save_model
from pdclm.model.pdclm import PDCLM
from pdclm.train.loop import Trainer, resolve_device
from pdclm.train.objectives import mean_bpb, weighted_lm_loss
from pdclm.train.phase import RunContext, epilogue, for_steps
from pdclm.train.pretrain import held_out_batches, store_profiles


def round_bounds(cfg: Config) -> list[int]:
    """The optimizer step at which each round ends."""
    n, steps = cfg.cognitive.rounds, cfg.cognitive.steps
    return [steps * (r + 1) // n for r in range(n)]


def probe_sets(cfg: Config, evaluation: dict[str, list[Item]]) -> dict[str, dict[int, list[Item]]]:
    """The curriculum probe's questions: ``cognitive.probe_items`` development questions per
    task at every level it can be trained at, disjoint from ``evaluation`` and the same in
    every round. All levels are drawn up front, not as levels move: a level's set must be
    excluded from training before any round trains at a level it overlaps (reasoning-gym's
    easy levels are subsets of its harder ones), and a resumed run must rebuild the same sets."""
    top = {n: make_source(n).max_level for n in cfg.tasks.names}
    out: dict[str, dict[int, list[Item]]] = {n: {} for n in top}
    if cfg.cognitive.probe_items <= 0:
        return out
    for level in range(1, max(top.values(), default=0) + 1):
        tasks = dataclasses.replace(cfg.tasks, names=[n for n in top if top[n] >= level])
        for name, items in dev_sets(tasks, cfg.cognitive.probe_items, evaluation, level).items():
            out[name][level] = items
    return out


class RoundData:
    """Builds (or reloads) each round's episodes, and turns them into training batches.

    ``evaluation``: the final evaluation's questions. They, the probe's development
    questions (``dev``) and those of Phase 3's probe form ``exclude``, which no round's
    episodes may contain."""

    def __init__(
        self, cfg: Config, folder: Path, evaluation: dict[str, list[Item]], text: ShardSet
    ) -> None:
        self.cfg, self.folder = cfg, folder
        self.dev = probe_sets(cfg, evaluation)
        phase3_dev = (
            dev_sets(cfg.tasks, cfg.rl.probe_items, evaluation) if cfg.rl.probe_items else {}
        )
        self.exclude = {
            it.question
            for group in (evaluation, phase3_dev)
            for items in group.values()
            for it in items
        } | {it.question for it in self.dev_items()}  # Phase 3's probe: never trained on either
        cg = cfg.cognitive
        self.text = (  # one row per draw: text row k of the phase is draw k
            BatchSampler(text, cg.seq_len, 1, cfg.train.seed) if cg.text_share > 0 else None
        )
        self.bounds = round_bounds(cfg)
        self.own = [n for n in cfg.tasks.names if n in GENERATORS]
        self.curriculum = Curriculum(
            list(cfg.tasks.names),
            {n: make_source(n).max_level for n in cfg.tasks.names},
            window=cg.probe_items,
            floor=0.1,  # unsolved tasks still get gold traces: supervised data, not RL
        )
        self._pools: dict[int, list[tuple[list[int], list[float]]]] = {}

    def dev_items(self) -> list[Item]:
        """Every development question of every task and level."""
        return [it for levels in self.dev.values() for items in levels.values() for it in items]

    def paths(self, r: int) -> tuple[Path, Path]:
        return self.folder / f"round_{r:02d}.jsonl", self.folder / f"round_{r:02d}.json"

    def meta(self, r: int) -> dict[str, Any] | None:
        path = self.paths(r)[1]
        return json.loads(path.read_text()) if path.exists() else None

    # ------------------------------------------------------------------------ building a round
    def build(self, r: int, model: PDCLM, progress: bool) -> dict[str, Any]:
        """Probe, self-play and sample the round's episodes; save them; return the round's meta."""
        cfg, cg = self.cfg, self.cfg.cognitive
        prev = self.meta(r - 1) if r else None
        if prev is not None:
            self.curriculum.load(prev["curriculum"])
        gen = torch.Generator().manual_seed(cfg.train.seed * 1000 + r)
        budget = eval_budget(cfg.tasks)
        seed = 1 + cfg.train.seed * 7_000_003 + r * 100_003
        model.eval()
        levels = dict(self.curriculum.level)  # what the probe asks at (it may move them)
        probe, bits = self.probe(model)
        proposals, proposer_stats = (
            propose_and_solve(
                model,
                self.own,
                cg.proposals,
                cg.solver_samples,
                budget,
                cg.temperature,
                self.exclude,
                gen,
                cfg.tasks.batch,
            )
            if self.own and cg.proposals
            else ([], {})
        )
        rng = random.Random(seed)
        talk_items = self.sample_items(cg.dialogue_items, rng, seed + 11)
        talks, dialogue_stats = (
            dialogue(model, talk_items, cg.agents, budget, cg.temperature, gen, cfg.tasks.batch)
            if talk_items
            else ([], {})
        )
        weights = self.task_weights(probe, bits, levels, prev)
        curriculum_items = self.sample_items(cg.episodes_per_round, rng, seed + 29, weights)
        episodes = [
            Verified(
                Episode(it.question, it.steps, it.answer),
                it.source,
                "curriculum",
                cg.question_weight,
            )
            for it in curriculum_items
        ]
        episodes += proposals + talks
        if not episodes:
            raise RuntimeError(
                f"round {r} produced no training episodes: every configured task's questions at "
                "these levels are held out (lower tasks.eval_items or add tasks)"
            )
        leaked = [v for v in episodes if v.episode.question in self.exclude]
        if leaked:  # never train on a held-out question, whatever produced it
            raise RuntimeError(f"held-out question reached round {r}'s data: {leaked[0]}")
        meta = {
            "round": r,
            "curriculum": self.curriculum.state(),
            "probe_step": self.bounds[r - 1] if r else 0,
            "probe_levels": levels,
            "probe_success": probe,
            "probe_mean": sum(probe.values()) / len(probe) if probe else None,
            "probe_bits": bits,
            "levels": dict(self.curriculum.level),
            "weights": weights,
            "episodes": {
                k: sum(v.kind == k for v in episodes)
                for k in ("curriculum", "proposal", "gold", "dialogue")
            },
            "proposer": proposer_stats,
            "dialogue": dialogue_stats,
        }
        jsonl, meta_path = self.paths(r)

        def write() -> None:  # every rank holds the same episodes (generation is gathered)
            self.folder.mkdir(parents=True, exist_ok=True)
            write_jsonl_atomic(jsonl, [v.to_json() for v in episodes])
            write_json_atomic(meta_path, meta)  # last: its presence marks the round as complete

        main_writes(write)
        if progress:
            solved = ", ".join(f"{n} {p:.2f}" for n, p in probe.items() if p)
            tqdm.write(
                f"phase2 round {r}: {len(episodes)} episodes ({meta['episodes']}); "
                f"probe success: {solved or 'none yet'}"
            )
        return meta

    def probe(self, model: PDCLM) -> tuple[dict[str, float], dict[str, float]]:
        """Solve each task's development questions at its level (feeding the curriculum's
        levels): per task, greedy success and, for the ``progress`` mix, the bits per symbol
        of the gold thinking and answer read teacher-forced (else none)."""
        cfg = self.cfg
        levels = dict(self.curriculum.level)
        items = [it for name in cfg.tasks.names for it in self.dev[name].get(levels[name], [])]
        sols = run_items(model, items, eval_budget(cfg.tasks), cfg.tasks.batch)
        reads = cfg.cognitive.mix == "progress"  # ~3 s a probe on 2 cores: only when used
        bits = gold_bits(model, items, cfg.train.bf16, cfg.tasks.batch) if reads else []
        success: dict[str, list[float]] = {n: [] for n in cfg.tasks.names}
        gold: dict[str, list[float]] = {n: [] for n in cfg.tasks.names}
        for it, b in zip(items, bits, strict=True) if bits else ():
            gold[it.source].append(b)
        for it, sol in zip(items, sols, strict=True):
            ok = make_source(it.source).score(it, sol.answer) >= 1.0
            self.curriculum.record(it.source, ok, levels[it.source])
            success[it.source].append(float(ok))
        mean = {n: sum(v) / len(v) for n, v in success.items() if v}
        return mean, {n: sum(v) / len(v) for n, v in gold.items() if v}

    def task_weights(
        self,
        success: dict[str, float],
        bits: dict[str, float],
        levels: dict[str, int],
        prev: dict[str, Any] | None,
    ) -> dict[str, float]:
        """How the round's gold-trace episodes are spread over tasks (``cognitive.mix``).

        ``progress``: to each task in proportion to what it has left to learn (1 - greedy
        success) times how fast it is learning (the relative fall of its gold bits since the
        last probe at the same level, over the largest fall of any task; unknown counts as
        the largest, so round 0 is uniform): budget goes where accuracy is rising, away from
        tasks already solved and from tasks that do not move. ``gap``: 1 - success alone.
        ``variance``: success p -> p(1 - p), the weighting that finds RL signal. Every task
        keeps at least ``floor`` of the largest weight, so none is forgotten."""
        mix, floor = self.cfg.cognitive.mix, 0.1
        if mix == "variance":
            return self.curriculum.weights()
        names = list(self.cfg.tasks.names)
        gap = {n: 1.0 - success.get(n, 0.0) for n in names}
        rate = dict.fromkeys(names, 1.0)
        if mix == "progress" and prev is not None:
            before, was = prev.get("probe_bits", {}), prev.get("probe_levels", {})
            fall = {
                n: max(0.0, 1.0 - bits[n] / before[n])
                for n in names
                if n in bits and before.get(n) and was.get(n) == levels.get(n)
            }
            top = max(fall.values(), default=0.0)
            rate = {n: fall[n] / top if n in fall and top > 0 else 1.0 for n in names}
        w = {n: gap[n] * rate[n] for n in names}
        top = max(w.values(), default=0.0) or 1.0
        return {n: max(floor, v / top) for n, v in w.items()}

    def sample_items(
        self, n: int, rng: random.Random, seed: int, weights: dict[str, float] | None = None
    ) -> list[Item]:
        """``n`` training items: tasks by ``weights`` (else the curriculum's); half at a
        task's level, half at the level the final evaluation asks (``tasks.eval_level``, or
        the task's level if that is lower), so a task the curriculum has moved on keeps
        practising the questions it is judged on; a share of them with a number hidden, so
        the model learns to say a question cannot be answered."""
        if n <= 0:
            return []
        w = weights or self.curriculum.weights()
        names = rng.choices(list(w), weights=list(w.values()), k=n)
        wanted: dict[tuple[str, int], int] = {}
        for i, name in enumerate(names):
            top = self.curriculum.level[name]
            level = top if i % 2 else min(top, self.cfg.tasks.eval_level)
            wanted[(name, level)] = wanted.get((name, level), 0) + 1
        items: list[Item] = []
        for (name, level), k in sorted(wanted.items()):
            items += training_items(make_source(name), level, k, seed + 17 * level, self.exclude)
        rng.shuffle(items)
        for i in range(round(n * self.cfg.cognitive.unanswerable_share)):
            hidden = unanswerable(items[i], rng)  # gold: "x is not given", answer "unknown"
            if hidden is not None and hidden.question not in self.exclude:
                items[i] = hidden
        return items

    # ------------------------------------------------------------------------------ batches
    def pool(self, r: int) -> list[tuple[list[int], list[float]]]:
        if r not in self._pools:
            rows = [json.loads(line) for line in self.paths(r)[0].read_text().splitlines()]
            self._pools = {
                r: [
                    weighted_symbols(v.episode, v.question_weight)
                    for v in map(Verified.from_json, rows)
                ]
            }
        return self._pools[r]

    def text_rows(self, i: int) -> range:
        """The phase-wide numbers of micro-batch ``i``'s raw-text rows: the batches up to
        ``i`` hold ``floor(i * batch * text_share)`` of them, so the share holds over steps at
        any batch size (2 rows at 0.15: one text row every 3-4 batches); at least one row of
        every batch is episodes."""
        cg = self.cfg.cognitive
        if self.text is None:
            return range(0)
        per = cg.batch * cg.text_share
        first, end = math.floor(i * per), math.floor((i + 1) * per)
        return range(first, min(end, first + cg.batch - 1))

    def batch(self, i: int, keep: slice = slice(None)) -> tuple[Tensor, Tensor]:
        """Rows ``keep`` of micro-batch ``i``: packed episode rows of step i's round, then
        raw-text rows (every rank packs the whole batch, which is cheap, and keeps its rows)."""
        cfg, cg = self.cfg, self.cfg.cognitive
        step = i // cfg.train.grad_accum
        r = next(k for k, end in enumerate(self.bounds) if step < end)
        pool = self.pool(r)
        rng = random.Random(f"{cfg.train.seed}:{i}")
        text_rows = self.text_rows(i)
        rows = cg.batch - len(text_rows)
        mean_len = sum(len(s) for s, _ in pool[:256]) / min(256, len(pool))
        # twice the episodes that fill the rows on average, packed first-fit, the rest
        # dropped: drawing just enough left a fifth of every row padding (cpu preset: rows
        # 0.79 full, 0.955 with twice the draws)
        k = 2 * math.ceil(rows * cg.seq_len / mean_len)
        draw = [pool[j] for j in rng.choices(range(len(pool)), k=k)]
        tokens, weights = pack(draw, rows, cg.seq_len)
        t, w = torch.tensor(tokens), torch.tensor(weights)
        if text_rows:
            text = torch.cat([torch.from_numpy(self.text.batch(k)[0]) for k in text_rows]).long()
            t = torch.cat([t, text])
            w = torch.cat([w, (text[:, 1:] < 256).float()])
        return t[keep], w[keep]


class Cognitive:
    name = "cognitive"
    key = "phase2"
    folders = ("cognitive",)

    def run(self, ctx: RunContext) -> dict[str, Any]:
        cfg, run_dir = ctx.cfg, ctx.run_dir
        cg = cfg.cognitive
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        folder = run_dir / "cognitive"
        if not ctx.resume:  # a fresh run of this phase: no stale rounds or checkpoints
            main_writes(lambda: shutil.rmtree(folder) if folder.exists() else None)
        # what this phase starts from: Phase 1 saves it (older run folders get a copy of model/)
        start = copy_model(run_dir, run_dir / "phase1_model")
        model, mcfg = load_model(start)
        cfg.pse.patcher.threshold = mcfg.pse.patcher.threshold

        sets = held_out_sets(cfg.tasks)
        tag = store_profiles(cfg, model.entropy, ctx.progress)
        train_text, val_text = (ShardSet.open(cfg.data.dir, s) for s in ("train", "val"))
        data = RoundData(cfg, folder / "rounds", sets, train_text)
        spaces = self.question_spaces(cfg, sets, data)
        val_batches = held_out_batches(
            val_text, cfg.train.seq_len, cfg.train.batch, cfg.train.eval_batches, tag
        )
        tcfg = for_steps(
            cfg.train,
            cg.steps,
            evals=cg.rounds,
            ckpts=2 * cg.rounds,
            warmup=cg.warmup,
            lr=cg.lr,
            seq_len=cg.seq_len,
            batch=cg.batch,
        )
        trainer = Trainer(
            "phase2/sft",
            model,
            tcfg,
            folder,
            sample=data.batch,
            loss_fn=weighted_lm_loss,
            log=ctx.log,
            evaluate=mean_bpb(val_batches, resolve_device(cfg.train.device)),
            progress=ctx.progress,
        )
        step = trainer.restore()
        rounds, seconds, result = [], 0.0, None
        for r, end in enumerate(data.bounds):
            rounds.append(data.meta(r) or data.build(r, model, ctx.progress))
            if step < end:
                result = trainer.fit(resume=True, until=end)
                seconds += result["train_seconds"]
                step = end
        if result is None:  # every round was trained before a restart: just the summary
            result = trainer.fit(resume=True)
        result["train_seconds"] = seconds
        model.eval().cpu()
        save_model(model, cfg, run_dir / "model")
        return self.evaluate(ctx, model, sets, result, rounds) | {"question_space": spaces}

    @staticmethod
    def question_spaces(
        cfg: Config, sets: dict[str, list[Item]], data: RoundData
    ) -> dict[str, Any]:
        """Each task's question space per level and the share the held-out questions
        (evaluation and development) take from training; ``cognitive.space_draws`` bounds the
        sampling where a space cannot be counted (0 skips this)."""
        draws, start = cfg.cognitive.space_draws, time.perf_counter()
        held = [*(it for items in sets.values() for it in items), *data.dev_items()]
        rows = question_spaces(cfg.tasks.names, held, draws) if draws else []
        return {"draws": draws, "seconds": round(time.perf_counter() - start, 2), "rows": rows}

    @staticmethod
    def accuracy_vs_steps(rounds: list[dict[str, Any]], bounds: list[int]) -> list[dict[str, Any]]:
        """One record per round: its probe's development accuracy (mean and per task, each
        task at the level it was probed at) and the optimizer step the probe ran at (round
        folders written before the probe recorded its step get it from the schedule)."""
        out = []
        for r, meta in enumerate(rounds):
            tasks = meta.get("probe_success", {})
            out.append(
                {
                    "round": r,
                    "step": meta.get("probe_step", bounds[r - 1] if r else 0),
                    "mean": sum(tasks.values()) / len(tasks) if tasks else None,
                    "tasks": tasks,
                    "levels": meta.get("probe_levels", {}),
                }
            )
        return out

    def evaluate(
        self,
        ctx: RunContext,
        model: PDCLM,
        sets: dict[str, list[Item]],
        result: dict[str, Any],
        rounds: list[dict[str, Any]],
    ) -> dict[str, Any]:
        cfg = ctx.cfg
        tasks = evaluate_tasks(model, sets, cfg.tasks)
        sweep = budget_sweep(model, sets, cfg.tasks)
        agree = agreement_check(model, sets, cfg.tasks, cfg.train.seed)
        with autocast_context(cfg.train.bf16):
            sources = source_separation(model, sets)
        history = result.pop("history")
        progress = self.accuracy_vs_steps(rounds, round_bounds(cfg))
        plots = {
            "phase2_accuracy_vs_budget.png": lambda path: plot_budget_sweep(sweep, path),
            "phase2_accuracy_vs_steps.png": lambda path: plot_accuracy_vs_steps(progress, path),
        }
        return {
            **tasks,
            "budget_sweep": sweep,
            "agreement": agree,
            "source_separation": sources,
            "text_bpb_before": history[0]["val_bpb"] if history else None,
            "text_bpb_after": result.get("val_bpb"),
            "rounds": rounds,
            "accuracy_vs_steps": progress,
            "val_history": history,
            **epilogue(ctx, 2, tasks, result, plots),
        }
