r"""pdclm: train and use PD-CLM, a tokenizer-free byte-level language model.

usage: pdclm COMMAND [options]        pdclm COMMAND --help: that command's own options

    run       [--preset cpu] [--budget 15m] [--resume DIR]    all phases, report, plots
    prepare   [--data.sources PATH ...] [--data.dir DIR]     ingest text into byte shards
    train     pretrain|cognitive|reflective [--out DIR] [--resume DIR]             one phase
    pse       "some text" | --file F  [--ckpt RUN] [--plot out.png]
    generate  "prompt" [--ckpt RUN] [--max-bytes 200] [--memory DIR]
    solve     "question" [--ckpt RUN] [--think-budget 8] [--samples 3] [--context TEXT]
    selfplay  [--ckpt RUN] [--episodes FILE]                   verified self-play episodes
    eval      [--ckpt RUN] [--data FILE|DIR|-]                 bits per byte on any text
    label     [--ckpt RUN] [--file F] [--from-verifier]        human verdicts, most useful first
    bench     pretrain|generate|noise|scaling|all|rewards|human|memory|chars   vs baselines
    export    CKPT [--out DIR]                                 checkpoint -> model folder

Every command takes --preset NAME|FILE (tiny, cpu, gpu, gpu-64 or a .toml/.json file),
--json FILE (its results as JSON) and dotted config overrides such as
--model.latent.layers=6 or --train.steps=200; pdclm COMMAND --help-config lists them all.
pdclm --version prints the version.

One process (CPU, or the GPU when present): pdclm run --preset cpu (same as
python -m pdclm run --preset cpu). run and train also run unchanged under torchrun,
data-parallel with --train.parallel=ddp or sharded with fsdp (FSDP2); train.batch is the
global batch, rank 0 alone prints and writes the run folder, and checkpoints are sharded
(pdclm export makes one safetensors model of one):

    torchrun --standalone --nproc_per_node=2 -m pdclm run --preset tiny --train.parallel=fsdp
    torchrun --standalone --nproc_per_node=8 -m pdclm run --preset gpu --train.parallel=ddp
    # several machines (same command on each; the run folder on a shared file system):
    torchrun --nnodes=8 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_id=pdclm \
        --rdzv_endpoint=HOST0:29500 -m pdclm run --preset gpu-64 --out /shared/runs/r1
    # SLURM, 64 GPUs (8 nodes x 8): sbatch scripts/slurm_gpu64.sbatch --data.sources CORPUS
    # resume on any number of ranks: the same command with --resume /shared/runs/r1
"""

from __future__ import annotations

import ast
import codecs
import contextlib
import dataclasses
import inspect
import io
import itertools
import json
import math
import os
import re
import shutil
import sys
import textwrap
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from pdclm.config import (
    PHASES,
    PRESET_DIR,
    Config,
    ConfigError,
    load_preset,
    resolve,
    validate,
)

DEFAULT_PRESET = "cpu"


class _LazyDist:
    """``pdclm.dist`` on first use: it imports torch (about a second), which ``--help``,
    ``--version`` and a mistyped command do without."""

    def __getattr__(self, name: str) -> Any:
        from pdclm import dist as module

        return getattr(module, name)


dist = _LazyDist()

CKPT_DOC = "Run or model folder (default: the newest run under runs/)."


@dataclass
class Common:
    config: Annotated[Config, tyro.conf.arg(name="")]
    """``--preset NAME|FILE`` (tiny, cpu, gpu or a .toml/.json file) picks the defaults."""
    out: str | None = None
    """Run folder (default runs/<timestamp>)."""
    json: str | None = None
    """Also write this command's results to this JSON file."""


@dataclass
class RunCmd(Common):
    """Run every phase on the configured data; write report.md/.json and plots."""

    resume: str | None = None
    """Resume this run folder from its last checkpoints."""
    budget: str | None = None
    """Wall-clock budget for all phases on this machine, e.g. 15m, 900s or 1h (run.budget):
    a short probe times this machine and every phase's steps scale to fit."""
    progress: bool = True
    """Progress bars (--no-progress: none)."""


@dataclass
class PrepareCmd(Common):
    """Ingest files, folders, globs, .jsonl or stdin (-) into byte shards with a manifest."""

    progress: bool = True
    """Progress bars (--no-progress: none)."""


@dataclass
class TrainCmd(Common):
    """Run one phase in a run folder."""

    phase: tyro.conf.Positional[str] = "pretrain"
    """The phase: pretrain, cognitive or reflective."""
    resume: str | None = None
    """Resume this run folder from its last checkpoints."""
    progress: bool = True
    """Progress bars (--no-progress: none)."""


@dataclass
class PseCmd(Common):
    """Print the bit-entropy profile and the patches of a text."""

    text: tyro.conf.Positional[str | None] = None
    """The text (or --file)."""
    file: str | None = None
    """Read the text from this file."""
    ckpt: str | None = None
    """Run or model folder (default: the newest run under runs/)."""
    plot: str | None = None
    """Draw the entropy curve with patch boundaries to this PNG."""


