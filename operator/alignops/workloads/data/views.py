"""What each stage reads from a dataset (a view): which record formats it takes, how a record
becomes its items (``items``: texts, conversations rendered), and how a batch of items becomes token
columns (``encode``: one tokenizer call for every text of the batch).

- ``sft``: prompt/completion, text or messages records -> ``input_ids``, ``labels``;
- ``comparisons`` (reward, rank): pairs and rankings -> a prompt and K responses, best first;
- ``pairs`` (paired preference losses): every (better, worse) pair of each comparison;
- ``unpaired`` (KTO): labelled completions; a comparison gives its best as desirable and the
  others as undesirable;
- ``prompts`` (rl): prompt texts and answers, not tokenised (the rollout tokenises).

``keep`` names the column that says whether an item has something to learn within maxLength; the
others are dropped and counted (``droppedExamples``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from alignops.algos import IGNORE_INDEX
from alignops.workloads.data.chat import Chat, check_messages
from alignops.workloads.data.comparisons import Comparison, Unpaired, comparison, pairs_of, unpaired
from alignops.workloads.data.records import DatasetError
from alignops.workloads.data.sft import SftText, assemble, present, response_ids, sft_text, text_field, with_bos


def _encode_all(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False).input_ids if texts else []


class _Texts:
    """Collects a batch's texts, tokenises them in one call, and hands the ids back in order."""

    def __init__(self):
        self.texts: list[str] = []

    def add(self, text: str) -> int:
        self.texts.append(text)
        return len(self.texts) - 1

    def encode(self, tokenizer) -> list[list[int]]:
        return _encode_all(tokenizer, self.texts)


def _sft_columns(items: list[SftText], tokenizer, max_length: int) -> dict[str, list]:
    texts = _Texts()
    slots = [[(texts.add(p) if isinstance(p, str) else list(p), isinstance(p, str), learnt) for p, learnt in item.pieces]
             for item in items]
    ids = texts.encode(tokenizer)
    out: dict[str, list] = {"input_ids": [], "labels": [], "source": [], "empty": [], "learns": [], "response_tokens": []}
    for item, pieces in zip(items, slots):
        tokens = [(ids[slot] if is_text else slot, learnt) for slot, is_text, learnt in pieces]
        input_ids, labels = assemble(tokens, item.standard, tokenizer.bos_token_id, tokenizer.eos_token_id, max_length)
        learnt = sum(label != IGNORE_INDEX for label in labels)
        out["input_ids"].append(input_ids)
        out["labels"].append(labels)
        out["source"].append(item.source)
        out["empty"].append(item.empty)
        out["learns"].append(learnt > 0)
        out["response_tokens"].append(learnt)
    return out


def _response_columns(prompts: list[str], responses: list[list[str]], chats: list[bool], tokenizer, max_length: int) -> dict:
    texts = _Texts()
    prompt_slots = [texts.add(p) for p in prompts]
    response_slots = [[texts.add(r) for r in rs] for rs in responses]
    ids = texts.encode(tokenizer)
    eos = tokenizer.eos_token_id
    out = {"prompt_ids": [], "responses": [], "fits": []}
    for p, rs, chat in zip(prompt_slots, response_slots, chats):
        prompt = with_bos(tokenizer, ids[p])
        out["prompt_ids"].append(prompt)
        out["responses"].append([response_ids(ids[r], eos, chat) for r in rs])
        cut = {tuple((prompt + r)[:max_length]) for r in out["responses"][-1]}
        # every response keeps its first token, and a comparison's responses still differ once cut
        out["fits"].append(len(prompt) < max_length and (len(rs) < 2 or len(cut) > 1))
    return out


def _comparison_columns(items: list[Comparison], tokenizer, max_length: int) -> dict[str, list]:
    out = _response_columns([c.prompt for c in items], [list(c.responses) for c in items], [c.chat for c in items],
                            tokenizer, max_length)
    out["scores"] = [list(c.scores) if c.scores is not None else None for c in items]
    out["margin"] = [c.margin for c in items]
    return out


def _unpaired_columns(items: list[Unpaired], tokenizer, max_length: int) -> dict[str, list]:
    out = _response_columns([u.prompt for u in items], [[u.completion] for u in items], [u.chat for u in items],
                            tokenizer, max_length)
    out["label"] = [u.desirable for u in items]
    out["empty"] = [not u.completion for u in items]  # only end-of-sequence to learn
    return out


