"""Instruction data with answers a program can score: `sunfish data instruct --out DIR`.

Three tasks, English and Russian, each row a conversation `{"messages": [user, assistant]}` whose last turn is
the reference reply, plus a `"check"` object saying how a reply is scored (`sunfish eval --suite instruct`):

- qa: a short built-in story (data/synth.py, the beats every story of its arc has) and a question whose
  answer is a name, an object or a place as the story says it; check {"kind": "exact", "answer": ...};
- write: "Write a short story about Max the dog who lost his ball." with a story of that cast as the
  reference; check {"kind": "constraints", "include": [[forms of the name], [forms of the noun]]}: each
  group needs one form in the reply, and the reply must be written in the row's language;
- translate: short Tatoeba sentence pairs (../shared/corpora), English->Russian and Russian->English;
  check {"kind": "chrf", "references": [...]}, scored with sacrebleu's chrF.

Every check also names its "task" and "lang" (en, ru, or the direction en-ru / ru-en). Rows are
deterministic in (seed, row number). The story of train row k is synth story 2k, of test row k story 2k + 1
(counted from STORY_BASE, far beyond any `data synth` corpus of the same seed), and test rows whose
conversation also occurs in train are passed over; translation pairs are split with no English or Russian
sentence on both sides.
"""

from __future__ import annotations

import csv
import json
import random
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from sunfish.data.synth import Story, make_story, render

TASKS = ("qa", "write", "translate")
STORY_BASE = 10**9  # instruct stories are synth stories from this index on, none of a `data synth` corpus
ATTEMPTS = 16  # stories tried per write row for a hero with a name
HERO_SHARE = 0.15  # qa rows asking who the story is about (the other questions are arc-specific)
MAX_CHARS = 60  # longest translated sentence, either side
PAIRS = "parallel_en_ru_tatoeba/tatoeba_en_ru.tsv"


class CheckKind(str, Enum):
    EXACT = "exact"  # the normalised reply equals the normalised answer
    CONSTRAINTS = "constraints"  # every group of forms appears in the reply, written in the row's language
    CHRF = "chrf"  # chrF of the reply against the references


class InstructError(ValueError):
    """Bad generator settings; the message is one sentence."""