@dataclass
class GenerateCmd(Common):
    """Stream bytes from a trained model (cached, incremental generation)."""

    prompt: tyro.conf.Positional[str] = ""
    """The text to continue."""
    ckpt: str | None = None
    """Run or model folder (default: the newest run under runs/)."""
    max_bytes: int = 200
    """Most bytes generated (generation also stops at the end of a document)."""
    temperature: float = 0.8
    """Sampling temperature (0: greedy)."""
    top_k: int = 0
    """Sample among the k likeliest symbols (0: all)."""
    seed: int = 0
    """Seed of the sampling."""
    memory: str | None = None
    """A model with memory: read its memory from this folder (if there) and save it back after,
    so the next process goes on from it."""


@dataclass
class SolveCmd(Common):
    """Think within a budget, answer, and show the Cognitive Control Module's verdicts."""

    question: tyro.conf.Positional[str] = ""
    """The question."""
    ckpt: str | None = None
    """Run or model folder (default: the newest run under runs/)."""
    think_budget: int = 8
    """Most thinking steps (lines) before the thinking is closed and the answer forced."""
    think_bytes: int = 256
    """Most thinking bytes."""
    samples: int = 1
    """Several samples: their agreement is checked (the first is greedy)."""
    temperature: float = 0.8
    """Sampling temperature of the samples after the first (0: greedy)."""
    context: str | None = None
    """Given context: also report how much the answer relies on it."""
    reflect: bool = False
    """Self-debugging: the reflection network (trained in Phase 3) scores the answer; below
    its threshold the thinking is resumed before the first doubtful step and resampled, for
    ``--rl.reflection.rounds`` rounds; every round is shown."""
    seed: int = 0
    """Seed of the sampling."""


@dataclass
class SelfplayCmd(Common):
    """Self-play with a trained model: it proposes tasks in the project's generator formats
    and solves them, and several copies discuss questions; verified episodes go to a file.
    Sizes come from the ``cognitive`` config section (``--cognitive.proposals`` etc.)."""

    ckpt: str | None = None
    """Run or model folder (default: the newest run under runs/)."""
    episodes: str | None = None
    """JSONL file for the verified episodes (default: RUN/selfplay.jsonl)."""
    seed: int = 0
    """Seed of the sampling."""
    show: int = 3
    """Kept episodes to print."""


@dataclass
class LabelCmd(Common):
    """Ask for verdicts on the episodes where they are worth most (the reflection network
    unsure, the reward channels disagreeing), one at a time; each is appended to a JSONL file
    of human verifier examples as it is given. Interrupt at any time; rerun to continue."""

    ckpt: str | None = None
    """The run whose Phase 3 rollouts (or, without them, fresh samples) are labelled."""
    file: str | None = None
    """Verdicts file (default: RUN/human_verdicts.jsonl); give it to prepare as human:FILE."""
    annotator: str = os.environ.get("USER", "annotator")
    """Name recorded with each verdict."""
    limit: int | None = None
    """Stop after this many verdicts."""
    from_verifier: bool = False
    """Fill verdicts from the task verifiers and the CCM's step checks instead of asking."""
    fresh: bool = False
    """Sample fresh episodes from the run's model even if it has Phase 3 rollouts."""
    seed: int = 0
    """Seed of the sampling."""


@dataclass
class EvalCmd(Common):
    """Bits per byte of a trained model on any text (--data), or on the held-out shards of
    the run it was trained in."""

    ckpt: str | None = None
    """Run or model folder (default: the newest run under runs/)."""
    data: str | None = None
    """Score this text: a file, a folder of text files (.jsonl: one document a line) or - for
    stdin, each document read whole in windows of the model's train.seq_len (default: the
    run's own validation shards)."""
    batches: int = 8
    """Without --data: held-out batches of the run's validation shards."""
    memory: str | None = None
    """A model with memory: read the held-out batches as one stream (each row carrying its
    memory from batch to batch), starting from and saving to this folder."""


@dataclass
class ExportCmd(Common):
    """Turn a training checkpoint (one process's or a sharded one) into a model folder
    (config.json + one model.safetensors) that ``--ckpt`` and ``load_model`` read."""

    ckpt: tyro.conf.Positional[str] = ""
    """A checkpoint folder (``RUN/pretrain/ckpt/step_...``) or its ``ckpt`` folder (newest)."""


@dataclass
class BenchCmd(Common):
    """Benchmarks against baselines, measured in one run on this machine."""

    which: tyro.conf.Positional[
        Literal[
            "pretrain", "generate", "noise", "scaling", "all", "rewards", "human", "memory", "chars"
        ]
    ] = "pretrain"
    """``all``: pretrain, generate, noise and scaling in one folder (generate and noise
    measure the models pretrain saved there). ``chars``: character-level tasks (copy, spell,
    reverse, ...) after equal fine-tuning of the PD-CLM, byte and BPE models pretrain saved
    there (pretrain runs first if they are missing)."""
    ckpt: str | None = None
    """``rewards``: the run (or model folder) whose Phase 2 model both variants start from;
    ``noise``: a run whose model's task accuracy under noise is measured too;
    ``human``: the run whose episodes are labelled (default: train one, Phase 3 aside)."""
    publish: str | None = None
    """Also copy each result to DIR as ``<bench>_<preset>.json``/``.png`` (e.g. benchmarks)."""


