"""The project's own task generators: each emits a question, a gold step-by-step trace and an
answer, and comes with a strict answer verifier and a per-step checker.

- ``arithmetic``: a multi-step expression evaluated with operator precedence;
- ``grid_path`` (planning): a shortest path through a walled grid, as a move string;
- ``hanoi`` (planning): Tower of Hanoi from a random legal start, in a compact move format;
- ``bank`` (simulation): an account balance through deposits, withdrawals and fees;
- ``registers`` (simulation): a small register machine run instruction by instruction.

``level`` is the difficulty knob (1 = easiest). Answers are parsed strictly: an answer is right
or wrong, never partly right, so formatting tricks earn nothing. ``check_steps`` says for every
step of a trace whether it follows from the question and the steps before it, which is what
the consistency checks and the step-level rewards build on. ``parse`` rebuilds a task from its
question alone (the executor for model-written questions in self-play): it shares ``make``'s
builder, so a parsed task is exactly the task ``make`` would have built with those parameters.
"""

from __future__ import annotations

import random
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pdclm.data.episodes import Episode


@dataclass(frozen=True)
class Task:
    generator: str
    level: int
    question: str
    steps: tuple[str, ...]
    answer: str
    facts: dict[str, Any] = field(default_factory=dict, compare=False)
    """What the verifiers need, as plain data."""

    def episode(self) -> Episode:
        return Episode(self.question, self.steps, self.answer)


class Generator(Protocol):
    name: str

    def make(self, rng: random.Random, level: int) -> Task: ...

    def parse(self, question: str) -> Task | None:
        """The task a question in this generator's format states; None if malformed or
        unsolvable. The executor for questions the model writes itself."""
        ...

    def score(self, task: Task, answer: str) -> float: ...

    def check_steps(self, task: Task, steps: Sequence[str]) -> list[bool]: ...


_INT = r"-?\d+"
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
_EQ = re.compile(rf"^\s*({_INT})\s*([+\-*])\s*({_INT})\s*=\s*({_INT})\s*$")
_NAT = r"\d{1,6}"
"""A number in a parsed question: at most 6 digits, so questions stay short and sane."""
_MAX_ITEMS = 12
"""Most operations, events or instructions a parsed question may contain."""


def _pattern(template: str, **groups: str) -> re.Pattern[str]:
    """A strict regex for a question template: literal text, each ``{name}`` a named group."""
    parts = re.split(r"\{(\w+)\}", template)
    return re.compile(
        "".join(f"(?P<{p}>{groups[p]})" if i % 2 else re.escape(p) for i, p in enumerate(parts))
    )


def _items(item: str, sep: str, least: int = 1) -> str:
    """A regex for ``least`` to ``_MAX_ITEMS`` of ``item`` joined by ``sep``."""
    return rf"{item}(?:{sep}{item}){{{least - 1},{_MAX_ITEMS - 1}}}"


def _canonical(task: Task | None, question: str) -> Task | None:
    """The task only if it restates the question exactly (no leading zeros or other variants)."""
    return task if task is not None and task.question == question else None


def eval_steps(nums: Sequence[int], ops: Sequence[str]) -> tuple[tuple[str, ...], int]:
    """Evaluate ``nums[0] ops[0] nums[1] ...`` with precedence, one ``a op b = c`` step per
    operation: multiplications left to right, then additions and subtractions left to right."""
    vals, ops_left, steps = list(nums), list(ops), []
    for wanted in ("*", "+-"):
        i = 0
        while i < len(ops_left):
            if ops_left[i] in wanted:
                a, b = vals[i], vals[i + 1]
                c = _OPS[ops_left[i]](a, b)
                steps.append(f"{a} {ops_left[i]} {b} = {c}")
                vals[i : i + 2] = [c]
                del ops_left[i]
            else:
                i += 1
    return tuple(steps), vals[0]


def _int_answer(answer: str) -> int | None:
    text = answer.strip()
    return int(text) if re.fullmatch(_INT, text) else None


def _equation(step: str) -> tuple[int, str, int, int] | None:
    m = _EQ.match(step)
    return (int(m[1]), m[2], int(m[3]), int(m[4])) if m else None


