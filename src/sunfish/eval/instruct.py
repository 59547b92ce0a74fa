"""The instruct suite: `sunfish eval RUN --suite instruct --data DIR/test.jsonl` (rows from `sunfish data instruct`).

Each row is a conversation whose last turn is the assistant's reference reply (`{"messages": [...]}`, or
`{"prompt": ..., "response": ...}`) and a `"check"` saying how a reply is scored:

- exact: the reply equals `answer` after normalisation (case, ё = е, punctuation, spacing, an English article
  in front), reported as accuracy;
- constraints: every group in `include` has one of its forms in the reply (as a whole word, same
  normalisation), and the reply is written in `lang` (at least LANGUAGE_SHARE of its letters in that
  script: Latin for en, Cyrillic for ru); reported as the satisfaction rate, and the language rate alone;
- chrf: sacrebleu's chrF against `references` (corpus chrF per group; 100 for an exact copy).

The model answers the conversation without its last turn through `Model.chat`, greedily, with
2 x (reference tokens) + 8 new tokens at most (fewer where the context ends), one denoising step per token.
Every group (check's task and language) also reports the answer-length error in tokens against the
reference: the mean of |reply - reference| and the signed mean, so replies too short or too long show.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from sunfish.config import EvalConfig
from sunfish.data.instruct import CheckKind

if TYPE_CHECKING:
    from sunfish.api import Model

LANGUAGE_SHARE = 0.8  # the share of a reply's letters that must be in the requested script
EXAMPLES = 2  # replies kept per group in the report
_CYRILLIC = re.compile(r"[А-Яа-яЁё]")
_LATIN = re.compile(r"[A-Za-z]")
_ARTICLE = re.compile(r"^(a|an|the) ")


class InstructDataError(ValueError):
    """A row the instruct suite cannot score; the message is one sentence."""


@dataclass(frozen=True)
class Row:
    messages: list[dict]  # the conversation up to the reply
    reference: str  # the reference reply (the last assistant turn)
    check: dict
    task: str  # the check's task (qa, write, translate), or its kind
    lang: str  # the check's language or direction ("" when it names none)


def parse_row(obj, where: str) -> Row:
    """One row from its JSON object; `where` ("FILE line N") starts every error."""
    if not isinstance(obj, dict):
        raise InstructDataError(f"{where} is not a JSON object; write one {{\"messages\": [...], \"check\": {{...}}}} per line")
    if "messages" in obj:
        messages = obj["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
            raise InstructDataError(f"{where} has messages that are not a list of {{\"role\", \"content\"}} objects")
        if not messages or messages[-1].get("role") != "assistant":
            raise InstructDataError(f"{where} does not end with an assistant turn; its last message must be the reference reply")
        messages, reference = messages[:-1], messages[-1]["content"]
    elif isinstance(obj.get("prompt"), str) and isinstance(obj.get("response"), str):
        messages, reference = [{"role": "user", "content": obj["prompt"]}], obj["response"]
    else:
        raise InstructDataError(f"{where} holds neither \"messages\" nor \"prompt\" and \"response\"")
    check = obj.get("check")
    kinds = ", ".join(k.value for k in CheckKind)
    if not isinstance(check, dict):
        raise InstructDataError(f"{where} has no \"check\" object; give it one of kind {kinds}")
    if check.get("kind") not in {k.value for k in CheckKind}:
        raise InstructDataError(f"{where} has the unknown check kind {check.get('kind')!r}; use {kinds}")
    if check["kind"] == CheckKind.CONSTRAINTS.value and (check.get("lang") not in ("en", "ru") or not isinstance(check.get("include"), list)):
        raise InstructDataError(f"{where} has a constraints check without \"lang\" (en or ru) and an \"include\" list")
    return Row(messages, reference, check, str(check.get("task", check["kind"])), str(check.get("lang", "")))


def read_rows(paths: list[str | Path]) -> list[Row]:
    """Every row of the .jsonl files; a bad row is refused in one sentence naming its file and line."""
    if not paths:
        raise InstructDataError("the instruct suite needs its rows: pass --data DIR/test.jsonl (from `sunfish data instruct`)")
    rows = []
    for path in map(Path, paths):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise InstructDataError(f"cannot read the instruct rows '{path}' ({err}); pass a UTF-8 .jsonl file") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise InstructDataError(f"{path} line {number} is not valid JSON") from None
            rows.append(parse_row(obj, f"{path} line {number}"))
    if not rows:
        raise InstructDataError(f"{', '.join(map(str, paths))} holds no rows")
    return rows


# ---- scoring ---------------------------------------------------------------------------------------------

def normalize(text: str) -> str:
    """Lower case, ё as е, punctuation dropped, spaces squeezed, a leading English article dropped."""
    text = "".join(c for c in text.lower().replace("ё", "е") if not unicodedata.category(c).startswith("P"))
    return _ARTICLE.sub("", " ".join(text.split()))


def in_language(text: str, lang: str) -> bool:
    """At least LANGUAGE_SHARE of the letters are Latin (en) or Cyrillic (ru); False without letters."""
    cyrillic, latin = len(_CYRILLIC.findall(text)), len(_LATIN.findall(text))
    if cyrillic + latin == 0:
        return False
    return (cyrillic if lang == "ru" else latin) / (cyrillic + latin) >= LANGUAGE_SHARE


def _has_word(words: str, form: str) -> bool:
    form = " ".join(normalize(form).split())
    return bool(form) and f" {form} " in f" {words} "


def score_reply(check: dict, reply: str, reference: str = "") -> dict:
    """One reply scored by its check: {"correct"}, {"satisfied", "language"} or {"chrf"}."""
    kind = check["kind"]
    if kind == CheckKind.EXACT.value:
        return {"correct": normalize(reply) == normalize(check.get("answer", reference))}
    if kind == CheckKind.CONSTRAINTS.value:
        words = normalize(reply)
        found = all(any(_has_word(words, form) for form in group) for group in check["include"])
        language = in_language(reply, check["lang"])
        return {"satisfied": found and language, "language": language}
    import sacrebleu

    return {"chrf": sacrebleu.sentence_chrf(reply, _references(check, reference)).score}


def _references(check: dict, reference: str) -> list[str]:
    return list(check.get("references") or [check.get("reference", reference)])


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _metrics(kind: str, rows: list[Row], replies: list[str]) -> dict:
    """A group's score: accuracy (exact), constraints and language rates, or corpus chrF; None without replies."""
    import sacrebleu

    if kind == CheckKind.CHRF.value:
        if not replies:
            return {"chrf": None}
        refs = [_references(r.check, r.reference) for r in rows]
        streams = [[r[k] if k < len(r) else r[0] for r in refs] for k in range(max(map(len, refs)))]
        return {"chrf": sacrebleu.corpus_chrf(replies, streams).score}
    scores = [score_reply(r.check, reply, r.reference) for r, reply in zip(rows, replies)]
    if kind == CheckKind.EXACT.value:
        return {"accuracy": _mean([s["correct"] for s in scores])}
    return {"constraints": _mean([s["satisfied"] for s in scores]), "language": _mean([s["language"] for s in scores])}


