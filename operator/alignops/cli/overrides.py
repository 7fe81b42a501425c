"""``--set path=value`` overrides for manifests (how CI runs every recipe small)."""

from __future__ import annotations

import copy
import types
import typing

import yaml
from pydantic import BaseModel

from alignops.api.stages import STAGE_TYPES


def apply_overrides(document: dict, assignments: list[str]) -> tuple[dict, list[str]]:
    """Apply ``a.b.c=value`` assignments; returns the new document and notes for the user. Under
    ``stages`` a segment is a stage name, or ``*``: every stage whose type's schema has the field
    (set or not), the others skipped and named in a note. The value is parsed as YAML (``20`` is a
    number, ``true`` a boolean)."""
    document = copy.deepcopy(document)
    notes: list[str] = []
    for assignment in assignments:
        path, sep, raw = assignment.partition("=")
        if not sep or not path:
            raise ValueError(f"{assignment!r}: expected path=value")
        value = yaml.safe_load(raw)
        parts = path.split(".")
        if parts[0] == "stages":
            parts = ["spec", *parts]
        if parts[:3] == ["spec", "stages", "*"] and len(parts) > 3:
            notes += _assign_every_stage(document, parts[3:], value, path)
        else:
            _assign(document, parts, value, path)
    return document, notes


def _assign_every_stage(document: dict, parts: list[str], value, full: str) -> list[str]:
    stages = [s for s in (document.get("spec") or {}).get("stages") or [] if isinstance(s, dict)]
    field = ".".join(parts)
    chosen = [s for s in stages if _type_has(s.get("type"), parts)]
    if not chosen:
        raise ValueError(f"{full}: no stage's type has {field} (stage types: "
                         + ", ".join(sorted({str(s.get('type')) for s in stages})) + ")")
    for stage in chosen:
        _assign(stage, parts, value, full)
    skipped = [f"{s.get('name')} ({s.get('type')})" for s in stages if s not in chosen]
    return [f"--set {full}: skipped {', '.join(skipped)}: no {field} in that type"] if skipped else []


def _type_has(stage_type, parts: list[str]) -> bool:
    """Whether the stage type's schema has the field at ``parts`` (an unknown type: yes, so that
    validation names the real problem)."""
    info = STAGE_TYPES.get(stage_type) if isinstance(stage_type, str) else None
    return info is None or _schema_has(info.model, parts)


def _schema_has(model: type[BaseModel], parts: list[str]) -> bool:
    head, rest = parts[0], parts[1:]
    field = next((f for name, f in model.model_fields.items() if (f.alias or name) == head), None)
    if field is None:
        return False
    inner = _model_in(field.annotation)
    return not rest or inner is None or _schema_has(inner, rest)  # below a dict or a list: not checked here


def _model_in(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next((m for m in map(_model_in, typing.get_args(annotation)) if m is not None), None)
    return None


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