COMMANDS: dict[str, type[Common]] = {
    "run": RunCmd,
    "prepare": PrepareCmd,
    "train": TrainCmd,
    "pse": PseCmd,
    "generate": GenerateCmd,
    "solve": SolveCmd,
    "selfplay": SelfplayCmd,
    "eval": EvalCmd,
    "label": LabelCmd,
    "bench": BenchCmd,
    "export": ExportCmd,
}

DISTRIBUTED = ("run", "train")
"""The commands that run under ``torchrun``: the training entry points."""

CONFIG_READ = {
    "run": "all of it; most often --data.sources, --data.dir, --train.steps, --train.device, "
    "--train.parallel, --phases",
    "train": "all of it; most often --data.sources, --data.dir, --train.steps, --train.device, "
    "--train.parallel",
    "prepare": "--data.sources, --data.dir, --data.max-bytes, --data.val-fraction, "
    "--data.jsonl-field, --data.shard-bytes",
    "solve": "with --reflect: --rl.reflection.rounds, --rl.reflection.samples, "
    "--rl.reflection.threshold",
    "selfplay": "--cognitive.proposals, --cognitive.solver-samples, --cognitive.dialogue-items, "
    "--cognitive.agents, --cognitive.temperature, --tasks.names, --tasks.think-steps, "
    "--tasks.think-bytes, --train.bf16",
    "label": "--human.questions, --human.samples, --rl.reflection.threshold, --tasks.names, "
    "--tasks.think-steps, --tasks.think-bytes, --train.bf16",
    "bench": "bench.* and the preset's data, pse, model and train sections; most often "
    "--bench.seconds, --bench.models, --data.sources",
}
"""The config keys each command reads, for its --help (the others use the model's own)."""

ARG_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "max_bytes": (lambda v: v >= 1, ">= 1"),
    "temperature": (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0 (0: greedy)"),
    "top_k": (lambda v: v >= 0, ">= 0 (0: all symbols)"),
    "think_budget": (lambda v: v >= 0, ">= 0"),
    "think_bytes": (lambda v: v >= 1, ">= 1"),
    "samples": (lambda v: v >= 1, ">= 1"),
    "batches": (lambda v: v >= 1, ">= 1"),
    "show": (lambda v: v >= 0, ">= 0"),
    "limit": (lambda v: v is None or v >= 0, ">= 0"),
}
"""Ranges of the commands' own numeric options, by field name (one meaning in every command);
the config's own keys are checked by ``config.validate``."""

METAVARS = {
    "ckpt": "RUN",
    "out": "DIR",
    "resume": "DIR",
    "memory": "DIR",
    "publish": "DIR",
    "json": "FILE",
    "file": "FILE",
    "episodes": "FILE",
    "data": "FILE|DIR|-",
    "plot": "PNG",
    "context": "TEXT",
    "annotator": "NAME",
}

_ROLE = re.compile(r":[a-z]+:`(~?)([^`]+)`|``([^`]*)``")


def plain(text: str) -> str:
    """``text`` without reST markup (double backquotes, :func:`roles`): help is read in a
    terminal, not rendered."""

    def strip(m: re.Match[str]) -> str:
        if m.group(3) is not None:
            return m.group(3)
        return m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2)

    return _ROLE.sub(strip, text)


def field_docs(cls: type) -> dict[str, str]:
    """The docstrings under the fields of ``cls`` and of its bases in this module, by name."""
    classes = {
        n.name: n for n in ast.parse(Path(__file__).read_text()).body if isinstance(n, ast.ClassDef)
    }
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        node = classes.get(klass.__name__) if klass.__module__ == __name__ else None
        for a, b in itertools.pairwise(node.body if node else []):
            if (
                isinstance(a, ast.AnnAssign)
                and isinstance(a.target, ast.Name)
                and isinstance(b, ast.Expr)
                and isinstance(b.value, ast.Constant)
                and isinstance(b.value.value, str)
            ):
                docs[a.target.id] = b.value.value
    return docs


def config_keys(obj: Any = None, where: str = "") -> list[str]:
    """Every dotted config key, as ``--help-config`` lists them."""
    obj = Config() if obj is None else obj
    keys = []
    for f in dataclasses.fields(obj):
        key, value = f"{where}.{f.name}" if where else f.name, getattr(obj, f.name)
        keys += config_keys(value, key) if dataclasses.is_dataclass(value) else [key]
    return keys


WRAP = {"break_on_hyphens": False, "break_long_words": False}
"""Flags such as --help-config stay whole when help text is wrapped."""


