"""Sums of two small numbers, as SFT data, preference pairs, K-wise rankings, unpaired labels and RL
prompts with reference answers.

The universe of problems is split once, by a hash of the problem, into a training pool and a held-out
pool (about 10 %): every training set of every format draws from the training pool only, and the
held-out set is drawn from the held-out pool with its own seed, so they are disjoint by construction.
Pure Python, no torch: the operator can import it.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Callable, Iterator

from alignops.seeds import RECORD_FORMAT, derive_seed

HELD_OUT_SEED = 20_240_601
HELD_OUT_BUCKETS = 10  # one bucket in ten is held out


@dataclass(frozen=True)
class Problem:
    a: int
    b: int

    @property
    def prompt(self) -> str:
        return f"{self.a}+{self.b}="

    @property
    def answer(self) -> str:
        return str(self.a + self.b)


def is_held_out(problem: Problem) -> bool:
    digest = hashlib.sha256(problem.prompt.encode()).digest()
    return digest[0] % HELD_OUT_BUCKETS == 0


def sum_asked(prompt: str) -> str | None:
    """The sum an ``a+b=`` prompt asks for (None for any other text): the verifier of generated tasks."""
    left, plus, right = prompt.strip().rstrip("=").partition("+")
    if not (plus and prompt.strip().endswith("=") and left.isdigit() and right.isdigit()):
        return None
    return str(int(left) + int(right))


def extract_answer(completion: str) -> str:
    """The number a model wrote: leading digits of the completion, up to the first non-digit."""
    digits = []
    for char in completion.strip():
        if not char.isdigit():
            break
        digits.append(char)
    return "".join(digits)


def is_correct(completion: str, answer: str) -> bool:
    return extract_answer(completion) == answer


@dataclass(frozen=True)
class ArithmeticTask:
    max_operand: int = 99

    def pool(self, held_out: bool) -> list[Problem]:
        return [
            p
            for a in range(self.max_operand + 1)
            for b in range(self.max_operand + 1)
            if is_held_out(p := Problem(a, b)) == held_out
        ]

    def sample(self, size: int, seed: int, held_out: bool) -> list[Problem]:
        pool = self.pool(held_out)
        rng = random.Random(HELD_OUT_SEED if held_out else seed)
        if held_out:
            if size > len(pool):
                raise ValueError(f"the held-out pool has {len(pool)} problems; ask for at most that many (or raise maxOperand)")
            return rng.sample(pool, size)
        return [rng.choice(pool) for _ in range(size)]


def _wrong_answers(problem: Problem, rng: random.Random, count: int) -> list[str]:
    """Plausible wrong sums, nearest first: what a half-trained model gets wrong."""
    correct = problem.a + problem.b
    candidates = {correct + d for d in (-10, -2, -1, 1, 2, 10, 11, -11, 9, -9, 20, -20) if correct + d >= 0}
    ordered = sorted(candidates, key=lambda v: (abs(v - correct), rng.random()))
    return [str(v) for v in ordered[:count]]


def sft_records(problems: list[Problem], rng: random.Random) -> Iterator[dict]:
    for p in problems:
        yield {"prompt": p.prompt, "completion": p.answer}


def pair_records(problems: list[Problem], rng: random.Random) -> Iterator[dict]:
    for p in problems:
        yield {"prompt": p.prompt, "chosen": p.answer, "rejected": rng.choice(_wrong_answers(p, rng, 4))}


def ranking_records(problems: list[Problem], rng: random.Random, k: int = 4) -> Iterator[dict]:
    for p in problems:
        responses = [p.answer, *_wrong_answers(p, rng, k - 1)]
        order = list(range(k))
        rng.shuffle(order)
        shuffled = [responses[i] for i in order]
        # ranking: indices into `responses`, best first (the correct sum, then nearer wrong ones)
        yield {"prompt": p.prompt, "responses": shuffled, "ranking": [order.index(i) for i in range(k)]}


def unpaired_records(problems: list[Problem], rng: random.Random) -> Iterator[dict]:
    for i, p in enumerate(problems):
        if i % 2 == 0:
            yield {"prompt": p.prompt, "completion": p.answer, "label": True}
        else:
            yield {"prompt": p.prompt, "completion": rng.choice(_wrong_answers(p, rng, 4)), "label": False}


def prompt_records(problems: list[Problem], rng: random.Random) -> Iterator[dict]:
    for p in problems:
        yield {"prompt": p.prompt, "answer": p.answer}


def task_list_records(problems: list[Problem], rng: random.Random) -> Iterator[dict]:
    """SFT records of the sums, every fourth one instead a self_instruct task list (the generate
    stage's default template filled with 2-5 tasks of the training pool, the completion one more):
    a pretrained model continues such a list in context; the tiny demo model learns the format here."""
    from alignops.workloads.generate.resources import load_templates, task_list_prompt

    templates = load_templates()
    for i, p in enumerate(problems):
        if i % 4 == 3:
            tasks = [t for t in (rng.choice(problems).prompt for _ in range(rng.randint(2, 5))) if t != p.prompt]
            yield {"prompt": task_list_prompt(templates, tasks), "completion": " " + p.prompt}
        else:
            yield {"prompt": p.prompt, "completion": p.answer}


GENERATORS: dict[str, Callable[[list[Problem], random.Random], Iterator[dict]]] = {
    "sft": sft_records,
    "pairs": pair_records,
    "rankings": ranking_records,
    "unpaired": unpaired_records,
    "prompts": prompt_records,
}


def generate_task_lists(format: str, size: int, seed: int, held_out: bool = False, max_operand: int = 99) -> list[dict]:
    """The ``arithmetic_task_lists`` generator: sft records with task lists mixed in (the held-out
    split is the plain sums: what the model is evaluated on)."""
    if format != "sft":
        raise ValueError(f"the arithmetic_task_lists generator makes sft records, not {format!r}")
    if held_out:
        return generate("sft", size, seed, held_out=True, max_operand=max_operand)
    problems = ArithmeticTask(max_operand=max_operand).sample(size, seed, held_out)
    return list(task_list_records(problems, random.Random(derive_seed(seed, (RECORD_FORMAT, 1)))))


def generate(format: str, size: int, seed: int, held_out: bool = False, max_operand: int = 99) -> list[dict]:
    """Records of one format; the held-out split ignores ``seed`` and always uses its own."""
    if format not in GENERATORS:
        raise ValueError(f"unknown dataset format {format!r}; known: {', '.join(sorted(GENERATORS))}")
    task = ArithmeticTask(max_operand=max_operand)
    problems = task.sample(size, seed, held_out)
    # the formats' own draws (wrong answers, orderings) come from a stream apart from the problems'
    rng = random.Random(derive_seed(HELD_OUT_SEED if held_out else seed, (RECORD_FORMAT, 1)))
    return list(GENERATORS[format](problems, rng))
