"""Phase 3, reflective reinforcement: the model optimises its own reasoning.

Starting from the Phase 2 model, each policy update

1. picks questions (tasks weighted by how often they are solved: sometimes-but-not-always
   is where the signal is), a share of them made unanswerable on purpose;
2. samples G solutions per question with the model's incremental generation, within the
   CCM's thinking budget;
3. scores every rollout on the five reward channels (:mod:`pdclm.cognition.rewards`), the
   justification channel being the reflection network's step scores;
4. turns them into group-relative advantages and takes a clipped policy-gradient step
   (:mod:`pdclm.train.grpo`) in the shared training loop, with a KL penalty to the frozen
   Phase 2 model.

The reflection network is trained before the first update and retrained every
``rl.reflect_every`` updates on the policy's newest rollouts, so the policy cannot settle
into its blind spots. Every batch of rollouts and every critic version is written to disk
before it is used: a killed run resumes exactly.

A handful of RL updates can lower accuracy (measured here: 0.115 after Phase 2, 0.098 after
Phase 3), so the phase never ends worse than it started by its own measure: a probe solves
``rl.probe_items`` development questions per task (disjoint from the final evaluation's and,
like them, never a training prompt) greedily on the Phase 2 model and after every
``rl.probe_every`` updates, and the best-scoring of these models (the earliest on a tie) is
the one evaluated and saved (:class:`BestByDev`). Afterwards: held-out accuracy after Phase 2
and 3, the critic's precision/recall on held-out rollouts, robustness to perturbed wording
with and without reflect-and-revise, the unanswerable-question check, and reward curves.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor
from tqdm import tqdm

from pdclm import dist
from pdclm.cognition.ccm import check
from pdclm.cognition.reflection import (
    CRITIC_FILE,
    Reflector,
    calibrate,
    gold_pair,
    judge,
    score,
    solution_episode,
)
from pdclm.cognition.rewards import CHANNELS, Rollout, advantages, score_channels
from pdclm.config import Config, ConfigError, RLConfig
from pdclm.data.episodes import Episode, Judged
from pdclm.data.human import HumanExample, split_by_question, stored_examples
from pdclm.data.tasks import (
    Curriculum,
    Item,
    make_source,
    training_items,
    unanswerable,
    verify,
)
from pdclm.eval.human import agreement
from pdclm.eval.reflection import (
    plot_reward_channels,
    reflection_quality,
    reward_curves,
    robustness,
    robustness_tasks,
    unanswerable_check,
)
from pdclm.eval.stats import mcnemar_one_sided, paired_from_flags
from pdclm.eval.tasks import (
    autocast_context,
    correct,
    dev_sets,
    eval_budget,
    evaluate_tasks,
    held_out_sets,
    run_items,
    solve_sets,
)
from pdclm.io import (
    atomic_write,
    load_weights,
    main_writes,
    save_weights,
    write_json_atomic,
    write_jsonl_atomic,
)
from pdclm.model.io import copy_model, load_model, save_model
from pdclm.model.pdclm import PDCLM
from pdclm.train.critic import train_reflector
from pdclm.train.grpo import action_logprobs, grpo_loss_fn, rollout_tensors
from pdclm.train.loop import Trainer
from pdclm.train.phase import RunContext, epilogue, for_steps
from pdclm.vocab import EOS

STATS = (*CHANNELS, "thinking_bytes", "informative_groups", "unanswerable_said")
"""What each batch of rollouts logs (reward channel means first), in this order."""


def held_out_questions(
    cfg: Config,
) -> tuple[dict[str, list[Item]], dict[str, list[Item]], set[str]]:
    """The final evaluation's questions per task, the probe's development questions per task
    (none when ``rl.probe_items`` is 0) and every one of their questions: what no prompt, no
    critic example and no warm-up rollout may contain."""
    sets = held_out_sets(cfg.tasks)
    dev = dev_sets(cfg.tasks, cfg.rl.probe_items, sets) if cfg.rl.probe_items else {}
    exclude = {it.question for group in (sets, dev) for items in group.values() for it in items}
    return sets, dev, exclude


def probe_windows(rl: RLConfig) -> list[int]:
    """The policy updates after which the probe runs: every ``rl.probe_every`` and the last
    (only the last when there is no probe)."""
    if not rl.probe_items:
        return [rl.steps]
    return sorted({*range(rl.probe_every, rl.steps, rl.probe_every), rl.steps})


def dev_results(policy: PDCLM, dev: dict[str, list[Item]], cfg: Config) -> dict[str, list[bool]]:
    """Per task, which development questions the policy answers right (greedy, with the
    evaluation's budget). Generation is gathered across ranks, and rank 0's verdicts are
    broadcast, so every rank takes the same keep-or-not decision."""
    solved = solve_sets(policy, dev, eval_budget(cfg.tasks), cfg.tasks.batch)
    right = {
        name: correct(make_source(name), items, solved[name])
        for name, items in dev.items()
        if items
    }
    return dist.broadcast(right)


def final_tasks(
    ctx: RunContext, policy: PDCLM, sets: dict[str, list[Item]], kept_phase2: bool
) -> dict[str, Any]:
    """The kept model's evaluation on the held-out questions. When the probe kept the Phase 2
    model, that is Phase 2's own evaluation of it (greedy decoding of the same questions gives
    the same answers): a second pass over every question would only repeat it."""
    before = ctx.results.get("phase2", {})
    if kept_phase2 and "tasks" in before and "consistency" in before:
        return {"tasks": before["tasks"], "consistency": before["consistency"]}
    return evaluate_tasks(policy, sets, ctx.cfg.tasks)


class BestByDev:
    """The probe's history and the best model so far, on disk in ``folder``: the weights of
    the best model as ``update_<n>.safetensors`` (n: the policy updates before it, five
    digits), then ``probe.json`` (every probe and which file is the best), each written
    atomically by rank 0. A kill between the two leaves the previous ``probe.json``, which
    names the previous file; the resumed run probes that window again (greedy decoding: the
    same verdicts) and writes both again.

    A model replaces the best only when it answers more questions right *and* a one-sided
    exact McNemar test on the questions the two answer differently puts its gain beyond
    ``alpha``: a few RL updates move accuracy on a hundred questions by a few items either
    way, and keeping such a window on noise lowered the final accuracy. So a tie, or a gain
    the probe cannot tell from chance, keeps the earlier model, and the Phase 2 model
    (update 0) is kept unless a window measurably beats it."""

    FILE = "probe.json"

    def __init__(self, folder: Path, dev: dict[str, list[Item]], alpha: float) -> None:
        self.folder, self.alpha = folder, alpha
        self.per_task = max((len(v) for v in dev.values()), default=0)
        self.items = sum(len(v) for v in dev.values())
        path = folder / self.FILE
        state = dist.broadcast(json.loads(path.read_text()) if path.exists() else {})
        self.history: list[dict[str, Any]] = state.get("history", [])
        self.best: dict[str, Any] | None = state.get("best")

    def weights(self, update: int) -> Path:
        return self.folder / f"update_{update:05d}.safetensors"

    def done(self, update: int) -> bool:
        return any(r["update"] == update for r in self.history)

    def record(
        self, update: int, step: int, right: dict[str, list[bool]], model: PDCLM, seconds: float
    ) -> bool:
        """Log the probe of the model after ``update`` policy updates (optimizer step
        ``step``; ``right``: per task, which questions it answered right; the probe took
        ``seconds``); keep its weights if it measurably beats the best so far. True when it
        does."""
        tasks = {n: sum(v) / len(v) for n, v in right.items() if v}
        flags = [int(x) for v in right.values() for x in v]
        acc = sum(flags) / len(flags) if flags else 0.0
        row = {"update": update, "step": step, "accuracy": acc, "items": self.items}
        row |= {"tasks": tasks, "right": flags, "seconds": round(seconds, 2)}
        row["p_vs_best"] = self.p_better(flags)
        better = self.best is None or (
            acc > self.best["accuracy"] and row["p_vs_best"] <= self.alpha
        )
        self.history.append(row)
        if better:
            self.best = {k: row[k] for k in ("update", "step", "accuracy")}
            self.best["file"] = self.weights(update).name
        state = {"history": self.history, "best": self.best}

        def write() -> None:
            self.folder.mkdir(parents=True, exist_ok=True)
            if better:
                save_weights(model, self.weights(update))
            write_json_atomic(self.folder / self.FILE, state)  # names the best file
            for old in self.folder.glob("update_*.safetensors"):
                if old.name != state["best"]["file"]:
                    old.unlink()

        main_writes(write)
        return better

    def p_better(self, flags: list[int]) -> float:
        """One-sided exact McNemar p-value that a model answering ``flags`` beats the best
        so far on the same questions (1.0 when there is no best to beat)."""
        kept = self.kept_row()
        if kept is None or len(kept.get("right", [])) != len(flags):
            return 1.0
        pairs = paired_from_flags([bool(x) for x in flags], [bool(x) for x in kept["right"]])
        return mcnemar_one_sided(pairs["only_a"], pairs["only_b"])

    def kept_row(self) -> dict[str, Any] | None:
        """The probe of the model kept so far (None before the first)."""
        return next(
            (r for r in self.history if self.best and r["update"] == self.best["update"]), None
        )

    def kept_tasks(self) -> dict[str, float]:
        """Per task, the kept model's accuracy on the development questions (empty with no
        probe)."""
        kept = self.kept_row()
        return dict(kept["tasks"]) if kept else {}

    def restore(self, model: PDCLM) -> None:
        """Load the best model's weights into ``model``."""
        if self.best is not None:
            load_weights(model, self.folder / self.best["file"])

    def summary(self, rl: RLConfig) -> dict[str, Any]:
        """For the report: every probe, the model kept and why."""
        start = next((r for r in self.history if r["update"] == 0), None)
        best = self.best or {}
        n = f"{self.items} development questions"
        windows = [r for r in self.history if r["update"]]
        top = max(windows, key=lambda r: r["accuracy"], default=None)
        if not best.get("update"):
            why = (
                f"no window beat the Phase 2 model's {start['accuracy']:.3f} on {n} beyond "
                f"chance (one-sided McNemar p <= {self.alpha}"
                + (
                    f"; the best window, update {top['update']}, scored {top['accuracy']:.3f}"
                    f" at p = {top.get('p_vs_best', 1.0):.2f}"
                    if top
                    else ""
                )
                + "): Phase 3 returns the Phase 2 model"
                if start
                else "no probe ran"
            )
        else:
            kept = self.kept_row() or {}
            why = (
                f"update {best['update']} scored {best['accuracy']:.3f} on {n}, above the "
                f"model it replaced at one-sided McNemar p = {kept.get('p_vs_best', 0):.3f} "
                f"<= {self.alpha} (the Phase 2 model scored "
                f"{start['accuracy'] if start else float('nan'):.3f})"
            )
        return {
            "items_per_task": self.per_task,
            "items": self.items,
            "every": rl.probe_every,
            "alpha": self.alpha,
            "updates": rl.steps,
            "history": self.history,
            "seconds": round(sum(r["seconds"] for r in self.history), 1),
            "kept": {k: v for k, v in best.items() if k != "file"} or None,
            "kept_phase2_model": not best.get("update"),
            "why": why,
        }


