"""`-k EXPR`: choose cases by name, as pytest does.

An expression of words joined by ``and``, ``or``, ``not`` and parentheses; a word matches a case whose
name contains it, ignoring case: ``-k "step20 and not ablation"``, ``-k "tiny_odd/step10 or p0"``.
"""
from __future__ import annotations

import re
from typing import Callable

from .errors import ParityError

TOKEN = re.compile(r"\s*(\(|\)|[^\s()]+)")
OPERATORS = ("and", "or", "not")


def compile_selection(expression: str | None) -> Callable[[str], bool]:
    """A predicate on case names (everything matches without an expression)."""
    if expression is None or not expression.strip():
        return lambda name: True
    tokens = TOKEN.findall(expression)
    position = 0

    def fail(problem: str):
        raise ParityError(f"-k {expression!r}: {problem}")

    def peek() -> str | None:
        return tokens[position] if position < len(tokens) else None

    def take() -> str:
        nonlocal position
        position += 1
        return tokens[position - 1]

    def either():
        left = both()
        while peek() == "or":
            take()
            right = both()
            left = (lambda a, b: lambda n: a(n) or b(n))(left, right)
        return left

    def both():
        left = negation()
        while peek() == "and":
            take()
            right = negation()
            left = (lambda a, b: lambda n: a(n) and b(n))(left, right)
        return left

    def negation():
        if peek() == "not":
            take()
            inner = negation()
            return lambda n: not inner(n)
        return atom()

    def atom():
        token = peek()
        if token is None:
            fail("ends where a name or '(' was expected")
        if token == "(":
            take()
            inner = either()
            if peek() != ")":
                fail("a '(' is not closed")
            take()
            return inner
        if token == ")" or token in OPERATORS:
            fail(f"unexpected {token!r} where a name or '(' was expected")
        word = take().lower()
        return lambda n: word in n.lower()

    predicate = either()
    if peek() is not None:
        fail(f"unexpected {peek()!r} after a complete expression")
    return predicate
