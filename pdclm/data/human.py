"""Human verifier examples: a person's verdict on one reasoning episode, one JSON line each.

A source of ``pdclm prepare`` written ``human:PATH`` (a file or a glob) holds such lines;
``prepare`` validates every line, reports each bad one with its line number and the reason on
stderr (and in the manifest), skips it and ingests the rest into ``DATA_DIR/human.jsonl``,
beside the byte shards. ``pdclm label`` writes the same format.

One line (fields in any order; ``?`` marks optional ones)::

    {"question": "Calculate 7 + 5.",        the question as the model saw it
     "context"?: "...",                      given context (shown before the question)
     "thinking": ["7 + 5 = 12"],             the steps, one line each ([] for none)
     "answer": "12",
     "verdict": "right",                     "right" or "wrong": the whole episode
     "step_verdicts"?: ["right"],            per step: "right", "wrong" or null (not judged)
     "reason"?: "...",                       free text
     "annotator": "alice",                   who judged
     "timestamp": "2026-11-25T02:00:00Z",    when (ISO 8601)
     "task"?: "chain_sum", "gold"?: "12",    task name and gold answer, where known
     "source"?: "runs/r1/...jsonl:17"}       where the episode came from

A verdict of "right" means every step is right too (per-step verdicts may not say otherwise);
"wrong" without per-step verdicts leaves the steps unjudged. Unknown fields are refused, so a
misspelt field is reported rather than silently ignored.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pdclm.data.episodes import Episode, Judged, with_context

HUMAN_FILE = "human.jsonl"
"""Where ``prepare`` stores the validated examples, inside ``data.dir``."""
VERDICTS = {"right": True, "wrong": False}
REQUIRED = ("question", "thinking", "answer", "verdict", "annotator", "timestamp")
OPTIONAL = ("context", "step_verdicts", "reason", "task", "gold", "source")


class HumanFormatError(ValueError):
    """A line that is not a valid human verifier example (the message says why)."""


def episode_key(question: str, steps: tuple[str, ...] | list[str], answer: str) -> str:
    """Identifies an episode (question as posed, thinking, answer) across files and sessions."""
    text = json.dumps([question, list(steps), answer], ensure_ascii=False)
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass(frozen=True)
class HumanExample:
    question: str
    thinking: tuple[str, ...]
    answer: str
    verdict: bool
    annotator: str
    timestamp: str
    context: str = ""
    step_verdicts: tuple[bool | None, ...] | None = None
    reason: str = ""
    task: str = ""
    gold: str = ""
    source: str = ""

    @property
    def episode(self) -> Episode:
        return Episode(with_context(self.context, self.question), self.thinking, self.answer)

    @property
    def key(self) -> str:
        ep = self.episode
        return episode_key(ep.question, ep.steps, ep.answer)

    def step_labels(self) -> tuple[bool | None, ...]:
        if self.step_verdicts is not None:
            return self.step_verdicts
        return (True if self.verdict else None,) * len(self.thinking)

    def judged(self, weight: float = 1.0) -> Judged:
        """As a training example of the reflection network."""
        return Judged(self.episode, self.step_labels(), self.verdict, weight)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "question": self.question,
            "thinking": list(self.thinking),
            "answer": self.answer,
            "verdict": "right" if self.verdict else "wrong",
            "annotator": self.annotator,
            "timestamp": self.timestamp,
        }
        if self.context:
            out["context"] = self.context
        if self.step_verdicts is not None:
            names = {True: "right", False: "wrong", None: None}
            out["step_verdicts"] = [names[v] for v in self.step_verdicts]
        for name in ("reason", "task", "gold", "source"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_json(cls, obj: Any) -> HumanExample:
        """Validate one decoded line; :class:`HumanFormatError` names the first problem."""
        if not isinstance(obj, dict):
            raise HumanFormatError("not a JSON object")
        unknown = sorted(set(obj) - set(REQUIRED) - set(OPTIONAL))
        if unknown:
            raise HumanFormatError(f"unknown field(s) {', '.join(unknown)}")
        missing = [k for k in REQUIRED if k not in obj]
        if missing:
            raise HumanFormatError(f"missing field(s) {', '.join(missing)}")
        strings = ("question", "answer", "annotator", "timestamp", "context", "reason", "task")
        for k in (*strings, "gold", "source"):
            if k in obj and not isinstance(obj[k], str):
                raise HumanFormatError(f"field '{k}' is not a string")
        for k in ("question", "annotator"):
            if not obj[k].strip():
                raise HumanFormatError(f"field '{k}' is empty")
        if "\n" in obj["answer"]:
            raise HumanFormatError("the answer must be one line")
        thinking = obj["thinking"]
        if not isinstance(thinking, list) or not all(isinstance(s, str) for s in thinking):
            raise HumanFormatError("field 'thinking' is not a list of strings")
        if any("\n" in s for s in thinking):
            raise HumanFormatError("a thinking step must be one line")
        if obj["verdict"] not in VERDICTS:
            raise HumanFormatError(f"verdict must be 'right' or 'wrong'; got {obj['verdict']!r}")
        verdict = VERDICTS[obj["verdict"]]
        try:
            datetime.fromisoformat(obj["timestamp"])
        except ValueError:
            raise HumanFormatError(f"timestamp {obj['timestamp']!r} is not ISO 8601") from None
        steps = None
        if obj.get("step_verdicts") is not None:
            sv = obj["step_verdicts"]
            if not isinstance(sv, list) or any(v is not None and v not in VERDICTS for v in sv):
                raise HumanFormatError("step_verdicts must be a list of 'right', 'wrong' or null")
            if len(sv) != len(thinking):
                raise HumanFormatError(
                    f"{len(sv)} step verdicts for {len(thinking)} thinking steps"
                )
            steps = tuple(None if v is None else VERDICTS[v] for v in sv)
            if verdict and False in steps:
                raise HumanFormatError("verdict 'right' with a step judged 'wrong'")
        return cls(
            obj["question"],
            tuple(thinking),
            obj["answer"],
            verdict,
            obj["annotator"],
            obj["timestamp"],
            obj.get("context", ""),
            steps,
            obj.get("reason", ""),
            obj.get("task", ""),
            obj.get("gold", ""),
            obj.get("source", ""),
        )


def parse_lines(data: bytes) -> tuple[list[HumanExample], list[tuple[int, str]]]:
    """Valid examples, and (line number, reason) for every line that is not one; blank lines
    are neither."""
    good, bad = [], []
    for lineno, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            good.append(HumanExample.from_json(json.loads(line)))
        except ValueError as e:  # JSON, UTF-8 and format errors alike
            reason = str(e) if isinstance(e, HumanFormatError) else f"not valid JSON ({e})"
            bad.append((lineno, reason))
    return good, bad


def read_examples(path: Path, warn: bool = True) -> list[HumanExample]:
    """The valid examples of a file; each bad line is reported on stderr (``warn``) and skipped."""
    good, bad = parse_lines(path.read_bytes())
    if warn:
        for lineno, reason in bad:
            print(f"warning: {path}:{lineno}: {reason}; line skipped", file=sys.stderr)
    return good


def stored_examples(data_dir: str | Path) -> list[HumanExample]:
    """The examples ``prepare`` stored in a data folder (none if it stored none)."""
    path = Path(data_dir) / HUMAN_FILE
    return read_examples(path) if path.exists() else []


def split_by_question(
    examples: list[HumanExample], holdout: float, calibration: float
) -> tuple[list[HumanExample], list[HumanExample], list[HumanExample]]:
    """(train, calibration, held-out) by a hash of the question as posed: every verdict on a
    question lands in the same part, so the agreement set shares no question with training."""
    parts: tuple[list[HumanExample], ...] = ([], [], [])
    for ex in examples:
        digest = hashlib.sha1(f"human-split:{ex.episode.question}".encode()).hexdigest()
        u = int(digest[:8], 16) / 2**32
        if u < holdout:
            parts[2].append(ex)
        elif u < holdout + (1 - holdout) * calibration:
            parts[1].append(ex)
        else:
            parts[0].append(ex)
    return parts
