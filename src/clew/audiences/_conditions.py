"""Audience conditions compiled to closures, so that evaluating one walks no tree and splits
no names."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from clew.audiences.definitions import (
    All,
    AnyOf,
    Condition,
    InFunnel,
    Member,
    Not,
    compare,
)
from clew.store.base import Traits

Test = Callable[[Traits, Mapping[str, Any], Traits, set[str], dict[str, bool]], bool]
"""A compiled condition: (traits, computed values of this evaluation, stored computed
values, audiences already found to hold, funnel memberships) -> holds."""


def compile_condition(cond: Condition) -> Test:
    """The condition as a closure, so that evaluating it walks no tree and splits no names."""
    if isinstance(cond, All | AnyOf):
        tests = [compile_condition(c) for c in cond.items]
        if isinstance(cond, All):

            def every(t: Traits, v: Mapping[str, Any], c: Traits, m: set[str], f: Any) -> bool:
                return all(test(t, v, c, m, f) for test in tests)

            return every

        def some(t: Traits, v: Mapping[str, Any], c: Traits, m: set[str], f: Any) -> bool:
            return any(test(t, v, c, m, f) for test in tests)

        return some
    if isinstance(cond, Not):
        inner = compile_condition(cond.item)
        return lambda t, v, c, m, f: not inner(t, v, c, m, f)
    if isinstance(cond, Member):
        name = cond.audience
        return lambda t, v, c, m, f: name in m
    if isinstance(cond, InFunnel):
        key = cond.key
        return lambda t, v, c, m, f: bool(f.get(key, False))
    head, *rest = cond.name.split(".")
    op, expected, of_traits = cond.op, cond.value, cond.source == "trait"

    def test(t: Traits, v: Mapping[str, Any], c: Traits, m: set[str], f: Any) -> bool:
        if of_traits:
            actual: Any = t.get(head)
        else:
            actual = v[head] if head in v else c.get(head)
        for part in rest:
            actual = actual.get(part) if isinstance(actual, dict) else None
        return compare(actual, op, expected)

    return test
