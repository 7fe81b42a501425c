"""The files a user can replace, read from a URI or the package's defaults (``defaults/``), and the
prompts rendered from them. Pure Python (no torch): the demo generator renders the default
self_instruct task list with it.

A bad file fails as a ConfigError naming the file and the key: a missing template, a placeholder a
template needs but lacks (or has but must not), a principle without its fields."""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

import yaml

from alignops.storage import StorageOptions
from alignops.storage.base import ObjectNotFound
from alignops.storage.locate import locate

DEFAULTS = Path(__file__).with_name("defaults")


class ResourceError(ValueError):
    """A template, principle, exemplar or seed file that cannot be used (a configuration error)."""


# template key -> the placeholders it must use (every one given to it)
TEMPLATE_FIELDS: dict[str, tuple[str, ...]] = {
    "answer": ("instruction",),
    "self_instruct.instruction": ("tasks",),
    "self_instruct.task": ("task",),
    "evol_instruct.in_depth": ("instruction",),
    "evol_instruct.in_breadth": ("instruction",),
    "self_align.prompt": ("principles", "exemplars", "instruction"),
    "self_align.principle": ("number", "statement"),
    "self_align.exemplar": ("instruction", "response"),
    "constitutional.critique": ("instruction", "response", "critique_request"),
    "constitutional.revision": ("instruction", "response", "critique_request", "critique", "revision_request"),
    "ai_preferences.judge": ("instruction", "principle", "response_a", "response_b"),
}
PRINCIPLE_FIELDS = ("name", "statement", "critique", "revision", "preference")


def _read_text(uri: str | None, default: str, options: StorageOptions | None) -> tuple[str, str]:
    """(text, where it came from) of ``uri``, or of the default file."""
    if uri is None:
        return (DEFAULTS / default).read_text(), f"alignops/workloads/generate/defaults/{default}"
    store, key = locate(uri, options)
    try:
        data = store.get_bytes(key)
    except (ObjectNotFound, FileNotFoundError, IsADirectoryError) as exc:
        raise ResourceError(f"{uri}: cannot read it ({exc})") from None
    try:
        return data.decode("utf-8"), uri
    except UnicodeDecodeError:
        raise ResourceError(f"{uri}: not UTF-8 text") from None


def _yaml(text: str, where: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ResourceError(f"{where}: not valid YAML ({exc})") from None


def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


@dataclass(frozen=True)
class Templates:
    """The templates file: ``get("constitutional.critique")`` is a template (or a list of them)."""

    values: dict
    where: str

    def get(self, key: str):
        node = self.values
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ResourceError(f"{self.where}: no template {key!r}")
            node = node[part]
        return node

    def render(self, key: str, template: str | None = None, **fields) -> str:
        return (template if template is not None else self.get(key)).format(**fields)

    def check(self) -> "Templates":
        """Every template exists and uses exactly the placeholders it is given."""
        for key, fields in TEMPLATE_FIELDS.items():
            value = self.get(key)
            for template in value if isinstance(value, list) else [value]:
                if not isinstance(template, str):
                    raise ResourceError(f"{self.where}: template {key!r} must be a string (or a list of strings)")
                try:
                    used = _placeholders(template)
                except ValueError as exc:
                    raise ResourceError(f"{self.where}: template {key!r}: {exc} (write {{{{ and }}}} for literal braces)") from None
                if used != set(fields):
                    raise ResourceError(f"{self.where}: template {key!r} must use the placeholders "
                                        f"{', '.join('{' + f + '}' for f in fields)}; it uses {sorted(used) or 'none'}")
        return self


def load_templates(uri: str | None = None, options: StorageOptions | None = None) -> Templates:
    text, where = _read_text(uri, "templates.yaml", options)
    values = _yaml(text, where)
    if not isinstance(values, dict):
        raise ResourceError(f"{where}: a templates file is a mapping (keys per method)")
    return Templates(values, where).check()


@dataclass(frozen=True)
class Principle:
    name: str
    statement: str
    critique: str
    revision: str
    preference: str


def load_principles(uri: str | None = None, options: StorageOptions | None = None) -> list[Principle]:
    text, where = _read_text(uri, "principles.yaml", options)
    values = _yaml(text, where)
    if not isinstance(values, list) or not values:
        raise ResourceError(f"{where}: a principles file is a non-empty list of {{{', '.join(PRINCIPLE_FIELDS)}}}")
    out = []
    for number, item in enumerate(values, start=1):
        missing = [f for f in PRINCIPLE_FIELDS if not isinstance(item, dict) or not isinstance(item.get(f), str)]
        if missing:
            raise ResourceError(f"{where}: principle {number} lacks {', '.join(missing)} (strings)")
        out.append(Principle(**{f: item[f] for f in PRINCIPLE_FIELDS}))
    return out


def load_exemplars(uri: str | None = None, options: StorageOptions | None = None) -> list[dict]:
    text, where = _read_text(uri, "exemplars.yaml", options)
    values = _yaml(text, where)
    if not isinstance(values, list) or not all(isinstance(v, dict) and isinstance(v.get("instruction"), str)
                                               and isinstance(v.get("response"), str) for v in values):
        raise ResourceError(f"{where}: an exemplars file is a list of {{instruction, response}} strings")
    return values


def load_seed_tasks(uri: str | None = None, options: StorageOptions | None = None) -> list[str]:
    """Seed tasks: the default YAML list, or JSON lines with a ``prompt`` each."""
    text, where = _read_text(uri, "seed_tasks.yaml", options)
    if uri is None:
        return list(_yaml(text, where))
    tasks = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ResourceError(f"{where}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise ResourceError(f"{where}:{number}: a seed task is {{\"prompt\": \"...\"}}")
            tasks.append(record["prompt"])
    if not tasks:
        raise ResourceError(f"{where}: no seed tasks")
    return tasks


def task_list_prompt(templates: Templates, tasks: list[str]) -> str:
    """self_instruct's instruction-writing prompt: the tasks as a list the model continues."""
    listed = "".join(templates.render("self_instruct.task", task=t) for t in tasks)
    return templates.render("self_instruct.instruction", tasks=listed)
