"""Text preprocessing shared by training and prediction (entity normalisation) and data augmentation.

Entity normalisation (``--normalize-entities``) replaces the parts of a query that vary without
changing its intent by placeholders: card and account numbers by ``<NUMBER>``, dates by ``<DATE>``,
currency symbols, codes and names by ``<CURRENCY>`` and amounts of money by ``<AMOUNT>``. It is
idempotent: a normalised query comes out of it unchanged, which matters because validation queries
are normalised at training time and again by the Predictor.

Intent names as examples (``--intent-names``): an intent's name written as words ("card_arrival":
"card arrival", "CardArrival": "card arrival") is one more training query of it. With a handful of
examples per intent the name is a sizeable share of what the model knows of the intent (the
few-shot study, docs/results/fewshot, measured what it adds at 5 and 10 examples); beside a hundred
queries one more changes little, so ``auto`` adds names to small data only. Names that are codes
rather than words ("intent_1", "intent_2") say nothing: ``intent_name_examples`` refuses them.

Augmentation (``--augment confused-pairs``) adds perturbed copies (word dropout, adjacent word swap,
keyboard typo) of the training queries of the intents a first run confuses most; the copies depend
only on the texts and the seed.
"""

from __future__ import annotations

import random
import re
import unicodedata


PLACEHOLDERS = ("<AMOUNT>", "<CURRENCY>", "<DATE>", "<NUMBER>")

_MONTHS = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
           r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)")
_DAY = r"\d{1,2}(?:st|nd|rd|th)?"
_CURRENCY = (r"(?:[$£€¥₹]|\b(?:usd|eur|gbp|chf|jpy|aud|cad|nzd|hkd|sgd|sek|nok|dkk|pln|czk|huf|ron|bgn|rub|inr|"
             r"cny|mxn|brl|zar|thb)\b|\b(?:dollars?|euros?|pounds?|quid|yen|francs?|rupees?|pesos?|zloty|rubles?)\b)")
_NUMBER = r"\d+(?:[.,]\d+)*"

_RULES = [
    # dates: 12/03/2020, 2020-03-12, 3rd of March 2020, March 3rd, 2020
    (re.compile(r"\b(?:\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4})\b"), " <DATE> "),
    (re.compile(rf"\b(?:{_DAY}\s+(?:of\s+)?{_MONTHS}|{_MONTHS}\s+{_DAY}\b)(?:,?\s+\d{{4}})?\b", re.IGNORECASE), " <DATE> "),
    # card and account numbers: 6 or more digits, possibly in groups separated by spaces or dashes
    (re.compile(r"\b\d(?:[ -]?\d){5,}\b"), " <NUMBER> "),
    # amounts next to a currency: £50, $ 1,000.00, 50€, 20 euros, 30 gbp
    (re.compile(rf"{_CURRENCY}\s?{_NUMBER}\b", re.IGNORECASE), " <CURRENCY> <AMOUNT> "),
    (re.compile(rf"\b{_NUMBER}\s?{_CURRENCY}", re.IGNORECASE), " <AMOUNT> <CURRENCY> "),
    # remaining currencies, and remaining sums with decimals (12.50)
    (re.compile(_CURRENCY, re.IGNORECASE), " <CURRENCY> "),
    (re.compile(r"\b\d+(?:,\d{3})*\.\d{2}\b"), " <AMOUNT> "),
]


def normalize_entities(text: str) -> str:
    text = " ".join(text.split())
    for pattern, placeholder in _RULES:
        text = pattern.sub(placeholder, text)
    return re.sub(r"> ([?.!,])", r">\1", " ".join(text.split()))  # "<AMOUNT> ?" -> "<AMOUNT>?"


def blank(text: str) -> bool:
    """Whether a query has nothing to read: only white space, invisible format characters (a zero-width
    space, a byte order mark) and control characters (a NUL). Such a text would be answered as the empty
    string is, so it is refused or skipped like one rather than given an intent."""
    stripped = text.strip()
    if stripped.isprintable():
        return not stripped
    return all(c.isspace() or unicodedata.category(c) in ("Cc", "Cf") for c in stripped)