class Critics:
    """The reflection network's versions: version v serves updates v*reflect_every onward.
    Human verdicts (``human``: training and calibration parts) join every training, weighted
    ``human.weight``, and calibrate every version."""

    def __init__(
        self,
        cfg: Config,
        folder: Path,
        policy: PDCLM,
        exclude: set[str],
        progress: bool,
        human: tuple[list[HumanExample], list[HumanExample]] = ([], []),
    ) -> None:
        self.cfg, self.folder, self.policy, self.exclude = cfg, folder, policy, exclude
        self.human_train = [ex.judged(cfg.human.weight) for ex in human[0]]
        self.human_cal = [ex.judged() for ex in human[1]]
        self.progress = progress and dist.is_main()
        self.loaded: tuple[int, Reflector] | None = None
        self.history: list[dict[str, Any]] = []

    def path(self, v: int) -> Path:
        return self.folder / f"v{v:02d}.safetensors"

    def get(self, v: int, rollouts: Callable[[], list[Judged]] = list) -> Reflector:
        """Version ``v``: loaded if saved, else trained (continuing version v-1) on gold pairs
        plus ``rollouts()`` and saved."""
        if self.loaded and self.loaded[0] == v:
            return self.loaded[1]
        rf = self.cfg.rl.reflection
        with torch.random.fork_rng():  # the heads' initialisation depends on the seed alone
            torch.manual_seed(self.cfg.train.seed * 1009 + v)
            critic = Reflector(self.policy, rf.latent_layers)
        if dist.broadcast(self.path(v).exists()):
            load_weights(critic, self.path(v))
        else:
            if v and self.path(v - 1).exists():
                load_weights(critic, self.path(v - 1))
            examples = self.gold(v) + rollouts() + self.human_train
            stats = train_reflector(
                critic,
                examples,
                rf,
                self.folder / "train",
                self.cfg.train.bf16,
                self.cfg.train.seed + v,
                self.cfg.train.device,
            )
            critic.cpu()
            if self.human_cal:
                with autocast_context(self.cfg.train.bf16):
                    stats["calibration"] = calibrate(critic, self.human_cal)
            main_writes(lambda: self.save(v, critic))
            # every rank trained on the same examples, but not always to the same last bit
            # (measured: two FSDP ranks' critics scored one answer 0.475 and 0.325, and
            # reflect-and-revise then revised different questions on each): all take rank 0's
            load_weights(critic, self.path(v))
            self.history.append({"version": v, "examples": len(examples), **stats})
            if self.progress:
                tqdm.write(
                    f"phase3 reflection network v{v}: {len(examples)} examples, "
                    f"{stats['steps']} steps, final loss {stats['loss']:.3f}"
                )
        self.loaded = (v, critic.cpu().eval())
        return critic

    def save(self, v: int, critic: Reflector) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        save_weights(critic, self.path(v))  # atomic: a version on disk is a whole one

    def gold(self, v: int) -> list[Judged]:
        """Gold traces of fresh training questions, each with its corrupted twin."""
        cfg, rf = self.cfg, self.cfg.rl.reflection
        rng = random.Random(f"critic:{cfg.train.seed}:{v}")
        names = list(cfg.tasks.names)
        per = max(1, rf.items // len(names))
        out: list[Judged] = []
        for name in names:
            source = make_source(name)
            for it in training_items(source, cfg.tasks.eval_level, per, 4242 + v, self.exclude):
                out += gold_pair(it, rng)
        return out


class RolloutBatches:
    """Builds (or reloads) the rollouts of each policy update and serves them as batches."""

    def __init__(
        self,
        cfg: Config,
        folder: Path,
        policy: PDCLM,
        reference: PDCLM | None,
        critics: Critics,
        exclude: set[str],
    ) -> None:
        self.cfg, self.folder, self.policy, self.reference = cfg, folder, policy, reference
        self.critics, self.exclude = critics, exclude
        self.sync: Callable[[], None] = lambda: None
        """Brings the training weights into ``policy`` before it generates (FSDP trains a
        sharded copy)."""
        self.names = list(cfg.tasks.names)
        self.prior: dict[str, tuple[int, int]] = {}
        """Per task, (right, asked) of the probe of the Phase 2 model: what the curriculum
        knows before any rollout (see :meth:`start_from`)."""
        self.curriculum = self.new_curriculum()
        self.recorded = 0
        """Updates whose rollouts the curriculum has seen."""

    def new_curriculum(self) -> Curriculum:
        c = Curriculum(self.names, dict.fromkeys(self.names, 1), window=4 * self.cfg.rl.group)
        for name, (right, asked) in self.prior.items():
            for j in range(asked):
                c.record(name, j < right)
        return c

    def start_from(self, probe: dict[str, float], asked: dict[str, int]) -> None:
        """Seed the curriculum with the Phase 2 model's development accuracy per task
        (``probe``, over ``asked`` questions): a task it never solves gets the curriculum's
        floor weight from the first update instead of the 'unknown' weight, the highest there
        is, so the first updates' prompts go to tasks solved sometimes (whose groups disagree
        and so carry an advantage). Real rollouts push these entries out of the window within a
        few groups. Costs nothing: the probe runs anyway; rebuilt alike on resume."""
        self.prior = {n: (round(probe[n] * asked[n]), asked[n]) for n in probe if n in asked}
        self.curriculum, self.recorded = self.new_curriculum(), 0

    def paths(self, k: int) -> tuple[Path, Path]:
        return self.folder / f"batch_{k:05d}.safetensors", self.folder / f"batch_{k:05d}.jsonl"

    def judged(self, before: int) -> list[Judged]:
        """The newest saved rollouts before update ``before``, labelled, for the critic."""
        want, out = self.cfg.rl.reflection.rollouts, []
        for k in range(before - 1, -1, -1):
            rows = self.paths(k)[1]
            if rows.exists():
                for line in rows.read_text().splitlines():
                    d = json.loads(line)
                    steps = tuple(None if s is None else bool(s) for s in d["step_ok"])
                    ep = Episode(d["question"], tuple(d["steps"]), d["answer"])
                    out.append(Judged(ep, steps, d["answer_ok"]))
            if len(out) >= want:
                break
        return out[:want]

    def critic_for(self, k: int) -> Reflector:
        v = k // self.cfg.rl.reflect_every
        return self.critics.get(v, (lambda: self.judged(k)) if v else self.warmup_rollouts)

    def warmup_rollouts(self) -> list[Judged]:
        """The Phase 2 policy's own sampled solutions of training questions, for critic v0."""
        cfg = self.cfg
        items = self.prompts(-1, cfg.rl.reflection.rollouts)
        gen = torch.Generator().manual_seed(cfg.train.seed + 99)
        sols = run_items(self.policy, items, eval_budget(cfg.tasks), cfg.tasks.batch, 1.0, gen)
        return [judge(it, s) for it, s in zip(items, sols, strict=True)]

    # --------------------------------------------------------------------------- questions
    def prompts(self, k: int, n: int) -> list[Item]:
        """``n`` training questions for update ``k``: tasks by curriculum weight, a share made
        unanswerable."""
        cfg = self.cfg
        rng = random.Random(f"{cfg.train.seed}:prompts:{k}")
        w = self.curriculum.weights()
        names = rng.choices(list(w), weights=list(w.values()), k=n)
        n_un = round(n * cfg.rl.unanswerable_share)
        items: list[Item] = []
        for name in sorted(set(names)):
            count = names.count(name)
            items += training_items(
                make_source(name), cfg.tasks.eval_level, count, 9000 + 31 * k, self.exclude
            )
        rng.shuffle(items)
        made = 0
        for i, it in enumerate(items):
            if made >= n_un:
                break
            hidden = unanswerable(it, rng)
            if hidden is not None and hidden.question not in self.exclude:
                items[i], made = hidden, made + 1
        return items[:n]

    # ----------------------------------------------------------------------------- rollouts
    def replay(self, k: int) -> None:
        """Bring the curriculum to where it was before update ``k``, from the saved rows (all
        of them after a restart, else just the updates since the last call)."""
        if self.recorded > k:
            self.curriculum, self.recorded = self.new_curriculum(), 0
        for j in range(self.recorded, k):
            rows = self.paths(j)[1]
            if rows.exists():
                for line in rows.read_text().splitlines():
                    d = json.loads(line)
                    if d["answerable"]:
                        self.curriculum.record(d["task"], d["correct"])
        self.recorded = k

    def build(self, k: int) -> None:
        cfg, rl = self.cfg, self.cfg.rl
        self.sync()
        critic = self.critic_for(k)
        self.replay(k)
        items = self.prompts(k, rl.prompts)
        flat = [it for it in items for _ in range(rl.group)]
        budget = eval_budget(cfg.tasks)
        gen = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + k)
        sols = run_items(self.policy, flat, budget, cfg.tasks.batch, rl.temperature, gen)
        with autocast_context(cfg.train.bf16):
            scores = score(
                critic, [solution_episode(it.question, s) for it, s in zip(flat, sols, strict=True)]
            )
        rollouts = [
            Rollout(
                it,
                s,
                verify(it, s.answer),
                check(s.steps, s.answer, it.task, s.question),
                j // rl.group,
                budget,
                sc.steps,
            )
            for j, (it, s, sc) in enumerate(zip(flat, sols, scores, strict=True))
        ]
        channels = score_channels(rollouts)
        groups = torch.tensor([r.group for r in rollouts])
        adv = advantages(channels, groups, rl.rewards)
        informative = [g for g in range(len(items)) if adv[groups == g].abs().sum() > 0]
        keep = [j for j, r in enumerate(rollouts) if r.group in informative] or [0]
        tokens, actions = rollout_tensors([sols[j] for j in keep], pad=EOS)
        with torch.no_grad(), autocast_context(cfg.train.bf16):
            old = action_logprobs(self.policy, tokens, actions)
            ref = (
                action_logprobs(self.reference, tokens, actions) if self.reference else old.clone()
            )
        unans = [r for r in rollouts if not r.answerable]
        stats = [float(channels[c].mean()) for c in CHANNELS] + [
            sum(s.thinking_bytes for s in sols) / len(sols),
            len(informative) / len(items),
            sum(r.correct for r in unans) / len(unans) if unans else float("nan"),
        ]
        tensors = {
            "tokens": tokens,
            "actions": actions,
            "adv": adv[keep] if informative else torch.zeros(1),
            "old_logp": old.float(),
            "ref_logp": ref.float(),
            "stats": torch.tensor(stats),
        }
        rows = [
            {
                "task": r.item.source,
                "answerable": r.answerable,
                "question": r.item.question,
                "steps": list(r.solution.steps),
                "answer": r.solution.answer,
                "correct": r.correct,
                "step_ok": list(r.verdict.steps),
                "answer_ok": r.correct and r.verdict.consistent,
                **{c: float(channels[c][j]) for c in CHANNELS},
            }
            for j, r in enumerate(rollouts)
        ]
        path, jsonl = self.paths(k)

        def write() -> None:  # every rank computed the same rollouts (generation is gathered)
            self.folder.mkdir(parents=True, exist_ok=True)
            write_jsonl_atomic(jsonl, rows)
            # last: its presence marks the batch as complete
            atomic_write(path, safetensors_bytes({n: t.contiguous() for n, t in tensors.items()}))

        main_writes(write)
        self.policy.train()

    def batch(self, i: int, rows: slice) -> tuple[Tensor, ...]:
        """Update ``i``'s rollouts; under several ranks each takes every world-th rollout
        (``rows``, a share of ``train.batch``, does not apply: rollout counts vary)."""
        k = i // self.cfg.rl.updates
        path = self.paths(k)[0]
        if not dist.broadcast(path.exists()):
            self.build(k)
        t = load_file(str(path))
        p = dist.part()
        n = len(t["adv"])
        mine = [j % n for j in range(p.rank, max(n, p.world), p.world)]
        per_row = [t[name][mine] for name in ("tokens", "actions", "adv", "old_logp", "ref_logp")]
        return (*per_row, t["stats"])


