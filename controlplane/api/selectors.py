"""Label selectors: parsing `-l` strings, converting matchLabels/matchExpressions, matching.

`Selector.parse("app=nginx,tier!=db,env in (a,b),!legacy")` and
`Selector.from_spec(LabelSelectorSpec)` give the same kind of object; `str(selector)` prints
the canonical comma-joined form kubectl shows (`app=myapp,release=canary`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .deployment import LabelSelectorSpec

EQUALS = "="
NOT_EQUALS = "!="
IN = "in"
NOT_IN = "notin"
EXISTS = "exists"
DOES_NOT_EXIST = "!"

_OPERATOR_MAP = {"In": IN, "NotIn": NOT_IN, "Exists": EXISTS, "DoesNotExist": DOES_NOT_EXIST}


class SelectorParseError(ValueError):
    pass


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        op = self.operator
        if op == EQUALS or op == IN:
            return self.key in labels and labels[self.key] in self.values
        if op == NOT_EQUALS or op == NOT_IN:
            return self.key not in labels or labels[self.key] not in self.values
        if op == EXISTS:
            return self.key in labels
        if op == DOES_NOT_EXIST:
            return self.key not in labels
        raise SelectorParseError(f"unknown operator {op!r}")

    def __str__(self) -> str:
        if self.operator == EQUALS:
            return f"{self.key}={self.values[0]}"
        if self.operator == NOT_EQUALS:
            return f"{self.key}!={self.values[0]}"
        if self.operator == EXISTS:
            return self.key
        if self.operator == DOES_NOT_EXIST:
            return f"!{self.key}"
        return f"{self.key} {self.operator} ({','.join(sorted(self.values))})"


@dataclass(frozen=True)
class Selector:
    """A conjunction of requirements. `Selector.everything()` has none and matches all;
    `Selector.nothing()` matches no object (a nil selector in Kubernetes)."""

    requirements: tuple[Requirement, ...] = ()
    match_nothing: bool = field(default=False)

    @classmethod
    def everything(cls) -> "Selector":
        return cls(())

    @classmethod
    def nothing(cls) -> "Selector":
        return cls((), True)

    @classmethod
    def from_labels(cls, labels: dict[str, str] | None) -> "Selector":
        """A Service-style selector: None or {} selects nothing."""
        if not labels:
            return cls.nothing()
        return cls(tuple(Requirement(k, EQUALS, (v,)) for k, v in sorted(labels.items())))

    @classmethod
    def from_spec(cls, spec: LabelSelectorSpec | None) -> "Selector":
        """A metav1.LabelSelector: None selects nothing, an empty one selects everything."""
        if spec is None:
            return cls.nothing()
        reqs = [Requirement(k, EQUALS, (v,)) for k, v in sorted((spec.match_labels or {}).items())]
        for expr in spec.match_expressions or []:
            op = _OPERATOR_MAP.get(expr.operator or "")
            if op is None:
                raise SelectorParseError(f"{expr.operator!r} is not a valid label selector operator")
            reqs.append(Requirement(expr.key or "", op, tuple(expr.values or ())))
        return cls(tuple(reqs))

    @classmethod
    def parse(cls, text: str) -> "Selector":
        return cls(tuple(_parse(text)))

    def matches(self, labels: dict[str, str] | None) -> bool:
        if self.match_nothing:
            return False
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements and not self.match_nothing

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


_TOKEN = re.compile(r"\s*(!=|==|=|\(|\)|,|!|[^\s!=(),]+)")


def _parse(text: str) -> list[Requirement]:
    tokens = [m.group(1) for m in _TOKEN.finditer(text) if m.group(1)]
    if "".join(tokens).replace(" ", "") != re.sub(r"\s+", "", text):
        raise SelectorParseError(f"unable to parse requirement: {text!r}")
    reqs: list[Requirement] = []
    i = 0

    def expect_value(j: int) -> tuple[str, int]:
        if j >= len(tokens) or tokens[j] in ("!=", "==", "=", "(", ")", ",", "!"):
            return "", j
        return tokens[j], j + 1

    while i < len(tokens):
        tok = tokens[i]
        if tok == "!":
            if i + 1 >= len(tokens):
                raise SelectorParseError("found '', expected: identifier after '!'")
            reqs.append(Requirement(tokens[i + 1], DOES_NOT_EXIST))
            i += 2
        else:
            key = tok
            i += 1
            nxt = tokens[i] if i < len(tokens) else ","
            if nxt in ("=", "=="):
                value, i = expect_value(i + 1)
                reqs.append(Requirement(key, EQUALS, (value,)))
            elif nxt == "!=":
                value, i = expect_value(i + 1)
                reqs.append(Requirement(key, NOT_EQUALS, (value,)))
            elif nxt.lower() in (IN, NOT_IN):
                op = nxt.lower()
                i += 1
                if i >= len(tokens) or tokens[i] != "(":
                    raise SelectorParseError(f"found '{tokens[i] if i < len(tokens) else ''}', expected: '('")
                i += 1
                values: list[str] = []
                while i < len(tokens) and tokens[i] != ")":
                    if tokens[i] != ",":
                        values.append(tokens[i])
                    i += 1
                if i >= len(tokens):
                    raise SelectorParseError("found '', expected: ')'")
                i += 1
                reqs.append(Requirement(key, op, tuple(values)))
            elif nxt == ",":
                reqs.append(Requirement(key, EXISTS))
            else:
                raise SelectorParseError(f"found '{nxt}', expected: '=', '!=', '==', 'in', notin'")
        if i < len(tokens):
            if tokens[i] != ",":
                raise SelectorParseError(f"found '{tokens[i]}', expected: ',' or 'end of string'")
            i += 1
    return reqs
