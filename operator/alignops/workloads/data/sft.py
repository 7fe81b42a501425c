"""The SFT tokenisation every stage shares: ``bos + prompt + response + eos`` with the prompt's
labels masked (``IGNORE_INDEX``), so only response tokens are learnt or scored.

Records (TRL's formats, the record's fields decide):
- ``prompt``/``completion`` strings (standard): the completion is learnt, eos appended;
- ``text`` (language modelling): every token learnt, eos appended;
- ``messages`` (conversational): rendered with the chat template, every assistant turn learnt
  (``chat.py``); ``prompt``/``completion`` as message lists likewise, the completion's turns learnt.
  Where an assistant turn holds the eos token, what the template puts after it is context; where
  the conversation ends on an assistant turn without one, eos is appended (learnt).

A sequence's first label is always masked: nothing in the sequence predicts its first token, and
in a packed row (``packing.py``) the previous example must not be taught to predict it.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignops.algos import IGNORE_INDEX
from alignops.workloads.data.chat import Chat, Piece, check_messages, is_conversation
from alignops.workloads.data.records import DatasetError


@dataclass(frozen=True)
class SftExample:
    input_ids: list[int]
    labels: list[int]
    source: str | None = None
    empty_response: bool = False  # the record's response text was empty (only eos is learnt)

    @property
    def learns(self) -> bool:
        """Whether any response token survived truncation to maxLength."""
        return any(label != IGNORE_INDEX for label in self.labels)


@dataclass(frozen=True)
class SftText:
    """A record's text before tokenisation: pieces, learnt or not; ``standard`` (plain strings)
    always gets eos appended, a conversation only where its template gives none."""

    pieces: list[Piece]
    standard: bool
    empty: bool
    source: str | None = None


def response_tokens(examples: list[SftExample]) -> int:
    """Labelled (response) tokens of the examples, counted on the host: what a scored batch's
    ``lengths`` sum to, without reading a device tensor back."""
    return sum(sum(label != IGNORE_INDEX for label in e.labels) for e in examples)


def text_field(record: dict, name: str, label: str | None = None) -> str:
    """``record[name]``, which must be a string (a number or a list is a data error, not a crash)."""
    value = record[name]
    if value is None:
        raise KeyError(label or name)
    if not isinstance(value, str):
        raise DatasetError(f"field `{label or name}` must be a string, got {type(value).__name__} {str(value)[:40]!r}")
    return value


def present(record: dict) -> set[str]:
    """The record's fields that are set (columnar data has every column, None where absent)."""
    return {k for k, v in record.items() if v is not None}


def as_messages(record: dict, name: str, role: str) -> list[dict]:
    """Field ``name`` as messages: a conversation as it is, a string as one ``role`` message."""
    value = record[name]
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return check_messages(value, name)


def sft_text(record: dict, chat: Chat) -> SftText:
    keys = present(record)
    source = record.get("source")
    if source is not None and not isinstance(source, str):
        source = str(source)
    if "messages" in keys:
        messages = check_messages(record["messages"])
        if not any(m["role"] == "assistant" for m in messages):
            raise DatasetError("a `messages` record needs an assistant turn to learn")
        empty = all(not m["content"] for m in messages if m["role"] == "assistant")
        return SftText(chat.pieces(messages), standard=False, empty=empty, source=source)
    if "prompt" in keys and "completion" in keys:
        if is_conversation(record["prompt"]) or is_conversation(record["completion"]):
            prompt = as_messages(record, "prompt", "user")
            completion = as_messages(record, "completion", "assistant")
            empty = all(not m["content"] for m in completion)
            return SftText(chat.pieces(prompt + completion, learn_from=len(prompt)), False, empty, source)
        completion = text_field(record, "completion")
        return SftText([(text_field(record, "prompt"), False), (completion, True)], True, not completion, source)
    if "text" in keys and "prompt" not in keys:
        text = text_field(record, "text")
        return SftText([(text, True)], True, not text, source)
    raise DatasetError("an SFT record needs `messages` or `prompt` and `completion` (or `text`); "
                       f"got keys {sorted(keys)}")


def sft_prompt_and_response(record: dict, tokenizer) -> tuple[str, str]:
    """(prompt text, response text) of an SFT record, for stages that sample the prompt and compare
    the answer with the response (spin): chat ``messages`` (the last turn, an assistant's, is the
    response; the rest is rendered with the generation prompt) or ``prompt``/``completion``."""
    keys, chat = present(record), Chat(tokenizer)
    if "messages" in keys:
        messages = check_messages(record["messages"])
        if messages[-1]["role"] != "assistant":
            raise DatasetError("a `messages` record must end with an assistant turn (the response)")
        return chat.prompt(messages[:-1]), messages[-1]["content"]
    if "prompt" in keys and "completion" in keys:
        if is_conversation(record["prompt"]) or is_conversation(record["completion"]):
            completion = as_messages(record, "completion", "assistant")
            return chat.prompt(as_messages(record, "prompt", "user")), "".join(m["content"] for m in completion)
        return text_field(record, "prompt"), text_field(record, "completion")
    raise DatasetError(f"an SFT record needs `messages` or `prompt` and `completion`; got keys {sorted(keys)}")