def preprocess(text: str, options: dict) -> str:
    """Apply the preprocessing a model was trained with (``ModelSpec.preprocessing``) to one query."""
    if options.get("normalize_entities"):
        text = normalize_entities(text)
    return text


# --- augmentation -----------------------------------------------------------------------------------

_KEYBOARD = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]


def intent_name_text(name: str) -> str:
    """An intent's name as words: separators (``_ - . /``) and camelCase boundaries ("CardArrival",
    "ATMSupport") become spaces, lower case."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])|[_\-./]+", " ", name)
    return " ".join(spaced.lower().split())


def intent_name_examples(labels: list[str]) -> tuple[list[str], str | None]:
    """Each intent's name as words (``intent_name_text``), or ([], why not) when the names are codes: a
    name without a word of two or more letters, or two names that read the same as words (differing only
    in digits, case or punctuation)."""
    texts = [intent_name_text(label) for label in labels]
    letters = [" ".join(re.findall(r"[^\W\d_]{2,}", text)) for text in texts]  # words of two letters or more, any script
    if not all(letters):
        return [], f"intent {labels[letters.index('')]!r} has no word in its name"
    if len(set(letters)) < len(letters):
        twin = next(label for label, word in zip(labels, letters) if letters.count(word) > 1)
        return [], f"intent names such as {twin!r} read the same as another's once written as words (they differ only in digits, case or punctuation)"
    return texts, None


def _neighbours(char: str) -> str:
    for row_index, row in enumerate(_KEYBOARD):
        column = row.find(char)
        if column >= 0:
            near = row[max(0, column - 1) : column] + row[column + 1 : column + 2]
            for other in (row_index - 1, row_index + 1):
                if 0 <= other < len(_KEYBOARD):
                    near += _KEYBOARD[other][max(0, column - 1) : column + 1]
            return near
    return ""


def _word_dropout(words: list[str], rng: random.Random) -> list[str]:
    if len(words) < 3:
        return words
    drop = rng.randrange(len(words))
    return words[:drop] + words[drop + 1 :]


def _word_swap(words: list[str], rng: random.Random) -> list[str]:
    if len(words) < 2:
        return words
    i = rng.randrange(len(words) - 1)
    return words[:i] + [words[i + 1], words[i]] + words[i + 2 :]


def _keyboard_typo(words: list[str], rng: random.Random) -> list[str]:
    candidates = [i for i, w in enumerate(words) if w not in PLACEHOLDERS and any(_neighbours(c) for c in w.lower())]
    if not candidates:
        return words
    i = rng.choice(candidates)
    word = words[i]
    positions = [p for p, c in enumerate(word.lower()) if _neighbours(c)]
    p = rng.choice(positions)
    typo = rng.choice(_neighbours(word[p].lower()))
    return words[:i] + [word[:p] + typo + word[p + 1 :]] + words[i + 1 :]


PERTURBATIONS = (_word_dropout, _word_swap, _keyboard_typo)


def perturb(text: str, rng: random.Random) -> str:
    """One random perturbation of ``text``: word dropout, adjacent word swap or a keyboard typo."""
    words = text.split()
    return " ".join(rng.choice(PERTURBATIONS)(words, rng))


def augment(texts: list[str], labels: list[str], intents: set[str], seed: int, copies: int = 2) -> tuple[list[str], list[str]]:
    """The perturbed copies (``copies`` per query, duplicates of an original dropped) of the queries of
    ``intents``; the same texts and seed give the same copies."""
    rng = random.Random(seed)
    new_texts, new_labels = [], []
    for text, label in zip(texts, labels):
        if label not in intents:
            continue
        variants = {perturb(text, rng) for _ in range(copies)} - {text}
        for variant in sorted(variants):
            new_texts.append(variant)
            new_labels.append(label)
    return new_texts, new_labels

