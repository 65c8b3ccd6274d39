"""Every knob of PD-CLM in one place: dataclasses, preset files and validation.

A preset (``pdclm/presets/<name>.toml`` or any ``.toml``/``.json`` path) fills the dataclasses;
dotted command-line overrides (``--model.latent.layers=6``) are applied on top by the CLI.
Unknown keys and bad values raise :class:`ConfigError` with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import tomllib
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRESET_DIR = Path(__file__).parent / "presets"

# Names the config is checked against. The registries they name live in higher layers (this
# module imports nothing from the package); tests/test_config.py pins each tuple to its
# registry, so a phase, task or bench model added there and not here fails a test.
PHASES = ("pretrain", "cognitive", "reflective")
"""``pipeline.phase_registry()``, in the order the phases run."""
GYM_TASKS = (
    "basic_arithmetic",
    "chain_sum",
    "spell_backward",
    "letter_counting",
    "word_sequence_reversal",
    "count_bits",
    "simple_equations",
    "number_sorting",
)
"""``data.tasks.GYM_LEVELS``: the reasoning-gym tasks."""
GENERATED_TASKS = ("arithmetic", "grid_path", "hanoi", "bank", "registers")
"""``data.generators.GENERATORS``: the project's own generators."""
BENCH_ARMS = ("pdclm", "pdclm_stride", "pdclm_whitespace", "byte", "bpe")
"""The models ``pdclm bench pretrain`` can train (``bench.pretrain.build_arm``)."""
CHARS_TASKS = (
    "copy",
    "spell",
    "reverse",
    "count",
    "insert",
    "delete",
    "substitute",
    "swap",
    "number",
)
"""``data.chars.TASKS``: the character-level tasks of ``pdclm bench chars``."""
SHARD_FORMAT = 3
"""Version of the shard layout; bumping it invalidates every shard cache."""
HUMAN_PREFIX = "human:"
"""A ``data.sources`` entry with this prefix names human verifier examples, not text."""


class ConfigError(ValueError):
    """A configuration problem a user can fix: unknown key, bad value, missing preset."""


@dataclass
class DataConfig:
    """Where the byte shards come from and where they live."""

    sources: list[str] = field(default_factory=lambda: ["stdlib"])
    """Files, folders, globs, ``.jsonl`` files or ``-`` (stdin); ``stdlib``: the built-in corpus."""
    dir: str = ""
    """Shard folder, a cache reused by later runs; empty = ``data/<source>-<settings hash>``.
    Made absolute when the config is resolved, so a run's config.json works from anywhere."""
    jsonl_field: str = "text"
    """Text field read from each ``.jsonl`` line."""
    max_bytes: int = 0
    """Stop ingesting after this many document bytes (0 = no limit)."""
    shard_bytes: int = 16 * 2**20
    """Target size of one shard, in symbols."""
    val_fraction: float = 0.02
    """Share of documents held out for validation (chosen by a hash of the document name)."""


@dataclass
class EntropyConfig:
    """The PSE's small causal byte model; trained first in Phase 1, then frozen."""

    dim: int = 64
    layers: int = 2
    heads: int = 4
    context: int = 256
    """Length of the sequences it is trained on (at least ``window``)."""
    window: int = 32
    """Symbols each layer attends over, itself included: the entropy of predicting a symbol
    depends on at most ``layers * (window - 1) + 1`` symbols before it, in training, profiling
    and generation alike. On the cpu preset, 32 against the earlier overlapping 128-symbol
    windows: held-out bits/byte 3.11 against 3.12, training x1.8 and profiling x1.6 as fast
    (docs/fast_paths.md)."""
    steps: int = 300
    batch: int = 32
    lr: float = 3e-3


@dataclass
class PatcherConfig:
    """How the bit-entropy profile is cut into patches."""

    rule: str = "entropy_jump"
    """One of ``entropy_jump``, ``global``, ``stride``, ``whitespace``."""
    target_mean: float = 4.5
    """Calibrate the threshold so that the mean patch length on held-out bytes is this."""
    max_len: int = 16
    """No patch is longer (also the stride of the ``stride`` rule)."""
    threshold: float = 0.0
    """Boundary threshold in bits; set by calibration."""
    calibration_bytes: int = 200_000


@dataclass
class EncoderConfig:
    """Byte embeddings + hashed n-grams, a light local transformer, pooling into patches."""

    dim: int = 128
    layers: int = 1
    heads: int = 4
    window: int = 64
    """Local attention window in bytes."""
    ngrams: tuple[int, ...] = (3, 4, 5, 6, 7, 8)
    buckets: int = 4096
    """Hash buckets per n-gram size."""


@dataclass
class PSEConfig:
    entropy: EntropyConfig = field(default_factory=EntropyConfig)
    patcher: PatcherConfig = field(default_factory=PatcherConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)


@dataclass
class LatentConfig:
    """The transformer over patch vectors: where most parameters and compute live."""

    dim: int = 256
    layers: int = 4
    heads: int = 4


@dataclass
class DecoderConfig:
    """Local byte decoder (dim = encoder dim)."""

    layers: int = 2
    heads: int = 4
    window: int = 128
    """Bytes each decoder position attends to, across patch boundaries: a decoder that reaches
    earlier bytes copies from the question (``pdclm bench chars``, tiny preset: copy 1.00 with
    a 64-byte window against 0.31 confined to the patch); 0: only the earlier bytes of its own
    patch, so every byte of the question reaches it through the patch vectors alone."""


