"""Built-in training corpus: deterministic short children's stories in English and Russian.

Design: a story is one of several plot arcs (lost and found, sharing, rain, building, a birthday
surprise, an argument, a scary noise, helping an animal, learning a skill). An arc casts roles
(hero A, friend B, object O, place P, ...) from small lexicons and then expands a list of beats
from a per-language template grammar (see `synth_lexicon`). Each beat has several sentence
variants, and templates may nest other symbols, so stories vary in wording, not only in nouns.

Grammar is handled by the entities, not the templates: every cast role is a dict of ready forms
("a red ball", "Lily's", "she"; or Russian case forms, adjective + noun phrases, pronouns and
preposition phrases such as "со щенком"), and `{R:word}` inflects a verb or adjective to agree
with R (`ru_agree("нашёл", "f") == "нашла"`). Russian nouns are stored with all six singular
(or plural) case forms; adjectives are declined from their masculine form by `ru_adj`.

Determinism: story i depends only on (seed, i) through `random.Random(f"{seed}:{i}")`, so any
prefix of a corpus equals the smaller corpus. Only the standard library is used.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Iterator

from sunfish.data import synth_lexicon as lex

LANGS = ("en", "ru", "both")
OPTIONAL_KEPT = 0.4  # chance that an arc's optional ("?") beat is told
CASES = ("nom", "gen", "dat", "acc", "ins", "pre")
_TOKEN = re.compile(r"\{([^{}]+)\}")
_SENTENCE_START = re.compile(r"(^|[.!?]»? |\n)([a-zа-яё])")  # "!» " ends a Russian sentence

# ----------------------------------------------------------------------------- English helpers
_EN_PRONOUNS = {"m": "he him his himself", "f": "she her her herself", "n": "it it its itself",
                "pl": "they them their themselves"}
_EN_AGREE = {"was": ("was", "were"), "is": ("is", "are"), "has": ("has", "have")}


def en_article(phrase: str) -> str:
    """`phrase` with "a" or "an" in front: "an old owl", "a red ball", "a unicorn"."""
    word = phrase.lower()
    vowel = word[:1] in "aeio" or (word[:1] == "u" and not word.startswith(("uni", "use")))
    return ("an " if vowel else "a ") + phrase


def en_agree(word: str, gender: str) -> str:
    """English verb agreeing in number: en_agree("was", "pl") == "were"."""
    singular, plural = _EN_AGREE[word]
    return plural if gender == "pl" else singular


def _en_entity(ref: str, gender: str, **keys: str) -> dict:
    """An English role: its reference, pronouns (he/him/his/himself), possessive and extra keys."""
    he, him, his, himself = _EN_PRONOUNS[gender].split()
    entity = {"": ref, "gender": gender, "he": he, "him": him, "his": his, "himself": himself,
              "s": ref + "'s", "it": "them" if gender == "pl" else "it"}
    entity.update(keys)
    return entity


# ----------------------------------------------------------------------------- Russian helpers
_VOWELS = "аеёиоуыэюя"
_HARD = {"m": "ый ого ому ый ым ом", "f": "ая ой ой ую ой ой", "n": "ое ого ому ое ым ом",
         "pl": "ые ых ым ые ыми ых"}
_SOFT = {"m": "ий его ему ий им ем", "f": "яя ей ей юю ей ей", "n": "ее его ему ее им ем",
         "pl": "ие их им ие ими их"}
_POSSESSIVE = {"m": "й его ему й им ём", "f": "я ей ей ю ей ей", "n": "ё его ему ё им ём",
               "pl": "и их им и ими их"}
_RU_IRREGULAR = {  # masculine -> feminine, neuter, plural
    "нашёл": "нашла нашло нашли", "пошёл": "пошла пошло пошли", "пришёл": "пришла пришло пришли",
    "ушёл": "ушла ушло ушли", "подошёл": "подошла подошло подошли", "шёл": "шла шло шли",
    "принёс": "принесла принесло принесли", "понёс": "понесла понесло понесли",
    "смог": "смогла смогло смогли", "мог": "могла могло могли", "помог": "помогла помогло помогли",
    "лёг": "легла легло легли", "испёк": "испекла испекло испекли", "замёрз": "замёрзла замёрзло замёрзли",
    "один": "одна одно одни", "мой": "моя моё мои", "твой": "твоя твоё твои", "сам": "сама само сами",
    "весь": "вся всё все", "должен": "должна должно должны",
}
_RU_PRONOUNS = {"он": "он она оно они", "его": "его её его их", "ему": "ему ей ему им"}
_RU_N_PRONOUNS = {"gen": "него неё него них", "dat": "нему ней нему ним", "acc": "него неё него них",
                  "ins": "ним ней ним ними", "pre": "нём ней нём них"}
_RU_PREPOSITIONS = {"с": "ins", "к": "dat", "у": "gen", "от": "gen", "для": "gen", "о": "pre",
                    "на": "acc", "про": "acc"}
_GENDER_INDEX = {"m": 0, "f": 1, "n": 2, "pl": 3}


def ru_adj(adj: str, gender: str, case: str, animate: bool = False) -> str:
    """Decline an adjective given in the masculine nominative: ("красный", "f", "acc") -> "красную".

    Handles hard (красный), soft (синий), velar (маленький), sibilant (хороший), stressed -ой
    (большой) stems and the possessive pattern of свой/мой/твой; animate masculine and plural
    accusatives take the genitive form.
    """
    index = CASES.index(case)
    if case == "acc" and animate and gender in ("m", "pl"):
        index = 1
    if adj in ("свой", "мой", "твой"):
        return adj[:-1] + _POSSESSIVE[gender].split()[index]
    stem, last = adj[:-2], adj[-3]
    if adj.endswith("ий") and last not in "кгхжшчщ":
        return stem + _SOFT[gender].split()[index]
    ending = _HARD[gender].split()[index]
    if last in "кгхжшчщ":
        ending = ending.replace("ы", "и")
    stressed = adj.endswith("ой")
    if last in "жшчщц" and not stressed and ending[0] == "о":
        ending = "е" + ending[1:]
    if stressed and ending in ("ый", "ий"):
        ending = "ой"
    return stem + ending


def ru_agree(word: str, gender: str) -> str:
    """Past-tense verb, short or full adjective agreeing with gender "m", "f", "n" or "pl".

    ru_agree("нашёл", "f") == "нашла", ru_agree("улыбнулся", "pl") == "улыбнулись",
    ru_agree("рад", "pl") == "рады", ru_agree("весёлый", "f") == "весёлая".
    """
    if gender == "m":
        return word
    k = _GENDER_INDEX[gender] - 1
    if word in _RU_IRREGULAR:
        return _RU_IRREGULAR[word].split()[k]
    if word.endswith(("ый", "ий", "ой")):
        return ru_adj(word, gender, "nom")
    if word.endswith("ся"):
        return ru_agree(word[:-2], gender) + "сь"
    if word.endswith("л"):
        return word + "аои"[k]
    plural = "и" if word[-1] in "кгхжшчщ" else "ы"
    return word + ("а", "о", plural)[k]


def ru_prep(prep: str, phrase: str) -> str:
    """Join a preposition and a phrase, using со/ко/во/об where Russian needs them."""
    word = phrase.split()[0].lower()
    cluster = len(word) > 1 and word[1] not in _VOWELS
    if prep == "с" and (word[0] == "щ" or (word[0] in "сзшж" and cluster) or word == "мной"):
        prep = "со"
    elif prep == "к" and word.startswith(("мн", "вс")):
        prep = "ко"
    elif prep == "в" and (word[0] in "вф" and cluster or word.startswith(("двор", "мн"))):
        prep = "во"
    elif prep == "о" and word[0] in "аиоуыэ":
        prep = "об"
    return f"{prep} {phrase}"


def _forms(spec: str) -> list[str]:
    """Six case forms from a lexicon string "мяч мяча мячу мяч мячом мяче"."""
    forms = spec.split()
    assert len(forms) == 6, spec
    return forms


def _ru_entity(forms: list[str], gender: str, animate: bool = False, adj: str | None = None,
               intro: list[str] | None = None, **extra: str) -> dict:
    """A Russian role: case forms, optional adjective/intro phrases, pronouns and preposition phrases."""
    g = _GENDER_INDEX[gender]
    entity = {"": forms[0], "gender": gender, **extra}
    for i, case in enumerate(CASES):
        entity[case] = forms[i]
        if adj:
            entity["adj." + case] = f"{ru_adj(adj, gender, case, animate)} {forms[i]}"
            entity["свой." + case] = f"{ru_adj('свой', gender, case, animate)} {entity['adj.' + case]}"
        if intro:
            entity["intro." + case] = intro[i]
        if case != "nom":
            entity[_RU_N_PRONOUNS[case].split()[0]] = _RU_N_PRONOUNS[case].split()[g]
    entity["intro"] = entity.get("intro.nom", forms[0])
    entity.update({key: forms_.split()[g] for key, forms_ in _RU_PRONOUNS.items()})
    for prep, case in _RU_PREPOSITIONS.items():
        entity[prep] = ru_prep(prep, forms[CASES.index(case)])
        entity[prep + ".pron"] = ru_prep(prep, _RU_N_PRONOUNS[case].split()[g])
        for sub in ("adj", "intro"):
            if f"{sub}.{case}" in entity:
                entity[f"{prep}.{sub}"] = ru_prep(prep, entity[f"{sub}.{case}"])
    return entity


# ----------------------------------------------------------------------------- casting
def _pick_name(rng: random.Random, names: list[str], taken: set[str]) -> str:
    free = [n for n in names if n.split()[0] not in taken]
    return rng.choice(free)


def _en_character(rng: random.Random, kind: str, taken: set[str]) -> dict:
    """An English child or animal with intro phrase ("a little girl named Lily") and home."""
    if kind == "child" or (kind == "any" and rng.random() < 0.55):
        gender = rng.choice("mf")
        name = _pick_name(rng, lex.EN_GIRLS if gender == "f" else lex.EN_BOYS, taken)
        noun = "girl" if gender == "f" else "boy"
        adj = rng.choice(lex.EN_CHILD_ADJ + [""])
        intro = f"{en_article((adj + ' ' + noun).strip())} named {name}"
        taken.update({name, noun})
        return _en_entity(name, gender, intro=intro, home=rng.choice(lex.EN_CHILD_HOME), noun=noun, name=name)
    rows = [r for r in lex.EN_ANIMALS if r[0] not in taken and (kind != "small" or r[5])]
    species, adjs, males, females, pet, _small = rng.choice(rows)
    gender = rng.choice("mf")
    names = [n for n in (males if gender == "m" else females).split() if n not in taken]
    name = rng.choice(names) if names and kind != "small" and rng.random() < 0.6 else None
    intro = en_article(f"{rng.choice(adjs.split())} {species}") + (f" named {name}" if name else "")
    taken.update({species, name or species})
    home = rng.choice(lex.EN_PET_HOME if pet else lex.EN_WILD_HOME)
    return _en_entity(name or f"the {species}", gender, intro=intro, home=home, noun=species, name=name or "")


def _ru_character(rng: random.Random, kind: str, taken: set[str]) -> dict:
    """A Russian child or animal with case forms, intro phrases ("девочка по имени Маша") and home."""
    if kind == "child" or (kind == "any" and rng.random() < 0.55):
        gender = rng.choice("mf")
        name = _forms(_pick_name(rng, lex.RU_GIRLS if gender == "f" else lex.RU_BOYS, taken))
        noun = _forms(lex.RU_GIRL if gender == "f" else lex.RU_BOY)
        adj = rng.choice(lex.RU_CHILD_ADJ + [""])
        home = rng.choice(lex.RU_CHILD_HOME)
        taken.update({name[0], noun[0]})
    else:
        rows = [r for r in lex.RU_ANIMALS if r[0].split()[0] not in taken and (kind != "small" or r[5])]
        spec, gender, adjs, names, pet, _small = rng.choice(rows)
        noun, adj = _forms(spec), rng.choice(adjs.split())
        named = names and kind != "small" and rng.random() < 0.6
        name = _forms(rng.choice(names.split("/"))) if named else noun
        home = rng.choice(lex.RU_PET_HOME if pet else lex.RU_WILD_HOME)
        taken.update({noun[0], name[0]})
    suffix = f" по имени {name[0]}" if name is not noun else ""
    intro = [(f"{ru_adj(adj, gender, c, True)} " if adj else "") + noun[i] + suffix for i, c in enumerate(CASES)]
    friend = "друг" if gender == "m" else "подруга"
    return _ru_entity(name, gender, True, intro=intro, home=home, друг=friend, noun=" ".join(noun),
                      name=" ".join(name) if suffix else "")


def _en_thing(rng: random.Random, kind: str) -> dict:
    """An English object, food, place, project, gift, trouble or skill."""
    if kind in ("toy", "play", "food"):
        if kind == "food":
            noun, plural, adjs = rng.choice(lex.EN_FOOD)
        else:
            toys = [t for t in lex.EN_TOYS if kind == "toy" or t[0] in lex.EN_PLAY_TOYS]
            (noun, adjs), plural = rng.choice(toys), False
        phrase = f"{rng.choice(adjs.split())} {noun}"
        a = f"some {phrase}" if plural else en_article(phrase)
        return _en_entity(phrase, "pl" if plural else "n", a=a, the=f"the {phrase}", n=phrase, n0=noun,
                          the0=f"the {noun}")
    if kind in ("outdoor", "anyplace"):
        name, where, to, outdoor = rng.choice([p for p in lex.EN_PLACES if p[3] or kind == "anyplace"])
        return _en_entity(name, "n", **{"in": where, "to": to})
    table = {"project": lex.EN_PROJECTS, "gift": lex.EN_GIFTS, "trouble": lex.EN_TROUBLES,
             "skill": lex.EN_SKILLS}[kind]
    return {"gender": "n", **rng.choice(table)}


def _ru_thing(rng: random.Random, kind: str) -> dict:
    """A Russian object, food, place, project, gift, trouble or skill."""
    if kind in ("toy", "play", "food"):
        toys = [t for t in lex.RU_TOYS if kind == "toy" or t[0].split()[0] in lex.RU_PLAY_TOYS]
        spec, gender, adjs = rng.choice(lex.RU_FOOD if kind == "food" else toys)
        return _ru_entity(_forms(spec), gender, False, adj=rng.choice(adjs.split()))
    if kind in ("outdoor", "anyplace"):
        nom, where, to, outdoor = rng.choice([p for p in lex.RU_PLACES if p[3] or kind == "anyplace"])
        return {"": nom, "gender": "m", "где": where, "куда": to}
    table = {"project": lex.RU_PROJECTS, "gift": lex.RU_GIFTS, "trouble": lex.RU_TROUBLES,
             "skill": lex.RU_SKILLS}[kind]
    return {"gender": "m", **rng.choice(table)}


def _cast(rng: random.Random, lang: str, roles: dict[str, str]) -> dict[str, dict]:
    """Fill every role of an arc, plus the parent M and the pair W ("A and B")."""
    taken: set[str] = set()
    cast: dict[str, dict] = {}
    for role, kind in roles.items():
        if kind in ("any", "child", "small"):
            make = _en_character if lang == "en" else _ru_character
            cast[role] = make(rng, kind, taken)
        else:
            cast[role] = (_en_thing if lang == "en" else _ru_thing)(rng, kind)
    if lang == "en":
        ref, n, gender = rng.choice(lex.EN_PARENTS)
        cast["M"] = _en_entity(ref, gender, n=n)
        if "B" in cast:
            cast["W"] = _en_entity(f"{cast['A']['']} and {cast['B']['']}", "pl")
    else:
        spec, gender = rng.choice(lex.RU_PARENTS)
        cast["M"] = _ru_entity(_forms(spec), gender, True)
        if "B" in cast:
            cast["W"] = _ru_entity([f"{cast['A']['']} и {cast['B']['']}"] * 6, "pl", True)
    return cast


# ----------------------------------------------------------------------------- rendering
def _render(text: str, grammar: dict, cast: dict, agree, rng: random.Random) -> str:
    """Expand {symbol}, {R}, {R.key} and {R:word} placeholders until none are left."""

    def expand(match: re.Match) -> str:
        token = match.group(1)
        if token in grammar:
            return rng.choice(grammar[token])
        entity, sep, key = cast[token[0]], token[1:2], token[2:]
        if not sep:
            return entity[""]
        return entity[key] if sep == "." else agree(key, entity["gender"])

    for _ in range(12):
        text, count = _TOKEN.subn(expand, text)
        if not count:
            return text
    raise RuntimeError(f"template does not terminate: {text}")


def _tidy(text: str) -> str:
    """Capitalize sentence starts (a beat always starts a sentence) and squeeze spaces."""
    text = re.sub(r" {2,}", " ", text.strip())
    return _SENTENCE_START.sub(lambda m: m.group(1) + m.group(2).upper(), text)


@dataclass(frozen=True)
class Story:
    """One generated story with what made it: the arc's name and the cast (role -> entity dict of forms;
    a character also carries "noun" ("dog", "girl"; Russian: its six case forms) and "name" ("" if unnamed))."""

    text: str
    lang: str
    arc: str
    cast: dict[str, dict]


def make_story(lang: str, seed: int, index: int, optional: float = OPTIONAL_KEPT) -> Story:
    """Story `index` of a corpus: pick an arc, cast it, render its beats into paragraphs. `optional` is the
    chance that an optional beat is kept (0: only the beats every story of the arc has)."""
    rng = random.Random(f"{seed}:{index}")
    if lang == "both":
        lang = ("en", "ru")[index % 2]
    arc = rng.choice(sorted(lex.ARCS))
    roles, beats = lex.ARCS[arc]
    cast = _cast(rng, lang, roles)
    paragraphs: list[list[str]] = [[]]
    for beat in beats:
        if beat == "/":
            if paragraphs[-1] and rng.random() < 0.35:
                paragraphs.append([])
            continue
        if beat.startswith("?"):
            if rng.random() >= optional:
                continue
            beat = beat[1:]
        paragraphs[-1].append(render(beat, lang, cast, rng))
    return Story("\n".join(" ".join(p) for p in paragraphs if p), lang, arc, cast)


def render(symbol: str, lang: str, cast: dict[str, dict], rng: random.Random) -> str:
    """One sentence (or more) from a grammar symbol or a template such as "{A} lost {A.his} {O.n0}"."""
    grammar = lex.EN_GRAMMAR if lang == "en" else lex.RU_GRAMMAR
    agree = en_agree if lang == "en" else ru_agree
    text = "{" + symbol + "}" if symbol in grammar else symbol
    return _tidy(_render(text, grammar, cast, agree, rng))


def _story(lang: str, seed: int, index: int) -> str:
    return make_story(lang, seed, index).text


def _check(lang: str, n: int) -> None:
    if lang not in LANGS:
        raise ValueError(f"unknown story language {lang!r}; use one of {', '.join(LANGS)}")
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"the number of stories must be a non-negative integer, got {n!r}")


def iter_stories(lang: str, n: int, seed: int) -> Iterator[str]:
    """The same stories as `generate_stories`, produced lazily."""
    _check(lang, n)
    return (_story(lang, seed, i) for i in range(n))


def generate_stories(lang: str, n: int, seed: int) -> list[str]:
    """n stories; lang is "en", "ru" or "both" (both: even-numbered stories English, odd Russian)."""
    return list(iter_stories(lang, n, seed))
