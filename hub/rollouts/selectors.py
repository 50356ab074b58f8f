"""Which devices a rollout targets: ``all``, ids, groups and tag expressions.

Grammar (keywords are case-insensitive)::

    expr    := or
    or      := and ("or" and)*
    and     := unary ("and" unary)*
    unary   := "not" unary | "(" expr ")" | atom
    atom    := "all" | "id:" NAME["," NAME]* | "group:" NAME["," NAME]* | KEY "=" VALUE
               | KEY "!=" VALUE

>>> sel = parse_selector("site=berlin and (hw=rpi4 or not group:lab)")
>>> sel.matches(device_id="d1", group="prod", tags={"site": "berlin", "hw": "x86"})
True
>>> parse_selector("id:a,b").matches(device_id="b", group="g", tags={})
True
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from hub.core.errors import InvalidInput

_TOKEN = re.compile(r"\s*(?:(?P<paren>[()])|(?P<word>[^\s()]+))")
_NAME = re.compile(r"^[A-Za-z0-9_.:\-/]+$")


class Selector(Protocol):
    def matches(self, *, device_id: str, group: str, tags: Mapping[str, str]) -> bool: ...


@dataclass(frozen=True)
class All:
    def matches(self, *, device_id: str, group: str, tags: Mapping[str, str]) -> bool:
        return True


@dataclass(frozen=True)
class Ids:
    ids: frozenset[str]

    def matches(self, *, device_id: str, group: str, tags: Mapping[str, str]) -> bool:
        return device_id in self.ids


@dataclass(frozen=True)
class Groups:
    groups: frozenset[str]

    def matches(self, *, device_id: str, group: str, tags: Mapping[str, str]) -> bool:
        return group in self.groups


@dataclass(frozen=True)
class Tag:
    key: str
    value: str
    negate: bool = False

    def matches(self, *, device_id: str, group: str, tags: Mapping[str, str]) -> bool:
        return (tags.get(self.key) == self.value) != self.negate


@dataclass(frozen=True)
class Not:
    inner: Selector

    def matches(self, *, device_id: str, group: str, tags: Mapping[str, str]) -> bool:
        return not self.inner.matches(device_id=device_id, group=group, tags=tags)


@dataclass(frozen=True)
class And:
    parts: tuple[Selector, ...]

    def matches(self, *, device_id: str, group: str, tags: Mapping[str, str]) -> bool:
        return all(p.matches(device_id=device_id, group=group, tags=tags) for p in self.parts)


@dataclass(frozen=True)
class Or:
    parts: tuple[Selector, ...]

    def matches(self, *, device_id: str, group: str, tags: Mapping[str, str]) -> bool:
        return any(p.matches(device_id=device_id, group=group, tags=tags) for p in self.parts)


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:  # pragma: no cover - the regex always advances
            raise InvalidInput(f"selector {text!r}: cannot read at position {pos}")
        out.append(match.group("paren") or match.group("word"))
        pos = match.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.pos = 0

    def fail(self, why: str) -> InvalidInput:
        where = " ".join(self.tokens[: self.pos]) or "the start"
        return InvalidInput(
            f"selector {self.text!r}: {why} (after {where!r}); use e.g. 'all', 'id:a,b', "
            "'group:lab', 'site=berlin and hw=rpi4', 'not (a=b or c=d)'"
        )

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise self.fail("unexpected end")
        self.pos += 1
        return token

    def parse(self) -> Selector:
        if not self.tokens:
            raise self.fail("empty selector")
        result = self.or_()
        if self.peek() is not None:
            raise self.fail(f"unexpected {self.peek()!r}")
        return result

    def or_(self) -> Selector:
        parts = [self.and_()]
        while (self.peek() or "").lower() == "or":
            self.take()
            parts.append(self.and_())
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def and_(self) -> Selector:
        parts = [self.unary()]
        while (self.peek() or "").lower() == "and":
            self.take()
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def unary(self) -> Selector:
        token = self.take()
        if token.lower() == "not":
            return Not(self.unary())
        if token == "(":
            inner = self.or_()
            if self.peek() != ")":
                raise self.fail("missing ')'")
            self.take()
            return inner
        if token == ")" or token.lower() in {"and", "or"}:
            raise self.fail(f"expected a condition, got {token!r}")
        return self.atom(token)

    def atom(self, token: str) -> Selector:
        if token.lower() == "all":
            return All()
        for prefix, kind in (("id:", Ids), ("group:", Groups)):
            if token.lower().startswith(prefix):
                names = [n for n in token[len(prefix) :].split(",") if n]
                if not names or not all(_NAME.match(n) for n in names):
                    raise self.fail(f"{token!r} needs one or more names after {prefix!r}")
                return kind(frozenset(names))
        negate = "!=" in token
        key, sep, value = token.partition("!=" if negate else "=")
        if not sep or not key or not value:
            raise self.fail(f"{token!r} is not a condition")
        if not _NAME.match(key) or not _NAME.match(value):
            raise self.fail(f"{token!r}: tag keys and values are letters, digits and _.:-/")
        return Tag(key, value, negate)


def parse_selector(text: str) -> Selector:
    """Parse ``text``; raises :class:`InvalidInput` saying where and why it is not valid."""
    return _Parser(text).parse()
