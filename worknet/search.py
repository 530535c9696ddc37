"""Search terms: the words a gig is found by, and the words of a query.

No ``$text`` index (not every compatible server has one): the catalogue index
(:mod:`worknet.catalogue`) keeps a bitmap per word of the gigs' titles,
descriptions and tags, folded here the same way as the words of a query.
Gigs written by this daemon also store their words in ``searchTerms`` (for
the Node backend's own queries); the index computes them from the texts, so a
title changed by another writer is found by its new words.

Folding: Unicode NFKD, combining marks dropped (``é`` -> ``e``), case folded
(``Straße`` -> ``strasse``); words are the runs of letters and digits
(punctuation and ``_`` separate words).  So ``café`` finds ``Cafe`` and
``CAFÉ``, and no user text ever becomes a regular expression.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

_WORD = re.compile(r"[^\W_]+")


def fold(text: str) -> str:
    """Lower-cased, accent-free form of ``text``."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return unicodedata.normalize("NFKC", stripped)


def words(text: str) -> list[str]:
    """The folded words of ``text``, distinct, in order of first appearance."""
    return list(dict.fromkeys(_WORD.findall(fold(text))))


def search_terms(*texts: str | Iterable[str]) -> list[str]:
    """The distinct folded words of several texts (a list of strings counts as its items)."""
    found: dict[str, None] = {}
    for text in texts:
        for part in ([text] if isinstance(text, str) else text):
            found.update(dict.fromkeys(words(part)))
    return list(found)