_ARITHMETIC_Q = "Compute {expr}."
_ARITHMETIC_RE = _pattern(_ARITHMETIC_Q, expr=_NAT + _items(rf" [+\-*] {_NAT}", ""))


class Arithmetic:
    """``Compute 12 + 7 * 3 - 5.``: one step per operation, multiplications first."""

    name = "arithmetic"

    def make(self, rng: random.Random, level: int) -> Task:
        n_ops, top = self._shape(level)
        nums = [rng.randint(1, top) for _ in range(n_ops + 1)]
        ops = [rng.choice("+-*") for _ in range(n_ops)]
        return self._build(nums, ops, level)

    @staticmethod
    def _shape(level: int) -> tuple[int, int]:
        """Operations and the largest operand at ``level``."""
        return level + 1, 9 * level + 1

    def space(self, level: int) -> int:
        """Distinct questions ``make`` asks at ``level``: each operand and operator sequence
        reads differently."""
        n_ops, top = self._shape(level)
        return top ** (n_ops + 1) * 3**n_ops

    def parse(self, question: str) -> Task | None:
        m = _ARITHMETIC_RE.fullmatch(question)
        if not m:
            return None
        nums = [int(n) for n in re.findall(r"\d+", m["expr"])]
        ops = re.findall(r"[+\-*]", m["expr"])
        return _canonical(self._build(nums, ops, max(1, len(ops) - 1)), question)

    def _build(self, nums: list[int], ops: list[str], level: int) -> Task:
        expr = " ".join([str(nums[0]), *(f"{o} {n}" for o, n in zip(ops, nums[1:], strict=True))])
        steps, value = eval_steps(nums, ops)
        question = _ARITHMETIC_Q.format(expr=expr)
        return Task(
            self.name, level, question, steps, str(value), {"numbers": nums, "answer": value}
        )

    def score(self, task: Task, answer: str) -> float:
        return float(_int_answer(answer) == task.facts["answer"])

    def check_steps(self, task: Task, steps: Sequence[str]) -> list[bool]:
        """A step is right if its arithmetic holds and its operands are given or derived."""
        known = list(task.facts["numbers"])
        ok = []
        for step in steps:
            eq = _equation(step)
            good = (
                eq is not None
                and _OPS[eq[1]](eq[0], eq[2]) == eq[3]
                and (eq[0] in known and eq[2] in known)
            )
            ok.append(good)
            if eq is not None:
                known.append(eq[3])
        return ok


_MOVES = {"U": (-1, 0), "D": (1, 0), "L": (0, -1), "R": (0, 1)}
_STEP_MOVE = re.compile(r"^\s*([UDLR])\s*->\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*$")


_GRID_Q = "Find a shortest path from S to G; # is a wall. Answer with moves U/D/L/R.\n{rows}"
_GRID_RE = _pattern(_GRID_Q, rows=_items("[.#SG]{2,12}", "\n", least=2))


