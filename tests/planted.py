"""A small synthetic corpus with known, planted problems, shared by the data-pipeline tests.

Clean documents come from the built-in story generator (English and Russian). It fills templates, so a
few of its stories repeat phrases up to Gopher's repetition limits; only stories clearly inside every
limit (repeated 5-grams covering at most 10% of the characters, against the rule's 15%) serve as clean
documents. Planted on top: exact duplicates (differing only in case, punctuation and spacing), near
duplicates (one word changed in a ~160-word document: Jaccard ~0.94 on word 5-grams), documents in other
languages, low-quality documents (one per quality rule), boilerplate lines and PII in clean documents.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from sunfish.data.quality import duplicate_ngram_fraction, top_ngram_fraction
from sunfish.data.report import PiiKind, Reason
from sunfish.data.synth import generate_stories
from sunfish.data.words import Words

FOREIGN = {
    "de": "Der alte Fischer ging jeden Morgen an den Strand und sah lange auf das Meer hinaus. Seine Frau "
          "wartete zu Hause auf ihn, kochte eine warme Suppe und erzählte den Kindern Geschichten von Riesen, "
          "Zwergen und verzauberten Wäldern, bis sie endlich einschliefen.",
    "fr": "Le petit prince habitait une planète à peine plus grande que lui et il avait besoin d'un ami. "
          "Chaque soir, il regardait le coucher du soleil, arrosait sa rose avec soin et se demandait si "
          "quelqu'un, quelque part dans l'univers, pensait aussi à lui.",
    "es": "La niña caminaba por el bosque con una cesta llena de pan y de frutas para su abuela. Los pájaros "
          "cantaban en los árboles, el sol brillaba entre las hojas y ella pensaba que aquel día sería el más "
          "feliz de todo el verano.",
    "uk": "Маленька дівчинка жила біля великого лісу разом зі своєю бабусею. Щоранку вона ходила до "
          "криниці по воду, годувала курей і слухала, як співають птахи, а ввечері бабуся розповідала їй "
          "казки про хоробрих козаків і чарівних звірів.",
    "zh": "从前有一个小女孩，她住在一座大山的脚下。每天早上，她都会去河边打水，听鸟儿唱歌，看太阳从山后升起。"
          "她的奶奶常常给她讲关于勇敢的人和神奇动物的故事，她最喜欢听这些故事了。",
}

LOW_QUALITY = {
    Reason.TOO_FEW_WORDS: "The cat sat on the mat and looked at the dog.",
    Reason.BULLET_LINES: "\n".join(f"- item number {i} of the list with a few words in it and the end" for i in range(30)),
    Reason.LOREM_IPSUM: "Lorem ipsum dolor sit amet, and the rest of this page was left by a web designer who "
                        "forgot to replace the placeholder text with something that people would want to read.",
    Reason.DUPLICATE_LINES: "\n".join(["Buy the best shoes in town today and save money with us."] * 12
                                      + ["This is the only line that differs from the rest of them."]),
    Reason.SYMBOL_RATIO: " ".join(f"#tag{i} and #more{i} the #best{i} of #all{i}." for i in range(12)),
    Reason.STOP_WORDS: " ".join(["Quick brown foxes jump over lazy dogs near rivers."] * 1
                                + ["Green trees grow tall in sunny valleys every spring season."] * 1
                                + ["Small birds sing sweet songs during bright mornings."]),
}

PII = [  # (inserted text, kind)
    ("Write to ivan.petrov@example.com for details.", PiiKind.EMAIL),
    ("Пишите на masha_ivanova@mail.ru в любое время.", PiiKind.EMAIL),
    ("Позвоните по номеру +7 (916) 123-45-67 вечером.", PiiKind.PHONE),
    ("Или звоните 8 800 555-35-35 бесплатно.", PiiKind.PHONE),
    ("Call +44 20 7946 0958 in London.", PiiKind.PHONE),
    ("The office line is (555) 234-5678 on weekdays.", PiiKind.PHONE),
    ("The server lives at 192.168.10.25 in the lab.", PiiKind.IP_ADDRESS),
    ("The new host is 2001:db8::8a2e:370:7334 now.", PiiKind.IP_ADDRESS),
    ("Pay with card 4111 1111 1111 1111 before Monday.", PiiKind.CARD_NUMBER),
    ("Оплата картой 5500-0000-0000-0004 прошла.", PiiKind.CARD_NUMBER),
]
BOILERPLATE = ["We use cookies to improve your experience on our site.", "Все права защищены."]


@dataclass
class Planted:
    docs: list[str]  # the corpus in order
    clean: list[str]  # documents that must be kept (PII-carrying ones in their original form)
    removed: Counter = field(default_factory=Counter)  # Reason -> planted count
    pii: Counter = field(default_factory=Counter)  # PiiKind -> planted count
    boilerplate_lines: int = 0


def _clearly_clean(text: str) -> bool:
    words = Words.of(text)
    return duplicate_ngram_fraction(words, 5) <= 0.10 and top_ngram_fraction(words, 2) <= 0.10


def _vary_case_and_punctuation(text: str) -> str:
    return text.upper().replace(".", " . ").replace(",", " ;") + "  !!"


def _change_one_word(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    i = rng.randrange(len(words) // 3, 2 * len(words) // 3)
    words[i] = "zebra" if words[i] != "zebra" else "giraffe"
    return " ".join(words)


def planted_corpus(n_clean: int = 60, seed: int = 0) -> Planted:
    """`n_clean` clean stories (half English, half Russian) plus the planted items, shuffled together."""
    rng = random.Random(seed)
    n_long = n_clean // 2
    stories = generate_stories("both", 8 * n_clean, seed)  # alternately English and Russian
    pairs = ["\n\n".join(stories[i : i + 4 : 2]) for i in range(2 * n_clean, len(stories), 4)]  # 2 stories, one language
    short = [s for s in stories[: 2 * n_clean] if _clearly_clean(s)][: n_clean - n_long]
    long_docs = [p for p in pairs if _clearly_clean(p)][:n_long]
    assert len(short) + len(long_docs) == n_clean, "the generator gave too few clearly clean stories"
    clean = short + long_docs
    planted = Planted(docs=[], clean=list(clean))
    for text, kind in PII:
        target = rng.randrange(len(planted.clean))
        planted.clean[target] = planted.clean[target] + "\n" + text
        planted.pii[kind] += 1
    for line in BOILERPLATE:
        target = rng.randrange(len(planted.clean))
        planted.clean[target] = planted.clean[target] + "\n" + line
        planted.boilerplate_lines += 1
    extra: list[tuple[int, str]] = []  # (index of the original it must follow, planted text)
    for i in rng.sample(range(len(planted.clean)), 6):
        extra.append((i, _vary_case_and_punctuation(planted.clean[i])))
        planted.removed[Reason.EXACT_DUPLICATE] += 1
    for i in rng.sample(range(len(clean) - len(long_docs), len(clean)), 5):
        extra.append((i, _change_one_word(planted.clean[i], rng)))
        planted.removed[Reason.NEAR_DUPLICATE] += 1
    for text in FOREIGN.values():
        extra.append((-1, text))
        planted.removed[Reason.LANGUAGE] += 1
    for reason, text in LOW_QUALITY.items():
        extra.append((-1, text))
        planted.removed[reason] += 1
    planted.docs = _interleave(planted.clean, extra, rng)
    return planted


def _interleave(clean: list[str], extra: list[tuple[int, str]], rng: random.Random) -> list[str]:
    """Clean documents in order, each planted item inserted at a random place after the original it copies."""
    docs = list(clean)
    for after, text in extra:
        at = rng.randrange(after + 1, len(docs) + 1) if after >= 0 else rng.randrange(len(docs) + 1)
        position = docs.index(clean[after]) + 1 if after >= 0 else 0
        docs.insert(max(at, position), text)
    return docs
