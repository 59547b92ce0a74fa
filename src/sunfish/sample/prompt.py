"""Building canvases: a prompt followed by masks, or text with `[MASK]` / `[MASK:n]` spans to infill;
reading a file of prompts."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from sunfish.tokenizer import Tokenizer

MASK_SPAN = re.compile(r"\[MASK(?::(\d+))?\]")


class PromptError(ValueError):
    """A prompt problem a person can fix; the message is one sentence."""


@dataclass(frozen=True)
class Canvas:
    ids: list[int]  # token ids with mask ids where text is to be generated
    fill_start: int  # first position that may change (after BOS and prompt)


def _check_context(n: int, context: int, what: str) -> None:
    if n > context:
        raise PromptError(
            f"{what} needs {n} tokens but the model's context is {context}; shorten the text or lower --length"
        )


def prompt_canvas(tok: Tokenizer, prompt: str, length: int, context: int, bos: bool = True) -> Canvas:
    """[BOS] prompt [MASK] x length (without the BOS when `bos` is False: a chat template writes its own)."""
    return ids_canvas(tok, [tok.bos_id] * bos + tok.encode(prompt), length, context)


def ids_canvas(tok: Tokenizer, ids: list[int], length: int, context: int) -> Canvas:
    """The prompt's token ids, then [MASK] x length."""
    if length < 1:
        raise PromptError("--length must be at least 1")
    if not ids:
        raise PromptError("the prompt is empty; give some text to continue")
    _check_context(len(ids) + length, context, f"the prompt ({len(ids)} tokens) plus --length {length}")
    return Canvas(ids=ids + [tok.mask_id] * length, fill_start=len(ids))


def infill_canvas(tok: Tokenizer, text: str, context: int, default_span: int = 1) -> Canvas:
    """[BOS] text with each `[MASK:n]` replaced by n masks (`[MASK]` = `default_span` masks); with a tokenizer whose
    words carry their leading space, the spaces just before a span are left to the fill."""
    ids = [tok.bos_id]
    pos = 0
    spans = 0
    # where words carry their leading space (byte-level BPE: "little" " dog"), the space before a span belongs to
    # the fill: a prefix ending in a bare " " token is text the model never saw before a word
    space_joins_word = tok.encode("a b") != tok.encode("a ") + tok.encode("b")
    for match in MASK_SPAN.finditer(text):
        before = text[pos : match.start()]
        ids += tok.encode(before.rstrip(" ") if space_joins_word else before)
        n = int(match.group(1)) if match.group(1) else default_span
        if n < 1:
            raise PromptError(f"'{match.group(0)}' asks for an empty span; use [MASK:n] with n >= 1")
        ids += [tok.mask_id] * n
        pos = match.end()
        spans += 1
    ids += tok.encode(text[pos:])
    if spans == 0:
        raise PromptError("the text has no [MASK] or [MASK:n] span to fill, e.g. 'Once upon a time [MASK:12] happy.'")
    _check_context(len(ids), context, "the text with its masks")
    return Canvas(ids=ids, fill_start=1)


def to_batch(canvas: Canvas, batch: int, device: torch.device) -> torch.Tensor:
    return torch.tensor([canvas.ids] * batch, dtype=torch.long, device=device)  # (B, L)


def read_prompts(path: Path, what: str = "prompts file", noun: str = "prompt", field: str = "prompt") -> list[str]:
    """Lines of a UTF-8 text file (one per non-blank line) or of a .jsonl file ({field: ...} per line).
    `what` and `noun` name the file and its items in the error sentences (e.g. a held-out file of documents)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise PromptError(f"the {what} {path} does not exist; give a .txt (one {noun} per line) or .jsonl file") from None
    except UnicodeDecodeError:
        raise PromptError(f"the {what} {path} is not UTF-8 text") from None
    except OSError as err:
        raise PromptError(f"cannot read the {what} {path} ({type(err).__name__}); give a .txt or .jsonl file") from None
    lines = [(i, line) for i, line in enumerate(lines, 1) if line.strip()]
    if path.suffix != ".jsonl":
        items = [line for _, line in lines]
    else:
        items = []
        for i, line in lines:
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                item = None
            if not isinstance(item, dict) or not isinstance(item.get(field), str):
                raise PromptError(f'line {i} of {path} is not a JSON object with a "{field}" string')
            items.append(item[field])
    if not items:
        raise PromptError(f"the {what} {path} holds no {noun}; write one {noun} per line")
    return items


def cut_at_eos(ids: list[int], *stop_ids: int) -> list[int]:
    """Tokens before the first EOS, or the first of any `stop_ids` (variable-length generation)."""
    cut = min((ids.index(s) for s in stop_ids if s in ids), default=len(ids))
    return ids[:cut]
