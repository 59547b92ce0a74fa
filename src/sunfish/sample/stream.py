"""The text of a decoding canvas that can no longer change, as it grows.

A diffusion sampler commits tokens anywhere in its canvas; the text a reader can be shown is the committed
left-to-right prefix of the generated region (with semi-autoregressive blocks it grows block by block). That
prefix is final when committed tokens never change: not under remasking (ReMDM takes tokens back) and not
for the continuous processes, whose every position moves until the last step; then the text comes at the
end. The prefix ends at the first stop token (EOS, a template's end of turn) or stop string. Text is held
back while it ends in an incomplete UTF-8 character or in the beginning of a stop string.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass
class Final:
    """The end of a generated text."""

    text: str  # the whole text (cut at the first stop token or stop string)
    tokens: int  # tokens of the text (for usage counts)
    finish_reason: str  # "stop" (stop token or string) or "length"


class FinalText:
    """Feed it the generated region after each step (`update`) and once at the end (`finish`); both return the
    text that became final since the last call."""

    def __init__(self, decode, mask_id: int, stop_ids: Sequence[int], stops: Sequence[str] = (), live: bool = True):
        self.decode, self.mask_id = decode, mask_id
        self.stop_ids, self.stops, self.live = set(stop_ids), [s for s in stops if s], live
        self.sent = ""
        self.stopped = False  # a stop token or string is in the final text: decoding can end
        self._prefix = 0  # length of the committed prefix last decoded (most steps do not extend it)

    def _cut(self, ids: list[int]) -> tuple[list[int], str, bool]:
        """(ids before the first stop token, their text cut at the first stop string, whether either was hit)."""
        hit = next((i for i, t in enumerate(ids) if t in self.stop_ids), None)
        ids = ids if hit is None else ids[:hit]
        text = self.decode(ids)
        at = min((text.index(s) for s in self.stops if s in text), default=None)
        return ids, text if at is None else text[:at], hit is not None or at is not None

    def _emit(self, text: str) -> str:
        if not text.startswith(self.sent):  # a tokenizer that rewrote earlier text: nothing more until the end
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta

    def update(self, region: Sequence[int]) -> str:
        """New final text, given the generated region (token ids, masks where not yet committed)."""
        if not self.live or self.stopped:
            return ""
        region = list(region)
        prefix = region[: region.index(self.mask_id)] if self.mask_id in region else region
        if len(prefix) == self._prefix:  # committed tokens never change here, so neither does the text
            return ""
        self._prefix = len(prefix)
        _, text, self.stopped = self._cut(prefix)
        if not self.stopped:
            text = text.rstrip("\ufffd")  # an incomplete UTF-8 character
            hold = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
            text = text[: len(text) - hold]
        return self._emit(text)

    def finish(self, region: Sequence[int]) -> tuple[str, Final]:
        """The rest of the text and how it ended, given the final region."""
        region = list(region)  # complete, or (decoding stopped at a stop string) complete up to past the stop
        ids, text, stopped = self._cut(region[: region.index(self.mask_id)] if self.mask_id in region else region)
        delta = text[len(self.sent):] if text.startswith(self.sent) else ""
        self.sent = text if delta or text == self.sent else self.sent
        return delta, Final(text=text, tokens=self._count(ids, text), finish_reason="stop" if stopped else "length")

    def _count(self, ids: list[int], text: str) -> int:
        """Tokens needed for `text`: all of `ids`, or the fewest whose text reaches a stop string's cut."""
        if len(self.decode(ids)) <= len(text):
            return len(ids)
        lo, hi = 0, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if len(self.decode(ids[:mid])) < len(text) else (lo, mid)
        return lo
