"""What a step rewrote in the line before it, as a step checker reads it (PRM view ``rewrite``).

A step that rewrites one part of a line (``12+7*3-5`` -> ``12+21-5``) is right when that part
was the one to rewrite and its replacement is right. The view shows the line before the step
with the rewritten span and its replacement in brackets, ``12+[7*3=12]-5``: the operation sits
next to its result, however long the line, and anything else the step changed (a miscopied
number) falls inside the brackets too. Inside them numbers are written least significant
digit first, the order in which a small transformer learns to add and multiply (carries run
the way it reads; Lee et al. 2023, "Teaching Arithmetic to Small Transformers").

The span is found by a word-level diff (a word: a number, or any other character), widened
to whole numbers so that a number is never split between the copied text and the brackets.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"^-\d+|\d+|.", re.DOTALL)  # a leading minus belongs to the first number
_NUMBER = re.compile(r"-?\d+")


def words(line: str) -> list[str]:
    return _WORD.findall(line)


def _is_number(word: str) -> bool:
    return bool(_NUMBER.fullmatch(word))


def reversed_digits(text: str) -> str:
    """Every number of ``text`` with its digits in reverse order (a minus stays in front)."""
    return re.sub(r"\d+", lambda m: m.group()[::-1], text)


def rewrite_spans(previous: str, step: str) -> tuple[str, str, str, str]:
    """(copied prefix, span of ``previous`` rewritten, its replacement, copied suffix)."""
    a, b = words(previous), words(step)
    shortest = min(len(a), len(b))
    s = 0  # the suffix first: ``43-0-16`` -> ``43-16`` is ``[43-0=43]-16``, not ``43-[0-16=16]``
    while s < shortest and a[-1 - s] == b[-1 - s]:
        s += 1
    while s and _is_number(a[len(a) - s]):  # the brackets end at a number, not inside one
        s -= 1
    p = 0
    while p < shortest - s and a[p] == b[p]:
        p += 1
    while p and _is_number(a[p - 1]):
        p -= 1
    prefix, suffix = "".join(a[:p]), "".join(a[len(a) - s :])
    return prefix, "".join(a[p : len(a) - s]), "".join(b[p : len(b) - s]), suffix


def rewrite_parts(previous: str, step: str) -> tuple[str, str, str]:
    """The view in three parts: what leads to the replacement (``12+[7*3=``), the replacement
    and its closing bracket (``12]``), and the copied rest (``-5``). A checker that re-derives
    the step is scored on the middle one."""
    prefix, span, replacement, suffix = rewrite_spans(previous, step)
    return f"{prefix}[{reversed_digits(span)}=", f"{reversed_digits(replacement)}]", suffix


def rewrite_view(previous: str, step: str) -> str:
    """``previous`` with what ``step`` rewrote shown as ``[span=replacement]``, digits reversed
    inside the brackets: ``rewrite_view("12+7*3-5", "12+21-5") == "12+[7*3=12]-5"``."""
    return "".join(rewrite_parts(previous, step))
