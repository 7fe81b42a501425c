"""Building blocks shared by stage types: model source, storage, datasets, references, resources."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from urllib.parse import urlsplit

from pydantic import Field, StringConstraints, field_validator, model_validator

from alignops.api.base import ApiModel

URI_PATTERN = r"^(s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?|file:///.*)$"
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|E|Ei)?$"
LabelValue = Annotated[str, StringConstraints(max_length=63)]
# A Hugging Face Hub repository (ORG/NAME) and a revision (branch, tag or commit; refs/pr/N too)
HUB_REPO_PATTERN = r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,95}/[A-Za-z0-9][-A-Za-z0-9_.]{0,95}$"
REVISION_PATTERN = r"^[-A-Za-z0-9_./]+$"
# How a resolved stage run names a Hub model among its storage URIs: hf://ORG/NAME@REVISION
HUB_SCHEME = "hf://"


def hub_location(repo: str, revision: str | None) -> str:
    return f"{HUB_SCHEME}{repo}@{revision or 'main'}"


def parse_hub_location(location: str) -> tuple[str, str]:
    """``hf://ORG/NAME@REVISION`` -> (ORG/NAME, REVISION)."""
    repo, _, revision = location[len(HUB_SCHEME):].partition("@")
    return repo, revision or "main"


class Architecture(ApiModel):
    """A small decoder-only model built from a config, for demos and tests (llama-style)."""

    family: Literal["llama"] = Field("llama", description="Model family; `llama` builds a LlamaForCausalLM.")
    hidden_size: int = Field(64, ge=8, le=8192, description="Width of the residual stream.")
    layers: int = Field(2, ge=1, le=128, description="Number of transformer blocks.")
    heads: int = Field(4, ge=1, le=128, description="Attention heads; must divide hiddenSize.")
    intermediate_size: int | None = Field(
        None, ge=8, le=65536, description="MLP width; defaults to 4 x hiddenSize."
    )
    max_positions: int = Field(128, ge=16, le=131072, description="Longest sequence the model accepts (tokens).")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the random initialisation.")
    tokenizer: Literal["char", "bpe"] = Field(
        "char",
        description="`char`: one token per printable ASCII character (the demo's). `bpe`: a byte-level BPE trained "
        "deterministically with `tokenizers` on the stage's training text, with a ChatML chat template, no BOS and two "
        "end-of-sequence tokens (as Qwen's); it travels in every checkpoint, so later stages reuse it.",
    )
    vocab_size: int = Field(1024, ge=300, le=65536, description="Vocabulary size of the `bpe` tokenizer (256 bytes, merges and special tokens).")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "Architecture":
        if self.hidden_size % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide hiddenSize ({self.hidden_size})")
        return self


