"""Masking of secret values in captured script output. Pure Python, no Django.

Every occurrence of every non-empty secret value becomes ``MASK``. Also masked, when they differ from the value:
its JSON-escaped forms (``json.dumps(value)[1:-1]``, and the same with ``ensure_ascii=False``), because scripts
often print JSON and a value holding a quote, a backslash, a control or a non-ASCII character looks different
there.

How matches combine: all the forms of all the secrets go into one regex alternation, longest first, so at any
position the longest form that matches wins (a secret containing another one is masked whole). Occurrences are
looked for at every position, overlapping ones included, and overlapping occurrences are merged into a single
MASK: with the secret "aa", "aaa" becomes MASK, not MASK + "a"; with "abcd" and "cdef", "abcdef" becomes MASK.
Occurrences that merely touch stay separate masks.

Truncated output (``truncated=True``): the text was cut at its end (the output cap), so a secret may have been
cut too. If the text ends with a proper prefix of a secret form of at least ``MIN_PARTIAL`` (2) characters,
that tail is masked as well. Why 2: a 1-character prefix would mask the last character whenever it happens to
start any secret, and reveals only one character of one secret anyway. Decode capped bytes so that an incomplete
trailing UTF-8 character is dropped (not replaced by U+FFFD), or the prefix of a non-ASCII secret is not seen.

Secrets one character long are masked too, as asked; they make output hard to read, so callers may well refuse
to store them.
"""

import json
import re
from collections.abc import Iterable

MASK = "******"
MIN_PARTIAL = 2


class _Forms:
    """The forms of a set of secrets, compiled once, and the spans of text they cover."""

    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        for value in secrets:
            if not value:
                continue
            forms.add(value)
            forms.add(json.dumps(value)[1:-1])
            forms.add(json.dumps(value, ensure_ascii=False)[1:-1])
        # Longest first: an alternation takes the first alternative that matches, not the longest.
        self.forms = sorted(forms, key=lambda form: (-len(form), form))
        self.pattern = re.compile("|".join(re.escape(form) for form in self.forms)) if self.forms else None

    def spans(self, text: str, *, truncated: bool = False) -> list[tuple[int, int]]:
        """Sorted, disjoint [start, end) spans to mask; overlapping occurrences merged, touching ones not."""
        spans: list[tuple[int, int]] = []
        if self.pattern is None:
            return spans
        position = 0
        while match := self.pattern.search(text, position):
            start, end = match.span()
            if spans and start < spans[-1][1]:
                spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
            else:
                spans.append((start, end))
            # Search again from the next character, not from `end`: another occurrence may overlap this one.
            position = start + 1
        if truncated:
            tail = self._partial_tail(text)
            if tail:
                start = len(text) - tail
                # The tail reaches the end of the text, so it swallows every span it overlaps.
                while spans and spans[-1][1] > start:
                    start = min(start, spans.pop()[0])
                spans.append((start, len(text)))
        return spans

    def _partial_tail(self, text: str) -> int:
        """Length of the longest proper prefix (>= MIN_PARTIAL) of a form that `text` ends with, else 0."""
        if not text:
            return 0
        last = text[-1]
        best = 0
        for form in self.forms:
            floor = max(best, MIN_PARTIAL - 1)
            # Candidate prefix lengths k end on the text's last character (form[k - 1] == last); longest first.
            k = min(len(form) - 1, len(text))
            while k > floor:
                index = form.rfind(last, 0, k)
                if index < floor:
                    break
                if text.endswith(form[: index + 1]):
                    best = index + 1
                    break
                k = index
        return best


def _render(text: str, spans: list[tuple[int, int]]) -> str:
    if not spans:
        return text
    parts = []
    previous = 0
    for start, end in spans:
        parts.append(text[previous:start])
        parts.append(MASK)
        previous = end
    parts.append(text[previous:])
    return "".join(parts)


def mask(text: str, secrets: Iterable[str], *, truncated: bool = False) -> str:
    """`text` with every occurrence of every non-empty secret (and its JSON-escaped forms) replaced by MASK.

    truncated: the text was cut at its end; also mask a trailing partial secret (see the module docstring).
    """
    forms = _Forms(secrets)
    return _render(text, forms.spans(text, truncated=truncated))