def _row(head: str, doc: str, width: int) -> list[str]:
    """One option: its flag in a column, its text wrapped beside it (below it if long)."""
    pad = " " * 26
    if not doc:
        return [f"  {head}"]
    if len(head) <= 22:
        return textwrap.wrap(f"  {head:<22}  {doc}", width, subsequent_indent=pad, **WRAP)
    return [
        f"  {head}",
        *textwrap.wrap(doc, width, initial_indent=pad, subsequent_indent=pad, **WRAP),
    ]


def command_help(name: str, cls: type[Common]) -> str:
    """A command's own options, then one paragraph on the config keys: short enough to read
    (``--help-config`` has every key)."""
    width = max(60, min(100, shutil.get_terminal_size((80, 24)).columns))
    docs, hints = field_docs(cls), typing.get_type_hints(cls, include_extras=True)
    own = [f for f in dataclasses.fields(cls) if f.name not in ("config", "out", "json")]
    common = [f for f in dataclasses.fields(cls) if f.name in ("out", "json")]
    positional, options = [], []
    for f in own + common:
        hint = hints[f.name]
        if typing.get_origin(hint) is Annotated:
            hint = typing.get_args(hint)[0]
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        kinds = [a for a in typing.get_args(hint) if a is not type(None)] if union else [hint]
        flag, default = f"--{f.name.replace('_', '-')}", f.default
        doc = " ".join(plain(docs.get(f.name, "")).split())
        if "Positional" in str(f.type):
            if typing.get_origin(kinds[0]) is Literal:
                meta = "|".join(typing.get_args(kinds[0]))
            else:
                meta = "|".join(PHASES) if f.name == "phase" else f.name.upper()
            positional.append((f"[{meta}]", doc + (f" (default: {default})" if default else "")))
        elif kinds[0] is bool:
            options.append((f"{flag}, --no-{flag[2:]}" if default else flag, doc))
        else:
            meta = METAVARS.get(f.name, {int: "N", float: "X"}.get(kinds[0], "TEXT"))
            shown = f" (default: {default})" if default not in (None, "") else ""
            options.append((f"{flag} {meta}", doc + shown))
    keys = len(config_keys())
    presets = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.toml")))
    options += [
        ("--preset NAME|FILE", f"{presets} or a .toml/.json file (default: {DEFAULT_PRESET})."),
        ("-h, --help", "This help."),
        ("--help-config", f"Every config key ({keys}) with this preset's defaults."),
    ]
    read = CONFIG_READ.get(name, "none (the model folder's own config applies)")
    lines = [
        f"usage: pdclm {name} " + " ".join(p for p, _ in positional) + " [options]",
        "",
        textwrap.fill(" ".join(plain(cls.__doc__ or "").split()), width, **WRAP),
    ]
    for title, rows in (("arguments", positional), ("options", options)):
        if rows:
            lines += ["", f"{title}:"]
        for head, doc in rows:
            lines += _row(head, doc, width)
    lines += [
        "",
        textwrap.fill(
            f"config keys: --preset and dotted overrides such as --train.steps=200; "
            f"read by {name}: {read}. pdclm {name} --help-config shows all {keys} keys.",
            width,
            **WRAP,
        ),
    ]
    return "\n".join(lines)


def config_help(name: str, cls: type[Common], preset: str) -> str:
    """tyro's full help (every config key with the preset's defaults), markup stripped."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        tyro.cli(
            cls,
            default=cls(config=load_preset(preset)),
            args=["--help"],
            prog=f"pdclm {name}",
            description=plain(inspect.cleandoc(cls.__doc__ or "")),
        )
    return plain(buf.getvalue()).rstrip()


def version() -> str:
    """The installed package's version (pyproject.toml's)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("pdclm")
    except PackageNotFoundError:
        return "unknown (not installed)"


def check_args(args: Common) -> None:
    """The command's own options within :data:`ARG_RULES`, else a ConfigError naming the flag."""
    for f in dataclasses.fields(args):
        rule, value = ARG_RULES.get(f.name), getattr(args, f.name)
        if rule is not None and not rule[0](value):
            raise ConfigError(f"--{f.name.replace('_', '-')} must be {rule[1]}; got {value}")


def parse(argv: list[str]) -> tuple[str, Common]:
    """The command and its arguments, config validated and resolved. Help, --version and a
    wrong command name end here, before anything imports torch."""
    if not argv or argv[0] in ("-h", "--help"):
        print((__doc__ or "").strip())
        raise SystemExit(0)
    if argv[0] == "--version":
        print(f"pdclm {version()}")
        raise SystemExit(0)
    if argv[0] not in COMMANDS:
        raise ConfigError(
            f"unknown command '{argv[0]}' (commands: {', '.join(COMMANDS)}; see pdclm --help)"
        )
    name, rest = argv[0], argv[1:]
    preset = DEFAULT_PRESET
    for i, a in enumerate(rest):  # the preset decides the defaults the overrides apply to
        if a == "--preset" and i + 1 < len(rest):
            preset = rest[i + 1]
        elif a.startswith("--preset="):
            preset = a.split("=", 1)[1]
    cls = COMMANDS[name]
    if "--help-config" in rest:
        print(config_help(name, cls, preset))
        raise SystemExit(0)
    if "-h" in rest or "--help" in rest:
        print(command_help(name, cls))
        raise SystemExit(0)
    args = tyro.cli(
        cls,
        default=cls(config=base_config(name, rest, preset)),
        args=rest,
        prog=f"pdclm {name}",
        description=plain(inspect.cleandoc(cls.__doc__ or "")),
    )
    validate(args.config)
    check_args(args)
    resolve(args.config)
    return name, args