@dataclass
class MemoryConfig:
    """Hierarchical Memory Router (``pdclm/memory``). Off by default: the model is then exactly
    the plain PD-CLM. On, the model reads its input in segments of ``segment`` symbols and
    carries three tiers from one segment to the next (see :mod:`pdclm.memory.hmr`)."""

    enabled: bool = False
    segment: int = 256
    """Symbols per segment; a patch and a phase always end at a multiple of it."""
    window: int = 64
    """SSM: the latent self-attention sees this many recent patches, across segments."""
    ssm: bool = True
    msm: bool = True
    lsm: bool = True
    router: str = "learned"
    """``learned`` (a softmax gate per phase) or ``equal`` (fixed equal mixing of the tiers on)."""
    layer: int = -1
    """Latent block before which the memory is read (-1: the middle, ``layers // 2``)."""
    max_phase: int = 8
    """Most patches in one semantic phase."""
    phase_entropy: float = 0.0
    """Also end a phase where the next patch's first symbol is this surprising (bits; 0 = off)."""
    slots: int = 8
    """MSM: recurrent memory slots."""
    slot_carry: float = 0.75
    """MSM, training: share of rows whose slots start a training sequence where that row's
    previous sequence left them (detached, as Transformer-XL carries its memory across
    batches); the rest start fresh. Trained from fresh slots only (two segments, a handful of
    writes), one model's slots left what it knew after ~1.5 KB of an 8 KB file and stayed
    there (5+ bits/byte; 4.26 over two such files, 3.03 with the slots reset every 2
    segments)."""
    top_k: int = 32
    """LSM: stored patches (rows) each patch recalls in training."""
    eval_top_k: int = 0
    """LSM: stored patches each patch recalls outside training (0: ``top_k``). Fewer than in
    training: in passkey reading the needle's patch ranked first, but 16 recalled look-alikes
    out-weighed it in the attention (whole key at 64x: 0.94 recalling 2 or 4, 0.62 with 16,
    0.12 with 64, one model), while training on 4 instead of 16 learnt a worse ranking."""
    capacity: int = 16384
    """LSM: phases kept per stream; beyond it the least recently used one is evicted."""
    faiss_threshold: int = 4096
    """LSM: above this many stored phases a stream searches a faiss index instead of torch."""
    nprobe: int = 32
    """faiss IVF lists searched per query (ANN mode)."""
    router_lr_scale: float = 1.0
    """Router parameters learn this much faster than the rest (and without weight decay). At
    10 the gate swung to 0.83-0.90 LSM right after the passkey warm-up and the retrieval it
    had learnt collapsed to chance within 50-250 steps (two runs); at 1 it held in three, with
    the gate still moving (SSM share 0.75 to 0.4-0.7 in 600 steps)."""
    gate_floor: float = 0.05
    """Least read share of every tier that is on: a tier the router has closed still reads a
    little, so it can become worth opening (with no floor the LSM's share fell to 0.00 within
    1,750 steps of passkey training and stayed there)."""
    ssm_bias: float = 2.0
    """Initial gate logit of the SSM over the other tiers: the model starts local."""
    write_bias: float = 2.0
    """Initial logit of writing a phase to the LSM."""


