"""Checks of a plain Hugging Face model directory (no manifest vouches for it) before anything loads
it: the config, every safetensors header against its file's size, a sharded checkpoint's index
against its shards, the embedding against the config's vocabulary, the tokenizer files, and code
shipped with the model (refused unless trusted). Each problem is a ``ModelDirError`` naming the
file and the fix; the stage turns it into exit 78.

Only safetensors weights are read: a pickle (``pytorch_model.bin``) can run code when loaded.
"""

from __future__ import annotations

import fnmatch
import json
import math
from pathlib import Path

CONFIG = "config.json"
INDEX = "model.safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")
# what a model directory needs; a Hub snapshot and a directory in storage read only these
MODEL_FILE_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken")
CODE_PATTERNS = ("*.py",)
# Mistral's repositories carry a second copy of the weights in their own format
SKIPPED_PATTERNS = ("consolidated*.safetensors",)
HEADER_LIMIT = 100 << 20  # a safetensors header longer than this is not one
DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
               "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1}
EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight")


class ModelDirError(ValueError):
    """The directory can never load as it is."""


def wanted_file(name: str, trust_remote_code: bool) -> bool:
    """Whether a model directory's file is read (``name`` relative to the directory)."""
    patterns = MODEL_FILE_PATTERNS + (CODE_PATTERNS if trust_remote_code else ())
    return (any(fnmatch.fnmatch(name, p) for p in patterns)
            and not any(fnmatch.fnmatch(name, p) for p in SKIPPED_PATTERNS))


def read_json(path: Path, where: str) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelDirError(f"{where}/{path.name} is not readable JSON ({exc}); download it again") from None
    if not isinstance(value, dict):
        raise ModelDirError(f"{where}/{path.name} must hold a JSON object, got {type(value).__name__}")
    return value


def safetensors_header(path: Path, where: str) -> dict:
    """The tensor table of a safetensors file (name -> dtype, shape, data_offsets), checked against
    the file: a file cut short (an interrupted download) or not safetensors at all is refused here
    instead of failing deep inside the loader."""
    label = f"{where}/{path.name}"
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length <= 0 or length > HEADER_LIMIT or 8 + length > size:
            raise ModelDirError(f"{label} is not a safetensors file ({size} bytes; its header length reads {length}): "
                                "download it again or save the model with save_pretrained(safe_serialization=True)")
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            raise ModelDirError(f"{label}: its safetensors header is not JSON; download the file again") from None
    if not isinstance(header, dict):
        raise ModelDirError(f"{label}: its safetensors header is not a table of tensors")
    tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
    end = 0
    for name, entry in tensors.items():
        try:
            start, stop = entry["data_offsets"]
            shape, dtype = entry["shape"], entry["dtype"]
        except (KeyError, TypeError, ValueError):
            raise ModelDirError(f"{label}: tensor {name!r} has no dtype, shape and data_offsets") from None
        width = DTYPE_BYTES.get(dtype)
        if width is not None and stop - start != math.prod(shape) * width:
            raise ModelDirError(f"{label}: tensor {name!r} ({dtype} {shape}) spans {stop - start} bytes, "
                                f"not {math.prod(shape) * width}; the file is corrupt")
        end = max(end, stop)
    if 8 + length + end != size:
        raise ModelDirError(f"{label}: its tensors end at byte {8 + length + end} but the file has {size} bytes "
                            "(cut short or padded: an interrupted download?); download it again")
    return tensors