def write_json(path: str | None, obj: Any) -> None:
    from pdclm.io import atomic_write

    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(path), json.dumps(obj, indent=2, default=str).encode())


def seconds(duration: str) -> float:
    """``15m``, ``900s``, ``900`` or ``1h`` in seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    text = duration.strip().lower()
    scale = units.get(text[-1:])
    try:
        value = float(text[:-1] if scale else text) * (scale or 1)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"--budget: give a duration such as 15m, 900s or 1h; got {duration!r}")
    return value


def base_config(name: str, rest: list[str], preset: str) -> Config:
    """What the command line's flags apply to: with ``--resume RUN`` (``run``, ``train``) the
    run's own config.json, so a resume needs no ``--preset`` (flags that differ from it are
    refused by :func:`pdclm.pipeline.check_resume`); else the preset."""
    run = None
    for i, a in enumerate(rest):
        if a == "--resume" and i + 1 < len(rest):
            run = rest[i + 1]
        elif a.startswith("--resume="):
            run = a.split("=", 1)[1]
    if name in DISTRIBUTED and run:
        from pdclm.pipeline import run_config

        saved = run_config(Path(run))  # refuses a folder that is not a run
        if saved is not None:
            return saved
    return load_preset(preset)


def cmd_run(args: RunCmd, only: list[str] | None = None) -> dict:
    from pdclm.eval.report import print_summary
    from pdclm.pipeline import new_run_dir, run_phases

    run_dir = Path(args.resume) if args.resume else dist.broadcast(new_run_dir(args.out))
    if args.resume and not run_dir.is_dir():
        raise FileNotFoundError(f"--resume: no such run folder {run_dir}")
    if args.resume and args.out and Path(args.out).resolve() != run_dir.resolve():
        raise ConfigError(f"--out {args.out} and --resume {run_dir}: a resume goes on in its run")
    if getattr(args, "budget", None):
        args.config.run.budget = seconds(args.budget)
    report = run_phases(
        args.config, run_dir, resume=bool(args.resume), progress=args.progress, only=only
    )
    print_summary(report)
    print(f"report: {run_dir / 'report.md'}")
    return report


def cmd_prepare(args: PrepareCmd) -> dict:
    from pdclm.data.ingest import prepare

    cfg = args.config
    manifest = prepare(cfg.data, progress=args.progress, seq_len=cfg.train.seq_len)
    for split, t in manifest["totals"].items():
        pieces = f" ({t['pieces']} pieces)" if t["pieces"] != t["docs"] else ""
        print(f"{split}: {t['docs']} documents{pieces}, {t['bytes']:,} bytes")
    print(f"shards in {args.config.data.dir}")
    if "human" in manifest:
        h = manifest["human"]
        print(f"human verifier examples: {h['examples']} kept, {len(h['skipped'])} lines skipped")
    return manifest


def read_text_arg(text: str | None, file: str | None) -> bytes:
    if file:
        p = Path(file)
        if not p.is_file():
            raise FileNotFoundError(f"--file: no such file {p}")
        return p.read_bytes()
    if text is None:
        raise ConfigError("give a text or --file")
    return text.encode()


def cmd_pse(args: PseCmd) -> dict:
    import torch

    from pdclm.model.io import load_model
    from pdclm.pse.viz import patches_text, plot_profile, symbol_label

    model, cfg = load_model(args.ckpt)
    data = read_text_arg(args.text, args.file)
    tokens = torch.tensor([list(data)])
    entropy = model.entropy.profile(tokens)
    starts = model.patch(tokens, entropy)
    ent, st = entropy[0], starts[0]
    print(f"{'pos':>5} {'sym':>6} {'bits':>6} {'delta':>6}  start")
    for i, t in enumerate(tokens[0].tolist()):
        delta = float(ent[i] - ent[i - 1]) if i else 0.0
        print(
            f"{i:>5} {symbol_label(t):>6} {float(ent[i]):6.2f} {delta:+6.2f}  "
            + ("|" if st[i] else "")
        )
    patches = patches_text(tokens[0], st)
    print(
        f"\n{len(patches)} patches, mean {len(data) / max(1, len(patches)):.2f} bytes "
        f"(rule {cfg.pse.patcher.rule}, threshold {float(model.threshold):.3f}):"
    )
    print(" | ".join(patches))
    if args.plot:
        plot_profile(tokens[0], ent, st, Path(args.plot), cfg.pse.patcher)
        print(f"plot: {args.plot}")
    return {"entropy_bits": ent.tolist(), "starts": st.tolist(), "patches": patches}


def cmd_generate(args: GenerateCmd) -> dict:
    import torch

    from pdclm.model.io import load_model
    from pdclm.vocab import BOS, EOS

    model, _ = load_model(args.ckpt)
    gen = torch.Generator().manual_seed(args.seed)
    stream = open_memory(model, args.memory)
    out = bytearray()
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")  # multi-byte chars stream whole
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    for sym in model.generate(
        [BOS, *args.prompt.encode()],
        args.max_bytes,
        args.temperature,
        args.top_k,
        stop=(EOS,),
        generator=gen,
        stream=stream,
    ):
        if sym < 256:
            out.append(sym)
            sys.stdout.write(utf8.decode(bytes([sym])))
            sys.stdout.flush()
    print(utf8.decode(b"", final=True))
    result = {"prompt": args.prompt, "completion": out.decode(errors="replace")}
    if stream is not None:
        result["memory"] = save_memory(stream, args.memory)
    return result


def open_memory(model, folder: str | None):
    """The memory stream saved in ``folder`` (a fresh one if it holds none), or None."""
    if folder is None:
        return None
    if model.memory is None:
        raise ConfigError("--memory needs a model trained with --model.memory.enabled")
    from pdclm.model.segments import MemoryStream

    path = Path(folder)
    return (
        MemoryStream.load(model, path) if (path / "memory.json").exists() else MemoryStream(model)
    )


def save_memory(stream, folder: str) -> dict:
    stream.save(Path(folder))
    st = stream.state
    stored = int(st.lsm.counts().sum()) if st.lsm is not None else 0
    print(
        f"memory: {st.pos + stream.pending.shape[1]} symbols read, {stored} phases stored "
        f"-> {folder}"
    )
    return {
        "dir": folder,
        "symbols_read": st.pos + stream.pending.shape[1],
        "stored_phases": stored,
    }


def reflect_rounds(model, layers: int, question: str, budget, args: SolveCmd, gen) -> list:
    """Run reflect -> revise and print each round (the chosen attempt last)."""
    from pdclm.cognition.reflection import load_reflector, reflect_and_revise
    from pdclm.model.io import find_model_dir

    rf = args.config.rl.reflection
    critic = load_reflector(model, layers, find_model_dir(args.ckpt))
    attempts = reflect_and_revise(model, critic, [question], budget, rf, gen)[0]
    for i, a in enumerate(attempts):
        label = "chosen" if i == len(attempts) - 1 and i else f"round {i}"
        print(f"reflection {label}: answer {a.solution.answer!r}, score {a.scores.answer:.2f}")
        for j, (step, p) in enumerate(zip(a.solution.steps, a.scores.steps, strict=False)):
            kept = " (kept)" if j < a.prefix_steps else ""
            print(f"    {p:.2f}  {step}{kept}")
    return attempts


def cmd_solve(args: SolveCmd) -> dict:
    import torch

    from pdclm.cognition.ccm import Budget, agreement, check, solve, source_reliance
    from pdclm.data.episodes import with_context
    from pdclm.data.generators import GENERATORS
    from pdclm.model.io import load_model

    if not args.question:
        raise ConfigError("give a question")
    model, saved = load_model(args.ckpt)
    gen = torch.Generator().manual_seed(args.seed)
    question = with_context(args.context or "", args.question)
    budget = Budget(args.think_budget, args.think_bytes)
    layers = saved.rl.reflection.latent_layers  # as trained; rounds etc. from the flags
    rounds = reflect_rounds(model, layers, question, budget, args, gen) if args.reflect else None
    # greedy (or the reflection's choice); more samples only for agreement
    best = rounds[-1].solution if rounds else solve(model, [question], budget)[0]
    sols = [best] + solve(
        model, [question] * (args.samples - 1), budget, args.temperature, generator=gen
    )
    # a question in one of the generators' formats gets the task-aware step checks
    task = next(filter(None, (g.parse(args.question) for g in GENERATORS.values())), None)
    verdict = check(best.steps, best.answer, task, args.question)
    marks = {True: "ok", False: "WRONG", None: ""}
    print("thinking:")
    for step, ok in zip(best.steps, verdict.steps, strict=True):
        print(f"  [{marks[ok]:>5}] {step}")
    print(
        f"answer: {best.answer!r}" + ("   (budget reached: answer forced)" if best.forced else "")
    )
    print(
        f"consistent: {verdict.consistent}; answer follows from the steps: {verdict.answer_follows}"
    )
    result: dict[str, Any] = {
        "question": args.question,
        "steps": list(best.steps),
        "answer": best.answer,
        "forced": best.forced,
        "step_checks": list(verdict.steps),
        "answer_follows": verdict.answer_follows,
        "consistent": verdict.consistent,
    }
    if task is not None:
        result["task"] = task.generator
        result["correct"] = GENERATORS[task.generator].score(task, best.answer) >= 1.0
        print(f"recognised as a {task.generator} task; answer correct: {result['correct']}")
    if rounds:
        result["reflection"] = [
            {"answer": a.solution.answer, "score": a.scores.answer, "kept_steps": a.prefix_steps}
            for a in rounds
        ]
    if len(sols) > 1:
        result["agreement"] = agreement([s.answer for s in sols])
        print(f"samples: {[s.answer for s in sols]} -> {result['agreement']}")
    if args.context:
        result["source"] = source_reliance(model, args.context, args.question, best.answer)
        print(
            f"context reliance: {result['source']['context_gain_nats']:+.2f} nats "
            f"(share {result['source']['context_share']:.2f})"
        )
    return result


def cmd_selfplay(args: SelfplayCmd) -> dict:
    import random

    import torch

    from pdclm.cognition.selfplay import dialogue, propose_and_solve
    from pdclm.data.generators import GENERATORS
    from pdclm.data.tasks import make_source, training_items
    from pdclm.eval.tasks import eval_budget, held_out_sets
    from pdclm.io import write_jsonl_atomic
    from pdclm.model.io import find_model_dir, load_model

    cfg = args.config
    folder = find_model_dir(args.ckpt)
    model, _ = load_model(folder)
    sets = held_out_sets(cfg.tasks)
    exclude = {it.question for items in sets.values() for it in items}
    gen = torch.Generator().manual_seed(args.seed)
    budget, cg = eval_budget(cfg.tasks), cfg.cognitive
    own = [n for n in cfg.tasks.names if n in GENERATORS]
    rng = random.Random(args.seed)
    talk_items = [
        it
        for name in cfg.tasks.names
        for it in training_items(
            make_source(name),
            1,
            -(-cg.dialogue_items // len(cfg.tasks.names)),
            1 + args.seed,
            exclude,
        )
    ]
    rng.shuffle(talk_items)
    kept, proposer = propose_and_solve(
        model, own, cg.proposals, cg.solver_samples, budget, cg.temperature, exclude, gen
    )
    talks, talk = dialogue(
        model, talk_items[: cg.dialogue_items], cg.agents, budget, cg.temperature, gen
    )
    kept += talks
    out = Path(args.episodes) if args.episodes else folder.parent / "selfplay.jsonl"
    write_jsonl_atomic(out, [v.to_json() for v in kept])
    print(f"proposer/solver: {proposer}")
    print(f"dialogue: {talk}")
    for v in kept[: args.show]:
        print(f"--- {v.kind} ({v.task})\n{v.episode.question}\n  " + "\n  ".join(v.episode.steps))
        print(f"  => {v.episode.answer}")
    print(f"{len(kept)} verified episodes -> {out}")
    return {"proposer": proposer, "dialogue": talk, "kept": len(kept), "episodes": str(out)}


def cmd_eval(args: EvalCmd) -> dict:
    from pdclm.eval.text import text_bpb
    from pdclm.model.io import find_model_dir, load_model

    folder = find_model_dir(args.ckpt)
    model, cfg = load_model(folder)
    if args.data is not None:
        if args.memory is not None:
            raise ConfigError(
                "--memory carries a memory over the run's held-out shards; give --data or "
                "--memory, not both"
            )
        result = text_bpb(model, cfg, args.data)
        print(
            f"bits per byte: {result['bpb']:.4f} over {result['bytes']:,} bytes "
            f"({result['documents']} document(s) of {args.data})"
        )
        return result
    return eval_shards(model, cfg, run_shards(cfg.data.dir, folder), args)


def run_shards(data_dir: str, model_dir: Path) -> Path:
    """The shard folder a model was trained on. Configs saved now name it absolute; an older
    run's relative one is looked for from here and from the folders above the model."""
    from pdclm.data.ingest import MANIFEST

    p = Path(data_dir)
    tries = (
        [p] if p.is_absolute() else [Path.cwd() / p, *(d / p for d in model_dir.resolve().parents)]
    )
    for cand in tries:
        if (cand / MANIFEST).is_file():
            return cand
    raise FileNotFoundError(
        f"the shards the model was trained on ({data_dir}) are not there; score other text "
        "with --data FILE|DIR|-"
    )


