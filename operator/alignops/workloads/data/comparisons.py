"""Comparison data for the reward, preference and rank stages: the record formats, the
conversions between them.

Formats (the record's fields decide, so a file of any of them reads the same way):
- pairs: ``{"prompt", "chosen", "rejected"}`` (+ optional ``margin`` for the Bradley-Terry loss),
  or, with the prompt implicit, ``{"chosen", "rejected"}`` whose common beginning is the prompt
  (TRL's ``extract_prompt``);
- rankings: ``{"prompt", "responses": [...], "ranking": [indices, best first]}`` (+ optional
  ``scores``, one per response, higher is better: RRHF's rewards);
- unpaired: ``{"prompt", "completion", "label": true|false}`` (KTO).

Each text is a string (TRL's standard format) or a list of ``{role, content}`` messages
(conversational): a conversational prompt is rendered with the chat template and its generation
prompt, a response is what the template adds for its turns (``chat.Chat.response``). Every
response is tokenised as the SFT stage tokenises a completion (``sft.tokenize_response``), so the
log-probabilities the stages compare are those the SFT stage trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

from alignops.workloads.data.chat import Chat, check_messages, is_conversation
from alignops.workloads.data.records import DatasetError, Records
from alignops.workloads.data.sft import present, text_field

T = TypeVar("T")


def _each(records: list[dict], fn: Callable[[dict], T]) -> list[T]:
    """``fn`` per record; with ``Records`` an error names the record's file and line."""
    return records.each(fn) if isinstance(records, Records) else [fn(r) for r in records]


@dataclass(frozen=True)
class Comparison:
    """One prompt with K >= 2 responses ordered best first (a pair is K = 2)."""

    prompt: str
    responses: tuple[str, ...]
    scores: tuple[float, ...] | None = None  # aligned with responses, higher is better
    margin: float | None = None  # a pair's Bradley-Terry margin
    chat: bool = False  # rendered with the chat template (responses end where the template ends a turn)

    def rewards(self) -> list[float]:
        """Per-response rewards: the given scores, else K-1 for the best down to 0 for the worst."""
        k = len(self.responses)
        return list(self.scores) if self.scores is not None else [float(k - 1 - i) for i in range(k)]


@dataclass(frozen=True)
class Unpaired:
    prompt: str
    completion: str
    desirable: bool
    chat: bool = False


def record_kind(record: dict) -> str:
    keys = present(record)
    if "chosen" in keys and "rejected" in keys:
        return "pairs"
    if "responses" in keys and "ranking" in keys:
        return "rankings"
    if "completion" in keys and "label" in keys:
        return "unpaired"
    raise DatasetError(
        "a comparison record needs prompt/chosen/rejected (pairs; the prompt may be implicit in both), "
        "prompt/responses/ranking (rankings) or prompt/completion/label (unpaired); "
        f"got keys {sorted(keys)}"
    )


class Texts:
    """A record's prompt and responses as text: plain strings as they are; conversations rendered
    with ``chat`` (without one, conversational data is an error)."""

    def __init__(self, chat: Chat | None):
        self.chat = chat

    def conversational(self, *values) -> bool:
        if not any(is_conversation(v) for v in values):
            return False
        if self.chat is None:
            raise DatasetError("conversational records need the model's chat template")
        return True

    def prompt(self, record: dict, name: str = "prompt") -> tuple[str, bool]:
        """(prompt text, rendered with the template)."""
        if self.conversational(record[name]):
            return self.chat.prompt(check_messages(record[name], name)), True
        return text_field(record, name), False

    def responses(self, record: dict, names: list[str], prompt_name: str = "prompt") -> tuple[str, list[str], bool]:
        """(prompt text, response texts, conversational) of the prompt and the responses in ``names``
        (each a field name, or ``(field, index)`` for a list entry)."""
        values = [record[n] if isinstance(n, str) else record[n[0]][n[1]] for n in names]
        labels = [n if isinstance(n, str) else f"{n[0]}[{n[1]}]" for n in names]
        prompt = record.get(prompt_name)
        if prompt is None:
            raise KeyError(prompt_name)
        if not self.conversational(prompt, *values):
            return text_field(record, prompt_name), [_text(v, label) for v, label in zip(values, labels)], False
        turns = check_messages(prompt, prompt_name) if not isinstance(prompt, str) else [{"role": "user", "content": prompt}]
        out = []
        for value, label in zip(values, labels):
            reply = check_messages(value, label) if not isinstance(value, str) else [{"role": "assistant", "content": value}]
            before, text = self.chat.response(turns, reply)
            out.append(text)
        return before, out, True