class GridPath:
    """Planning: the shortest move string from S to G in a grid with walls (#)."""

    name = "grid_path"

    def make(self, rng: random.Random, level: int) -> Task:
        size = 3 + level
        cells = [(r, c) for r in range(size) for c in range(size)]
        while True:
            grid = [["#" if rng.random() < 0.25 else "." for _ in range(size)] for _ in range(size)]
            start, goal = rng.sample(cells, 2)
            grid[start[0]][start[1]], grid[goal[0]][goal[1]] = "S", "G"
            task = self._build(["".join(row) for row in grid], level)
            if task is not None and len(task.answer) >= level + 1:
                return task

    def space(self, level: int) -> None:
        """Not counted: which wall patterns leave G reachable at a long enough distance has
        no cheap closed form (the count is sampled instead, and is far beyond any held-out set)."""
        return None

    def parse(self, question: str) -> Task | None:
        m = _GRID_RE.fullmatch(question)
        if not m:
            return None
        rows = m["rows"].split("\n")
        square = all(len(row) == len(rows) for row in rows)
        if not square or m["rows"].count("S") != 1 or m["rows"].count("G") != 1:
            return None
        return _canonical(self._build(rows, max(1, len(rows) - 3)), question)

    def _build(self, rows: list[str], level: int) -> Task | None:
        """The task on a square grid with one S and one G; None if G cannot be reached."""
        start, goal = (
            next((r, row.index(ch)) for r, row in enumerate(rows) if ch in row) for ch in "SG"
        )
        path = self._bfs(rows, start, goal)
        if path is None:
            return None
        pos, steps = start, []
        for m in path:
            pos = (pos[0] + _MOVES[m][0], pos[1] + _MOVES[m][1])
            steps.append(f"{m} -> ({pos[0]},{pos[1]})")
        return Task(
            self.name,
            level,
            _GRID_Q.format(rows="\n".join(rows)),
            tuple(steps),
            path,
            {"rows": rows, "start": start, "goal": goal, "length": len(path)},
        )

    @staticmethod
    def _bfs(grid: Sequence[str], start: tuple[int, int], goal: tuple[int, int]) -> str | None:
        n = len(grid)
        prev: dict[tuple[int, int], tuple[tuple[int, int], str] | None] = {start: None}
        queue = deque([start])
        while queue:
            cur = queue.popleft()
            if cur == goal:
                moves = []
                while prev[cur] is not None:
                    cur, m = prev[cur]
                    moves.append(m)
                return "".join(reversed(moves))
            for m, (dr, dc) in _MOVES.items():
                nxt = (cur[0] + dr, cur[1] + dc)
                if (
                    0 <= nxt[0] < n
                    and 0 <= nxt[1] < n
                    and grid[nxt[0]][nxt[1]] != "#"
                    and nxt not in prev
                ):
                    prev[nxt] = (cur, m)
                    queue.append(nxt)
        return None

    def _walk(self, task: Task, moves: Sequence[str]) -> list[tuple[int, int] | None]:
        """Positions after each move; None from the first illegal move on."""
        rows, pos, out = task.facts["rows"], tuple(task.facts["start"]), []
        for m in moves:
            if pos is None or m not in _MOVES:
                pos = None
            else:
                r, c = pos[0] + _MOVES[m][0], pos[1] + _MOVES[m][1]
                legal = 0 <= r < len(rows) and 0 <= c < len(rows) and rows[r][c] != "#"
                pos = (r, c) if legal else None
            out.append(pos)
        return out

    def score(self, task: Task, answer: str) -> float:
        moves = answer.strip()
        if not re.fullmatch(r"[UDLR]+", moves) or len(moves) != task.facts["length"]:
            return 0.0
        return float(self._walk(task, moves)[-1] == tuple(task.facts["goal"]))

    def check_steps(self, task: Task, steps: Sequence[str]) -> list[bool]:
        parsed = [_STEP_MOVE.match(s) for s in steps]
        positions = self._walk(task, [m[1] if m else "?" for m in parsed])
        return [
            m is not None and pos == (int(m[2]), int(m[3]))
            for m, pos in zip(parsed, positions, strict=True)
        ]


_HANOI_STEP = re.compile(r"^\s*disk\s+(\d+)\s+([ABC])\s*->\s*([ABC])\s*$")
_PEGS = "ABC"
_MAX_DISKS = 6
_HANOI_ANSWER = "Answer with the moves as source-target pairs, e.g. AC AB."
_HANOI_QS = tuple(
    "Tower of Hanoi, disks 1 (smallest) to {disks}. Pegs: {pegs}. " + goal + " " + _HANOI_ANSWER
    for goal in (
        "Move every disk to peg {target}, one at a time, never a larger disk on a smaller one, "
        "in the fewest moves.",
        "Gather all disks on peg {target} in the fewest moves, moving one top disk at a time "
        "and never onto a smaller disk.",
        "Goal: every disk on peg {target}, in as few moves as possible; move one disk at a "
        "time, never a larger disk on a smaller one.",
        "In the fewest moves, stack all the disks on peg {target}: one disk per move, and never "
        "a larger disk on a smaller one.",
    )
)
"""Wordings of one puzzle (all opening alike, so self-play's proposer prompt stays long)."""
_PEG_ORDERS = ("ABC", "ACB", "BAC", "BCA", "CAB", "CBA")
"""Orders in which a question lists the pegs: reading a state, not a fixed layout."""
_STACK = rf"-|[1-{_MAX_DISKS}](?:,[1-{_MAX_DISKS}]){{0,{_MAX_DISKS - 1}}}"
"""One peg, bottom to top, ``-`` when empty; the disk set and order are checked after matching."""
_HANOI_RES = tuple(
    _pattern(
        q,
        disks=f"[1-{_MAX_DISKS}]",
        pegs=" ".join(rf"(?P<p{i}>[ABC])=(?P<s{i}>{_STACK})" for i in range(3)),
        target="[ABC]",
    )
    for q in _HANOI_QS
)


