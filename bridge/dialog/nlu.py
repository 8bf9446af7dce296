"""Understanding what the caller said, without a model: intents and slot values.

Recognised speech is lower-cased into words; intents match by regular expression (strongest),
whole-word keywords, or overlap with example phrases. Slot parsers accept both what callers say
("one two three", "twenty five", "yeah") and what recognisers write ("123", "25").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bridge.dialog.dialplan import Collect, Intent

STOPWORDS = frozenset({
    "a", "an", "the", "i", "i'd", "i'm", "me", "my", "we", "you", "your", "it", "it's", "is",
    "are", "am", "be", "to", "of", "for", "in", "on", "at", "do", "does", "please", "can",
    "could", "would", "like", "want", "and", "or",
})  # fmt: skip
EXAMPLE_THRESHOLD = 0.6  # share of an example's content words the caller must say

_DIGITS = {
    "zero": "0", "oh": "0", "o": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
}  # fmt: skip
_REPEAT = {"double": 2, "triple": 3}
_UNITS = {
    **{word: int(digit) for word, digit in _DIGITS.items() if word not in ("oh", "o")},
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
    "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
    "ninety": 90,
}  # fmt: skip
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
YES = frozenset({
    "yes", "yeah", "yep", "yup", "sure", "correct", "right", "ok", "okay", "absolutely",
    "definitely",
})  # fmt: skip
NO = frozenset({"no", "nope", "nah", "not", "wrong", "incorrect", "negative", "don't"})


def words(text: str) -> list[str]:
    """Lower-case words, with "'s" dropped ("where's" is "where", "order's" is "order")."""
    return re.findall(r"[\w']+", re.sub(r"'s\b", "", text.lower()))


@dataclass(frozen=True, slots=True)
class Match:
    intent: Intent
    score: float
    variables: dict[str, str]


def match_intent(intents: list[Intent], text: str) -> Match | None:
    """The best-scoring intent for ``text`` (file order breaks ties), or None.

    Scores: a pattern match 1.0; an example phrase 0.5 + 0.4 x overlap; keywords 0.6 + 0.05
    per hit (at most 0.95) — so a precise example beats a single stray keyword.
    """
    best: Match | None = None
    for intent in intents:
        match = _score(intent, text)
        if match is not None and (best is None or match.score > best.score):
            best = match
    return best


def _score(intent: Intent, text: str) -> Match | None:
    for pattern in intent.patterns:
        found = re.search(pattern, text, re.IGNORECASE)
        if found:
            named = {k: v for k, v in found.groupdict().items() if v is not None}
            return Match(intent, 1.0, named)
    said = words(text)
    joined = f" {' '.join(said)} "
    hits = sum(1 for keyword in intent.keywords if f" {' '.join(words(keyword))} " in joined)
    score = min(0.6 + 0.05 * hits, 0.95) if hits else 0.0
    content = set(said) - STOPWORDS
    for example in intent.examples:
        wanted = set(words(example)) - STOPWORDS
        overlap = len(wanted & content) / len(wanted) if wanted else 0.0
        if overlap >= EXAMPLE_THRESHOLD:
            score = max(score, 0.5 + 0.4 * overlap)
    return Match(intent, score, {}) if score else None


def spoken_digits(text: str) -> str:
    """The digits in ``text``: "1 2 3", "one two three", "double four" (other words skipped)."""
    out: list[str] = []
    repeat = 1
    for word in words(text):
        if word in _REPEAT:
            repeat = _REPEAT[word]
            continue
        if word.isdigit():
            out.append(word[0] * (repeat - 1) + word)
        elif word in _DIGITS:
            out.append(_DIGITS[word] * repeat)
        repeat = 1
    return "".join(out)


def spoken_number(text: str) -> int | None:
    """A whole number said in digits or words ("25", "twenty five", "one hundred and five")."""
    said = [w for w in words(text) if w != "and"]
    numeric = [w for w in said if w.isdigit()]
    if numeric:
        return int(numeric[0])
    total = current = 0
    seen = False
    for word in said:
        if word in _UNITS:
            current += _UNITS[word]
            seen = True
        elif word in _SCALES and seen:
            scale = _SCALES[word]
            if scale == 100:
                current *= scale
            else:
                total += current * scale
                current = 0
        elif seen:
            break
    return total + current if seen else None


def yes_no(text: str) -> bool | None:
    said = set(words(text))
    if said & NO:
        return False
    if said & YES:
        return True
    return None


def parse_slot(collect: Collect, text: str) -> str | None:
    """The slot value in ``text`` if it is valid for ``collect``, else None."""
    value: str | None
    if collect.type in ("digits", "text"):
        value = spoken_digits(text) if collect.type == "digits" else " ".join(text.split())
        if len(value) < collect.min_length or len(value) > (collect.max_length or len(value)):
            return None
    elif collect.type == "number":
        number = spoken_number(text)
        if number is None:
            return None
        if collect.minimum is not None and number < collect.minimum:
            return None
        if collect.maximum is not None and number > collect.maximum:
            return None
        value = str(number)
    elif collect.type == "yes_no":
        answer = yes_no(text)
        value = None if answer is None else ("yes" if answer else "no")
    if value is None:
        return None
    if collect.pattern and not re.fullmatch(collect.pattern, value, re.IGNORECASE):
        return None
    return value


def keyed_slot(collect: Collect, digits: str) -> str | None:
    """Keypad input for a slot: digits as typed, numbers as keyed, 1 = yes and 2 = no."""
    if collect.type == "yes_no":
        return {"1": "yes", "2": "no"}.get(digits)
    if collect.type == "text":
        return None
    return parse_slot(collect, digits)
