"""The built-in task: left-to-right arithmetic chains with a verifiable `\\boxed{}` answer.

    question: "12 + 7 * 3 - 5"          (operations apply left to right)
    solution: "12+7=19\\n19*3=57\\n57-5=52\\n\\boxed{52}"

Small enough for a tiny model on a laptop CPU, hard enough that answering in one shot fails
while working step by step succeeds -- the gap RL for reasoning is about. Demonstrations for the
warm start come from an imperfect demonstrator: some skip the working and state only the
answer, some contain an arithmetic slip. Held-out problems never appear in the training set.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MAX_VALUE = 40
MAX_OPERAND = 6
OPS = ("+", "-", "*")


@dataclass(frozen=True)
class ArithProblem:
    start: int
    steps: tuple[tuple[str, int], ...]

    @property
    def question(self) -> str:
        return " ".join([str(self.start)] + [f"{op} {v}" for op, v in self.steps])

    def values(self) -> list[int]:
        out = [self.start]
        for op, v in self.steps:
            out.append(apply(out[-1], op, v))
        return out

    @property
    def answer(self) -> int:
        return self.values()[-1]


def apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def sample_problem(rng: random.Random, n_ops: int) -> ArithProblem:
    """Operands 2..MAX_OPERAND on a running value kept within 0..MAX_VALUE: a few hundred
    distinct one-step facts, so a tiny model learns every step while chaining stays hard."""
    start = rng.randint(2, 20)
    value, steps = start, []
    while len(steps) < n_ops:
        op, b = rng.choice(OPS), rng.randint(2, MAX_OPERAND)
        result = apply(value, op, b)
        if 0 <= result <= MAX_VALUE:
            steps.append((op, b))
            value = result
    return ArithProblem(start, tuple(steps))


def worked_solution(problem: ArithProblem, slip_at: int | None = None, slip: int = 0) -> str:
    """Step-by-step text; `slip_at` makes that step's result off by `slip` (carried onwards)."""
    lines, value = [], problem.start
    for i, (op, b) in enumerate(problem.steps):
        result = apply(value, op, b) + (slip if i == slip_at else 0)
        lines.append(f"{value}{op}{b}={result}")
        value = result
    lines.append(f"\\boxed{{{value}}}")
    return "\n".join(lines)


def direct_answer(problem: ArithProblem) -> str:
    return f"\\boxed{{{problem.answer}}}"


def make_split(n: int, seed: int, n_ops: int, exclude: frozenset[str] = frozenset()) -> list[dict]:
    """`n` distinct problems as records {id, question, answer}, none of whose questions is in `exclude`."""
    rng = random.Random(seed)
    seen, records = set(exclude), []
    attempts = 0
    while len(records) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"could not draw {n} distinct arithmetic problems with {n_ops} ops; "
                             f"lower data.train_size / data.heldout_size or raise data.difficulty")
        problem = sample_problem(rng, n_ops)
        if problem.question in seen:
            continue
        seen.add(problem.question)
        records.append({"id": f"arith-{seed}-{len(records)}", "question": problem.question,
                        "answer": str(problem.answer), "problem": problem})
    return records


def arith_task(train_size: int, heldout_size: int, n_ops: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Train and held-out splits; held-out questions are disjoint from training questions."""
    heldout = make_split(heldout_size, seed * 2 + 1, n_ops)
    train = make_split(train_size, seed * 2, n_ops, exclude=frozenset(r["question"] for r in heldout))
    return train, heldout


def demonstrations(records: list[dict], seed: int, shortcut_rate: float, slip_rate: float) -> list[str]:
    """Responses of an imperfect demonstrator, one per record."""
    rng = random.Random(seed)
    out = []
    for record in records:
        problem = record["problem"]
        if rng.random() < shortcut_rate:
            out.append(direct_answer(problem))
        elif rng.random() < slip_rate:
            out.append(worked_solution(problem, rng.randrange(len(problem.steps)),
                                       rng.choice((-2, -1, 1, 2))))
        else:
            out.append(worked_solution(problem))
    return out


def tokenizer_corpus(records: list[dict]) -> list[str]:
    """Text covering everything the task writes: questions, worked steps, boxed answers."""
    return [r["question"] + "\n" + worked_solution(r["problem"]) for r in records]
