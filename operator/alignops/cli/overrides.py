"""``--set path=value`` overrides for manifests (how CI runs every recipe small)."""

from __future__ import annotations

import copy

import yaml


def apply_overrides(document: dict, assignments: list[str]) -> dict:
    """Apply ``a.b.c=value`` assignments. Under ``stages`` a segment is a stage name (or ``*`` for
    every stage); the value is parsed as YAML (``20`` is a number, ``true`` a boolean)."""
    document = copy.deepcopy(document)
    for assignment in assignments:
        path, sep, raw = assignment.partition("=")
        if not sep or not path:
            raise ValueError(f"{assignment!r}: expected path=value")
        value = yaml.safe_load(raw)
        parts = path.split(".")
        if parts[0] == "stages":
            parts = ["spec", *parts]
        _assign(document, parts, value, path)
    return document


def _assign(node, parts: list[str], value, full: str) -> None:
    head, rest = parts[0], parts[1:]
    if isinstance(node, list):
        targets = node if head == "*" else [s for s in node if isinstance(s, dict) and s.get("name") == head]
        if not targets:
            raise ValueError(f"{full}: no stage named {head!r}")
        for target in targets:
            _assign(target, rest, value, full) if rest else None
        return
    if not isinstance(node, dict):
        raise ValueError(f"{full}: {head!r} is not inside a mapping")
    if not rest:
        node[head] = value
        return
    if head not in node or node[head] is None:
        node[head] = {}
    _assign(node[head], rest, value, full)
