"""Conversations through the tokenizer's chat template: which parts of the rendered text are the
assistant's (learnt) and which are context (masked).

A template with ``{% generation %}`` markers says it itself (``return_assistant_tokens_mask``). For
one without (most: Llama's, Qwen's ChatML, the demo's), each assistant turn ``i`` is found by
rendering prefixes of the conversation: it spans from the end of ``messages[:i]`` rendered with the
generation prompt to the end of ``messages[:i+1]``, both of which must be prefixes of the whole
conversation's rendering (templates that rewrite earlier turns once later ones follow, e.g. by
dropping reasoning, fail that check and are refused: give them generation markers). Each piece is
tokenised on its own, as generation sees the prompt and then the tokens the model writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

from alignops.workloads.data.records import DatasetError

GENERATION_MARK = re.compile(r"\{%-?\s*generation\s*-?%\}")

Piece = tuple[Union[str, list[int]], bool]  # (text, or ids already tokenised; learnt)


def is_conversation(value) -> bool:
    """A list of {role, content} messages (TRL's conversational format)."""
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def check_messages(value, label: str = "messages") -> list[dict]:
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        raise DatasetError(f"field `{label}` must be a non-empty list of {{role, content}} objects")
    for m in value:
        if not isinstance(m.get("role"), str):
            raise DatasetError(f"field `{label}[].role` must be a string, got {type(m.get('role')).__name__}")
        content = m.get("content")
        if not isinstance(content, str):
            raise DatasetError(f"field `{label}[].content` must be a string, got {type(content).__name__} {str(content)[:40]!r}")
    # columnar formats give every message every key of the column's struct: keep role and content
    # and any other key that is set (tool calls, names), drop the absent ones
    return [{k: v for k, v in m.items() if v is not None} for m in value]


@dataclass(frozen=True)
class Chat:
    """The tokenizer's chat template, applied to conversations."""

    tokenizer: object

    @property
    def marked(self) -> bool:
        template = getattr(self.tokenizer, "chat_template", None)
        return isinstance(template, str) and GENERATION_MARK.search(template) is not None

    def render(self, messages: list[dict], generation_prompt: bool = False) -> str:
        if not messages and generation_prompt:
            return self._render_empty()
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        except Exception as exc:  # noqa: BLE001 - jinja errors, or a tokenizer without a template
            raise DatasetError(f"the chat template cannot render this conversation: {type(exc).__name__}: {exc}") from None

    def _render_empty(self) -> str:
        try:
            return self.tokenizer.apply_chat_template([], tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - many templates read messages[0]: nothing comes before
            return ""

    def prompt(self, messages: list[dict]) -> str:
        """A prompt conversation as generation sees it: rendered with the generation prompt."""
        return self.render(messages, generation_prompt=True)

    def response(self, prompt: list[dict], response: list[dict]) -> tuple[str, str]:
        """(prompt text, response text) of a conversational prompt and its response turns: the
        response is what the template adds to the prompt's rendering."""
        before = self.prompt(prompt)
        whole = self.render(prompt + response)
        if not whole.startswith(before):
            raise DatasetError("the chat template renders the prompt differently once a response follows; "
                               "use a template with {% generation %} markers")
        return before, whole[len(before):]

    def pieces(self, messages: list[dict], learn_from: int = 0) -> list[Piece]:
        """The conversation in pieces, the assistant turns at index >= ``learn_from`` learnt."""
        if self.marked:
            return self._marked_pieces(messages, learn_from)
        whole = self.render(messages)
        pieces: list[Piece] = []
        at = 0
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start, end = self.prompt(messages[:i]), self.render(messages[: i + 1])
            if not (whole.startswith(start) and whole.startswith(end) and at <= len(start) <= len(end)):
                raise DatasetError(
                    f"the chat template renders turn {i + 1} differently once later turns follow, so the assistant's "
                    "tokens cannot be found by prefixes; use a template with {% generation %} markers")
            pieces += [(whole[at : len(start)], False), (whole[len(start) : len(end)], i >= learn_from)]
            at = len(end)
        pieces.append((whole[at:], False))
        return [(text, learnt) for text, learnt in pieces if text]

    def _marked_pieces(self, messages: list[dict], learn_from: int) -> list[Piece]:
        try:
            out = self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                                     return_assistant_tokens_mask=True)
        except Exception as exc:  # noqa: BLE001
            raise DatasetError(f"the chat template cannot render this conversation: {type(exc).__name__}: {exc}") from None
        ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
        skipped = sum(m["role"] == "assistant" for m in messages[:learn_from])  # assistant turns not learnt
        pieces: list[Piece] = []
        run = 0
        start = 0
        for k in range(1, len(ids) + 1):
            if k == len(ids) or mask[k] != mask[start]:
                assistant = bool(mask[start])
                pieces.append((ids[start:k], assistant and run >= skipped))
                run += assistant
                start = k
        return pieces