@dataclass
class ModelConfig:
    latent: LatentConfig = field(default_factory=LatentConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    mlp_ratio: float = 8 / 3
    """SwiGLU hidden size as a multiple of the width."""


@dataclass
class TrainConfig:
    """The shared training loop (Phase 1 uses it directly; later phases reuse it)."""

    seq_len: int = 1024
    batch: int = 8
    grad_accum: int = 1
    steps: int = 1000
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    """The cosine schedule ends at this share of ``lr`` (in [0, 1])."""
    warmup: int = 50
    weight_decay: float = 0.1
    """AdamW weight decay (>= 0) of the weight matrices; norms and biases get none."""
    grad_clip: float = 1.0
    """Gradients are scaled down to this global norm (> 0; a large value such as 1e9 leaves
    them as they are)."""
    bf16: bool = True
    """bf16 autocast (about 1.6x faster on CPUs with bf16 units). On a CPU without them
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` false, e.g. AVX2-only) bf16 matmuls are
    emulated, 2.9 vs 40 GFLOP/s fp32 measured on one such core, so :func:`resolve` turns it off
    there with a warning."""
    eval_every: int = 100
    eval_batches: int = 8
    ckpt_every: int = 100
    keep_ckpts: int = 2
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    """``auto`` (CUDA if present, else CPU), ``cpu`` or ``cuda``."""
    threads: int = 0
    """CPU threads for torch (0 = torch's default)."""
    parallel: str = "none"
    """``none`` (one process), ``ddp`` or ``fsdp`` (FSDP2); the latter two under ``torchrun``.
    ``batch`` is the global batch: each of N ranks trains on batch/N of its rows."""
    activation_checkpointing: bool = False
    """Recompute each transformer block's activations in backward (less memory, ~1/3 more
    compute)."""
    compile: bool = False
    """``torch.compile`` the global-attention transformer blocks (latent, entropy model);
    opt-in: compiling costs time up front."""


@dataclass
class BenchConfig:
    """``pdclm bench``: baselines, budgets and what each sub-benchmark measures."""

    seconds: float = 60.0
    """Wall-clock training budget per model in ``pdclm bench pretrain``."""
    models: list[str] = field(
        default_factory=lambda: ["pdclm", "pdclm_stride", "pdclm_whitespace", "byte", "bpe"]
    )
    """Models ``bench pretrain`` trains: PD-CLM, its fixed-stride and whitespace patching
    ablations, the byte transformer and the BPE transformer."""
    bpe_vocab: int = 4096
    """Vocabulary of the BPE baseline's tokenizer (trained on the training split)."""
    scaling_dims: list[int] = field(default_factory=lambda: [128, 256, 384])
    """``bench scaling``: latent widths (baselines get the same width, matched depth)."""
    scaling_seconds: float = 40.0
    """``bench scaling``: wall-clock budget per model and size."""
    gen_bytes: int = 256
    """``bench generate``: bytes generated after each prompt."""
    gen_prompts: int = 4
    prompt_bytes: int = 64
    noise_rates: list[float] = field(default_factory=lambda: [0.02, 0.05, 0.1])
    """``bench noise``: shares of bytes touched by mixed character noise (each kind alone is
    also measured at 0.05)."""
    noise_batches: int = 4
    """``bench noise``: held-out batches per noise condition."""
    noise_task_items: int = 8
    """``bench noise --ckpt RUN``: held-out questions per task for accuracy under noise."""
    results_dir: str = "benchmarks"
    """Where saved benchmark JSONs live; ``pdclm run`` reads their claim rows from here."""
    memory_seconds: float = 120.0
    """``pdclm bench memory``: wall-clock training budget per memory variant."""
    memory_pse: str = ""
    """``pdclm bench memory``: a trained PSE's model folder to read with (e.g. a pretrain
    run's ``phase1_model``) instead of training the preset's; empty: train one."""
    memory_pse_preset: str = ""
    """``pdclm bench memory`` without ``memory_pse``: train the PSE as this preset's Phase 1
    does (its entropy model and patcher, on ``memory_pse_bytes`` of the same sources), not
    as the bench's own preset would; empty: the bench's preset."""
    memory_pse_bytes: int = 0
    """With ``memory_pse_preset``: the PSE's training text (data.max_bytes); 0: the preset's."""
    memory_warmup: float = 0.25
    """``pdclm bench memory``: share of the steps whose loss is the passkey rows' first key
    digit alone (the one only memory can supply): without it no variant left chance."""
    memory_key_weight: float = 32.0
    """``pdclm bench memory``: after the warm-up, the loss weight of a passkey row's key digits
    (every other target: 1). At 1 the text rows' loss undid the recall learnt in the warm-up
    within 50 steps (first-digit loss 0.002, then no whole key at any length)."""
    memory_ramp: float = 0.25
    """``pdclm bench memory``: share of the steps after the warm-up over which every target
    but the first key digit rises linearly from weight 0 to its full weight (the other key
    digits ``memory_key_weight``, the rest 1). Switched on at once (the loss 0.003 -> 3.9
    in one step), the first key digit the warm-up had learnt fell to chance (0.09 at 1x) while
    the later digits, which follow from the one before, were still learnt (0.88-1.00)."""
    memory_trials: int = 32
    """``pdclm bench memory``: passkey and recall items per length."""
    memory_docs: int = 4
    """``pdclm bench memory``: long held-out documents for bits per byte."""
    memory_store_sizes: list[int] = field(
        default_factory=lambda: [1_000, 10_000, 100_000, 1_000_000]
    )
    """``pdclm bench memory``: long-term store sizes of the lookup-latency sweep."""
    chars_seconds: float = 60.0
    """``pdclm bench chars``: wall-clock fine-tuning budget per model on the character tasks."""
    chars_tasks: list[str] = field(default_factory=lambda: list(CHARS_TASKS))
    """``pdclm bench chars``: the tasks trained and measured (default: all)."""
    chars_items: int = 64
    """``pdclm bench chars``: held-out items per task."""
    chars_held_out: float = 0.2
    """``pdclm bench chars``: share of the words and numbers held out (by a hash of each)."""


@dataclass
class TasksConfig:
    """Verifiable reasoning tasks: which ones, how they are evaluated, the thinking budget."""

    names: list[str] = field(default_factory=lambda: [*GYM_TASKS, *GENERATED_TASKS])
    """reasoning-gym datasets and the project's own generators, by name (default: all)."""
    eval_items: int = 64
    """Held-out questions per task, at ``eval_level``."""
    eval_level: int = 1
    think_steps: int = 16
    """CCM budget at evaluation: thinking lines..."""
    think_bytes: int = 256
    """... and thinking bytes."""
    answer_bytes: int = 64
    check_retries: int = 3
    """Checked decoding at evaluation, reported beside greedy accuracy: tries at resuming a
    chain of thought the CCM's arithmetic check refutes, before its first refuted step (0:
    off)."""
    budgets: list[int] = field(default_factory=lambda: [0, 1, 2, 4, 8, 16])
    """Thinking-step budgets of the accuracy-vs-budget sweep (after Phase 2)."""
    sweep_items: int = 32
    """Held-out questions per task in the budget sweep and the agreement check."""
    agreement_samples: int = 4
    """Sampled answers per question for the cross-sample agreement check."""
    batch: int = 128
    """Questions generated in parallel."""


@dataclass
class CognitiveConfig:
    """Phase 2, the cognitive loop: rounds of (curriculum probe, self-play, training)."""

    rounds: int = 4
    steps: int = 400
    """Optimizer steps over all rounds (the rest of the optimizer settings come from train)."""
    seq_len: int = 512
    batch: int = 16
    lr: float = 2e-3
    """Measured on the cpu preset: 2e-3 (with text_share 0.15) lifted held-out accuracy on the
    easy arithmetic tasks from 0.16 to 0.59 over 1e-3 (with 0.25)."""
    warmup: int = 20
    text_share: float = 0.15
    """Share of each batch's rows that are raw Phase 1 text (so stream skill is kept)."""
    question_weight: float = 0.1
    """Loss weight of question bytes (1 for thinking and answer): a little, so the model can
    propose questions in self-play, without spending the model on them."""
    episodes_per_round: int = 3000
    """Gold-trace episodes generated per round, spread over tasks by ``mix``."""
    mix: str = "variance"
    """How a round spreads its gold-trace episodes over tasks, from the probe: ``variance``
    (p(1 - p) of the probe's success, never below a floor), ``gap`` (what is left to learn,
    1 - p) or ``progress`` (1 - p times how fast the task's gold bits fall). On the cpu
    preset at 16 x 239 steps the three ended within 0.01 of each other
    (docs/phase2_steps.md)."""
    probe_items: int = 16
    """Development questions per task and level, solved at the task's level at the start of
    each round (the curriculum's probe): the same every round and never trained on."""
    space_draws: int = 2000
    """Questions sampled per task and level to estimate a question space that cannot be
    counted (reported once per Phase 2 run; 0 skips the count)."""
    proposals: int = 64
    """Self-play: questions the model proposes per round (own generators, checked by their
    executors)."""
    solver_samples: int = 4
    """Self-play: sampled solutions per proposed question."""
    dialogue_items: int = 32
    """Self-play: questions per round answered by several agents that read each other."""
    agents: int = 2
    temperature: float = 0.7
    """Sampling temperature of self-play."""
    unanswerable_share: float = 0.03
    """Share of gold-trace episodes whose question hides a number (answer: unknown)."""


@dataclass
class RewardsConfig:
    """Weights of the Multi-Reward RL channels (0 switches a channel off) and how they combine.
    Every channel but correctness pays only when the answer is correct."""

    correctness: float = 1.0
    consistency: float = 0.3
    justification: float = 0.2
    efficiency: float = 0.1
    hallucination: float = 0.3
    aggregate: str = "channel"
    """``channel``: normalise each channel within its group, then sum (a rare channel is not
    drowned by a frequent one); ``sum``: sum the weighted channels, then normalise."""


@dataclass
class ReflectionConfig:
    """The reflection network: a small critic built like the policy (same PSE), fewer layers."""

    latent_layers: int = 1
    """Latent layers (the policy's first ones are its starting point)."""
    steps: int = 120
    """Optimizer steps of each (re)training."""
    batch: int = 32
    lr: float = 1e-3
    items: int = 600
    """Gold-trace training questions per (re)training, each also as a corrupted twin."""
    rollouts: int = 256
    """Policy rollouts (most recent first) added to each retraining."""
    threshold: float = 0.5
    """An answer scoring below this is flagged (and revised by ``solve --reflect``)."""
    rounds: int = 2
    """Revision rounds of ``--reflect`` (each within the CCM budget)."""
    samples: int = 4
    """Candidates sampled per revision round; the best-scored one is kept."""


@dataclass
class RLConfig:
    """Phase 3, reflective reinforcement: group-relative policy optimisation with several
    rewards, starting from the Phase 2 model."""

    steps: int = 60
    prompts: int = 16
    """Questions per step..."""
    group: int = 8
    """... each sampled this many times (G): advantages are relative within the group."""
    temperature: float = 1.0
    lr: float = 2e-4
    warmup: int = 5
    clip_low: float = 0.2
    clip_high: float = 0.28
    """Asymmetric clipping of the importance ratio: 1 - clip_low .. 1 + clip_high (a higher
    ceiling lets unlikely good actions grow)."""
    kl: float = 0.02
    """Weight of the KL penalty to the frozen Phase 2 model (0 = none)."""
    updates: int = 1
    """Optimizer steps on each batch of rollouts (> 1 makes the clipped ratio bite)."""
    reflect_every: int = 20
    """Retrain the reflection network every this many steps, on the policy's newest rollouts."""
    unanswerable_share: float = 0.1
    """Share of prompts that cannot be answered from what they give (saying so is rewarded)."""
    robustness_items: int = 32
    """Held-out questions per task in the perturbed-wording robustness check (at most the
    evaluation's ``tasks.eval_items``), on the tasks the kept model answers above their constant
    on development questions (every task when none is)."""
    probe_items: int = 16
    """Development questions per task (disjoint from the evaluation's, never trained on) whose
    greedy accuracy picks the model Phase 3 keeps: the Phase 2 model or the policy after one of
    its probe windows, whichever scores best (a few RL updates can lower accuracy); 0: no
    probe, the last policy is kept."""
    probe_every: int = 5
    """Policy updates (``steps``) per probe window; the last update always ends one."""
    probe_alpha: float = 0.1
    """A window replaces the kept model only when it answers more development questions right
    and a one-sided exact McNemar test on the questions the two answer differently gives
    p <= this (1.0: any gain counts)."""
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    reflection: ReflectionConfig = field(default_factory=ReflectionConfig)


@dataclass
class HumanConfig:
    """Human verifier examples (``human:`` sources of ``pdclm prepare``): how the reflection
    network learns from them, and how ``pdclm label`` and ``pdclm bench human`` work."""

    weight: float = 4.0
    """Loss weight of a human verdict; an automatic label (verifier, CCM, gold twin) weighs 1."""
    holdout: float = 0.25
    """Share of questions (by a hash of the question) whose verdicts form the held-out
    agreement set: never trained or calibrated on."""
    calibration: float = 0.2
    """Share of the remaining questions whose verdicts fit the critic's score calibration
    (Platt scaling) instead of training it."""
    counts: list[int] = field(default_factory=lambda: [0, 10, 30, 100, 300])
    """``bench human``: human-label counts the reflection network is trained with."""
    seeds: int = 1
    """``bench human``: repeats of every point with another label order and initialisation."""
    steps: int = 60
    """``bench human``: optimizer steps of each critic training (equal for every point)."""
    questions: int = 64
    """Fresh training questions when a run has no Phase 3 rollouts to label..."""
    samples: int = 4
    """... each answered this many times (the group the agreement channel compares within)."""


@dataclass
class RunConfig:
    """``pdclm run`` as a whole: a wall-clock budget that sizes every phase to this machine
    (:mod:`pdclm.train.budget`)."""

    budget: float = 0.0
    """Seconds for all phases of ``pdclm run`` (``--budget 15m``); 0: the step counts as
    configured. A short probe times this machine and every phase's step counts scale to fit;
    the counts used go into the run's config.json, so a resumed run replays them. One phase
    alone (``pdclm train``, the benches) keeps its step counts."""
    reference_step_seconds: float = 0.0
    """The probe's Phase 1 step time on the machine the reference timings below were taken."""
    reference_fixed: list[float] = field(default_factory=list)
    """Per phase (pretrain, cognitive, reflective), seconds on that machine that do not grow
    with the step counts (ingest, profiling, rounds' generation, evaluation)."""
    reference_stepped: list[float] = field(default_factory=list)
    """Per phase, seconds on that machine that grow with its step counts, at the counts set."""
    scale: float = 0.0
    """Set by the budget: the factor the probe gave every step count (0: not sized)."""
    scales: list[float] = field(default_factory=list)
    """Set by the budget: per phase (pretrain, cognitive, reflective), the factor its step
    counts were scaled by, the probe's or a refit's before that phase (0: not run)."""
    probe_step_seconds: float = 0.0
    """Set by the budget: this machine's probe step time."""


@dataclass
class Config:
    preset: str = "default"
    """Preset name (tiny, cpu, gpu) or a .toml/.json config file; read before other flags."""
    phases: list[str] = field(default_factory=lambda: ["pretrain", "cognitive", "reflective"])
    """Phases ``pdclm run`` executes, in order."""
    data: DataConfig = field(default_factory=DataConfig)
    pse: PSEConfig = field(default_factory=PSEConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    cognitive: CognitiveConfig = field(default_factory=CognitiveConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    human: HumanConfig = field(default_factory=HumanConfig)
    run: RunConfig = field(default_factory=RunConfig)


# --------------------------------------------------------------------------------------------
# dict <-> dataclass, with strict keys


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) suitable for JSON."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _apply(obj: Any, values: dict[str, Any], where: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            close = ", ".join(sorted(names))
            raise ConfigError(f"unknown config key '{path}' (valid keys here: {close})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{path}' is a section; got {value!r}")
            _apply(current, value, path)
        else:
            setattr(obj, key, _coerce(value, hints[key], path))


def _coerce(value: Any, hint: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{path}' wants a list; got {value!r}")
        (item,) = set(typing.get_args(hint)) - {Ellipsis}
        items = [_coerce(v, item, path) for v in value]
        return tuple(items) if origin is tuple else items
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{path}' wants true/false; got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{path}' wants an integer; got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key '{path}' wants a number; got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{path}' wants a string; got {value!r}")
        return value
    return value


def from_dict(values: dict[str, Any]) -> Config:
    cfg = Config()
    _apply(cfg, values, "")
    validate(cfg)
    return cfg


WEIGHT_SETTINGS = ("pse.entropy.window",)
"""Settings that change what saved weights compute and that were added after some runs were
saved: a saved config without one comes from an older version, whose weights this one would
read differently (other entropies, other patches) without any error."""


def from_saved(values: dict[str, Any]) -> Config:
    """The config saved with a run or a model (complete, as :func:`to_dict` writes it)."""
    for key in WEIGHT_SETTINGS:
        node: Any = values
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(
                    f"it has no '{key}': it was saved by an older version of PD-CLM, whose "
                    "weights this version would read differently; train it again"
                )
            node = node[part]
    return from_dict(values)


def load_preset(name_or_path: str) -> Config:
    """A preset by name (``tiny``, ``cpu``, ``gpu``) or a ``.toml``/``.json`` file path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.toml"
        if not path.exists():
            known = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.toml")))
            raise ConfigError(f"unknown preset '{name_or_path}' (known presets: {known})")
    if not path.exists():
        raise ConfigError(f"preset file not found: {path}")
    try:
        text = path.read_text()
        values = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read preset {path}: {e}") from e
    base = values.pop("inherits", None)
    if base is not None:  # a preset written as changes to another
        if not isinstance(base, str) or Path(base).stem == path.stem:
            raise ConfigError(f"{path}: inherits must name another preset; got {base!r}")
        values = merged(to_dict(load_preset(base)), values)
        values["preset"] = path.stem
    values.setdefault("preset", path.stem)
    try:
        return from_dict(values)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied section by section (a nested dict merges)."""
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def resolve(cfg: Config) -> Config:
    """Fill values derived from others (the default shard folder) and check the ones that
    depend on this machine (a CUDA device); call after overrides. ``data.dir`` becomes
    absolute, so a run's saved config finds its shards from any working directory."""
    if not cfg.data.dir:
        first = Path(cfg.data.sources[0]).stem if cfg.data.sources else "data"
        slug = "".join(c if c.isalnum() else "-" for c in first)[:24] or "stdin"
        cfg.data.dir = str(Path("data") / f"{slug}-{fingerprint(cfg.data)[:10]}")
    cfg.data.dir = os.path.abspath(os.path.expanduser(cfg.data.dir))
    if cfg.train.device == "cuda" and not cuda_available():
        raise ConfigError(
            "train.device is cuda but torch sees no CUDA GPU here; use --train.device=auto "
            "(CUDA when present, else CPU) or cpu"
        )
    if cfg.train.bf16 and not bf16_is_fast(cfg.train.device):
        print(
            "warning: this CPU has no bf16 matrix units (bf16 matmuls would be emulated, "
            "several times slower than fp32); training in fp32 (train.bf16 = false)",
            file=sys.stderr,
        )
        cfg.train.bf16 = False
    return cfg


def text_sources(sources: list[str]) -> list[str]:
    """The sources that become byte shards (all but ``human:`` verifier examples)."""
    return [s for s in sources if not s.startswith(HUMAN_PREFIX)]


def fingerprint(cfg: DataConfig) -> str:
    """Hash of the settings that decide the shards' content (not their location; human
    verifier examples are re-read on every ``prepare`` and do not change it)."""
    keys = {
        "version": SHARD_FORMAT,
        "sources": text_sources(cfg.sources),
        "jsonl_field": cfg.jsonl_field,
        "max_bytes": cfg.max_bytes,
        "shard_bytes": cfg.shard_bytes,
        "val_fraction": cfg.val_fraction,
    }
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (imports torch: only ``resolve`` asks)."""
    import torch

    return torch.cuda.is_available()


def bf16_is_fast(device: str) -> bool:
    """Does bf16 autocast speed up matmuls on this ``train.device``? CUDA: yes; CPU: only with
    native bf16 instructions (AVX512-BF16, AMX), which oneDNN reports."""
    import torch

    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return True
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _floats(obj: Any, where: str) -> Iterator[tuple[str, float]]:
    """Every float of the config (list items too) with its dotted key: nan and inf slip
    through range checks (``inf > 0``), so they are refused up front."""
    for f in dataclasses.fields(obj):
        key, value = f"{where}.{f.name}" if where else f.name, getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _floats(value, key)
        for v in value if isinstance(value, list | tuple) else [value]:
            if isinstance(v, float):
                yield key, v


def validate(cfg: Config) -> None:
    """Range and consistency checks, each with a message that names the key."""

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    for key, value in _floats(cfg, ""):
        need(math.isfinite(value), f"{key} must be a finite number; got {value}")
    sizes = {
        "pse.entropy.dim": cfg.pse.entropy.dim,
        "pse.entropy.heads": cfg.pse.entropy.heads,
        "pse.entropy.layers": cfg.pse.entropy.layers,
        "pse.entropy.steps": cfg.pse.entropy.steps,
        "pse.entropy.batch": cfg.pse.entropy.batch,
        "pse.patcher.calibration_bytes": cfg.pse.patcher.calibration_bytes,
        "pse.encoder.dim": cfg.pse.encoder.dim,
        "pse.encoder.heads": cfg.pse.encoder.heads,
        "pse.encoder.buckets": cfg.pse.encoder.buckets,
        "model.latent.dim": cfg.model.latent.dim,
        "model.latent.heads": cfg.model.latent.heads,
        "model.latent.layers": cfg.model.latent.layers,
        "model.decoder.heads": cfg.model.decoder.heads,
    }
    for key, value in sizes.items():
        need(value >= 1, f"{key} must be >= 1; got {value}")
    for key, value in (
        ("pse.encoder.layers", cfg.pse.encoder.layers),
        ("model.decoder.layers", cfg.model.decoder.layers),
    ):
        need(value >= 0, f"{key} must be >= 0; got {value}")
    for p in cfg.phases:
        need(p in PHASES, f"phases: unknown phase '{p}' (known: {', '.join(PHASES)})")
    need(0.0 <= cfg.data.val_fraction < 1.0, "data.val_fraction must be in [0, 1)")
    need(cfg.data.max_bytes >= 0, "data.max_bytes must be >= 0")
    need(cfg.data.shard_bytes >= 1024, "data.shard_bytes must be >= 1024")
    e = cfg.pse.entropy
    need(e.window >= 2, f"pse.entropy.window must be >= 2; got {e.window}")
    need(
        e.context >= e.window,
        f"pse.entropy.context ({e.context}) must be >= pse.entropy.window ({e.window}): the "
        "model has to be trained on whole windows",
    )
    need(e.dim % e.heads == 0, "pse.entropy.dim must be divisible by pse.entropy.heads")
    need(e.lr > 0, f"pse.entropy.lr must be > 0; got {e.lr}")
    pt = cfg.pse.patcher
    rules = ("entropy_jump", "global", "stride", "whitespace")
    need(pt.rule in rules, f"pse.patcher.rule must be one of {', '.join(rules)}; got '{pt.rule}'")
    need(pt.max_len >= 1, "pse.patcher.max_len must be >= 1")
    need(1.0 <= pt.target_mean <= pt.max_len, "pse.patcher.target_mean must be in [1, max_len]")
    enc = cfg.pse.encoder
    need(enc.dim % enc.heads == 0, "pse.encoder.dim must be divisible by pse.encoder.heads")
    need(enc.window >= 1, "pse.encoder.window must be >= 1")
    need(all(n >= 2 for n in enc.ngrams), "pse.encoder.ngrams must all be >= 2")
    lat = cfg.model.latent
    need(lat.dim % lat.heads == 0, "model.latent.dim must be divisible by model.latent.heads")
    need((lat.dim // lat.heads) % 2 == 0, "model.latent head size must be even (rotary)")
    need(
        enc.dim % cfg.model.decoder.heads == 0,
        "pse.encoder.dim must be divisible by model.decoder.heads",
    )
    need(cfg.model.mlp_ratio > 0, f"model.mlp_ratio must be > 0; got {cfg.model.mlp_ratio}")
    need(cfg.model.decoder.window >= 0, "model.decoder.window must be >= 0 (0: within a patch)")
    mem = cfg.model.memory
    if mem.enabled:
        need(mem.router in ("learned", "equal"), "model.memory.router must be learned or equal")
        need(mem.segment >= 8, "model.memory.segment must be >= 8")
        for name in ("window", "max_phase", "slots", "top_k", "capacity", "nprobe"):
            need(getattr(mem, name) >= 1, f"model.memory.{name} must be >= 1")
        need(mem.eval_top_k >= 0, "model.memory.eval_top_k must be >= 0 (0: top_k)")
        need(-1 <= mem.layer < lat.layers, "model.memory.layer must be in [-1, latent.layers)")
        need(mem.router_lr_scale > 0, "model.memory.router_lr_scale must be > 0")
        need(0 <= mem.gate_floor < 1 / 3, "model.memory.gate_floor must be in [0, 1/3)")
        need(0 <= mem.slot_carry <= 1, "model.memory.slot_carry must be in [0, 1]")
        need(mem.phase_entropy >= 0, "model.memory.phase_entropy must be >= 0 (0: off)")
        need(
            cfg.train.seq_len % mem.segment == 0,
            "train.seq_len must be a multiple of model.memory.segment (training runs whole "
            "segments, carrying memory from one to the next)",
        )
    t = cfg.train
    need(t.seq_len >= 8, "train.seq_len must be >= 8")
    need(t.batch >= 1 and t.grad_accum >= 1, "train.batch and train.grad_accum must be >= 1")
    need(t.steps >= 1, "train.steps must be >= 1")
    need(t.lr > 0, f"train.lr must be > 0; got {t.lr}")
    need(0 <= t.min_lr_ratio <= 1, f"train.min_lr_ratio must be in [0, 1]; got {t.min_lr_ratio}")
    need(t.weight_decay >= 0, f"train.weight_decay must be >= 0; got {t.weight_decay}")
    need(
        t.grad_clip > 0,
        f"train.grad_clip must be > 0 (gradients are scaled down to this norm; a large value "
        f"such as 1e9 leaves them as they are); got {t.grad_clip}",
    )
    need(t.threads >= 0, f"train.threads must be >= 0 (0: torch's default); got {t.threads}")
    need(t.warmup >= 0, "train.warmup must be >= 0")
    need(t.device in ("auto", "cpu", "cuda"), "train.device must be auto, cpu or cuda")
    modes = ("none", "ddp", "fsdp")
    need(
        t.parallel in modes, f"train.parallel must be one of {', '.join(modes)}; got '{t.parallel}'"
    )
    for name in ("eval_every", "ckpt_every", "log_every", "eval_batches", "keep_ckpts"):
        need(getattr(t, name) >= 1, f"train.{name} must be >= 1")
    tk = cfg.tasks
    known_tasks = [*GYM_TASKS, *GENERATED_TASKS]
    for name in tk.names:
        need(name in known_tasks, f"tasks.names: unknown task '{name}' (known: {known_tasks})")
    for name in ("eval_items", "eval_level", "answer_bytes", "sweep_items", "batch"):
        need(getattr(tk, name) >= 1, f"tasks.{name} must be >= 1")
    need(tk.think_steps >= 0 and tk.think_bytes >= 0, "tasks.think_* must be >= 0")
    need(tk.agreement_samples >= 1, "tasks.agreement_samples must be >= 1")
    need(tk.check_retries >= 0, "tasks.check_retries must be >= 0 (0: no checked decoding)")
    need(all(b >= 0 for b in tk.budgets), "tasks.budgets must be >= 0")
    cg = cfg.cognitive
    for name in ("rounds", "steps", "seq_len", "batch", "solver_samples", "agents"):
        need(getattr(cg, name) >= 1, f"cognitive.{name} must be >= 1")
    need(cg.steps >= cg.rounds, "cognitive.steps must be >= cognitive.rounds")
    need(0.0 <= cg.text_share < 1.0, "cognitive.text_share must be in [0, 1)")
    mixes = ("progress", "gap", "variance")
    need(cg.mix in mixes, f"cognitive.mix must be one of {', '.join(mixes)}; got '{cg.mix}'")
    need(0.0 <= cg.unanswerable_share < 1.0, "cognitive.unanswerable_share must be in [0, 1)")
    need(0.0 <= cg.question_weight <= 1.0, "cognitive.question_weight must be in [0, 1]")
    need(cg.lr > 0 and cg.temperature > 0, "cognitive.lr and cognitive.temperature must be > 0")
    for name in (
        "warmup",
        "episodes_per_round",
        "probe_items",
        "proposals",
        "dialogue_items",
        "space_draws",
    ):
        need(getattr(cg, name) >= 0, f"cognitive.{name} must be >= 0")
    rl = cfg.rl
    for name in ("steps", "prompts", "group", "updates", "reflect_every", "robustness_items"):
        need(getattr(rl, name) >= 1, f"rl.{name} must be >= 1")
    need(rl.probe_items >= 0, "rl.probe_items must be >= 0 (0: keep the last policy)")
    need(rl.probe_every >= 1, "rl.probe_every must be >= 1")
    need(0.0 < rl.probe_alpha <= 1.0, "rl.probe_alpha must be in (0, 1]")
    need(rl.group >= 2, "rl.group must be >= 2 (advantages are relative within a group)")
    need(rl.lr > 0 and rl.temperature > 0, "rl.lr and rl.temperature must be > 0")
    need(rl.warmup >= 0, "rl.warmup must be >= 0")
    need(0 <= rl.clip_low < 1 and rl.clip_high >= 0, "rl.clip_low in [0, 1), rl.clip_high >= 0")
    need(rl.kl >= 0, "rl.kl must be >= 0")
    need(0.0 <= rl.unanswerable_share < 1.0, "rl.unanswerable_share must be in [0, 1)")
    rw = rl.rewards
    need(rw.aggregate in ("channel", "sum"), "rl.rewards.aggregate must be channel or sum")
    weights = [getattr(rw, c) for c in ("correctness", "consistency", "justification")]
    weights += [rw.efficiency, rw.hallucination]
    need(all(w >= 0 for w in weights) and any(weights), "rl.rewards: weights >= 0, not all 0")
    b = cfg.bench
    for m in b.models:
        need(m in BENCH_ARMS, f"bench.models: unknown model '{m}' (known: {', '.join(BENCH_ARMS)})")
    for name in ("seconds", "scaling_seconds", "memory_seconds", "memory_key_weight"):
        need(getattr(b, name) > 0, f"bench.{name} must be > 0")
    for name in ("memory_trials", "memory_docs"):
        need(getattr(b, name) >= 1, f"bench.{name} must be >= 1")
    need(all(n >= 1 for n in b.memory_store_sizes), "bench.memory_store_sizes must all be >= 1")
    need(b.bpe_vocab >= 257, "bench.bpe_vocab must be >= 257 (256 bytes + a separator)")
    need(len(b.scaling_dims) >= 1 and all(d >= 8 for d in b.scaling_dims), "bench.scaling_dims")
    for name in ("gen_bytes", "gen_prompts", "prompt_bytes", "noise_batches", "noise_task_items"):
        need(getattr(b, name) >= 1, f"bench.{name} must be >= 1")
    need(all(0 < r < 1 for r in b.noise_rates), "bench.noise_rates must be in (0, 1)")
    need(
        b.memory_warmup >= 0 and b.memory_ramp >= 0 and b.memory_warmup + b.memory_ramp < 1,
        "bench.memory_warmup and bench.memory_ramp must be >= 0 and sum to less than 1",
    )
    for name in b.chars_tasks:
        need(name in CHARS_TASKS, f"bench.chars_tasks: unknown task '{name}' ({CHARS_TASKS})")
    need(len(b.chars_tasks) >= 1, "bench.chars_tasks must name at least one task")
    need(b.chars_seconds > 0 and b.chars_items >= 1, "bench.chars_seconds > 0, chars_items >= 1")
    need(0 < b.chars_held_out < 1, "bench.chars_held_out must be in (0, 1)")
    rf = rl.reflection
    need(
        1 <= rf.latent_layers <= lat.layers,
        "rl.reflection.latent_layers must be in [1, model.latent.layers]",
    )
    for name in ("steps", "batch", "items", "samples"):
        need(getattr(rf, name) >= 1, f"rl.reflection.{name} must be >= 1")
    need(rf.lr > 0, "rl.reflection.lr must be > 0")
    need(rf.rollouts >= 0, "rl.reflection.rollouts must be >= 0")
    need(rf.rounds >= 0 and 0 < rf.threshold < 1, "rl.reflection.rounds >= 0, threshold in (0, 1)")
    hu = cfg.human
    need(hu.weight > 0, "human.weight must be > 0")
    need(
        0 < hu.holdout < 1 and 0 <= hu.calibration < 1,
        "human.holdout in (0, 1), calibration [0, 1)",
    )
    need(all(n >= 0 for n in hu.counts) and hu.counts, "human.counts: label counts >= 0")
    for name in ("seeds", "steps", "questions", "samples"):
        need(getattr(hu, name) >= 1, f"human.{name} must be >= 1")
    ru = cfg.run
    need(ru.budget >= 0 and ru.scale >= 0, "run.budget and run.scale must be >= 0")
    need(
        ru.scales == [] or (len(ru.scales) == len(PHASES) and min(ru.scales) >= 0),
        f"run.scales must be empty or one factor >= 0 per phase ({len(PHASES)}); got {ru.scales}",
    )
    if ru.budget > 0:
        need(
            ru.reference_step_seconds > 0
            and len(ru.reference_fixed) == len(ru.reference_stepped) == len(PHASES),
            "run.budget needs the machine timings it is sized from: run.reference_step_seconds "
            f"> 0 and run.reference_fixed / run.reference_stepped with one value per phase "
            f"({', '.join(PHASES)}); the cpu preset has them",
        )