class SecretKey(ApiModel):
    """One key of a Secret in the job's namespace."""

    name: str = Field(..., max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", description="Secret name.")
    key: str = Field("HF_TOKEN", max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="The key holding the value (default HF_TOKEN).")


class ModelSource(ApiModel):
    """The base model: a Hugging Face model directory in storage (what ``save_pretrained`` or
    ``huggingface-cli download`` leaves, or a committed AlignOps checkpoint), a model on the Hugging
    Face Hub, or an architecture built from a config (no download)."""

    uri: str | None = Field(
        None,
        max_length=1024,
        pattern=URI_PATTERN,
        description="Storage URI of a Hugging Face model directory: config.json, *.safetensors (sharded with an index too) "
        "and tokenizer files (s3://bucket/path or file:///path).",
    )
    hub: str | None = Field(
        None, max_length=193, pattern=HUB_REPO_PATTERN,
        description="A Hugging Face Hub model, ORG/NAME (e.g. Qwen/Qwen2.5-0.5B-Instruct), read with huggingface_hub; "
        "HF_HOME is its cache and HF_HUB_OFFLINE=1 reads only the cache.",
    )
    revision: str | None = Field(None, max_length=255, pattern=REVISION_PATTERN, description="Hub branch, tag or commit (hub only; default main).")
    architecture: Architecture | None = Field(
        None, description="Build a small model from this config instead of loading one (demos, tests)."
    )
    token_secret: SecretKey | None = Field(
        None, description="Secret holding a Hugging Face token (gated or private models): becomes HF_TOKEN in every stage pod."
    )
    trust_remote_code: bool = Field(
        False, description="Run model or tokenizer code shipped with a model (auto_map) whose type transformers does not know; refused otherwise."
    )
    chat_template: str | None = Field(
        None, max_length=32768, description="A Jinja chat template replacing the tokenizer's own (for every model the job loads)."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> "ModelSource":
        if sum(x is not None for x in (self.uri, self.hub, self.architecture)) != 1:
            raise ValueError("set exactly one of model.uri, model.hub or model.architecture")
        if self.revision is not None and self.hub is None:
            raise ValueError("model.revision applies to model.hub only")
        return self

    @property
    def location(self) -> str | None:
        """Where the model is: its URI, ``hf://ORG/NAME@REVISION``, or None (built from the architecture)."""
        return hub_location(self.hub, self.revision) if self.hub is not None else self.uri


class StorageSpec(ApiModel):
    """Where checkpoints, datasets and rollouts go. Credentials never appear here: they come from the
    Secret named by secretName (as environment variables) or from the pod's IAM role."""

    uri: str = Field(
        ...,
        max_length=1024,
        pattern=URI_PATTERN,
        description="Root of the job's objects: s3://bucket/prefix, or file:///path for local runs.",
    )
    endpoint: str | None = Field(
        None, max_length=512, pattern=r"^https?://[^/@\s]+([/?#]\S*)?$",
        description="S3 endpoint URL for MinIO, Ceph RGW or other S3-compatible servers (no credentials in it).",
    )
    region: str | None = Field(None, max_length=64, description="S3 region, e.g. us-east-1.")
    secret_name: str | None = Field(
        None,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Secret whose keys (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...) become the stage pods' environment.",
    )
    path_style: bool = Field(False, description="Use path-style addressing (MinIO, Ceph RGW).")

    @field_validator("endpoint", mode="before")
    @classmethod
    def _no_credentials_in_endpoint(cls, value):
        # a URL's user:password would be copied into every stage's config, the status and the logs
        if isinstance(value, str) and "@" in urlsplit(value).netloc:
            raise ValueError("the endpoint holds credentials (user:password@); remove them and put "
                             "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the Secret named by storage.secretName")
        return value


class StageRef(ApiModel):
    """A model input: the checkpoint of an earlier stage, a model directory URI, or a Hub model."""

    from_stage: str | None = Field(
        None, max_length=20, pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$", description="Name of an earlier stage whose final checkpoint is used."
    )
    uri: str | None = Field(
        None, max_length=1024, pattern=URI_PATTERN,
        description="A committed checkpoint or a Hugging Face model directory to use instead (s3:// or file://).",
    )
    hub: str | None = Field(None, max_length=193, pattern=HUB_REPO_PATTERN, description="A Hugging Face Hub model (ORG/NAME) to use instead.")
    revision: str | None = Field(None, max_length=255, pattern=REVISION_PATTERN, description="Hub branch, tag or commit (hub only; default main).")

    @model_validator(mode="after")
    def _exactly_one(self) -> "StageRef":
        if sum(x is not None for x in (self.from_stage, self.uri, self.hub)) != 1:
            raise ValueError("set exactly one of fromStage, uri or hub")
        if self.revision is not None and self.hub is None:
            raise ValueError("revision applies to hub only")
        return self

    @property
    def location(self) -> str | None:
        """The URI or ``hf://ORG/NAME@REVISION``; None for fromStage (the planner resolves it)."""
        return hub_location(self.hub, self.revision) if self.hub is not None else self.uri


class LoraAdapter(ApiModel):
    """Train a LoRA adapter (peft) instead of every weight. The checkpoint holds the adapter
    (adapter_config.json, adapter_model.safetensors); the reference of preference and rl stages is
    the same model with the adapter disabled (no second copy)."""

    type: Literal["lora"] = Field("lora", description="Adapter type: lora.")
    rank: int = Field(16, ge=1, le=1024, description="LoRA rank r.")
    alpha: float | None = Field(None, gt=0, le=65536, description="LoRA alpha (the update is scaled by alpha / rank); default 2 x rank.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: str = Field(
        "all-linear", max_length=1024, pattern=r"^(all-linear|[A-Za-z_][A-Za-z0-9_.]*(,[A-Za-z_][A-Za-z0-9_.]*)*)$",
        description="`all-linear` (every linear layer but the output head) or module names separated by commas, e.g. q_proj,v_proj.",
    )
    merge: bool = Field(
        False, description="Also write the merged full model (model.safetensors, loadable without peft) at the checkpoint's root, "
        "the adapter then in its adapter/ subdirectory.",
    )

    @property
    def lora_alpha(self) -> float:
        return self.alpha if self.alpha is not None else 2.0 * self.rank

    @property
    def modules(self) -> str | list[str]:
        """peft's target_modules: the string ``all-linear`` or a list of names."""
        return self.target_modules if self.target_modules == "all-linear" else self.target_modules.split(",")


DatasetFormat = Literal["sft", "pairs", "rankings", "prompts", "unpaired"]


class DatasetFields(ApiModel):
    """A dataset's own column names for the names the stages read (TRL's): set only those that differ."""

    prompt: str | None = Field(None, max_length=128, description="Column of the prompt (text or messages).")
    completion: str | None = Field(None, max_length=128, description="Column of the completion (text or messages).")
    chosen: str | None = Field(None, max_length=128, description="Column of the preferred response.")
    rejected: str | None = Field(None, max_length=128, description="Column of the dispreferred response.")
    label: str | None = Field(None, max_length=128, description="Column of the desirable/undesirable label (unpaired data).")
    messages: str | None = Field(None, max_length=128, description="Column of a conversation ({role, content} list).")
    text: str | None = Field(None, max_length=128, description="Column of plain text (language modelling, all tokens learnt).")
    responses: str | None = Field(None, max_length=128, description="Column of a ranking's responses.")
    ranking: str | None = Field(None, max_length=128, description="Column of a ranking's order (indices, best first).")
    scores: str | None = Field(None, max_length=128, description="Column of a ranking's per-response scores.")
    margin: str | None = Field(None, max_length=128, description="Column of a pair's Bradley-Terry margin.")
    answer: str | None = Field(None, max_length=128, description="Column of a prompt's verifiable answer (rl).")
    source: str | None = Field(None, max_length=128, description="Column of a record's data source (C-RLFT conditionWeights).")

    def renames(self) -> dict[str, str]:
        """{dataset column: name the stage reads} for the names that are set."""
        return {column: name for name, column in self.model_dump().items() if column is not None and column != name}


HUB_REPO_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$"


class DatasetSource(ApiModel):
    """Records from storage (JSON lines, JSON, Parquet, CSV, Arrow, or a directory of them), from the
    Hugging Face Hub, or from the built-in generator of the demo task. TRL's standard and
    conversational formats are read as they are; ``fields`` maps other column names."""

    uri: str | None = Field(
        None, max_length=1024, pattern=URI_PATTERN,
        description="Storage URI of a .jsonl, .json, .parquet, .csv or .arrow file, or of a directory of such shards "
                    "(a dataset repository's layout and README configs are honoured).",
    )
    hub: str | None = Field(
        None, max_length=192, pattern=HUB_REPO_PATTERN,
        description="A Hugging Face Hub dataset, ORG/NAME (token from HF_TOKEN; offline, HF_HUB_OFFLINE=1 reads the cache).",
    )
    from_stage: str | None = Field(
        None, max_length=20, pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$",
        description="Name of an earlier `generate` stage whose committed dataset is read.",
    )
    generator: Literal["arithmetic", "arithmetic_task_lists", "sum_programs"] | None = Field(
        None, description="Built-in generator: `arithmetic` makes the verifiable demo task (sums of small numbers); "
        "`arithmetic_task_lists` its sft records, every fourth a self_instruct task list (teaches a tiny model the list format "
        "a pretrained one knows); `sum_programs` tiny Python programs printing a sum (sft and prompts, for code_execution).",
    )
    split: str | None = Field(
        None, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
        description="Split of a Hub dataset or a dataset directory (default `train`).",
    )
    subset: str | None = Field(None, max_length=128, description="Configuration (subset) of a Hub dataset or a dataset directory.")
    revision: str | None = Field(None, max_length=128, description="Branch, tag or commit of a Hub dataset (default `main`).")
    fields: DatasetFields | None = Field(
        None, description="Column names of this dataset for the names the stage reads, e.g. {prompt: question, chosen: good}.",
    )
    streaming: bool = Field(
        False, description="Read and tokenise the data as training goes, in bounded memory (files larger than memory); "
                           "needs hyperparameters.maxSteps.",
    )
    size: int = Field(2000, ge=1, le=1_000_000, description="Examples to generate (generator only).")
    seed: int = Field(
        1, ge=0, le=2**31 - 1,
        description="Generator seed (its held-out split always uses its own); for other data, the seed of the held-out split carved from train.",
    )
    max_operand: int = Field(99, ge=1, le=9999, description="Largest operand of the arithmetic task (generator only).")
    format: DatasetFormat | None = Field(
        None, description="Record format (sft, pairs, rankings, prompts, unpaired); inferred from the columns when not given.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> "DatasetSource":
        if sum(x is not None for x in (self.uri, self.hub, self.generator, self.from_stage)) != 1:
            raise ValueError("set exactly one of uri, hub, generator or fromStage")
        if self.revision is not None and self.hub is None:
            raise ValueError("revision applies to hub datasets only")
        if (self.generator is not None or self.from_stage is not None) and (self.streaming or self.split or self.subset or self.fields):
            raise ValueError("streaming, split, subset and fields apply to uri or hub datasets, not to a generator or fromStage")
        return self


class Datasets(ApiModel):
    """The stage's training data and its held-out evaluation data."""

    train: DatasetSource = Field(..., description="Training records.")
    eval: DatasetSource | None = Field(
        None,
        description="Held-out records; for a generator, defaults to its held-out split (disjoint from every training set); "
                    "for other data, to a seeded split carved from train (see holdOut).",
    )
    hold_out: bool = Field(
        True, description="Without eval, carve min(evalSize, 10%) of the training records out as held-out data (not generators).",
    )


class Toleration(ApiModel):
    """A Kubernetes toleration (see core/v1 Toleration)."""

    key: str | None = Field(None, max_length=317, description="Taint key the toleration applies to.")
    operator: Literal["Exists", "Equal"] | None = Field(None, description="Exists or Equal (default Equal).")
    value: str | None = Field(None, max_length=63, description="Taint value to match.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(None, description="Taint effect to match.")
    toleration_seconds: int | None = Field(None, ge=0, description="How long a NoExecute taint is tolerated.")


DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"


class KeySelector(ApiModel):
    """One key of a Secret or ConfigMap (core/v1 SecretKeySelector / ConfigMapKeySelector)."""

    name: str = Field(..., max_length=253, pattern=DNS_SUBDOMAIN, description="Name of the Secret or ConfigMap.")
    key: str = Field(..., max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="The key whose value is used.")
    optional: bool | None = Field(None, description="Start the pod even if the object or key is missing.")


class EnvVarSource(ApiModel):
    """Where an environment variable's value comes from."""

    secret_key_ref: KeySelector | None = Field(None, description="A key of a Secret (e.g. an HF token).")
    config_map_key_ref: KeySelector | None = Field(None, description="A key of a ConfigMap.")

    @model_validator(mode="after")
    def _exactly_one(self) -> "EnvVarSource":
        if (self.secret_key_ref is None) == (self.config_map_key_ref is None):
            raise ValueError("set exactly one of secretKeyRef or configMapKeyRef")
        return self


class EnvVar(ApiModel):
    """An environment variable of the stage container (core/v1 EnvVar, without fieldRef)."""

    name: str = Field(..., min_length=1, max_length=128, pattern=ENV_NAME, description="Variable name; ALIGNOPS_* names are reserved.")
    value: str | None = Field(None, max_length=4096, description="Literal value.")
    value_from: EnvVarSource | None = Field(None, description="Value from a Secret or ConfigMap key.")

    @model_validator(mode="after")
    def _not_both(self) -> "EnvVar":
        if self.value is not None and self.value_from is not None:
            raise ValueError("set value or valueFrom, not both")
        return self


class NamedRef(ApiModel):
    """A Secret or ConfigMap by name."""

    name: str = Field(..., max_length=253, pattern=DNS_SUBDOMAIN, description="Object name.")
    optional: bool | None = Field(None, description="Start the pod even if the object is missing.")


class EnvFromSource(ApiModel):
    """Every key of a Secret or ConfigMap as environment variables (core/v1 EnvFromSource)."""

    secret_ref: NamedRef | None = Field(None, description="A Secret whose keys become variables.")
    config_map_ref: NamedRef | None = Field(None, description="A ConfigMap whose keys become variables.")
    prefix: str | None = Field(None, max_length=64, pattern=r"^[-._a-zA-Z0-9]*$", description="Prepended to every key.")

    @model_validator(mode="after")
    def _exactly_one(self) -> "EnvFromSource":
        if (self.secret_ref is None) == (self.config_map_ref is None):
            raise ValueError("set exactly one of secretRef or configMapRef")
        return self


class SecretVolume(ApiModel):
    """A Secret as files."""

    secret_name: str = Field(..., max_length=253, pattern=DNS_SUBDOMAIN, description="Secret name.")
    optional: bool | None = Field(None, description="Mount an empty directory if the Secret is missing.")


class ConfigMapVolume(ApiModel):
    """A ConfigMap as files."""

    name: str = Field(..., max_length=253, pattern=DNS_SUBDOMAIN, description="ConfigMap name.")
    optional: bool | None = Field(None, description="Mount an empty directory if the ConfigMap is missing.")


class ClaimVolume(ApiModel):
    """A PersistentVolumeClaim (e.g. a shared dataset cache)."""

    claim_name: str = Field(..., max_length=253, pattern=DNS_SUBDOMAIN, description="PersistentVolumeClaim name.")


class EmptyDirVolume(ApiModel):
    """A scratch directory that lives as long as the pod."""

    medium: Literal["", "Memory"] | None = Field(None, description="`Memory` for tmpfs; empty for the node's disk.")
    size_limit: str | None = Field(None, max_length=32, pattern=QUANTITY_PATTERN, description="Size limit, e.g. `100Gi`.")


class ExtraVolume(ApiModel):
    """A volume and where the stage container mounts it: set exactly one source."""

    name: str = Field(..., max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", description="Volume name (not config, scratch or dshm).")
    mount_path: str = Field(..., max_length=1024, pattern=r"^/", description="Absolute path in the container.")
    read_only: bool | None = Field(None, description="Mount read-only.")
    sub_path: str | None = Field(None, max_length=1024, description="Mount only this path inside the volume.")
    secret: SecretVolume | None = Field(None, description="Files from a Secret.")
    config_map: ConfigMapVolume | None = Field(None, description="Files from a ConfigMap.")
    persistent_volume_claim: ClaimVolume | None = Field(None, description="A PersistentVolumeClaim.")
    empty_dir: EmptyDirVolume | None = Field(None, description="A directory that lives as long as the pod.")

    @model_validator(mode="after")
    def _exactly_one(self) -> "ExtraVolume":
        sources = [s for s in (self.secret, self.config_map, self.persistent_volume_claim, self.empty_dir) if s is not None]
        if len(sources) != 1:
            raise ValueError("set exactly one of secret, configMap, persistentVolumeClaim or emptyDir")
        return self


class NodeSelectorRequirement(ApiModel):
    """A node label expression (core/v1 NodeSelectorRequirement)."""

    key: str = Field(..., max_length=317, description="Node label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"] = Field(..., description="In, NotIn, Exists, DoesNotExist, Gt or Lt.")
    values: list[LabelValue] | None = Field(None, max_length=32, description="Values for In/NotIn (several) or Gt/Lt (one integer).")


class NodeSelectorTerm(ApiModel):
    """Expressions that must all hold."""

    match_expressions: list[NodeSelectorRequirement] = Field(..., min_length=1, max_length=16, description="Node label expressions, ANDed.")


class NodeSelector(ApiModel):
    """Terms of which at least one must hold."""

    node_selector_terms: list[NodeSelectorTerm] = Field(..., min_length=1, max_length=8, description="Terms, ORed.")


class PreferredSchedulingTerm(ApiModel):
    """A weighted preference."""

    weight: int = Field(..., ge=1, le=100, description="Weight 1-100 added to a node's score when the term matches.")
    preference: NodeSelectorTerm = Field(..., description="The term.")


class NodeAffinity(ApiModel):
    """Node affinity (core/v1 NodeAffinity)."""

    required_during_scheduling_ignored_during_execution: NodeSelector | None = Field(
        None, description="Nodes the pods may run on."
    )
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] | None = Field(
        None, max_length=8, description="Nodes the pods prefer."
    )


class Affinity(ApiModel):
    """A bounded subset of core/v1 Affinity: node affinity (pod (anti-)affinity is not offered)."""

    node_affinity: NodeAffinity | None = Field(None, description="Node affinity of the stage's pods.")


class LocalObjectReference(ApiModel):
    """An object in the job's namespace, by name."""

    name: str = Field(..., max_length=253, pattern=DNS_SUBDOMAIN, description="Object name.")


# an extended resource name (domain/name), e.g. rdma/ib or vpc.amazonaws.com/efa
DEVICE_RESOURCE = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
GPU_RESOURCE = "nvidia.com/gpu"


class Resources(ApiModel):
    """What one stage run asks of the cluster. `alignops run` reads gpus and nodes only: it starts
    gpus x nodes processes on one machine (the same global ranks, so the same numbers)."""

    cpu: str | None = Field(None, max_length=32, pattern=QUANTITY_PATTERN, description="CPU request and limit, e.g. `8` or `500m`.")
    memory: str | None = Field(None, max_length=32, pattern=QUANTITY_PATTERN, description="Memory request and limit, e.g. `64Gi`.")
    gpus: int = Field(0, ge=0, le=64, description="nvidia.com/gpu per node; one training process per GPU (one on the CPU for 0).")
    nodes: int = Field(
        1, ge=1, le=64,
        description="Nodes (one pod each, gpus GPUs each) of every run of the stage: an Indexed Job whose pods meet at a "
                    "rendezvous and fail or stop together. A split rl stage's rollout runs stay on one node.",
    )
    devices: dict[Annotated[str, StringConstraints(max_length=253)], Annotated[int, Field(ge=1, le=1024)]] | None = Field(
        None, max_length=8,
        description="Extended resources of each pod beside GPUs, e.g. network devices for NCCL across nodes "
                    "({rdma/ib: 1} or {vpc.amazonaws.com/efa: 4}); unset: the operator's default for runs across nodes.",
    )
    node_selector: dict[str, LabelValue] | None = Field(
        None, max_length=32, description="Node labels the stage's pods must match."
    )
    tolerations: list[Toleration] | None = Field(None, max_length=16, description="Taints the stage's pods tolerate.")
    image: str | None = Field(None, max_length=512, description="Container image overriding the operator's default for this stage.")
    affinity: Affinity | None = Field(None, description="Node affinity of the stage's pods.")
    priority_class_name: str | None = Field(None, max_length=253, pattern=DNS_SUBDOMAIN, description="PriorityClass of the stage's pods.")
    image_pull_secrets: list[LocalObjectReference] | None = Field(None, max_length=8, description="Secrets for pulling the stage image.")
    env: list[EnvVar] | None = Field(None, max_length=64, description="Extra environment variables of the stage container.")
    env_from: list[EnvFromSource] | None = Field(None, max_length=16, description="Secrets/ConfigMaps whose keys become environment variables (e.g. HF_TOKEN).")
    volumes: list[ExtraVolume] | None = Field(None, max_length=16, description="Extra volumes mounted into the stage container.")

    @field_validator("devices")
    @classmethod
    def _device_names(cls, devices: dict[str, int] | None) -> dict[str, int] | None:
        for name in devices or {}:
            if name == GPU_RESOURCE:
                raise ValueError(f"{GPU_RESOURCE}: request GPUs with resources.gpus (it sets the processes too)")
            if not re.match(DEVICE_RESOURCE, name):
                raise ValueError(f"{name!r} is not an extended resource name (domain/name, e.g. rdma/ib or vpc.amazonaws.com/efa)")
        return devices


# the CRD's form of Resources' device-name check
DEVICES_RULE = (f"!has(self.resources) || !has(self.resources.devices) || self.resources.devices.all(k, "
                f"k.matches('{DEVICE_RESOURCE}') && k != '{GPU_RESOURCE}')",
                f"resources.devices: extended resource names (domain/name, e.g. rdma/ib); request {GPU_RESOURCE} with resources.gpus")
