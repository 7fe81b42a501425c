"""The CustomResourceDefinition, generated from the pydantic models.

The result is a structural schema: every field typed and bounded (the API server refuses CEL rules
over unbounded strings and lists), descriptions from the models, no defaults (the stage type's model
fills them when a stage run is resolved), and ``x-kubernetes-validations`` CEL rules for the
cross-field checks of ``alignops.api.validation``. Rules use the Kubernetes CEL ``lists`` library
(``indexOf``), available since Kubernetes 1.27.
"""

from __future__ import annotations

from typing import Any

import yaml

from alignops import GROUP, KIND, PLURAL, VERSION
from alignops.api.base import camel_case
from alignops.api.common import DEVICES_RULE, Resources
from alignops.api.distributed import BATCH_SPLIT_RULE, OFFLOAD_PARAMETERS_RULE
from alignops.api.job import JOB_NAME_MAX, JOB_NAME_PATTERN, AlignmentJobSpec
from alignops.api.stages import STAGE_TYPES, StageType
from alignops.api.status import JobStatus

Schema = dict[str, Any]
_KEEP = ("description", "pattern", "minLength", "maxLength", "minimum", "maximum", "minItems", "maxItems", "maxProperties", "enum")


class UnboundedField(ValueError):
    pass


def _convert(node: Schema, defs: dict[str, Schema]) -> Schema:
    """pydantic JSON schema -> Kubernetes OpenAPI v3 (structural) schema."""
    description = node.get("description")
    if "$ref" in node:
        node = {**defs[node["$ref"].split("/")[-1]], **{k: v for k, v in node.items() if k != "$ref"}}
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {node}")
        merged = {**node, **options[0]}
        merged.pop("anyOf")
        if description:
            merged["description"] = description
        return _convert(merged, defs)
    out: Schema = {}
    kind = node.get("type")
    if "const" in node:
        out["enum"] = [node["const"]]
        kind = kind or "string"
    if kind == "object":
        out["type"] = "object"
        if "properties" in node:
            out["properties"] = {name: _convert(sub, defs) for name, sub in node["properties"].items()}
            if node.get("required"):
                out["required"] = list(node["required"])
        elif isinstance(node.get("additionalProperties"), dict):
            out["additionalProperties"] = _convert(node["additionalProperties"], defs)
    elif kind == "array":
        out["type"] = "array"
        out["items"] = _convert(node["items"], defs)
    elif kind in ("string", "integer", "number", "boolean"):
        out["type"] = kind
    elif kind is not None:
        raise ValueError(f"unsupported schema type {kind!r}")
    for key in _KEEP:
        if key in node:
            out[key] = node[key]
    for exclusive, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if exclusive in node:  # JSON schema's number form -> OpenAPI 3.0's boolean form
            out[inclusive] = node[exclusive]
            out[exclusive] = True
    if "type" not in out and "enum" in out:
        out["type"] = "string"
    return out


def _schema_of(model: type) -> Schema:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _convert(raw, raw.get("$defs", {}))


def _merge_property(name: str, current: Schema | None, new: Schema) -> Schema:
    if current is None:
        return new
    strip = lambda s: {k: v for k, v in s.items() if k != "description"}  # noqa: E731
    if strip(current) != strip(new):
        raise ValueError(f"field {name!r} has different schemas in different stage types; give it one meaning")
    return current


def _types_with(predicate) -> list[str]:
    return [name for name, info in STAGE_TYPES.items() if predicate(name, info)]