def eval_shards(model, cfg: Config, data_dir: Path, args: EvalCmd) -> dict:
    """Bits per byte on ``args.batches`` fixed batches of the run's validation shards."""
    import numpy as np
    import torch

    from pdclm.data.shards import BatchSampler, ShardSet
    from pdclm.model.pdclm import next_symbol_loss

    val = ShardSet.open(data_dir, "val")
    stream = open_memory(model, args.memory)
    if stream is not None and stream.state.pos == 0 and not stream.pending.shape[1]:
        stream = type(stream)(model, cfg.train.batch)  # a fresh memory: one stream per row
    if stream is not None and (stream.batch != cfg.train.batch or stream.pending.shape[1]):
        raise ConfigError(
            f"{args.memory} holds the memory of {stream.batch} stream(s) stopped mid-segment or "
            f"not {cfg.train.batch} rows; eval --memory continues its own memory folders"
        )
    vals = []
    with torch.no_grad():
        for tokens, _ in BatchSampler(val, cfg.train.seq_len, cfg.train.batch, 1).fixed_batches(
            args.batches
        ):
            t = torch.from_numpy(tokens)
            if stream is None:
                logits = model(t)
            else:  # carry the memory on from batch to batch
                from pdclm.model.segments import read_stream

                ent = model.entropy.profile(t)
                logits = model.head(read_stream(model, t, ent, stream.state)[0])
            vals.append(float(next_symbol_loss(logits, t[:, 1:])[1]))
    result = {"val_bpb": float(np.mean(vals)), "batches": len(vals), "data": str(data_dir)}
    if stream is not None:
        result["memory"] = save_memory(stream, args.memory)
    print(f"held-out bits per byte: {result['val_bpb']:.4f} ({len(vals)} batches of {data_dir})")
    return result


