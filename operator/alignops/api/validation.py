"""Manifest validation: schema errors from pydantic and cross-field checks, each naming its field
path (``spec.stages[1].policy.fromStage``) and the fix. The CRD's CEL rules mirror the cross-field
checks for ``kubectl apply``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from alignops.api.base import camel_case
from alignops.api.distributed import BATCH_SPLIT_MESSAGE, process_count
from alignops.api.generate import GENERATED_FORMAT
from alignops.api.job import AlignmentJob
from alignops.api.stages import STAGE_TYPES


OBJECT_SIZE_LIMIT = 1_572_864  # etcd's default request size limit, which bounds every object
# the API server's ObjectMeta rules (k8s.io/apimachinery validation): label values and key names are
# "qualified names" of at most 63 characters, key prefixes DNS-1123 subdomains of at most 253, all
# annotations together at most 256 KiB, a namespace a DNS-1123 label
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
DNS_1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ANNOTATIONS_SIZE_LIMIT = 262_144


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InvalidManifest(ValueError):
    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


class UnreadableManifest(OSError):
    pass


def format_loc(loc: tuple[Any, ...]) -> str:
    """pydantic's loc as a manifest path; the stage-type tag pydantic inserts after a stage index
    (``stages, 0, 'sft', ...``) is dropped."""
    out = ""
    for position, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif position >= 2 and loc[position - 2] == "stages" and isinstance(loc[position - 1], int) and part in STAGE_TYPES:
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def _pydantic_errors(exc: ValidationError) -> list[FieldError]:
    errors = []
    for err in exc.errors(include_url=False):
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = f"unknown field {str(err['loc'][-1])!r}: check its spelling (fields are camelCase)"
        elif err["type"] == "union_tag_invalid":
            message = f"unknown stage type {err['ctx']['tag']}; known types: {', '.join(sorted(STAGE_TYPES))}"
        elif err["type"] == "literal_error" and err["loc"] and err["loc"][-1] in ("apiVersion", "kind"):
            message = f"{message} (got {err['input']!r})"
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        errors.append(FieldError(format_loc(err["loc"]), message))
    return errors


def semantic_errors(job: AlignmentJob) -> list[FieldError]:
    """Cross-field rules the schema alone cannot express."""
    errors: list[FieldError] = []
    seen: dict[str, int] = {}
    for index, stage in enumerate(job.spec.stages):
        path = f"spec.stages[{index}]"
        if stage.name in seen:
            errors.append(FieldError(f"{path}.name", f"duplicate stage name {stage.name!r} (also spec.stages[{seen[stage.name]}]); stage names must be unique"))
        seen.setdefault(stage.name, index)
        info = STAGE_TYPES[stage.type]
        for field_name, accepted in info.inputs.items():
            ref = getattr(stage, field_name, None)
            if ref is None or ref.from_stage is None:
                continue
            ref_path = f"{path}.{camel_case(field_name)}.fromStage"
            target_index = next((i for i, s in enumerate(job.spec.stages) if s.name == ref.from_stage), None)
            if target_index is None:
                errors.append(FieldError(ref_path, f"no stage named {ref.from_stage!r}; name an earlier stage"))
            elif target_index >= index:
                errors.append(FieldError(ref_path, f"stage {ref.from_stage!r} does not run before {stage.name!r}; a stage can only use the output of an earlier stage"))
            else:
                produced = STAGE_TYPES[job.spec.stages[target_index].type].produces
                if produced not in accepted:
                    errors.append(FieldError(ref_path, f"stage {ref.from_stage!r} produces a {produced}, but {camel_case(field_name)} needs a {' or '.join(accepted)}"))
        errors += _dataset_ref_errors(job, index)
        processes = process_count(stage.resources.gpus, stage.resources.nodes)
        if processes > info.max_gpus:
            errors.append(FieldError(f"{path}.resources.gpus", f"{processes} processes requested (resources.gpus x nodes), but stage type {stage.type} trains on at most {info.max_gpus} GPU per run for now; set gpus: {info.max_gpus} and nodes: 1"))
        hp = getattr(stage, "hyperparameters", None)
        if processes > 1 and hasattr(hp, "gradient_accumulation_steps") and hp.batch_size % processes:
            errors.append(FieldError(f"{path}.hyperparameters.batchSize", BATCH_SPLIT_MESSAGE.format(batch=hp.batch_size, processes=processes)))
    return errors


def _key_errors(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not DNS_1123_SUBDOMAIN.match(prefix)):
        return f"the key's prefix {prefix!r} must be a DNS subdomain of at most 253 characters (e.g. example.com)"
    if len(name) > 63 or not QUALIFIED_NAME.match(name):
        return ("the key's name must be at most 63 characters: letters, digits, '-', '_' and '.', "
                "starting and ending with a letter or digit")
    return None


def metadata_errors(document: dict) -> list[FieldError]:
    """What the API server refuses in ``metadata`` before any schema sees the object: namespace,
    label keys and values, annotation keys and their total size (the CRD cannot express these)."""
    meta = document.get("metadata")
    if not isinstance(meta, dict):
        return []
    errors: list[FieldError] = []
    namespace = meta.get("namespace")
    if isinstance(namespace, str) and len(namespace) <= 63 and not DNS_1123_LABEL.match(namespace):  # longer: the schema says so
        errors.append(FieldError("metadata.namespace", f"{namespace[:70]!r} must be a DNS-1123 label: at most 63 "
                                                        "lowercase letters, digits and '-', starting and ending with a letter or digit"))
    for kind in ("labels", "annotations"):
        values = meta.get(kind)
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            path = f"metadata.{kind}[{str(key)[:70]!r}]"
            problem = _key_errors(str(key))
            if problem:
                errors.append(FieldError(path, problem))
            if kind == "labels" and isinstance(value, str) and value and (len(value) > 63 or not QUALIFIED_NAME.match(value)):
                errors.append(FieldError(path, f"a label value must be at most 63 characters (this one has {len(value)}): "
                                               "letters, digits, '-', '_' and '.', starting and ending with a letter or digit"))
        if kind == "annotations":
            size = sum(len(str(k).encode()) + len(str(v).encode()) for k, v in values.items())
            if size > ANNOTATIONS_SIZE_LIMIT:
                errors.append(FieldError("metadata.annotations", f"the annotations hold {size} bytes; the API server "
                                                                  f"allows at most {ANNOTATIONS_SIZE_LIMIT} (256 KiB) in all"))
    return errors


def _dataset_ref_errors(job: AlignmentJob, index: int) -> list[FieldError]:
    """``datasets.<train|eval>.fromStage`` must name an earlier ``generate`` stage whose records are
    of the format the stage reads."""
    stage, errors = job.spec.stages[index], []
    for split in ("train", "eval"):
        source = getattr(stage.datasets, split, None) if stage.datasets else None
        if source is None or source.from_stage is None:
            continue
        path = f"spec.stages[{index}].datasets.{split}.fromStage"
        target = next((i for i, s in enumerate(job.spec.stages) if s.name == source.from_stage), None)
        if target is None or target >= index:
            errors.append(FieldError(path, f"no earlier stage named {source.from_stage!r}; name a generate stage that runs before {stage.name!r}"))
            continue
        producer = job.spec.stages[target]
        if STAGE_TYPES[producer.type].produces != "dataset":
            errors.append(FieldError(path, f"stage {source.from_stage!r} produces a {STAGE_TYPES[producer.type].produces}, not a dataset; "
                                           "name a generate stage"))
            continue
        written, read = GENERATED_FORMAT[producer.method], source.format or STAGE_TYPES[stage.type].dataset_format
        if written != read:
            errors.append(FieldError(path, f"stage {source.from_stage!r} ({producer.method}) writes {written} records, but this "
                                           f"{stage.type} stage reads {read}; use a method that writes {read}"))
    return errors


def parse_job(document: Any) -> AlignmentJob:
    """An AlignmentJob from a manifest dict; raises InvalidManifest listing every error."""
    if not isinstance(document, dict):
        raise InvalidManifest([FieldError("", "the manifest must be a YAML mapping with apiVersion, kind, metadata and spec")])
    size = len(json.dumps(document, separators=(",", ":"), default=str).encode())
    if size > OBJECT_SIZE_LIMIT:
        raise InvalidManifest([FieldError("", f"the manifest is {size} bytes as JSON; the API server stores at most "
                                              f"{OBJECT_SIZE_LIMIT} bytes (1.5 MiB) per object: keep datasets in storage, not inline")])
    limits = metadata_errors(document)
    try:
        job = AlignmentJob.model_validate(document)
    except ValidationError as exc:
        raise InvalidManifest(limits + _pydantic_errors(exc)) from None
    errors = limits + semantic_errors(job)
    if errors:
        raise InvalidManifest(errors)
    return job


def read_manifest_text(path: str | Path) -> str:
    """A manifest file's text; UnreadableManifest (exit 2) when it cannot be read or is not UTF-8."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UnreadableManifest(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UnreadableManifest(f"{path}:{line}: not UTF-8 text (byte {data[exc.start]:#04x}); save it as UTF-8") from None


def read_manifest(path: str | Path) -> Any:
    text = read_manifest_text(path)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UnreadableManifest(f"{path} is not valid YAML: {exc}") from None


def load_job(path: str | Path) -> AlignmentJob:
    return parse_job(read_manifest(path))