class Reflective:
    name = "reflective"
    key = "phase3"
    folders = ("reflective",)

    def run(self, ctx: RunContext) -> dict[str, Any]:
        cfg, run_dir, rl = ctx.cfg, ctx.run_dir, ctx.cfg.rl
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        folder = run_dir / "reflective"
        done = run_dir / "phases"
        if (done / "pretrain.json").exists() and not (done / "cognitive.json").exists():
            raise ConfigError(
                f"{run_dir} has no finished Phase 2; Phase 3 starts from the Phase 2 model "
                "(run `pdclm train cognitive --resume RUN` first)"
            )
        if not ctx.resume:  # a fresh run of this phase: no stale rollouts or critics
            main_writes(lambda: shutil.rmtree(folder) if folder.exists() else None)
        # what this phase starts from, kept apart: RUN/model is overwritten at the end
        start = copy_model(run_dir, run_dir / "phase2_model")
        policy, mcfg = load_model(start)
        cfg.pse.patcher.threshold = mcfg.pse.patcher.threshold
        reference = None
        if rl.kl > 0:
            reference, _ = load_model(start)
            reference.requires_grad_(False)

        sets, dev, exclude = held_out_questions(cfg)
        human = split_by_question(
            stored_examples(cfg.data.dir), cfg.human.holdout, cfg.human.calibration
        )
        exclude |= {ex.episode.question for ex in human[2]}  # the agreement set stays unseen
        critics = Critics(cfg, folder / "critic", policy, exclude, ctx.progress, human[:2])
        data = RolloutBatches(cfg, folder / "rollouts", policy, reference, critics, exclude)
        tcfg = for_steps(
            cfg.train,
            rl.steps * rl.updates,
            evals=1,
            warmup=rl.warmup,
            lr=rl.lr,
            grad_accum=1,
            log_every=1,
            ckpt_every=max(1, rl.reflect_every * rl.updates // 2),
        )
        trainer = Trainer(
            "phase3/grpo",
            policy,
            tcfg,
            folder,
            sample=data.batch,
            loss_fn=grpo_loss_fn(rl.clip_low, rl.clip_high, rl.kl, STATS),
            log=ctx.log,
            progress=ctx.progress,
            postfix=("loss", "correctness", "thinking_bytes", "kl"),
        )
        data.sync = trainer.return_weights
        best = BestByDev(folder / "best", dev, rl.probe_alpha)
        result = self.train(ctx, trainer, policy, dev, best, data)
        policy.eval().cpu()
        best.restore(policy)  # the best model by the probe, the Phase 2 one included
        critic = critics.get((rl.steps - 1) // rl.reflect_every)
        # with the reflection network beside it, for `solve --reflect`
        save_model(policy, cfg, run_dir / "model", extra={CRITIC_FILE: critic})
        kept_phase2 = best.best is not None and best.best["update"] == 0
        out = self.evaluate(
            ctx, policy, critic, sets, result, critics, best.kept_tasks(), kept_phase2
        )
        if dev:
            out["probe"] = best.summary(rl)
        if any(human):  # how the critic and each channel agree with held-out human verdicts
            with autocast_context(cfg.train.bf16):
                out["human"] = {
                    "train": len(human[0]),
                    "calibration": len(human[1]),
                    "held_out": agreement(critic, human[2], cfg),
                }
        return out

    def train(
        self,
        ctx: RunContext,
        trainer: Trainer,
        policy: PDCLM,
        dev: dict[str, list[Item]],
        best: BestByDev,
        data: RolloutBatches,
    ) -> dict[str, Any]:
        """Train window by window (:func:`probe_windows`), probing the model before the first
        (its figures seed the prompt curriculum) and after each; a window already probed
        before a restart is not trained or probed again (the trainer resumes from its newest
        checkpoint, written before that probe). The trainer's result, with the training
        seconds of every window of this process."""
        cfg, rl = ctx.cfg, ctx.cfg.rl
        windows = probe_windows(rl)

        def probe(update: int) -> None:
            if not dev or best.done(update):
                return
            t0 = time.perf_counter()
            right = dev_results(policy, dev, cfg)
            kept = best.record(update, update * rl.updates, right, policy, time.perf_counter() - t0)
            if ctx.progress:
                row = best.history[-1]
                tqdm.write(
                    f"phase3 probe after update {update}: dev accuracy {row['accuracy']:.3f} on "
                    f"{row['items']} questions ({row['seconds']:.1f} s)"
                    + ("; best so far, kept" if kept else "")
                )

        probe(0)
        if best.history:
            data.start_from(best.history[0]["tasks"], {n: len(v) for n, v in dev.items()})
        seconds, result = 0.0, {}
        for end in windows:
            if end != windows[-1] and best.done(end):
                continue  # trained and probed before a restart
            result = trainer.fit(resume=True, until=end * rl.updates)
            seconds += result["train_seconds"]
            if result["steps"] == end * rl.updates:  # not when resumed past it (an older run)
                probe(end)
        return result | {"train_seconds": seconds}

    def evaluate(
        self,
        ctx: RunContext,
        policy: PDCLM,
        critic: Reflector,
        sets: dict[str, list[Item]],
        result: dict[str, Any],
        critics: Critics,
        dev_accuracy: dict[str, float],
        kept_phase2: bool,
    ) -> dict[str, Any]:
        cfg = ctx.cfg
        tasks = final_tasks(ctx, policy, sets, kept_phase2)
        constants = {n: t["constant_baseline"] for n, t in tasks["tasks"].items()}
        measured = robustness_tasks(dev_accuracy, constants)
        critic_quality = reflection_quality(policy, critic, sets, cfg)
        robust = robustness(policy, critic, {n: sets[n] for n in measured}, cfg)
        unans = unanswerable_check(policy, sets, cfg)
        curves = reward_curves(ctx.log.path if ctx.log else None)
        plots = {
            "phase3_reward_channels.png": lambda path: plot_reward_channels(curves, path),
        }
        return {
            **tasks,
            "reflection": critic_quality,
            "robustness": robust,
            "unanswerable": unans,
            "rewards": {c: {"first": v[0], "last": v[-1]} for c, v in curves.items() if v},
            "critic_trainings": critics.history,
            **epilogue(ctx, 3, tasks, result, plots),
        }