def cmd_label(args: LabelCmd) -> dict:
    from pdclm.eval.labelling import label_command

    return label_command(
        args.config,
        args.ckpt,
        args.file,
        args.annotator,
        args.limit,
        args.from_verifier,
        args.fresh,
        args.seed,
    )


def cmd_export(args: ExportCmd) -> dict:
    from pdclm.train.checkpoint import export_checkpoint

    if not args.ckpt:
        raise ConfigError("give a checkpoint folder")
    out = export_checkpoint(Path(args.ckpt), Path(args.out) if args.out else None)
    print(f"model: {out}")
    return {"model": str(out)}


def cmd_bench(args: BenchCmd) -> dict:
    import time

    from pdclm.bench.chars import bench_chars
    from pdclm.bench.common import publish
    from pdclm.bench.generate import bench_generate, bench_noise
    from pdclm.bench.human import bench_human
    from pdclm.bench.memory import bench_memory
    from pdclm.bench.pretrain import bench_pretrain, bench_scaling
    from pdclm.bench.rewards import bench_rewards

    out = Path(args.out) if args.out else Path("runs") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.which == "memory":
        return bench_memory(args.config, out)
    if args.which == "rewards":
        return bench_rewards(args.config, args.ckpt, out)
    run = {
        "pretrain": lambda: bench_pretrain(args.config, out),
        "generate": lambda: bench_generate(args.config, out),
        "noise": lambda: bench_noise(args.config, out, args.ckpt),
        "scaling": lambda: bench_scaling(args.config, out),
        "human": lambda: bench_human(args.config, args.ckpt, out, args.json),
        "chars": lambda: bench_chars(args.config, out),
    }
    which = [w for w in run if w not in ("human", "chars")] if args.which == "all" else [args.which]
    results = {w: run[w]() for w in which}
    publish(out, which, args.config.preset, args.publish)
    return results[which[0]] if len(which) == 1 else results


