"""Tests for sunfish.data.synth (the built-in children's-story corpus)."""

from __future__ import annotations

import re

import pytest

from sunfish.data import synth_lexicon as lex
from sunfish.data.synth import (
    LANGS,
    en_agree,
    en_article,
    generate_stories,
    iter_stories,
    ru_adj,
    ru_agree,
    ru_prep,
)

CYRILLIC = re.compile(r"[А-Яа-яЁё]")
LATIN = re.compile(r"[A-Za-z]")
WORD = re.compile(r"[A-Za-zА-Яа-яЁё']+")


@pytest.fixture(scope="module")
def corpus() -> dict[str, list[str]]:
    return {lang: generate_stories(lang, 800, 123) for lang in ("en", "ru")}


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_stories():
    assert generate_stories("both", 30, 7) == generate_stories("both", 30, 7)


def test_different_seed_different_stories():
    assert generate_stories("en", 20, 1) != generate_stories("en", 20, 2)


@pytest.mark.parametrize("lang", LANGS)
def test_prefix_property_and_iter(lang):
    many = generate_stories(lang, 40, 5)
    assert generate_stories(lang, 12, 5) == many[:12]
    assert list(iter_stories(lang, 40, 5)) == many
    assert generate_stories(lang, 0, 5) == []


@pytest.mark.parametrize("bad", ["de", "EN", "", "english"])
def test_bad_lang_raises(bad):
    with pytest.raises(ValueError, match="language"):
        generate_stories(bad, 3, 0)


def test_negative_n_raises():
    with pytest.raises(ValueError, match="non-negative"):
        generate_stories("en", -1, 0)
    with pytest.raises(ValueError):
        iter_stories("ru", -5, 0)


# ----------------------------------------------------------------------------- languages and format
def test_languages():
    both = generate_stories("both", 100, 3)
    cyr = [s for s in both if CYRILLIC.search(s)]
    lat = [s for s in both if not CYRILLIC.search(s)]
    assert 40 <= len(cyr) <= 60 and 40 <= len(lat) <= 60
    assert not any(CYRILLIC.search(s) for s in generate_stories("en", 100, 3))
    for story in generate_stories("ru", 100, 3):
        letters = CYRILLIC.findall(story) + LATIN.findall(story)
        assert len(CYRILLIC.findall(story)) / len(letters) > 0.95


def test_format(corpus):
    for story in corpus["en"] + corpus["ru"]:
        assert story == story.strip()
        assert "\n\n" not in story and "  " not in story
        assert "{" not in story and "}" not in story
        assert 200 <= len(story) <= 900, story
        assert story[0].isupper() and story[-1] in ".!?»\"", story
        for paragraph in story.split("\n"):
            assert paragraph == paragraph.strip() and paragraph[0].isupper()


def test_sentences_start_capitalized(corpus):
    for story in corpus["en"] + corpus["ru"]:
        assert not re.search(r"[.!?]»? [a-zа-яё]", story), story


# ----------------------------------------------------------------------------- variety
@pytest.mark.parametrize("lang", ["en", "ru"])
def test_variety(lang, corpus):
    stories = corpus[lang][:200]
    firsts = {re.split(r"(?<=[.!?])\s", s)[0] for s in stories}
    assert len(firsts) >= 150 or len(set(stories)) >= 190
    assert len(set(stories)) >= 190
    vocab = {w.lower() for s in corpus[lang] for w in WORD.findall(s)}
    assert len(vocab) > 150


def test_arcs_are_complete():
    assert len(lex.ARCS) >= 6
    for roles, beats in lex.ARCS.values():
        assert "A" in roles
        for beat in beats:
            if beat != "/":
                assert beat.lstrip("?") in lex.EN_GRAMMAR and beat.lstrip("?") in lex.RU_GRAMMAR, beat


# ----------------------------------------------------------------------------- English grammar
@pytest.mark.parametrize("phrase, expected", [
    ("apple", "an apple"), ("old owl", "an old owl"), ("red ball", "a red ball"),
    ("umbrella", "an umbrella"), ("unicorn", "a unicorn"), ("orange kitten", "an orange kitten"),
])
def test_en_article(phrase, expected):
    assert en_article(phrase) == expected


def test_en_agree():
    assert en_agree("was", "pl") == "were" and en_agree("was", "f") == "was"


def test_en_articles_in_text(corpus):
    for story in corpus["en"]:
        assert not re.search(r"\b[Aa] [aeio]\w", story), story
        assert not re.search(r"\b[Aa]n [b-df-hj-np-tv-z]\w", story), story


def test_en_pronouns_match_girl_heroes(corpus):
    """In the learn-a-skill arc only the hero and the parent appear: a girl is never 'he'."""
    for story in corpus["en"]:
        hero = re.search(r"girl named (\w+)", story.split(".")[0])
        male_parent = re.search(r"\b(dad|grandpa)\b", story, re.IGNORECASE)
        if hero and "wanted to learn to" in story and not male_parent:
            assert not re.search(r"\b(he|him|his|He|His)\b", story.replace('"', "")), story


