"""Built-in demo task: verifiable arithmetic that a tiny model learns on a CPU in minutes."""

from alignops.demo.arithmetic import GENERATORS, ArithmeticTask, generate

__all__ = ["GENERATORS", "ArithmeticTask", "generate"]
