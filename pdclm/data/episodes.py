"""The reasoning episode format: one formatter and one parser, used everywhere.

An episode is the symbol stream

    BOS  question-bytes  THINK  step-1 \\n step-2 \\n ...  END_THINK  ANSWER  answer-bytes  EOS

Control symbols sit above byte 255, so no question, step or answer text can forge a
delimiter. Steps are single lines. A model is prompted with everything up to and including
THINK and completes the rest; :func:`parse_completion` reads what it wrote, strictly.
"""

from __future__ import annotations

from dataclasses import dataclass

from pdclm.vocab import ANSWER, BOS, END_THINK, EOS, THINK


class EpisodeError(ValueError):
    """A symbol stream that is not a well-formed episode."""


@dataclass(frozen=True)
class Episode:
    question: str
    steps: tuple[str, ...]
    answer: str

    def __post_init__(self) -> None:
        for step in self.steps:
            if "\n" in step:
                raise EpisodeError(f"a thinking step must be one line; got {step!r}")
        if "\n" in self.answer:
            raise EpisodeError(f"an answer must be one line; got {self.answer!r}")


@dataclass(frozen=True)
class Judged:
    """An episode with its labels."""

    episode: Episode
    step_ok: tuple[bool | None, ...]
    """Per step: right, wrong, or unknown (no label)."""
    answer_ok: bool
    """The whole episode is right: correct answer and no wrong step."""
    weight: float = 1.0
    """Loss weight of its labels (human verdicts weigh more than automatic ones)."""


def _bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def prompt(question: str) -> list[int]:
    """What the model is given: the question, then the opening of its thinking."""
    return [BOS, *_bytes(question), THINK]


def format_episode(ep: Episode) -> list[int]:
    thinking = _bytes("\n".join(ep.steps))
    return [*prompt(ep.question), *thinking, END_THINK, ANSWER, *_bytes(ep.answer), EOS]


def _text(symbols: list[int], what: str) -> str:
    if any(s > 255 for s in symbols):
        raise EpisodeError(f"control symbol inside the {what}")
    try:
        return bytes(symbols).decode("utf-8")
    except UnicodeDecodeError as e:
        raise EpisodeError(f"the {what} is not valid UTF-8: {e}") from e


@dataclass(frozen=True)
class Completion:
    """What a model wrote after the prompt."""

    steps: tuple[str, ...]
    answer: str | None
    """None when the model never reached ANSWER (or never closed its thinking)."""
    closed_thinking: bool


def parse_completion(symbols: list[int]) -> Completion:
    """Read a completion (the symbols after THINK). Malformed parts give ``answer=None``."""
    if END_THINK not in symbols:
        body = [s for s in symbols if s < 256]
        return Completion(split_steps(bytes(body).decode("utf-8", "replace")), None, False)
    cut = symbols.index(END_THINK)
    try:
        steps = split_steps(_text(symbols[:cut], "thinking"))
    except EpisodeError:
        return Completion((), None, True)
    rest = symbols[cut + 1 :]
    if not rest or rest[0] != ANSWER:
        return Completion(steps, None, True)
    body = rest[1 : rest.index(EOS)] if EOS in rest else rest[1:]
    try:
        return Completion(steps, _text(body, "answer"), True)
    except EpisodeError:
        return Completion(steps, None, True)


def split_steps(text: str) -> tuple[str, ...]:
    """Thinking text as steps: its lines that hold more than white space."""
    return tuple(line for line in text.split("\n") if line.strip())


def with_context(context: str, question: str) -> str:
    """The question as posed together with a given context (context first)."""
    return f"{context}\n{question}" if context else question


def parse_episode(symbols: list[int]) -> Episode:
    """The exact inverse of :func:`format_episode`; anything else raises :class:`EpisodeError`."""
    if not symbols or symbols[0] != BOS or symbols[-1] != EOS:
        raise EpisodeError("an episode starts with BOS and ends with EOS")
    try:
        think = symbols.index(THINK)
        end = symbols.index(END_THINK)
    except ValueError as e:
        raise EpisodeError("an episode has THINK and END_THINK") from e
    if not think < end or symbols[end + 1 : end + 2] != [ANSWER]:
        raise EpisodeError("expected question THINK thinking END_THINK ANSWER answer EOS")
    question = _text(symbols[1:think], "question")
    thinking = _text(symbols[think + 1 : end], "thinking")
    answer = _text(symbols[end + 2 : -1], "answer")
    return Episode(question, tuple(thinking.split("\n")) if thinking else (), answer)


def weighted_symbols(ep: Episode, question_weight: float) -> tuple[list[int], list[float]]:
    """The episode's symbols and, per symbol, its loss weight as a prediction target: the
    question (and its THINK) at ``question_weight``, thinking and answer at 1."""
    symbols = format_episode(ep)
    n_prompt = len(prompt(ep.question))
    weights = [0.0] + [question_weight] * (n_prompt - 1) + [1.0] * (len(symbols) - n_prompt)
    return symbols, weights


def pack(
    episodes: list[tuple[list[int], list[float]]], rows: int, seq_len: int, pad: int = EOS
) -> tuple[list[list[int]], list[list[float]]]:
    """Fill ``rows`` rows of ``seq_len + 1`` symbols with whole episodes, in the given order.

    Returns tokens and the weights of their targets (``tokens[:, 1:]``). An episode goes into
    the first row with room for it; one longer than a row is skipped; the rest of a row is
    padding with weight 0.
    """
    tokens: list[list[int]] = [[] for _ in range(rows)]
    weights: list[list[float]] = [[] for _ in range(rows)]
    for symbols, w in episodes:
        for r in range(rows):
            if len(tokens[r]) + len(symbols) <= seq_len + 1:
                tokens[r] += symbols
                weights[r] += w
                break
    for r in range(rows):
        n = seq_len + 1 - len(tokens[r])
        tokens[r] += [pad] * n
        weights[r] = (weights[r] + [0.0] * n)[1:]
    return tokens, weights