def assemble(pieces: list[tuple[list[int], bool]], standard: bool, bos: int | None, eos: int,
             max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of tokenised pieces: bos where the tokenizer has one and the text does
    not begin with it, eos by the rules above, truncated to ``max_length``."""
    ids: list[int] = []
    labels: list[int] = []
    if bos is not None and not (pieces and pieces[0][0][:1] == [bos]):
        ids.append(bos)
        labels.append(IGNORE_INDEX)
    ends_with_eos = False  # the last piece learnt holds its own eos
    for piece, learnt in pieces:
        ids += piece
        if not learnt:
            labels += [IGNORE_INDEX] * len(piece)
            continue
        cut = len(piece)
        if not standard and eos in piece:  # what follows the turn's eos is the template's, not the model's
            cut = len(piece) - piece[::-1].index(eos)
        labels += piece[:cut] + [IGNORE_INDEX] * (len(piece) - cut)
        ends_with_eos = not standard and eos in piece
    if standard or (pieces and pieces[-1][1] and not ends_with_eos):
        ids.append(eos)
        labels.append(eos)
    if labels:
        labels[0] = IGNORE_INDEX
    return ids[:max_length], labels[:max_length]


def encode_text(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def encode_pieces(tokenizer, pieces: list[Piece]) -> list[tuple[list[int], bool]]:
    return [(encode_text(tokenizer, p) if isinstance(p, str) else list(p), learnt) for p, learnt in pieces]


def tokenize_sft(record: dict, tokenizer, max_length: int) -> SftExample:
    """One SFT record tokenised (the batched form is ``encoding.py``'s; this one for tests and
    small data)."""
    text = sft_text(record, Chat(tokenizer))
    ids, labels = assemble(encode_pieces(tokenizer, text.pieces), text.standard, tokenizer.bos_token_id,
                           tokenizer.eos_token_id, max_length)
    return SftExample(input_ids=ids, labels=labels, source=text.source, empty_response=text.empty)


def with_bos(tokenizer, ids: list[int]) -> list[int]:
    """bos (where the tokenizer has one and the ids do not already begin with it: a chat template
    may write it) + the ids."""
    bos = tokenizer.bos_token_id
    return ([bos] if bos is not None and ids[:1] != [bos] else []) + ids


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """A prompt's ids as generation and scoring see them."""
    return with_bos(tokenizer, encode_text(tokenizer, prompt))


def response_ids(ids: list[int], eos: int, chat: bool) -> list[int]:
    """A response's ids with its end: eos appended; in a rendered conversation, cut after its last
    eos where the template wrote one."""
    if chat and eos in ids:
        return ids[: len(ids) - ids[::-1].index(eos)]
    return ids + [eos]


def join(prompt: list[int], response: list[int], max_length: int) -> SftExample:
    """A prompt and one response as one sequence, the prompt masked."""
    labels = [IGNORE_INDEX] * len(prompt) + response
    if labels:
        labels[0] = IGNORE_INDEX
    return SftExample(input_ids=(prompt + response)[:max_length], labels=labels[:max_length])


def tokenize_response(prompt: str, response: str, tokenizer, max_length: int, chat: bool = False) -> SftExample:
    """One (prompt, response) pair of a comparison, tokenised as the SFT stage tokenises it."""
    return join(prompt_ids(tokenizer, prompt), response_ids(encode_text(tokenizer, response), tokenizer.eos_token_id, chat),
                max_length)


def reward_example(prompt: str, response: str, tokenizer, max_length: int) -> SftExample:
    """The SFT tokenisation for a reward model (see ``for_reward``)."""
    return for_reward(tokenize_response(prompt, response, tokenizer, max_length), tokenizer)


def for_reward(example: SftExample, tokenizer) -> SftExample:
    """A reward model's sequence: when pad and eos are one token (many HF tokenizers) the eos is
    dropped, or the head would read the token before it (it takes the last non-pad)."""
    if tokenizer.pad_token_id == tokenizer.eos_token_id and example.input_ids[-1] == tokenizer.eos_token_id:
        return SftExample(example.input_ids[:-1], example.labels[:-1])
    return example
