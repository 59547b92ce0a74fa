"""Instruction data (`sunfish data instruct`, data/instruct.py) and its scorer (`sunfish eval --suite instruct`)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from conftest import cli_error, shared_corpus
from sunfish.cli import main
from sunfish.data.instruct import STORY_BASE, build_instruct, read_pairs, slots
from sunfish.data.synth import generate_stories, make_story
from sunfish.eval.instruct import (
    InstructDataError,
    aggregate,
    in_language,
    normalize,
    parse_row,
    read_rows,
    score_reply,
)

TATOEBA = "parallel_en_ru_tatoeba/tatoeba_en_ru.tsv"


def _corpora() -> Path:
    return shared_corpus(TATOEBA).parents[1]


@pytest.fixture(scope="module")
def stories_only():
    return build_instruct("both", 240, seed=4, held_out=0.25, corpora=None)


def _user(row: dict) -> str:
    return row["messages"][0]["content"]


def _scores(rows: list[dict], replies: list[str]) -> list[dict]:
    parsed = [parse_row(r, f"row {i}") for i, r in enumerate(rows)]
    return [score_reply(p.check, reply, p.reference) for p, reply in zip(parsed, replies)]


def _passes(score: dict) -> bool:
    return score.get("correct", score.get("satisfied", score.get("chrf") == 100.0))


# ---- `data synth` is unchanged by the refactoring that instruct reuses --------------------------------------

@pytest.mark.parametrize("lang, docs, seed, digest", [
    ("both", 300, 0, "341151f0619981d15ebada3471eb46400853aabe6a43afd8489dab923cf2a8f2"),
    ("en", 50, 9, "17caf0a8c0eaac5c41bdca708a12a52c573c85b3329a61b6fb97a99d26a9e1b1"),
    ("ru", 50, 3, "ab2f12eb69af544ade1d9557597913fede7b78b3f8485be2496b7564c6b5259c"),
])
def test_data_synth_output_is_byte_identical(tmp_path, capsys, lang, docs, seed, digest):
    """Digests of `sunfish data synth` written before synth.py gained make_story and render."""
    out = tmp_path / "stories.txt"
    assert main(["data", "synth", "--lang", lang, "--docs", str(docs), "--seed", str(seed), "--out", str(out)]) == 0
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest


def test_make_story_is_the_corpus_story():
    stories = generate_stories("both", 20, 5)
    assert [make_story("both", 5, i).text for i in range(20)] == stories
    story = make_story("en", 5, 3, optional=0.0)
    assert story.lang == "en" and story.arc and "A" in story.cast


# ---- the generator -----------------------------------------------------------------------------------------

def test_generator_is_deterministic(stories_only):
    again = build_instruct("both", 240, seed=4, held_out=0.25, corpora=None)
    assert again.train == stories_only.train and again.test == stories_only.test
    other = build_instruct("both", 240, seed=5, held_out=0.25, corpora=None)
    assert other.train != stories_only.train


def test_sizes_mix_and_split(stories_only):
    data = stories_only
    assert (len(data.train), len(data.test)) == (180, 60)
    kinds = {(r["check"]["task"], r["check"]["lang"]) for r in data.train + data.test}
    assert kinds == {("qa", "en"), ("qa", "ru"), ("write", "en"), ("write", "ru")}
    assert data.notes and data.notes[0].startswith("translation left out")
    for row in data.train + data.test:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        lang = row["check"]["lang"]
        assert in_language(row["messages"][-1]["content"], lang), row


def test_splits_are_disjoint(stories_only):
    train_users = {_user(r) for r in stories_only.train}
    assert not train_users & {_user(r) for r in stories_only.test}
    story = re.compile(r"\n\n(.*)\n\n", re.S)
    train_stories = {story.search(_user(r)).group(1) for r in stories_only.train if r["check"]["task"] == "qa"}
    test_stories = {story.search(_user(r)).group(1) for r in stories_only.test if r["check"]["task"] == "qa"}
    assert test_stories and not train_stories & test_stories
    train_refs = {r["messages"][-1]["content"] for r in stories_only.train if r["check"]["task"] == "write"}
    assert not train_refs & {r["messages"][-1]["content"] for r in stories_only.test if r["check"]["task"] == "write"}


def test_instruct_stories_are_not_in_a_synth_corpus():
    assert STORY_BASE >= 10**9  # `data synth --docs N` uses stories 0..N-1


def test_languages_and_slots():
    en = build_instruct("en", 40, seed=1, corpora=None)
    assert {r["check"]["lang"] for r in en.train + en.test} == {"en"}
    ru = build_instruct("ru", 40, seed=1, corpora=None)
    assert all(in_language(_user(r), "ru") for r in ru.train + ru.test)
    assert slots("both", True)[-2:] == [("translate", "en-ru"), ("translate", "ru-en")]
    with pytest.raises(ValueError, match="unknown language"):
        slots("de", False)


def test_answers_are_short_and_stated_by_the_story(stories_only):
    for row in stories_only.train + stories_only.test:
        if row["check"]["task"] == "qa":
            answer = row["check"]["answer"]
            assert answer == row["messages"][-1]["content"] and len(answer.split()) <= 5
            assert answer.lower() in _user(row).lower()


def test_every_reference_passes_its_own_check(stories_only):
    rows = stories_only.train + stories_only.test
    scores = _scores(rows, [r["messages"][-1]["content"] for r in rows])
    assert all(_passes(s) for s in scores)


def test_wrong_answers_fail(stories_only):
    rows = [r for r in stories_only.test if r["check"]["task"] in ("qa", "write")]
    qa = [r for r in rows if r["check"]["task"] == "qa"]
    wrong = qa[1:] + qa[:1]  # each question gets the next row's answer
    for row, other in zip(qa, wrong):
        if normalize(row["check"]["answer"]) != normalize(other["check"]["answer"]):
            assert not _scores([row], [other["check"]["answer"]])[0]["correct"]
    en = next(r for r in rows if r["check"]["task"] == "write" and r["check"]["lang"] == "en")
    ru = next(r for r in rows if r["check"]["task"] == "write" and r["check"]["lang"] == "ru")
    name = en["check"]["include"][0][0]
    assert not _scores([en], [en["messages"][-1]["content"].replace(name, "Bob")])[0]["satisfied"]
    english_reply = _scores([ru], [en["messages"][-1]["content"] + " " + " ".join(g[0] for g in ru["check"]["include"])])[0]
    assert english_reply == {"satisfied": False, "language": False}


def test_translation_rows_from_the_corpora():
    data = build_instruct("both", 120, seed=2, held_out=0.25, corpora=_corpora())
    assert not data.notes
    tr = {"train": [r for r in data.train if r["check"]["task"] == "translate"],
          "test": [r for r in data.test if r["check"]["task"] == "translate"]}
    assert len(tr["train"]) == 30 and len(tr["test"]) >= 10  # a test story row passed over shifts the cycle
    assert {r["check"]["lang"] for r in tr["test"]} == {"en-ru", "ru-en"}
    sentences = {k: {_user(r).split(": ", 1)[1] for r in rows} | {r["messages"][-1]["content"] for r in rows}
                 for k, rows in tr.items()}
    assert not sentences["train"] & sentences["test"]
    for row in tr["train"] + tr["test"]:
        source = _user(row).split(": ", 1)[1]
        assert len(source) <= 60 and len(row["messages"][-1]["content"]) <= 60
        assert in_language(source, row["check"]["lang"][:2]) and in_language(row["messages"][-1]["content"], row["check"]["lang"][3:])
    replies = [r["messages"][-1]["content"] for r in tr["test"]]
    assert all(s["chrf"] == 100.0 for s in _scores(tr["test"], replies))
    assert all(s["chrf"] < 100.0 for s in _scores(tr["test"], replies[1:] + replies[:1]))


def test_read_pairs_bounds_and_uniqueness():
    pairs = read_pairs(shared_corpus(TATOEBA))
    assert len(pairs) > 5000
    assert len({p.en.lower() for p in pairs}) == len(pairs)
    assert all(2 <= len(p.en.split()) and len(p.en) <= 60 and len(p.ru) <= 60 for p in pairs)


def test_data_instruct_cli(tmp_path, capsys):
    out = tmp_path / "set"
    assert main(["data", "instruct", "--out", str(out), "--n", "24", "--seed", "3", "--lang", "en",
                 "--corpora", str(tmp_path / "none")]) == 0
    printed = capsys.readouterr().out
    assert "translation left out" in printed and "wrote 22 rows" in printed
    rows = [json.loads(l) for l in (out / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 22 and all(set(r) == {"messages", "check"} for r in rows)
    assert len((out / "test.jsonl").read_text(encoding="utf-8").splitlines()) == 2
    assert "--held-out" in cli_error(capsys, ["data", "instruct", "--out", str(out), "--held-out", "1"])
    assert "--n" in cli_error(capsys, ["data", "instruct", "--out", str(out), "--n", "1"])


# ---- the scorer --------------------------------------------------------------------------------------------

def test_normalize_and_language():
    assert normalize("  The Red  ball!  ") == normalize("red ball") == "red ball"
    assert normalize("«Ёжик».") == normalize("ежик")
    assert normalize("Mia's") == normalize("mias")
    assert in_language("Маша пошла в парк с Max.", "ru") and not in_language("Маша пошла в парк.", "en")
    assert not in_language("123 !", "en")


def test_constraints_take_any_case_form():
    check = {"kind": "constraints", "lang": "ru", "include": [["Маша", "Маши", "Маше"], ["кот", "кота"]]}
    assert score_reply(check, "Жил-был кот. Он любил Машу и Маше дарил цветы.")["satisfied"]
    assert not score_reply(check, "Жил-был котёнок. Он любил Машу.")["satisfied"]  # "кот" as a whole word only


def _write(tmp_path: Path, lines: list) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(l if isinstance(l, str) else json.dumps(l, ensure_ascii=False) for l in lines) + "\n",
                    encoding="utf-8")
    return path


QA_ROW = {"messages": [{"role": "user", "content": "Tom has a red ball. What does Tom have?"},
                       {"role": "assistant", "content": "A red ball"}],
          "check": {"kind": "exact", "task": "qa", "lang": "en", "answer": "A red ball"}}


TRANSLATE_ROW = {"messages": [{"role": "user", "content": "Translate into Russian: I like cats."},
                              {"role": "assistant", "content": "Я люблю кошек."}],
                 "check": {"kind": "chrf", "task": "translate", "lang": "en-ru", "references": ["Я люблю кошек."]}}


@pytest.mark.parametrize("line, message", [
    ({"messages": [{"role": "user", "content": "Hi"}], "check": {"kind": "exact", "answer": "x"}}, "assistant turn"),
    ({**QA_ROW, "check": {"kind": "bleu"}}, "unknown check kind 'bleu'"),
    ({"messages": QA_ROW["messages"]}, "no \"check\""),
    ("{not json", "not valid JSON"),
    ({"text": "a story"}, "neither"),
    ({**QA_ROW, "check": {"kind": "constraints", "include": [["Tom"]]}}, "without \"lang\""),
])
def test_bad_rows_get_one_sentence(tmp_path, line, message):
    with pytest.raises(InstructDataError, match=re.escape(message)) as err:
        read_rows([_write(tmp_path, [QA_ROW, line])])
    assert "line 2" in str(err.value) and "\n" not in str(err.value)


def test_prompt_response_rows_are_read(tmp_path):
    row = {"prompt": "Say hi", "response": "Hi", "check": {"kind": "exact", "answer": "Hi"}}
    [parsed] = read_rows([_write(tmp_path, [row])])
    assert parsed.messages == [{"role": "user", "content": "Say hi"}] and parsed.reference == "Hi" and parsed.task == "exact"


def test_references_as_replies_score_full_marks(stories_only):
    rows = [parse_row(r, "row") for r in stories_only.test[:12] + [QA_ROW, TRANSLATE_ROW]]
    groups = aggregate(rows, [r.reference for r in rows], [(5, 5)] * len(rows))
    assert {g["kind"] for g in groups} == {"exact", "constraints", "chrf"}
    for g in groups:
        assert g.get("accuracy", g.get("constraints", 1.0)) == 1.0 and g.get("language", 1.0) == 1.0
        assert g.get("chrf", 100.0) == 100.0
        assert (g["length_error"], g["length_bias"], g["rows_skipped"]) == (0.0, 0.0, 0)
    check = {"kind": "chrf", "references": ["Я люблю кошек.", "Я люблю котов."]}
    assert score_reply(check, "Я люблю котов.")["chrf"] == 100.0


# ---- end to end on a tiny model ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("instruct") / "run"
    assert main(["train", "--preset", "nano", "--out", str(out), "--steps", "5", "--model.d_model=32", "--model.n_layers=1",
                 "--model.n_heads=2", "--model.context=256", "--train.batch_size=4", "--train.val_every=0",
                 "--data.val_fraction=0.2", "--data.tokenizer=bpe", "--data.bpe_vocab=300", "--data.synth_docs=400",
                 "--no-progress"]) == 0
    return out


def test_suite_end_to_end(tiny_run, tmp_path, capsys, stories_only):
    write = [next(r for r in stories_only.test if r["check"]["task"] == "write" and r["check"]["lang"] == lang)
             for lang in ("en", "ru")]
    long_qa = next(r for r in stories_only.test if r["check"]["task"] == "qa" and r["check"]["lang"] == "ru")
    long_qa = {**long_qa, "messages": [{"role": "user", "content": _user(long_qa) * 3}, long_qa["messages"][1]]}
    data = _write(tmp_path, [QA_ROW, *write, TRANSLATE_ROW, long_qa, QA_ROW])
    out = tmp_path / "eval"
    assert main(["eval", str(tiny_run), "--suite", "instruct", "--data", str(data), "--eval.samples", "5",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "instruct qa en" in printed and "instruct translate en-ru" in printed and "no row fits" in printed
    body = json.loads((out / "eval.json").read_text(encoding="utf-8"))["suites"]["instruct"]
    assert (body["rows"], body["rows_in_data"], body["rows_skipped"]) == (5, 6, 1)
    groups = {(g["task"], g["lang"]): g for g in body["groups"]}
    assert set(groups) == {("qa", "en"), ("write", "en"), ("write", "ru"), ("translate", "en-ru"), ("qa", "ru")}
    assert 0.0 <= groups[("qa", "en")]["accuracy"] <= 1.0
    assert 0.0 <= groups[("write", "en")]["constraints"] <= 1.0 and "language" in groups[("write", "ru")]
    assert 0.0 <= groups[("translate", "en-ru")]["chrf"] <= 100.0
    for key in (("qa", "en"), ("write", "en"), ("translate", "en-ru")):
        g = groups[key]
        assert g["rows"] == 1 and g["length_error"] >= abs(g["length_bias"]) and g["reference_tokens"] > 0
        assert g["examples"][0]["reply"] is not None
    assert groups[("qa", "ru")]["rows_skipped"] == 1 and groups[("qa", "ru")]["accuracy"] is None
    assert "## Instruct replies" in (out / "report.md").read_text(encoding="utf-8")


def test_eval_refuses_bad_instruct_input(tiny_run, tmp_path, capsys):
    bad = _write(tmp_path, [{**QA_ROW, "check": {"kind": "rouge"}}])
    assert "unknown check kind 'rouge'" in cli_error(capsys, ["eval", str(tiny_run), "--suite", "instruct", "--data", str(bad)])
    assert "--data DIR/test.jsonl" in cli_error(capsys, ["eval", str(tiny_run), "--suite", "instruct"])
    good = _write(tmp_path, [QA_ROW])
    assert "another `sunfish eval`" in cli_error(capsys, ["eval", str(tiny_run), "--suite", "instruct,likelihood",
                                                          "--data", str(good)])