class Hanoi:
    """Planning: gather n disks, from a random legal configuration, onto a target peg in the
    fewest moves; answer as ``AC AB CB ...``. Random starts and targets (3^n * 3 less the
    solved ones: 78 at level 1), each in one of several wordings with the pegs listed in any
    order, give every level thousands of distinct questions (see :meth:`space`), so a held-out
    set leaves plenty to train on, and the moves must be planned rather than recalled."""

    name = "hanoi"

    def make(self, rng: random.Random, level: int) -> Task:
        n = min(level + 2, _MAX_DISKS)
        while True:  # any peg per disk is legal: each peg stacks its disks largest first
            where = [rng.choice(_PEGS) for _ in range(n)]  # where[k - 1] is disk k's peg
            target = rng.choice(_PEGS)
            if any(p != target for p in where):  # an already solved start asks nothing
                break
        pegs = {p: [k for k in range(n, 0, -1) if where[k - 1] == p] for p in _PEGS}
        # the wording is drawn after the puzzle: a seed poses the same puzzle as it always did
        wording, order = rng.randrange(len(_HANOI_QS)), rng.choice(_PEG_ORDERS)
        return self._build(pegs, target, level, wording, order)

    def space(self, level: int) -> int:
        """Distinct questions ``make`` asks at ``level``: a peg per disk and a target peg, less
        the starts that are already solved, times the wordings and the peg orders."""
        n = min(level + 2, _MAX_DISKS)
        return (3 ** (n + 1) - 3) * len(_HANOI_QS) * len(_PEG_ORDERS)

    def parse(self, question: str) -> Task | None:
        found = [(w, m) for w, p in enumerate(_HANOI_RES) if (m := p.fullmatch(question))]
        if not found:
            return None
        wording, m = found[0]
        n, target = int(m["disks"]), m["target"]
        order = "".join(m[f"p{i}"] for i in range(3))
        if order not in _PEG_ORDERS:  # a peg listed twice
            return None
        stacks = {m[f"p{i}"]: m[f"s{i}"] for i in range(3)}
        pegs = {
            p: [] if stacks[p] == "-" else [int(d) for d in stacks[p].split(",")] for p in _PEGS
        }
        disks = sorted(d for stack in pegs.values() for d in stack)
        stacked = all(stack == sorted(stack, reverse=True) for stack in pegs.values())
        if disks != list(range(1, n + 1)) or not stacked or len(pegs[target]) == n:
            return None
        task = self._build(pegs, target, max(1, n - 2), wording, order)
        return _canonical(task, question)

    def _build(
        self,
        pegs: dict[str, list[int]],
        target: str,
        level: int,
        wording: int = 0,
        order: str = _PEGS,
    ) -> Task:
        """The task from a legal, unsolved start (``pegs`` bottom to top) with its optimal moves,
        asked in ``_HANOI_QS[wording]`` with the pegs listed in ``order``."""
        n = sum(len(stack) for stack in pegs.values())
        where = {k: p for p, stack in pegs.items() for k in stack}
        moves: list[tuple[int, str, str]] = []

        def gather(k: int, dst: str) -> None:
            """Bring disks 1..k onto ``dst``. Disk k moves at most once, straight to ``dst``,
            so 1..k-1 first go to the third peg, out of its way; this is optimal."""
            if k == 0:
                return
            if where[k] != dst:
                gather(k - 1, next(p for p in _PEGS if p not in (where[k], dst)))
                moves.append((k, where[k], dst))
                where[k] = dst
            gather(k - 1, dst)

        gather(n, target)
        stacks = {p: ",".join(map(str, stack)) or "-" for p, stack in pegs.items()}
        listed = " ".join(f"{p}={stacks[p]}" for p in order)
        question = _HANOI_QS[wording].format(disks=n, pegs=listed, target=target)
        steps = tuple(f"disk {k} {s} -> {d}" for k, s, d in moves)
        answer = " ".join(f"{s}{d}" for _, s, d in moves)
        facts = {
            "disks": n,
            "pegs": {p: list(stack) for p, stack in pegs.items()},
            "target": target,
            "moves": len(moves),
            "wording": wording,
            "order": order,
        }
        return Task(self.name, level, question, steps, answer, facts)

    @staticmethod
    def _play(
        task: Task, moves: Sequence[tuple[int | None, str, str]]
    ) -> tuple[list[bool], dict[str, list[int]]]:
        """Play ``(disk, source, target)`` moves from the start (``disk`` None: whichever is on
        top). Returns each move's legality, False from the first illegal one on, since later
        moves cannot be trusted to follow from a broken state, and the pegs it reached."""
        pegs = {p: list(stack) for p, stack in task.facts["pegs"].items()}
        legal: list[bool] = []
        for disk, src, dst in moves:
            top = pegs[src][-1] if pegs.get(src) else None
            ok = (
                top is not None
                and dst in pegs
                and dst != src
                and disk in (None, top)
                and (not pegs[dst] or pegs[dst][-1] > top)
            )
            if not ok:
                return legal + [False] * (len(moves) - len(legal)), pegs
            legal.append(True)
            pegs[dst].append(pegs[src].pop())
        return legal, pegs

    def score(self, task: Task, answer: str) -> float:
        text = answer.strip()
        if not re.fullmatch(r"[ABC]{2}( [ABC]{2})*", text):
            return 0.0
        moves = [(None, m[0], m[1]) for m in text.split(" ")]
        if len(moves) != task.facts["moves"]:
            return 0.0
        legal, pegs = self._play(task, moves)
        return float(all(legal) and len(pegs[task.facts["target"]]) == task.facts["disks"])

    def check_steps(self, task: Task, steps: Sequence[str]) -> list[bool]:
        """A step is right if it moves the disk it names off the top of its source legally."""
        parsed = [_HANOI_STEP.match(step) for step in steps]
        return self._play(task, [(int(m[1]), m[2], m[3]) if m else (0, "", "") for m in parsed])[0]