def closed_pipe() -> int:
    """stdout was closed early (``pdclm ... | head``): stop quietly, as other tools do."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1


def fail(message: object) -> int:
    """A user error: one line on stderr, exit status 2."""
    print("pdclm: error: " + " ".join(str(message).splitlines()), file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user error (bad flag or config value, missing data, a full or
    read-only disk) prints one line and returns 2; a traceback means a bug."""
    try:
        name, args = parse(sys.argv[1:] if argv is None else argv)
    except ConfigError as e:
        return fail(e)
    except BrokenPipeError:
        return closed_pipe()
    from pdclm.data.ingest import DataError
    from pdclm.io import CheckpointError, write_error
    from pdclm.train.loop import NonFiniteLossError

    try:
        if name in DISTRIBUTED:
            dist.init(args.config.train)
        elif dist.launched_world() > 1:
            raise ConfigError(
                f"only {' and '.join(DISTRIBUTED)} run under torchrun; run {name} alone"
            )
        if not dist.is_main():
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (rank 0 alone prints)
        if name == "run":
            result = cmd_run(args)
        elif name == "train":
            from pdclm.pipeline import phase_registry

            if args.phase not in phase_registry():
                raise ConfigError(
                    f"unknown phase '{args.phase}' (known: {', '.join(phase_registry())})"
                )
            result = cmd_run(args, only=[args.phase])
        else:
            result = {
                "prepare": cmd_prepare,
                "pse": cmd_pse,
                "generate": cmd_generate,
                "solve": cmd_solve,
                "selfplay": cmd_selfplay,
                "eval": cmd_eval,
                "label": cmd_label,
                "bench": cmd_bench,
                "export": cmd_export,
            }[name](args)
        if dist.is_main():
            write_json(args.json, result)
        return 0
    except (ConfigError, DataError, CheckpointError, NonFiniteLossError, FileNotFoundError) as e:
        return fail(e)
    except BrokenPipeError:
        return closed_pipe()
    except (OSError, RuntimeError) as e:  # a full or read-only disk; anything else is a bug
        line = write_error(e)
        if line is None:
            raise
        return fail(line)
    except KeyboardInterrupt:
        print("pdclm: interrupted; resume with --resume RUN_DIR", file=sys.stderr)
        return 130
    finally:
        dist.shutdown()


if __name__ == "__main__":
    sys.exit(main())
