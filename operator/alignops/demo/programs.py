"""The code demo task: tiny Python programs that print a sum, for the ``code_execution`` reward.

``# 12 plus 34`` -> ``print(12+34)``; the expected output is ``46``. The problems and their
training / held-out split are the arithmetic task's (``alignops.demo.arithmetic``). Pure Python, no
torch: the operator can import it.

Held-out accuracy needs no sandbox: ``is_correct`` reads a completion of the demo's shape
(``print(<integer sum>)``) with Python's parser and adds the numbers itself; anything else is wrong.
The reward of the rl stage executes the programs for real (``code_execution``).
"""

from __future__ import annotations

import ast
import random
from typing import Callable, Iterator

from alignops.demo.arithmetic import HELD_OUT_SEED, ArithmeticTask, Problem
from alignops.seeds import RECORD_FORMAT, derive_seed


def prompt_of(problem: Problem) -> str:
    return f"# {problem.a} plus {problem.b}\n"


def program_of(problem: Problem) -> str:
    return f"print({problem.a}+{problem.b})"


def sft_records(problems: list[Problem], rng: random.Random) -> Iterator[dict]:
    for p in problems:
        yield {"prompt": prompt_of(p), "completion": program_of(p)}


def prompt_records(problems: list[Problem], rng: random.Random) -> Iterator[dict]:
    for p in problems:
        yield {"prompt": prompt_of(p), "answer": p.answer}


GENERATORS: dict[str, Callable[[list[Problem], random.Random], Iterator[dict]]] = {
    "sft": sft_records,
    "prompts": prompt_records,
}


def _sum(node: ast.AST) -> int | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _sum(node.left), _sum(node.right)
        return None if left is None or right is None else left + right
    return None


def printed_sum(program: str) -> str | None:
    """What a program of the demo's shape, ``print(<integers added>)``, prints; None for any other."""
    try:
        tree = ast.parse(program.strip())
    except (SyntaxError, ValueError):
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Expr):
        return None
    call = tree.body[0].value
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "print"
            and len(call.args) == 1 and not call.keywords):
        return None
    value = _sum(call.args[0])
    return None if value is None else str(value)


def is_correct(completion: str, answer: str) -> bool:
    """Whether a completion prints the answer: ``answer`` is the output (``46``) or a reference
    program (``print(12+34)``, the held-out SFT records' completion)."""
    printed = printed_sum(completion)
    return printed is not None and printed == (printed_sum(answer) or answer.strip())


def generate(format: str, size: int, seed: int, held_out: bool = False, max_operand: int = 99) -> list[dict]:
    if format not in GENERATORS:
        raise ValueError(f"the sum_programs generator makes {' and '.join(sorted(GENERATORS))} records, not {format!r}")
    problems = ArithmeticTask(max_operand=max_operand).sample(size, seed, held_out)
    rng = random.Random(derive_seed(HELD_OUT_SEED if held_out else seed, (RECORD_FORMAT, 1)))
    return list(GENERATORS[format](problems, rng))
