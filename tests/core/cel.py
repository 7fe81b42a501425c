"""Evaluate a CRD's ``x-kubernetes-validations`` rules on a manifest with cel-python, as the API
server would: each rule with ``self`` bound to the value at the rule's place in the schema.

Kubernetes adds libraries to standard CEL; the rules use ``indexOf`` from its ``lists`` library,
registered here with the same meaning (index of the first equal element, or -1)."""

from __future__ import annotations

import celpy
from celpy import celtypes


def _index_of(values, item):
    for index, value in enumerate(values):
        if value == item:
            return celtypes.IntType(index)
    return celtypes.IntType(-1)


FUNCTIONS = {"indexOf": _index_of}
_PROGRAMS: dict = {}


def _values_with_rules(schema: dict, value, path: str = ""):
    if value is None:
        return
    if schema.get("x-kubernetes-validations"):
        yield path, schema["x-kubernetes-validations"], value
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                yield from _values_with_rules(sub, value[key], f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            yield from _values_with_rules(schema["items"], item, f"{path}[{index}]")


def evaluate_rules(schema: dict, document: dict) -> list[str]:
    """Messages of the rules that evaluate to false (or fail to evaluate) on ``document``."""
    env = celpy.Environment()
    failures = []
    for path, rules, value in _values_with_rules(schema, document):
        activation = {"self": celpy.json_to_cel(value)}
        for rule in rules:
            program = _PROGRAMS.get(rule["rule"])
            if program is None:  # compiling is most of the cost: once per rule text
                program = _PROGRAMS[rule["rule"]] = env.program(env.compile(rule["rule"]), functions=FUNCTIONS)
            try:
                result = program.evaluate(activation)
            except Exception as exc:  # noqa: BLE001 - an evaluation error is a rejection too
                failures.append(f"{path or '<root>'}: {rule['message']} (error: {exc})")
                continue
            if isinstance(result, Exception) or not bool(result):
                failures.append(f"{path or '<root>'}: {rule['message']}")
    return failures
