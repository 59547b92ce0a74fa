"""Chat templates: a conversation rendered with the tokenizer's own template (transformers'
`apply_chat_template`, as LLaDA-Instruct and Dream-Instruct ship it), and the template's end-of-turn token,
at which a reply stops.

A tokenizer without a template (Sunfish's own, so far) gets the plain-text default, `DEFAULT_TEMPLATE`:

    System: {system}\n\nUser: {user}\n\nAssistant: {reply}\n\nUser: ...

with each turn separated by a blank line, ending with "Assistant: " where the reply begins; the reply ends at
EOS or at the next "\n\nUser:" (a stop string, `ChatFormat.stops`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from sunfish.sample.prompt import PromptError

_MARK = "\u2063SUNFISH-REPLY\u2063"  # text no template contains, to find what follows an assistant turn


def as_messages(conversation: str | Sequence[dict], system: str | None = None) -> list[dict]:
    """A conversation as [{"role", "content"}, ...]: a string is one user turn; `system` comes first."""
    messages = [{"role": "user", "content": conversation}] if isinstance(conversation, str) else list(conversation)
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise PromptError("a chat message must be a {\"role\": ..., \"content\": ...} object with string values")
    return ([{"role": "system", "content": system}] if system else []) + messages


DEFAULT_TEMPLATE = {"system": "System: ", "user": "User: ", "assistant": "Assistant: "}
_TURN_GAP = "\n\n"


@dataclass(frozen=True)
class ChatFormat:
    """How a conversation becomes a prompt and where the reply ends."""

    prompt: str  # the conversation, ending where the assistant's reply begins
    end_id: int | None  # the template's end-of-turn token (None: EOS only)
    stops: tuple[str, ...]  # strings that end the reply (the default template's next turn)
    bos: bool  # the prompt needs the tokenizer's BOS in front (a template writes its own)


def has_template(tok) -> bool:
    hf = getattr(tok, "hf", None)
    return hf is not None and bool(getattr(hf, "chat_template", None))


def chat_format(tok, messages: list[dict]) -> ChatFormat:
    """The tokenizer's own template when it has one, else the plain-text default (see the module docstring)."""
    if has_template(tok):
        return ChatFormat(render_chat(tok, messages), end_of_turn_id(tok), (), bos=False)
    for m in messages:
        if m["role"] not in DEFAULT_TEMPLATE:
            raise PromptError(f"unknown chat role '{m['role']}'; use system, user or assistant")
    turns = [DEFAULT_TEMPLATE[m["role"]] + m["content"].strip() for m in messages]
    return ChatFormat(_TURN_GAP.join(turns + [DEFAULT_TEMPLATE["assistant"].rstrip()]) + " ", None,
                      (_TURN_GAP + DEFAULT_TEMPLATE["user"].rstrip(),), bos=True)


def _template_tokenizer(tok):
    hf = getattr(tok, "hf", None)
    if hf is None or not getattr(hf, "chat_template", None):
        raise PromptError("this model's tokenizer has no chat template; prompt it with plain text (no --chat)")
    return hf


def render_chat(tok, messages: list[dict]) -> str:
    """The conversation as the template writes it, ending where the assistant's reply begins."""
    return _template_tokenizer(tok).apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def end_of_turn_id(tok) -> int | None:
    """The special token the template writes right after an assistant's reply (LLaDA: <|eot_id|>, Dream:
    <|im_end|>), or None when it writes none."""
    hf = _template_tokenizer(tok)
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _MARK}]
    text = hf.apply_chat_template(turns, tokenize=False)
    after = text.split(_MARK, 1)[1] if _MARK in text else ""
    ids = hf.encode(after, add_special_tokens=False) if after else []
    special = set(hf.all_special_ids) | {i for i, t in hf.added_tokens_decoder.items() if t.special}
    return ids[0] if ids and ids[0] in special else None
