"""Words as shoppers type them and as labels print them: one tokeniser for catalog text and queries.

A query matches an item only through the tokens both turn into, so the folding is deliberately forgiving where
shoppers are sloppy and strict where labels differ by a token:

- Unicode compatibility forms and case are folded (``ＯＡＴ`` and ``Oat`` are ``oat``), accents dropped
  (``Crème brûlée`` is ``creme brulee``), ligatures and letters without a decomposition spelled out
  (``æ`` → ``ae``, ``ø`` → ``o``, ``ß`` → ``ss``).
- Letters and digits part (``500ml`` is ``500 ml``), a decimal comma is a point (``1,5%`` is ``1.5``), so
  ``1.5%`` and ``1,5 %`` meet; other punctuation separates.
- English plurals fold to the singular with the S-stemmer (Harman 1991): ``tomatoes`` → ``tomato``,
  ``berries`` → ``berry``, ``apples`` → ``apple``; ``glass`` and ``citrus`` stay.

>>> tokenize("Crème Brûlée 2x125g, Lactose-free 1,5%")
['creme', 'brulee', '2', 'x', '125', 'g', 'lactose', 'free', '1.5']
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

MAX_TOKEN_LENGTH = 40  # longer runs are noise (OCR garbage, ids); cut so a hostile text cannot blow the vocabulary

_SPELLED = str.maketrans({"æ": "ae", "œ": "oe", "ø": "o", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "ı": "i"})
_TOKEN = re.compile(r"\d+(?:[.,]\d+)?|[^\W\d_]+")
_MARKS = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")  # combining


def fold(text: str) -> str:
    """Case, compatibility forms and accents folded away (the text a token is cut from)."""
    if text.isascii():  # most catalog text: nothing to decompose (casefold of ASCII is lower)
        return text.lower()
    text = unicodedata.normalize("NFKC", text).casefold().translate(_SPELLED)
    return _MARKS.sub("", unicodedata.normalize("NFKD", text))


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """The S-stemmer: plural ``-ies``/``-es``/``-s`` off, words ending in ``-us``/``-ss`` (and short ones) kept."""
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if word.endswith("oes") and len(word) > 4:
        return word[:-2]
    if word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if word.endswith("s") and not word.endswith(("us", "ss")):
        return word[:-1]
    return word


def tokenize(text: str) -> list[str]:
    """The searchable tokens of ``text``, in order (repeats kept: they count as term frequency)."""
    return [
        stem(token[:MAX_TOKEN_LENGTH]) if token[0].isalpha() else token.replace(",", ".")[:MAX_TOKEN_LENGTH]
        for token in _TOKEN.findall(fold(text))
    ]