def _text(value, label: str) -> str:
    if value is None:
        raise KeyError(label)
    if not isinstance(value, str):
        raise DatasetError(f"field `{label}` must be a string, got {type(value).__name__} {str(value)[:40]!r}")
    return value


def implicit_prompt(record: dict) -> dict:
    """A pair without ``prompt``: the longest common beginning of chosen and rejected (whole
    messages for conversations, characters for text, backing off a space as TRL does)."""
    chosen, rejected = record["chosen"], record["rejected"]
    if is_conversation(chosen) and is_conversation(rejected):
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
    elif isinstance(chosen, str) and isinstance(rejected, str):
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        if n and chosen[n - 1] == " ":
            n -= 1
    else:
        raise DatasetError("fields `chosen` and `rejected` must both be strings or both conversations")
    if n == 0:
        raise DatasetError("`chosen` and `rejected` share no beginning, so there is no implicit prompt; add a `prompt` field")
    return {**record, "prompt": chosen[:n], "chosen": chosen[n:], "rejected": rejected[n:]}


def _ranking(record: dict, texts: Texts) -> Comparison:
    responses, ranking = record["responses"], record["ranking"]
    if not isinstance(responses, list) or len(responses) < 2:
        raise DatasetError("field `responses` must be a list of at least 2 responses")
    if not isinstance(ranking, list) or sorted(ranking) != list(range(len(responses))):
        raise DatasetError(f"field `ranking` must order all {len(responses)} responses (indices, best first); got {ranking}")
    scores = record.get("scores")
    if scores is not None and len(scores) != len(responses):
        raise DatasetError(f"field `scores` has {len(scores)} entries for {len(responses)} responses")
    prompt, ordered, chat = texts.responses(record, [("responses", i) for i in ranking])
    return Comparison(
        prompt=prompt, responses=tuple(ordered), chat=chat,
        scores=tuple(float(scores[i]) for i in ranking) if scores is not None else None,
    )


def comparison(record: dict, chat: Chat | None = None) -> Comparison:
    """A pairs or rankings record as a comparison (best first)."""
    texts = Texts(chat)
    kind = record_kind(record)
    if kind == "pairs":
        if record.get("prompt") is None:
            record = implicit_prompt(record)
        prompt, (chosen, rejected), is_chat = texts.responses(record, ["chosen", "rejected"])
        margin = record.get("margin")
        return Comparison(prompt, (chosen, rejected), margin=float(margin) if margin is not None else None, chat=is_chat)
    if kind == "rankings":
        return _ranking(record, texts)
    raise DatasetError("unpaired records (prompt/completion/label) have no comparison; use pairs or rankings here")


def to_comparisons(records: list[dict], chat: Chat | None = None) -> list[Comparison]:
    """Pairs and rankings as comparisons (best first). Unpaired records cannot be ranked."""
    return _each(records, lambda r: comparison(r, chat))


def pairs_of(c: Comparison) -> list[Comparison]:
    """Every (better, worse) pair of a ranking (K(K-1)/2; ties in scores give none)."""
    out = []
    rewards = c.rewards()
    for i in range(len(c.responses)):
        for j in range(i + 1, len(c.responses)):
            if rewards[i] > rewards[j]:
                out.append(Comparison(c.prompt, (c.responses[i], c.responses[j]), margin=c.margin, chat=c.chat))
    return out


def to_pairs(comparisons: list[Comparison]) -> list[Comparison]:
    """Every (better, worse) pair of each ranking (K(K-1)/2 per prompt; ties in scores give none)."""
    return [p for c in comparisons for p in pairs_of(c)]


def _label(value) -> bool:
    """An unpaired record's label: true or false (as text too, which is how CSV has it)."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise DatasetError(f"field `label` must be true or false; got {value!r}")
    return value


def unpaired(record: dict, chat: Chat | None = None) -> list[Unpaired]:
    """Unpaired records as they are; a pair or ranking gives its best response as desirable and the
    others as undesirable (how TRL turns preference data into KTO data)."""
    if record_kind(record) == "unpaired":
        label = _label(record["label"])
        prompt, (completion,), is_chat = Texts(chat).responses(record, ["completion"])
        return [Unpaired(prompt, completion, label, is_chat)]
    c = comparison(record, chat)
    return [Unpaired(c.prompt, c.responses[0], True, c.chat)] + [Unpaired(c.prompt, r, False, c.chat) for r in c.responses[1:]]


def to_unpaired(records: list[dict], chat: Chat | None = None) -> list[Unpaired]:
    return [u for group in _each(records, lambda r: unpaired(r, chat)) for u in group]
