"""Exact, faster encoding for GPT-2-style byte-level BPE: the pre-tokenizer's regex here, a cache of piece -> ids.

A byte-level BPE encodes text in two steps: a regex cuts it into pieces (a word with its leading space,
a run of digits, of punctuation or of spaces), and the BPE merges run inside each piece on its UTF-8
bytes. So the ids of a text are the concatenation of the ids of its pieces, and the ids of a piece
never change. `tokenizers` redoes the second step for every piece and builds an `Encoding` (offsets,
masks, word ids) per text, about 3 MB/s on one core here. Word frequencies are Zipfian, so a dict from
piece to ids answers almost every piece (95% on the first 10 MB of the Russian and English corpora, more
later) and the BPE model runs only for pieces not seen before; the regex runs in the `regex` module.
On one core that is 4-5x faster than `tokenizers` (measured: benchmarks/data_throughput.py --reference).

Exactness. `PieceEncoder.supports` admits only tokenizers whose encoding is exactly those two steps: no
normalizer, a ByteLevel pre-tokenizer with its regex and no prefix space, a BPE model without dropout,
no truncation or padding, and no added token that would be cut out of the text first (special tokens
are allowed when `encode_special_tokens` makes them plain text). The regex is tokenizers' own
(`ByteLevel`'s GPT-2 pattern), but its classes \\p{L}, \\p{N} and \\s come from different Unicode tables:
Oniguruma's inside `tokenizers` and the newer ones of the `regex` module, which know letters that
Oniguruma does not (U+0558, U+10940, ...). So when the encoder is built, every code point in
`PROBED_RANGES` is run through the backend's own pre-tokenizer in contexts that tell its class
(after a letter, a digit, a space and a punctuation mark); those that split the same way in both are
"verified". Text made only of verified characters takes the fast path; text with any other character
is cut before each newline that follows a non-space (where byte-level BPE pieces always end, see
`sunfish.data.pack.splits_exactly`) and only the lines holding such a character go to the backend.
"""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import regex

# The pattern of tokenizers' ByteLevel pre-tokenizer (GPT-2's): contractions, letters, digits,
# other symbols (each optionally after one space), then whitespace not followed by a non-space.
PIECE_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LINE_CUT = re.compile(r"(?<=\S)(?=\n)")  # before a newline that follows a non-space: no piece spans it
PROBED_RANGES = (  # code points checked against the backend when an encoder is built (~15K, ~0.3 s)
    (0x0000, 0x2FFF),  # Latin, Greek, Cyrillic, ..., general punctuation, symbols, arrows, box drawing
    (0x3000, 0x30FF),  # CJK punctuation, kana
    (0xFF00, 0xFFEF),  # full-width forms
    (0x1F300, 0x1FAFF),  # emoji
)
MAX_CACHED_PIECES = 1 << 18  # ~60 MB of cache per process; later new pieces are encoded but not kept
_PROBE = "a{0}1{0} {0}!{0}\n"  # the code point after a letter, a digit, a space and a symbol


def _byte_alphabet() -> list[str]:
    """GPT-2's byte -> printable character map that ByteLevel applies before the BPE model: printable
    Latin-1 bytes map to themselves, the other 68 bytes to U+0100, U+0101, ... in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return [table[byte] for byte in range(256)]


_BYTE_CHARS = _byte_alphabet()


def verified_characters(backend, pattern: regex.Pattern) -> str:
    """The code points of PROBED_RANGES that `pattern` and the backend's pre-tokenizer split alike."""
    codes = [c for lo, hi in PROBED_RANGES for c in range(lo, hi + 1) if not 0xD800 <= c <= 0xDFFF]
    probe = "".join(_PROBE.format(chr(c)) for c in codes)
    theirs = {end for _, (_, end) in backend.pre_tokenizer.pre_tokenize_str(probe)}  # character offsets
    ours = {m.end() for m in pattern.finditer(probe)}
    width = len(_PROBE.format("x"))
    differing = {codes[(end - 1) // width] for end in theirs ^ ours}
    return "".join(chr(c) for c in codes if c not in differing)


def _character_class(chars: str) -> str:
    """A regex class body matching exactly `chars` (sorted code points), written as ranges."""
    parts, codes = [], sorted(map(ord, chars))
    start = prev = codes[0]
    for code in [*codes[1:], None]:
        if code is not None and code == prev + 1:
            prev = code
            continue
        parts.append(regex.escape(chr(start)) + ("-" + regex.escape(chr(prev)) if prev > start else ""))
        if code is not None:
            start = prev = code
    return "".join(parts)


class _PieceIds(dict):
    """piece -> its BPE ids as packed uint32 bytes, filled on first sight by running the model on the piece's bytes.

    Bytes, not tuples: joining the pieces' bytes and reading them with `numpy.frombuffer` is the fastest way
    from a list of pieces to an id array (a C-level join instead of iterating over every id).
    """

    def __init__(self, model):
        super().__init__()
        self._model = model

    def __missing__(self, piece: str) -> bytes:
        mapped = piece.encode("utf-8").decode("latin-1").translate(_BYTE_CHARS)  # byte b -> _BYTE_CHARS[b]
        tokens = self._model.tokenize(mapped)
        ids = struct.pack(f"={len(tokens)}I", *[token.id for token in tokens])  # native-endian uint32
        if len(self) < MAX_CACHED_PIECES:
            self[piece] = ids
        return ids


class PieceEncoder:
    """`encode(text)` equal to `backend.encode(text, add_special_tokens=False).ids`, for backends `supports` admits."""

    def __init__(self, backend):
        if not self.supports(backend):
            raise ValueError("this tokenizer is not a plain GPT-2-style byte-level BPE; encode with the tokenizers library instead")
        self._backend = backend
        self._pattern = regex.compile(PIECE_PATTERN)
        self._unverified = regex.compile(f"[^{_character_class(verified_characters(backend, self._pattern))}]")
        self._ids = _PieceIds(backend.model)

    @staticmethod
    def supports(backend) -> bool:
        """True when `backend.encode(text).ids` is exactly the BPE of each GPT-2 regex piece of `text`."""
        spec = json.loads(backend.to_str())
        pre = spec.get("pre_tokenizer") or {}
        model = spec.get("model") or {}
        if spec.get("normalizer") is not None or pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
            return False
        if pre.get("add_prefix_space", False) or model.get("type") != "BPE" or model.get("dropout") is not None:
            return False
        if spec.get("truncation") is not None or spec.get("padding") is not None:
            return False
        added = spec.get("added_tokens", [])
        return all(t.get("special") for t in added) and (not added or backend.encode_special_tokens)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        """(T,) uint32 token ids of `text` (a read-only view of `packed(text)`)."""
        return np.frombuffer(self.packed(text), np.uint32)

    def packed(self, text: str) -> bytes:
        """The token ids of `text` as native-endian uint32 bytes, ready to join with other documents' ids."""
        if self._unverified.search(text) is None:
            return self._cached(text)
        return b"".join(self._packed_line(line) for line in LINE_CUT.split(text))

    def _cached(self, text: str) -> bytes:
        return b"".join(map(self._ids.__getitem__, self._pattern.findall(text)))

    def _packed_line(self, line: str) -> bytes:
        if self._unverified.search(line) is None:
            return self._cached(line)
        return np.array(self._backend.encode(line, add_special_tokens=False).ids, np.uint32).tobytes()