# ----------------------------------------------------------------------------- Russian grammar
@pytest.mark.parametrize("adj, gender, case, animate, expected", [
    ("красный", "f", "acc", False, "красную"), ("маленький", "m", "acc", True, "маленького"),
    ("маленький", "m", "acc", False, "маленький"), ("синий", "f", "nom", False, "синяя"),
    ("синий", "n", "nom", False, "синее"), ("большой", "m", "ins", False, "большим"),
    ("большой", "m", "nom", False, "большой"), ("большой", "f", "gen", False, "большой"),
    ("хороший", "f", "gen", False, "хорошей"), ("хороший", "n", "nom", False, "хорошее"),
    ("рыжий", "m", "dat", False, "рыжему"), ("зелёный", "pl", "ins", False, "зелёными"),
    ("сладкий", "pl", "nom", False, "сладкие"), ("маленький", "pl", "acc", True, "маленьких"),
    ("голубой", "f", "acc", False, "голубую"), ("весёлый", "m", "acc", True, "весёлого"),
    ("свой", "f", "acc", False, "свою"), ("свой", "n", "pre", False, "своём"),
])
def test_ru_adj(adj, gender, case, animate, expected):
    assert ru_adj(adj, gender, case, animate) == expected


@pytest.mark.parametrize("word, gender, expected", [
    ("нашёл", "f", "нашла"), ("пошёл", "pl", "пошли"), ("улыбнулся", "f", "улыбнулась"),
    ("испугался", "pl", "испугались"), ("был", "n", "было"), ("рад", "f", "рада"), ("рад", "pl", "рады"),
    ("весёлый", "f", "весёлая"), ("один", "f", "одна"), ("мой", "n", "моё"), ("смог", "f", "смогла"),
    ("сказал", "m", "сказал"), ("побежал", "f", "побежала"),
])
def test_ru_agree(word, gender, expected):
    assert ru_agree(word, gender) == expected


@pytest.mark.parametrize("prep, phrase, expected", [
    ("с", "щенком", "со щенком"), ("с", "Машей", "с Машей"), ("о", "Ане", "об Ане"),
    ("о", "ёжике", "о ёжике"), ("в", "двор", "во двор"), ("к", "мне", "ко мне"), ("к", "Пете", "к Пете"),
])
def test_ru_prep(prep, phrase, expected):
    assert ru_prep(prep, phrase) == expected


def _ru_past_verbs() -> set[str]:
    """Masculine past-tense verbs the Russian templates inflect with {R:...}."""
    text = repr(lex.RU_GRAMMAR) + repr(lex.RU_TROUBLES) + repr(lex.RU_SKILLS) + repr(lex.RU_GIFTS)
    words = set(re.findall(r"\{[A-Z]:(\w+)\}", text))
    return {w for w in words if w.endswith(("л", "лся")) or w in ("нашёл", "пошёл", "подошёл", "смог", "помог")}


def test_ru_subject_verb_agreement(corpus):
    """A subject is never followed (directly or after one adverb) by a verb of the wrong gender."""
    verbs = _ru_past_verbs()
    assert len(verbs) > 40
    masc, fem = "|".join(verbs), "|".join(ru_agree(v, "f") for v in verbs)
    female = [n.split()[0] for n in lex.RU_GIRLS] + ["Мурка", "Муся", "Жучка", "Найда"]
    male = [n.split()[0] for n in lex.RU_BOYS] + ["Барсик", "Мурзик", "Шарик", "Тузик", "Пушок"]
    female += [a[0].split()[0] for a in lex.RU_ANIMALS if a[1] == "f"]
    male += [a[0].split()[0] for a in lex.RU_ANIMALS if a[1] == "m"]
    text = "\n".join(corpus["ru"]).lower()
    for names, wrong in ((female, masc), (male, fem)):
        pattern = rf"(?<![\w-])({'|'.join(n.lower() for n in names)}) (?:\w+ )?({wrong})\b"
        assert not re.search(pattern, text), re.search(pattern, text)
    assert "пошла" in text and "пошёл" in text and "пошли" in text


def test_ru_case_agreement_in_text(corpus):
    text = "\n".join(corpus["ru"])
    assert not re.search(r"\bс щ", text)  # со щенком
    assert not re.search(r"\b(увидел|увидела|встретил|встретила) \w+ (ёжик|зайчик|котёнок|щенок)\b", text)
    assert "жила-была" in text.lower() and "жил-был" in text.lower()
    assert re.search(r"(увидел|увидела|встретил|встретила) (маленького|серого|доброго|колючего) (ёжика|зайчика)",
                     text)
    assert not re.search(r"\bв лесе\b|\bв саде\b", text)
    assert not re.search(r"\b(кукла|шапка|книжка|машинка|ленточка|башня) (пропал|был)\b", text)
    assert not re.search(r"\b(ведёрко|пёрышко) (пропал|пропала|был|была)\b", text)