_BANK_Q = (
    "An account starts with {start}. Events: {events}. A withdrawal larger than the balance is "
    "declined; fees always apply. What is the final balance?"
)
_BANK_RE = _pattern(_BANK_Q, start=_NAT, events=_items(f"(?:deposit|withdraw|fee) {_NAT}", ", "))


class Bank:
    """Simulation: an account balance through deposits, withdrawals (declined if short) and fees."""

    name = "bank"

    def make(self, rng: random.Random, level: int) -> Task:
        balance = rng.randint(10, 50 * level)
        events = []
        for _ in range(level + 2):
            kind = rng.choice(["deposit", "withdraw", "withdraw", "fee"])
            amount = rng.randint(1, 5) if kind == "fee" else rng.randint(5, 40 * level)
            events.append((kind, amount))
        return self._build(balance, events, level)

    def space(self, level: int) -> int:
        """Distinct questions ``make`` asks at ``level``: start balances times the choices of
        each event (a deposit or withdrawal of 5..40*level, or a fee of 1..5)."""
        per_event = 2 * (40 * level - 4) + 5
        return (50 * level - 9) * per_event ** (level + 2)

    def parse(self, question: str) -> Task | None:
        m = _BANK_RE.fullmatch(question)
        if not m:
            return None
        events = [(k, int(a)) for k, a in re.findall(r"(\w+) (\d+)", m["events"])]
        return _canonical(self._build(int(m["start"]), events, max(1, len(events) - 2)), question)

    def _build(self, balance: int, events: list[tuple[str, int]], level: int) -> Task:
        question = _BANK_Q.format(start=balance, events=", ".join(f"{k} {a}" for k, a in events))
        steps, cur = [], balance
        for kind, amount in events:
            if kind == "deposit":
                steps.append(f"{cur} + {amount} = {cur + amount}")
                cur += amount
            elif kind == "withdraw" and amount > cur:
                steps.append(f"withdraw {amount} declined")
            else:
                steps.append(f"{cur} - {amount} = {cur - amount}")
                cur -= amount
        return Task(
            self.name,
            level,
            question,
            tuple(steps),
            str(cur),
            {"start": balance, "events": events, "answer": cur},
        )

    def score(self, task: Task, answer: str) -> float:
        return float(_int_answer(answer) == task.facts["answer"])

    def check_steps(self, task: Task, steps: Sequence[str]) -> list[bool]:
        """Each step must be exactly the next event applied to the balance so far."""
        cur, ok = task.facts["start"], []
        for i, step in enumerate(steps):
            if i >= len(task.facts["events"]):
                ok.append(False)
                continue
            kind, amount = task.facts["events"][i]
            if kind == "withdraw" and amount > cur:
                good = step.strip() == f"withdraw {amount} declined"
            else:
                eq = _equation(step)
                op = "+" if kind == "deposit" else "-"
                good = (
                    eq is not None
                    and eq[:3] == (cur, op, amount)
                    and eq[3] == _OPS[op](cur, amount)
                )
                cur = _OPS[op](cur, amount)
            ok.append(good)
        return ok