# Questions per arc: (English question, answer; Russian question, answer). A question is asked only when its
# answer appears in the story as written (the grammar's variants differ), so Russian answers keep the case
# the question asks for ("Куда пошёл Миша?" "В парк"). None: no such question in that language.
_HERO = ("Who is the story about?", "{A}", "Кто главный герой рассказа?", "{A}")
_FRIEND = ("Who is {A.s} friend?", "{B}", "Кто друг {A.gen}?", "{B}")
QUESTIONS = {
    "lost": [("What did {A} lose?", "{O.n0}", "Что {A:потерял} {A}?", "{O.acc}"),
             ("Where did {A} go?", "{P.to}", "Куда {A:пошёл} {A}?", "{P.куда}"),
             ("Who found the {O.n0}?", "{B}", "Кто нашёл {O.acc}?", "{B}")],
    "share": [("What did {A} share with {B}?", "{F.n0}", "Чем {A:поделился} {A}?", "{F.ins}"),
              ("Who did {A} share with?", "{B}", "С кем {A:поделился} {A}?", "{B.с}"),
              ("Where did {A} go?", "{P.to}", "Куда {A:пошёл} {A}?", "{P.куда}")],
    "rain": [("Where did {W} go?", "{P.to}", "Куда {W:пошёл} {W}?", "{P.куда}"),
             ("What did {W} take to play with?", "{O.n}", "Что {W:взял} с собой {W}?", "{O.adj.acc}"), _FRIEND],
    "build": [("What did {W} build?", "{X.n}", "Что {X.built} {W}?", "{X.acc}"), _FRIEND],
    "surprise": [("Who had a birthday?", "{B}", "У кого был день рождения?", "{B.у}"),
                 ("What did {A} give {B}?", "{G.n}", "Что {A:подарил} {A} {B.dat}?", "{G.acc}")],
    "argue": [("Where were {W} playing?", "{P.in}", "Где {W:играл} {W}?", "{P.где}"),
              ("What did {A} and {B} both want?", "{O.n0}", None, None), _FRIEND],
    "scared": [("Who was behind the bush?", "{B.noun}", "Кто был за кустом?", "{B}"),
               ("Where was {A}?", "{P.in}", "Где {A:гулял} {A}?", "{P.где}")],
    "help": [("Who needed help?", "{B}", "Кто попал в беду?", "{B}"),
             ("Where did {A} go?", "{P.to}", "Куда {A:пошёл} {A}?", "{P.куда}"),
             ("Where was {A} walking?", "{P.in}", "Где {A:гулял} {A}?", "{P.где}")],
    "learn": [("What did {A} want to learn?", "{S.do}", "Чему {A:хотел} научиться {A}?", "{S.do}"),
              ("Who helped {A}?", "{A.his} {M.n}", "Кто поддержал {A.acc}?", "{M}")],
}
# What the hero of each arc did, for the writing prompt: (English "who ..." clause, Russian "который ..." clause).
CLAUSES = {
    "lost": ("who lost {A.his} {O.n} {P.in}", "{A:который} {A:потерял} {O.adj.acc} {P.где}"),
    "share": ("who shared {F.a} with {B.intro}", "{A:который} {A:поделился} {F.ins} {B.с.intro}"),
    "rain": ("who went {P.to} with {B.intro} and got caught in the rain",
             "{A:который} вместе {B.с.intro} {A:попал} под дождь {P.где}"),
    "build": ("who built {X.a} with {B.intro}", "{A:который} вместе {B.с.intro} {A:решил} {X.build} {X.acc}"),
    "surprise": ("who surprised {B.intro} on {B.his} birthday", "{A:который} {A:поздравил} {B.intro.acc} с днём рождения"),
    "argue": ("who argued with {B.intro} over {O.a}", "{A:который} {A:поссорился} {B.с.intro} из-за {O.gen}"),
    "scared": ("who heard a strange noise {P.in} and met {B.intro}",
               "{A:который} {A:услышал} странный шорох {P.где} и {A:встретил} {B.intro.acc}"),
    "help": ("who helped {B.intro} {P.in}", "{A:который} {A:помог} {B.intro.dat} {P.где}"),
    "learn": ("who learned to {S.do}", "{A:который} {A:научился} {S.do}"),
}
PROMPTS = {
    "qa": {"en": "Read the story and answer the question in a few words.\n\n{story}\n\nQuestion: {question}",
           "ru": "Прочитай рассказ и коротко ответь на вопрос.\n\n{story}\n\nВопрос: {question}"},
    "write": {"en": "Write a short story about {subject} {clause}.", "ru": "Напиши короткий рассказ про {subject}, {clause}."},
    "translate": {"en-ru": "Translate into Russian: {text}", "ru-en": "Переведи на английский: {text}"},
}


@dataclass(frozen=True)
class Pair:
    en: str
    ru: str
    ru_alternatives: tuple[str, ...] = ()


@dataclass
class InstructSet:
    train: list[dict]
    test: list[dict]
    notes: list[str] = field(default_factory=list)  # one line each: what was left out and why


def _row(prompt: str, reply: str, check: dict) -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}], "check": check}


def _appears(phrase: str, text: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(phrase) + r"(?!\w)", text, re.IGNORECASE) is not None


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def qa_row(story: Story, rng: random.Random) -> dict | None:
    """A question about `story` whose answer the story states, or None when no question of its arc fits."""
    fitting = {}
    for entry in [*QUESTIONS[story.arc], _HERO]:
        question, answer = entry[:2] if story.lang == "en" else entry[2:]
        if question is None:
            continue
        answer = render(answer, story.lang, story.cast, rng).strip()
        if _appears(answer, story.text):
            fitting[entry] = (render(question, story.lang, story.cast, rng), _upper_first(answer))
    hero = fitting.pop(_HERO, None)
    if hero is None and not fitting:
        return None
    question, answer = hero if hero and (not fitting or rng.random() < HERO_SHARE) else rng.choice(list(fitting.values()))
    prompt = PROMPTS["qa"][story.lang].format(story=story.text, question=question)
    return _row(prompt, answer, {"kind": CheckKind.EXACT.value, "task": "qa", "lang": story.lang, "answer": answer})


