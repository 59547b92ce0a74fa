"""Chat templates, one definition for sampling, serving and supervised fine-tuning.

* A tokenizer with its own template (LLaDA-Instruct, Dream-Instruct: transformers' `apply_chat_template`)
  uses it; the reply stops at the template's end-of-turn token.
* A Sunfish tokenizer with the chat tokens (`Tokenizer.with_chat_tokens`, added by `sunfish sft`) uses
  Sunfish's template: [BOS], then per turn a role token, the text, and <|end|>:

      [BOS] <|system|> Be brief. <|end|> <|user|> Hi! <|end|> <|assistant|> Hello. <|end|> ...

  a prompt ends with <|assistant|>, and the reply stops at <|end|> (then EOS pads the canvas).
* Any other tokenizer (a pretrained Sunfish run before SFT) gets the plain-text default, `DEFAULT_TEMPLATE`:
  "System: ...\n\nUser: ...\n\nAssistant: ", the reply ending at EOS or at the next "\n\nUser:" (a stop string).

`conversation_ids` gives a conversation's token ids with the role of each (prompt or response): what SFT
trains on, and (ending with the generation prompt) what a sampler continues.
"""

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
PROMPT, RESPONSE, PAD = 0, 1, 2  # roles of the tokens of a training conversation


@dataclass(frozen=True)
class ChatFormat:
    """How a conversation becomes a prompt and where the reply ends."""

    prompt: str  # the prompt as text (special tokens by name), for display
    ids: list[int]  # the prompt's token ids, ending where the assistant's reply begins
    end_id: int | None  # the template's end-of-turn token (None: EOS only)
    stops: tuple[str, ...]  # strings that end the reply (the plain default's next turn)


def has_template(tok) -> bool:
    hf = getattr(tok, "hf", None)
    return hf is not None and bool(getattr(hf, "chat_template", None))


def _check_roles(messages: list[dict]) -> None:
    for m in messages:
        if m["role"] not in DEFAULT_TEMPLATE:
            raise PromptError(f"unknown chat role '{m['role']}'; use system, user or assistant")


def chat_format(tok, messages: list[dict]) -> ChatFormat:
    """The prompt that asks for the next assistant turn of `messages` (see the module docstring)."""
    if has_template(tok):
        text = render_chat(tok, messages)
        return ChatFormat(text, tok.encode(text), end_of_turn_id(tok), ())
    _check_roles(messages)
    chat = getattr(tok, "chat_ids", None)
    if chat is not None:
        ids, _ = conversation_ids(tok, messages, generation_prompt=True)
        return ChatFormat(tok.decode(ids, skip_special=False), ids, chat["end"], ())
    turns = [DEFAULT_TEMPLATE[m["role"]] + m["content"].strip() for m in messages]
    text = _TURN_GAP.join(turns + [DEFAULT_TEMPLATE["assistant"].rstrip()]) + " "
    return ChatFormat(text, [tok.bos_id, *tok.encode(text)], None, (_TURN_GAP + DEFAULT_TEMPLATE["user"].rstrip(),))


def conversation_ids(tok, messages: list[dict], generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """(token ids, role of each: PROMPT or RESPONSE) of a conversation: assistant turns (with the token that
    ends them) are RESPONSE, everything else PROMPT. `generation_prompt`: end with the opening of an assistant
    turn (for sampling; messages after the last assistant turn are then part of the prompt)."""
    if has_template(tok):
        return _template_ids(tok, messages, generation_prompt)
    chat = tok.chat_ids
    if chat is None:
        raise PromptError("this tokenizer has no chat tokens; add them with Tokenizer.with_chat_tokens (sunfish sft does)")
    _check_roles(messages)
    ids, roles = [tok.bos_id], [PROMPT]
    for m in messages:
        body = [chat[m["role"]], *tok.encode(m["content"])]
        role = RESPONSE if m["role"] == "assistant" else PROMPT
        ids += body + [chat["end"]]
        roles += [PROMPT] + [role] * (len(body) - 1) + [role]
    if generation_prompt:
        ids, roles = ids + [chat["assistant"]], roles + [PROMPT]
    return ids, roles


def _template_ids(tok, messages: list[dict], generation_prompt: bool) -> tuple[list[int], list[int]]:
    """A template's conversation, assistant spans found by rendering it turn by turn: the text up to each assistant
    turn (with the generation prompt) and up to its end; the tokens between are the reply."""
    hf = _template_tokenizer(tok)
    ids: list[int] = []
    roles: list[int] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tok.encode(hf.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True))
        after = tok.encode(hf.apply_chat_template(messages[: i + 1], tokenize=False))
        if before[: len(ids)] != ids or after[: len(before)] != before:
            raise PromptError("this tokenizer's chat template does not render a conversation as a prefix of its "
                              "continuation, so the assistant turns cannot be found; train on prompt/response pairs")
        roles += [PROMPT] * (len(before) - len(ids)) + [RESPONSE] * (len(after) - len(before))
        ids = after
    if generation_prompt:
        full = tok.encode(render_chat(tok, messages))
        roles, ids = roles + [PROMPT] * (len(full) - len(ids)), full
    return ids, roles


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