_REG_STEP = re.compile(rf"^\s*([abc])\s*=\s*({_INT})\s*([+\-*])\s*({_INT})\s*=\s*({_INT})\s*$")


_REGISTERS_Q = (
    "Registers start at a={a}, b={b}, c={c}. Run: {program}. "
    "Answer with the final registers as a=.. b=.. c=.."
)
_REGISTERS_RE = _pattern(
    _REGISTERS_Q, a=_NAT, b=_NAT, c=_NAT, program=_items(r"[abc] = [abc] [+\-*] [abc]", "; ")
)


class Registers:
    """Simulation: registers a, b, c through a short program of ``x = y op z`` instructions."""

    name = "registers"

    def make(self, rng: random.Random, level: int) -> Task:
        regs = {r: rng.randint(0, 9) for r in "abc"}
        program = []
        for _ in range(level + 2):
            dst, x, y = rng.choice("abc"), rng.choice("abc"), rng.choice("abc")
            program.append((dst, x, rng.choice("+-*" if level > 1 else "+-"), y))
        return self._build(regs, program, level)

    def space(self, level: int) -> int:
        """Distinct questions ``make`` asks at ``level``: start values 0..9 per register times
        the choices of each instruction (three registers and an operator)."""
        return 10**3 * (27 * (3 if level > 1 else 2)) ** (level + 2)

    def parse(self, question: str) -> Task | None:
        m = _REGISTERS_RE.fullmatch(question)
        if not m:
            return None
        regs = {r: int(m[r]) for r in "abc"}
        program = re.findall(r"([abc]) = ([abc]) ([+\-*]) ([abc])", m["program"])
        return _canonical(self._build(regs, program, max(1, len(program) - 2)), question)

    def _build(
        self, regs: dict[str, int], program: list[tuple[str, str, str, str]], level: int
    ) -> Task:
        question = _REGISTERS_Q.format(
            **regs, program="; ".join(f"{d} = {x} {o} {y}" for d, x, o, y in program)
        )
        steps, state = [], dict(regs)
        for dst, x, op, y in program:
            value = _OPS[op](state[x], state[y])
            steps.append(f"{dst} = {state[x]} {op} {state[y]} = {value}")
            state[dst] = value
        answer = " ".join(f"{r}={state[r]}" for r in "abc")
        return Task(
            self.name,
            level,
            question,
            tuple(steps),
            answer,
            {"start": regs, "program": program, "answer": answer},
        )

    def score(self, task: Task, answer: str) -> float:
        return float(re.sub(r"\s+", " ", answer.strip()) == task.facts["answer"])

    def check_steps(self, task: Task, steps: Sequence[str]) -> list[bool]:
        state, ok = dict(task.facts["start"]), []
        for i, step in enumerate(steps):
            m = _REG_STEP.match(step)
            if i >= len(task.facts["program"]) or not m:
                ok.append(False)
                continue
            dst, x, op, y = task.facts["program"][i]
            value = _OPS[op](state[x], state[y])
            ok.append(
                m[1] == dst
                and int(m[2]) == state[x]
                and m[3] == op
                and int(m[4]) == state[y]
                and int(m[5]) == value
            )
            state[dst] = value
        return ok


GENERATORS: dict[str, Generator] = {
    g.name: g for g in (Arithmetic(), GridPath(), Hanoi(), Bank(), Registers())
}