def write_row(story: Story, rng: random.Random) -> dict | None:
    """A writing prompt cast from `story` (whose hero must have a name) with the story as the reference."""
    hero, lang = story.cast["A"], story.lang
    if not hero.get("name"):
        return None
    name, noun = hero["name"], hero["noun"]
    if lang == "en":
        subject = hero["intro"] if noun in ("girl", "boy") else f"{name} the {noun}"  # "a little girl named Lily"
        include = [[name], [noun, noun + "s"]]
    else:
        subject = hero["intro.acc"]  # "рыжего кота по имени Барсик"
        include = [list(dict.fromkeys(name.split())), list(dict.fromkeys(noun.split()))]  # any case form
    clause = render(CLAUSES[story.arc][lang == "ru"], lang, story.cast, rng)
    clause = clause[:1].lower() + clause[1:]  # rendering capitalises a sentence start
    prompt = PROMPTS["write"][lang].format(subject=subject, clause=clause)
    return _row(prompt, story.text, {"kind": CheckKind.CONSTRAINTS.value, "task": "write", "lang": lang, "include": include})


def translate_row(pair: Pair, direction: str) -> dict:
    source, references = (pair.en, [pair.ru, *pair.ru_alternatives]) if direction == "en-ru" else (pair.ru, [pair.en])
    prompt = PROMPTS["translate"][direction].format(text=source)
    return _row(prompt, references[0], {"kind": CheckKind.CHRF.value, "task": "translate", "lang": direction,
                                        "references": references})


def _key(text: str) -> str:
    return re.sub(r"[^\w]+", " ", text.lower()).strip()


def read_pairs(path: Path) -> list[Pair]:
    """Tatoeba pairs of at most MAX_CHARS characters and two words a side, no sentence in two pairs."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    seen: set[str] = set()
    pairs = []
    for row in rows:
        en, ru = (row.get("en") or "").strip(), (row.get("ru") or "").strip()
        if not (2 <= len(en.split()) and 2 <= len(ru.split()) and len(en) <= MAX_CHARS and len(ru) <= MAX_CHARS):
            continue
        keys = {"en:" + _key(en), "ru:" + _key(ru)}
        if keys & seen:
            continue
        seen |= keys
        alternatives = tuple(a.strip() for a in (row.get("ru_alternatives") or "").split(" ||| ") if a.strip())
        pairs.append(Pair(en, ru, alternatives))
    return pairs


def find_corpora() -> Path | None:
    """../shared/corpora beside the working folder or beside this checkout, or None."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[3]):
        folder = base.parent / "shared" / "corpora"
        if (folder / PAIRS).is_file():
            return folder
    return None


def slots(lang: str, translation: bool) -> list[tuple[str, str]]:
    """The (task, language) of rows 0, 1, 2, ... of a split, repeating; translation needs both languages."""
    if lang not in ("en", "ru", "both"):
        raise InstructError(f"unknown language {lang!r}; use en, ru or both")
    langs = ("en", "ru") if lang == "both" else (lang,)
    out = [(task, lg) for task in ("qa", "write") for lg in langs]
    if translation and lang == "both":
        out += [("translate", "en-ru"), ("translate", "ru-en")]
    return out