def _cel_list(values: list[str]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def stage_schema() -> Schema:
    """One object schema for every stage type, with CEL rules keeping each type to its own fields."""
    per_type = {name: _schema_of(info.model) for name, info in STAGE_TYPES.items()}
    properties: Schema = {}
    hyper: Schema = {}
    for schema in per_type.values():
        for prop, sub in schema["properties"].items():
            if prop == "hyperparameters":
                for field, field_schema in sub.get("properties", {}).items():
                    hyper[field] = _merge_property(f"hyperparameters.{field}", hyper.get(field), field_schema)
            elif prop not in ("type", "algorithm"):
                properties[prop] = _merge_property(prop, properties.get(prop), sub)
    properties["type"] = {
        "type": "string",
        "enum": sorted(STAGE_TYPES),
        "description": "Stage type: " + ", ".join(sorted(STAGE_TYPES)) + ".",
    }
    algorithms = sorted({a for info in STAGE_TYPES.values() for a in info.algorithms})
    if algorithms:
        properties["algorithm"] = {"type": "string", "enum": algorithms, "description": "The method, for stage types that have several."}
    properties["hyperparameters"] = {
        "type": "object",
        "description": "Training settings; which fields apply depends on the stage type.",
        "properties": dict(sorted(hyper.items())),
    }
    required = sorted(set.intersection(*(set(s.get("required", [])) for s in per_type.values())))

    rules: list[Schema] = []
    for prop in sorted(properties):
        owners = [n for n, s in per_type.items() if prop in s["properties"]]
        if prop not in ("type", "algorithm", "hyperparameters") and len(owners) < len(per_type):
            rules.append({"rule": f"!has(self.{prop}) || self.type in {_cel_list(owners)}",
                          "message": f"{prop} applies only to stage types {', '.join(owners)}"})
    for field in sorted(hyper):
        owners = [n for n, s in per_type.items() if field in s["properties"]["hyperparameters"].get("properties", {})]
        if len(owners) < len(per_type):
            rules.append({"rule": f"!has(self.hyperparameters) || !has(self.hyperparameters.{field}) || self.type in {_cel_list(owners)}",
                          "message": f"hyperparameters.{field} applies only to stage types {', '.join(owners)}"})
    with_algorithms = {n: i for n, i in STAGE_TYPES.items() if i.algorithms}
    if with_algorithms:
        clauses = [f"(self.type == '{n}' && self.algorithm in {_cel_list(list(i.algorithms))})" for n, i in with_algorithms.items()]
        rules.append({"rule": "!has(self.algorithm) || " + " || ".join(clauses),
                      "message": "algorithm must be one of the stage type's algorithms: "
                      + "; ".join(f"{n}: {', '.join(i.algorithms)}" for n, i in with_algorithms.items())})
    gpus_maximum = Resources.model_fields["gpus"].metadata
    field_limit = next(m.le for m in gpus_maximum if getattr(m, "le", None) is not None)
    for limit in sorted({i.max_gpus for i in STAGE_TYPES.values()} - {field_limit}):  # the field's own bound says the rest
        owners = _types_with(lambda _n, i, limit=limit: i.max_gpus == limit)
        rules.append({"rule": f"!(self.type in {_cel_list(owners)}) || !has(self.resources) || (has(self.resources.gpus) && self.resources.gpus > 1"
                              f" ? self.resources.gpus : 1) * (has(self.resources.nodes) ? self.resources.nodes : 1) <= {limit}",
                      "message": f"resources.gpus x nodes: stage types {', '.join(owners)} train on at most {limit} GPU per run for now"})
    for name, info in STAGE_TYPES.items():
        for rule, message in info.rules:
            rules.append({"rule": f"self.type != '{name}' || ({rule})", "message": f"{name} stage: {message}"})
    rules.append({"rule": OFFLOAD_PARAMETERS_RULE[0], "message": OFFLOAD_PARAMETERS_RULE[1]})
    rules.append({"rule": DEVICES_RULE[0], "message": DEVICES_RULE[1]})
    dataset_passes = _types_with(lambda _n, i: "gradient_accumulation_steps" in i.model.model_fields["hyperparameters"].annotation.model_fields)
    rules.append({"rule": f"!(self.type in {_cel_list(dataset_passes)}) || {BATCH_SPLIT_RULE[0]}", "message": BATCH_SPLIT_RULE[1]})
    return {"type": "object", "required": required, "properties": dict(sorted(properties.items())),
            "x-kubernetes-validations": rules}


def spec_rules() -> list[Schema]:
    names = "self.stages.map(t, t.name)"
    rules: list[Schema] = [{
        "rule": "self.stages.all(s, self.stages.exists_one(t, t.name == s.name))",
        "message": "stage names must be unique",
    }]
    ref_fields = sorted({f for info in STAGE_TYPES.values() for f in info.inputs})
    for field in ref_fields:
        alias = camel_case(field)
        rules.append({
            "rule": f"self.stages.all(s, !has(s.{alias}) || !has(s.{alias}.fromStage) || "
                    f"({names}.indexOf(s.{alias}.fromStage) >= 0 && {names}.indexOf(s.{alias}.fromStage) < {names}.indexOf(s.name)))",
            "message": f"{alias}.fromStage must name an earlier stage",
        })
    producers = _types_with(lambda _n, i: i.produces == "dataset")
    for split in ("train", "eval"):
        ref = f"s.datasets.{split}.fromStage"
        rules.append({
            "rule": f"self.stages.all(s, !has(s.datasets) || !has(s.datasets.{split}) || !has({ref}) || "
                    f"({names}.indexOf({ref}) >= 0 && {names}.indexOf({ref}) < {names}.indexOf(s.name) && "
                    f"self.stages.exists(t, t.name == {ref} && t.type in {_cel_list(producers)})))",
            "message": f"datasets.{split}.fromStage must name an earlier stage that produces a dataset ({', '.join(producers)})",
        })
    for type_name, info in STAGE_TYPES.items():
        for field, accepted in info.inputs.items():
            alias = camel_case(field)
            producers = _types_with(lambda _n, i, accepted=accepted: i.produces in accepted)
            rules.append({
                "rule": f"self.stages.all(s, s.type != '{type_name}' || !has(s.{alias}) || !has(s.{alias}.fromStage) || "
                        f"self.stages.exists(t, t.name == s.{alias}.fromStage && t.type in {_cel_list(producers)}))",
                "message": f"{alias}.fromStage of a {type_name} stage must name a stage that produces a {' or '.join(accepted)} ({', '.join(producers)})",
            })
    return rules


def spec_schema() -> Schema:
    schema = _schema_of(AlignmentJobSpec)
    schema["properties"]["stages"]["items"] = stage_schema()
    schema["x-kubernetes-validations"] = spec_rules()
    return schema


def check_bounded(schema: Schema, path: str = "") -> None:
    """Every string, list and map must be bounded: the API server refuses CEL rules otherwise, and
    a bound is documentation too."""
    kind = schema.get("type")
    if kind == "string" and "maxLength" not in schema and "enum" not in schema:
        raise UnboundedField(f"{path}: string without maxLength")
    if kind == "array":
        if "maxItems" not in schema:
            raise UnboundedField(f"{path}: list without maxItems")
        check_bounded(schema["items"], path + "[]")
    if kind == "object":
        if "additionalProperties" in schema:
            if "maxProperties" not in schema:
                raise UnboundedField(f"{path}: map without maxProperties")
            check_bounded(schema["additionalProperties"], path + "{}")
        for name, sub in schema.get("properties", {}).items():
            check_bounded(sub, f"{path}.{name}" if path else name)


def build_crd() -> Schema:
    spec = spec_schema()
    status = _schema_of(JobStatus)
    check_bounded(spec, "spec")
    check_bounded(status, "status")
    root = {
        "type": "object",
        "description": "AlignmentJob runs an LLM alignment pipeline (SFT, reward model, preference and RL stages) stage by stage.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "alignops.io/v1alpha1"},
            "kind": {"type": "string", "description": "AlignmentJob"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": [{
            "rule": f"self.metadata.name.size() <= {JOB_NAME_MAX} && self.metadata.name.matches('{JOB_NAME_PATTERN}')",
            "message": f"metadata.name must be a DNS-1123 label of at most {JOB_NAME_MAX} characters (lower-case letters, digits, '-'; starting with a letter)",
        }],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "plural": PLURAL, "singular": KIND.lower(), "listKind": f"{KIND}List",
                      "shortNames": ["aj"], "categories": ["alignops"]},
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                    {"name": "Stage", "type": "string", "jsonPath": ".status.currentStage"},
                    {"name": "GPUs", "type": "string", "jsonPath": ".status.currentGpus",
                     "description": "Nodes x GPUs per node of the current stage's run"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {"openAPIV3Schema": root},
            }],
        },
    }


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper, data):
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_presenter)


def render_crd() -> str:
    return "# Generated by `alignops crd` from alignops.api: do not edit.\n" + yaml.dump(
        build_crd(), Dumper=_Dumper, sort_keys=False, width=120
    )
