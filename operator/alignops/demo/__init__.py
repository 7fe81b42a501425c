"""Built-in demo tasks that a tiny model learns on a CPU in minutes: verifiable arithmetic
(``arithmetic``) and tiny programs printing a sum (``sum_programs``, for the code_execution reward).

``TASKS`` maps a ``datasets.*.generator`` name to its task: how it makes records and how a held-out
completion is checked against a record's answer."""

from dataclasses import dataclass
from typing import Callable

from alignops.demo import arithmetic, programs
from alignops.demo.arithmetic import GENERATORS, ArithmeticTask


@dataclass(frozen=True)
class DemoTask:
    generate: Callable[..., list[dict]]
    is_correct: Callable[[str, str], bool]
    answer_tokens: int  # enough new tokens for a greedy answer of the held-out evaluation


TASKS: dict[str, DemoTask] = {
    "arithmetic": DemoTask(arithmetic.generate, arithmetic.is_correct, 6),
    "arithmetic_task_lists": DemoTask(arithmetic.generate_task_lists, arithmetic.is_correct, 6),
    "sum_programs": DemoTask(programs.generate, programs.is_correct, 16),
}


def generate(format: str, size: int, seed: int, held_out: bool = False, max_operand: int = 99,
             task: str = "arithmetic") -> list[dict]:
    """Records of one format from the demo task ``task``."""
    return TASKS[task].generate(format, size, seed, held_out=held_out, max_operand=max_operand)


def task_of(generator: str | None) -> DemoTask:
    """The task whose held-out check applies to a source: its generator's, the arithmetic one for files."""
    return TASKS[generator or "arithmetic"]


__all__ = ["GENERATORS", "TASKS", "ArithmeticTask", "DemoTask", "generate", "task_of"]