def _story_row(task: str, lang: str, seed: int, number: int) -> dict | None:
    """Row `number` (2k for train row k, 2k + 1 for test) of a story task."""
    for attempt in range(ATTEMPTS):
        index = STORY_BASE + number * ATTEMPTS + attempt
        rng = random.Random(f"instruct:{seed}:{index}")
        row = (qa_row if task == "qa" else write_row)(make_story(lang, seed, index, optional=0.0), rng)
        if row is not None:
            return row
    return None


def _split(n: int, plan: list[tuple[str, str]], seed: int, test: bool, pairs: list[Pair], taken: set[str]) -> list[dict]:
    """n rows of one split, translation rows taking `pairs` in order; a test row whose user turn occurs in
    `taken` (the train split's) is passed over."""
    rows: list[dict] = []
    k = 0
    next_pair = 0
    while len(rows) < n:
        task, lang = plan[k % len(plan)]
        if task == "translate":
            if next_pair == len(pairs):
                raise InstructError(f"the {len(pairs)} short translation pairs there are do not last for {n} rows; ask for fewer rows")
            row = translate_row(pairs[next_pair], lang)
            next_pair += 1
        else:
            row = _story_row(task, lang, seed, 2 * k + test)
        k += 1
        if row is not None and row["messages"][0]["content"] not in taken:
            rows.append(row)
        if k > 4 * n + 100:
            raise InstructError(f"found only {len(rows)} of {n} rows unlike the train rows; ask for fewer rows or another --held-out")
    return rows


def build_instruct(lang: str = "both", n: int = 5000, seed: int = 0, held_out: float = 0.1,
                   corpora: Path | None = None) -> InstructSet:
    """Train and test rows (n in all, `held_out` of them test); translation only with the corpora and both languages."""
    if n < 2:
        raise InstructError(f"--n must be at least 2 (one train and one test row), got {n}")
    if not 0 < held_out < 1:
        raise InstructError(f"--held-out must be a fraction between 0 and 1, got {held_out}")
    n_test = min(n - 1, max(1, round(n * held_out)))
    notes = []
    pairs: list[Pair] = []
    if lang == "both" and corpora is not None and (corpora / PAIRS).is_file():
        pairs = read_pairs(corpora / PAIRS)
    elif lang == "both":
        notes.append(f"translation left out: no {PAIRS} under {corpora or '../shared/corpora'} (pass --corpora DIR)")
    else:
        notes.append("translation left out: it needs --lang both")
    plan = slots(lang, bool(pairs))
    random.Random(f"instruct-pairs:{seed}").shuffle(pairs)
    train = _split(n - n_test, plan, seed, False, pairs[::-1], set())  # train takes pairs from the end, test from the start
    used = sum(r["check"]["task"] == "translate" for r in train)
    test = _split(n_test, plan, seed, True, pairs[: len(pairs) - used], {r["messages"][0]["content"] for r in train})
    return InstructSet(train, test, notes)


def write_instruct(data: InstructSet, out: Path) -> list[Path]:
    """DIR/train.jsonl and DIR/test.jsonl, written atomically."""
    from sunfish.fileio import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in (("train", data.train), ("test", data.test)):
        path = out / f"{name}.jsonl"
        write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        paths.append(path)
    return paths


def summary(data: InstructSet) -> str:
    """Rows and mean reference length (words, characters) per split, task and language."""
    lines = [f"{'split':<6} {'task':<10} {'lang':<6} {'rows':>6} {'words':>7} {'chars':>7}"]
    for name, rows in (("train", data.train), ("test", data.test)):
        groups: dict[tuple[str, str], list[str]] = {}
        for r in rows:
            groups.setdefault((r["check"]["task"], r["check"]["lang"]), []).append(r["messages"][-1]["content"])
        for (task, lang), replies in sorted(groups.items(), key=lambda g: (TASKS.index(g[0][0]), g[0][1])):
            words = sum(len(t.split()) for t in replies) / len(replies)
            chars = sum(len(t) for t in replies) / len(replies)
            lines.append(f"{name:<6} {task:<10} {lang:<6} {len(replies):>6} {words:>7.1f} {chars:>7.1f}")
    return "\n".join(lines)