def check_weights(directory: Path, where: str, config: dict) -> None:
    index_path = directory / INDEX
    if index_path.exists():
        index = read_json(index_path, where)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelDirError(f"{where}/{INDEX} has no weight_map")
        tensors: dict[str, dict] = {}
        for shard in sorted(set(weight_map.values())):
            if not (directory / shard).is_file():
                raise ModelDirError(f"{where}/{INDEX} names shard {shard}, which is missing; download it too")
            header = safetensors_header(directory / shard, where)
            missing = [name for name, s in weight_map.items() if s == shard and name not in header]
            if missing:
                raise ModelDirError(f"{where}/{shard} lacks {len(missing)} tensor(s) its index puts there, e.g. {missing[0]}")
            tensors.update(header)
    else:
        shards = sorted(p for p in directory.glob("*.safetensors") if p.name != ADAPTER_WEIGHTS and wanted_file(p.name, False))
        if not shards:
            pickles = sorted(p.name for pattern in PICKLE_PATTERNS for p in directory.glob(pattern))
            if pickles:
                raise ModelDirError(f"{where} has weights only as pickles ({', '.join(pickles)}), which AlignOps does not load "
                                    "(unpickling can run code): convert them with save_pretrained(safe_serialization=True)")
            raise ModelDirError(f"{where} has no weights: expected model.safetensors, or shards with {INDEX}")
        if len(shards) > 1:
            raise ModelDirError(f"{where} has several safetensors files ({', '.join(p.name for p in shards)}) but no {INDEX} saying which tensor is where")
        tensors = safetensors_header(shards[0], where)
    vocab = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    for name, entry in tensors.items():
        if name.endswith(EMBEDDING_SUFFIXES) and isinstance(vocab, int) and entry["shape"][0] != vocab:
            raise ModelDirError(f"{where}: {name} has {entry['shape'][0]} rows but {CONFIG} says vocab_size {vocab}; "
                                "the config and the weights are from different models")


def check_code(directory: Path, where: str, config: dict, tokenizer_config: dict, trust_remote_code: bool) -> None:
    """Code shipped with the model runs only where transformers has no class of its own for it, and
    then only when the manifest says so."""
    from transformers import CONFIG_MAPPING
    import transformers

    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        raise ModelDirError(f"{where}/{CONFIG} has no model_type; it is not a transformers config")
    needs_code = []
    if model_type not in CONFIG_MAPPING:
        if "auto_map" not in config:
            raise ModelDirError(f"{where}/{CONFIG}: model_type {model_type!r} is unknown to transformers "
                                f"{transformers.__version__}; upgrade transformers in the image")
        needs_code.append(f"model_type {model_type!r}")
    tokenizer_class = tokenizer_config.get("tokenizer_class")
    if (isinstance(tokenizer_class, str) and "auto_map" in tokenizer_config
            and not hasattr(transformers, tokenizer_class) and not hasattr(transformers, tokenizer_class.removesuffix("Fast"))):
        needs_code.append(f"tokenizer_class {tokenizer_class!r}")
    if needs_code and not trust_remote_code:
        raise ModelDirError(f"{where} needs code shipped with the model ({' and '.join(needs_code)} are not part of "
                            "transformers): read that code, then set spec.model.trustRemoteCode: true to run it")
    if needs_code and not any(directory.glob("*.py")):
        raise ModelDirError(f"{where} needs its own code ({' and '.join(needs_code)}) but holds no .py files")


def check_model_directory(directory: Path, where: str, trust_remote_code: bool) -> None:
    """Refuse, with the file and the fix, a directory that cannot load as a Hugging Face model (or a
    peft adapter: adapter_config.json and adapter_model.safetensors)."""
    if not directory.is_dir() or not any(directory.iterdir()):
        raise ModelDirError(f"{where} is not a committed checkpoint (no manifest.json) nor a Hugging Face model directory "
                            f"({CONFIG}, *.safetensors, tokenizer files): it is empty or does not exist")
    if (directory / ADAPTER_CONFIG).exists() and not (directory / CONFIG).exists():
        read_json(directory / ADAPTER_CONFIG, where)
        if not (directory / ADAPTER_WEIGHTS).is_file():
            raise ModelDirError(f"{where} has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}")
        safetensors_header(directory / ADAPTER_WEIGHTS, where)
        return
    if not (directory / CONFIG).is_file():
        raise ModelDirError(f"{where} has no {CONFIG} (nor manifest.json): not a Hugging Face model directory; "
                            "point at the directory save_pretrained wrote")
    config = read_json(directory / CONFIG, where)
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise ModelDirError(f"{where} has no tokenizer ({' or '.join(TOKENIZER_FILES)}): save the tokenizer beside the "
                            "model (tokenizer.save_pretrained)")
    tokenizer_config = read_json(directory / "tokenizer_config.json", where) if (directory / "tokenizer_config.json").is_file() else {}
    check_code(directory, where, config, tokenizer_config, trust_remote_code)
    check_weights(directory, where, config)