def aggregate(rows: list[Row], replies: list[str | None], lengths: list[tuple[int, int] | None]) -> list[dict]:
    """Per (task, language, check kind) group: rows, skipped, its score (`_metrics`) and the length error."""
    groups: dict[tuple[str, str, str], list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault((row.task, row.lang, row.check["kind"]), []).append(i)
    out = []
    for (task, lang, kind), members in groups.items():
        done = [i for i in members if replies[i] is not None]
        deltas = [lengths[i][0] - lengths[i][1] for i in done]
        group = {"task": task, "lang": lang, "kind": kind, "rows": len(done), "rows_skipped": len(members) - len(done),
                 **_metrics(kind, [rows[i] for i in done], [replies[i] for i in done]),
                 "reference_tokens": _mean([lengths[i][1] for i in done]),
                 "length_error": _mean([abs(d) for d in deltas]), "length_bias": _mean(deltas),  # None without rows
                 "examples": [{"prompt": rows[i].messages[-1]["content"][-160:] if rows[i].messages else "",
                               "reference": rows[i].reference, "reply": replies[i]} for i in done[:EXAMPLES]]}
        out.append(group)
    return out


# ---- running ---------------------------------------------------------------------------------------------

def _budget(model: Model, row: Row) -> tuple[int, int]:
    """(new tokens for the reply, reference tokens): 2 x reference + 8, capped by the context (0: no room)."""
    from sunfish.sample.chat import chat_format

    tok = model.tokenizer
    form = chat_format(tok, [dict(m) for m in row.messages])
    room = model.cfg.model.context - len(form.ids)
    ref = len(tok.encode(row.reference.strip()))
    return max(0, min(2 * ref + 8, room)), ref


def _reply_tokens(tok, ids: list[int], reply: str) -> int:
    """The tokens the model wrote for `reply`: its ids, unless the reply was cut at a stop string (then the
    reply re-encoded; re-encoding undecodable bytes would overcount)."""
    return len(ids) if tok.decode(ids).strip() == reply else len(tok.encode(reply))


def instruct_suite(model: Model, data: list[str | Path], cfg: EvalConfig, log: Callable[[str], None] = print,
                   sampler: dict | None = None) -> dict:
    """Answer the first `cfg.samples` rows of `data` and score each by its check; the eval.json entry. `sampler`:
    settings over the greedy one-step-per-token default (e.g. {"guidance": 1.0})."""
    rows = read_rows(data)
    scored = rows[: cfg.samples]
    log(f"  {len(scored)} of {len(rows)} rows (--eval.samples={cfg.samples})")
    replies: list[str | None] = []
    lengths: list[tuple[int, int] | None] = []
    for i, row in enumerate(scored):
        budget, ref = _budget(model, row)
        if budget < 1:  # the conversation alone fills the context
            replies.append(None)
            lengths.append(None)
            continue
        settings = {k: v for k, v in (("steps", budget), ("temperature", 0.0)) if k in model.spec.sampler_fields}
        settings.update(sampler or {})
        out = model.chat(row.messages, max_new_tokens=budget, seed=cfg.seed + i, **settings)
        reply = out.text.strip()
        replies.append(reply)
        lengths.append((_reply_tokens(model.tokenizer, out.ids, reply), ref))
    groups = aggregate(scored, replies, lengths)
    skipped = sum(r is None for r in replies)
    log(f"  {len(scored) - skipped} rows answered in {len(groups)} groups" + (f", {skipped} too long for the context" if skipped else ""))
    return {"data": [str(d) for d in data], "rows": len(scored), "rows_in_data": len(rows),
            "rows_skipped": skipped, "groups": groups}


def _shown(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def summary_lines(result: dict) -> list[tuple[str, str]]:
    """(metric, value) rows for the terminal table and the Markdown report, one per group."""
    lines = []
    for g in result["groups"]:
        if "accuracy" in g:
            head = "accuracy " + _shown(g["accuracy"], ".3f")
        elif "constraints" in g:
            head = f"constraints met {_shown(g['constraints'], '.3f')} (language {_shown(g['language'], '.3f')})"
        else:
            head = "chrF " + _shown(g["chrf"], ".2f")
        name = f"instruct {g['task']} {g['lang']}".rstrip()
        skipped = f", {g['rows_skipped']} too long for the context" if g["rows_skipped"] else ""
        if not g["rows"]:
            lines.append((name, f"no row fits the context ({g['rows_skipped']} rows)"))
            continue
        lines.append((name, f"{head}; length error {g['length_error']:.1f} tokens (signed {g['length_bias']:+.1f}, "
                            f"reference {g['reference_tokens']:.1f}); {g['rows']} rows{skipped}"))
    return lines