def prompt_item(record: dict, chat: Chat) -> dict:
    """A prompt record: ``prompt`` (text or conversation), or the turns of ``messages`` before a
    closing assistant turn; any record with a prompt will do (pairs, completions)."""
    keys = present(record)
    answer = record.get("answer")
    if "prompt" in keys:
        value = record["prompt"]
        text = text_field(record, "prompt") if isinstance(value, str) or value is None else chat.prompt(check_messages(value, "prompt"))
    elif "messages" in keys:
        messages = check_messages(record["messages"])
        while messages and messages[-1]["role"] == "assistant" and len(messages) > 1:
            messages = messages[:-1]
        text = chat.prompt(messages)
    else:
        raise DatasetError(f"a prompt record needs `prompt` or `messages`; got keys {sorted(keys)}")
    return {"prompt": text, "answer": None if answer is None else str(answer)}


def answered_prompt_item(record: dict, chat: Chat) -> dict:
    """``prompt_item`` of a record that must carry its ``answer`` (a verifier reward scores by it)."""
    item = prompt_item(record, chat)
    if item["answer"] is None:
        raise DatasetError("field `answer` is missing: the verifier rewards (exact_answer, kimi_length) compare each "
                           "response with it")
    return item


def _prompt_columns(items: list[dict], tokenizer, max_length: int) -> dict[str, list]:
    return {"prompt": [i["prompt"] for i in items], "answer": [i["answer"] for i in items]}


@dataclass(frozen=True)
class View:
    formats: frozenset[str]
    items: Callable[[dict, Chat], list]
    encode: Callable[[list, object, int], dict[str, list]]
    features: Callable[[], object]  # the output columns' ``datasets.Features``
    keep: str | None  # the column saying an item has something to learn within maxLength
    nothing_left: str = ""  # the error when no item has
    # whether records with these columns make useful held-out data (worth carving from train)
    carves: Callable[[set[str]], bool] = lambda columns: True


def _ids():
    from datasets import List, Value

    return List(Value("int32"))


def _sft_features():
    from datasets import Features, Value

    return Features({"input_ids": _ids(), "labels": _ids(), "source": Value("string"), "empty": Value("bool"),
                     "learns": Value("bool"), "response_tokens": Value("int32")})


def _response_features(**extra):
    from datasets import Features, List, Value

    return Features({"prompt_ids": _ids(), "responses": List(_ids()), "fits": Value("bool"), **extra})


def _comparison_features():
    from datasets import List, Value

    return _response_features(scores=List(Value("float64")), margin=Value("float64"))


def _unpaired_features():
    from datasets import Value

    return _response_features(label=Value("bool"), empty=Value("bool"))


def _prompt_features():
    from datasets import Features, Value

    return Features({"prompt": Value("string"), "answer": Value("string")})


def _comparable(columns: set[str]) -> bool:
    return {"chosen", "rejected"} <= columns or {"responses", "ranking"} <= columns


_TOO_LONG = ("nothing to learn: every prompt is maxLength tokens or longer, or every comparison's responses are equal "
             "once cut to maxLength {max_length}; check the `chosen`/`rejected` (or `responses`) fields or raise "
             "hyperparameters.maxLength")

VIEWS: dict[str, View] = {
    "sft": View(frozenset({"sft", "unpaired"}), lambda r, chat: [sft_text(r, chat)], _sft_columns, _sft_features, "learns",
                "no example has a response token within maxLength {max_length} (every prompt is as long or longer); "
                "raise hyperparameters.maxLength"),
    "comparisons": View(frozenset({"pairs", "rankings"}), lambda r, chat: [comparison(r, chat)], _comparison_columns,
                        _comparison_features, "fits", _TOO_LONG, _comparable),
    "pairs": View(frozenset({"pairs", "rankings"}), lambda r, chat: pairs_of(comparison(r, chat)), _comparison_columns,
                  _comparison_features, "fits", _TOO_LONG, _comparable),
    # held-out figures are on pairs: unpaired data gives none
    "unpaired": View(frozenset({"pairs", "rankings", "unpaired"}), lambda r, chat: unpaired(r, chat), _unpaired_columns,
                     _unpaired_features, "fits", _TOO_LONG, _comparable),
    # held-out prompts are scored by their answers
    "prompts": View(frozenset({"prompts", "sft", "pairs", "rankings", "unpaired"}), lambda r, chat: [prompt_item(r, chat)],
                    _prompt_columns, _prompt_features, None, carves=lambda columns: "answer" in columns),
    # for verifier rewards: a record without its answer fails at its line, before any sampling
    "answered_prompts": View(frozenset({"prompts", "sft", "pairs", "rankings", "unpaired"}),
                             lambda r, chat: [answered_prompt_item(r, chat)], _prompt_columns, _prompt_features, None,
                             carves=lambda columns: "answer" in columns),
}
