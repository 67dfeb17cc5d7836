"""Whom a data-subject request concerns, and how a job keeps that in ``privacy.db``.

A deletion resolves the person once (their profile ids and every identifier, through the
profile graph and the lake) and records the result in its job before erasing anything, so an
attempt that runs after the profile graph is gone (a retry, or a job resumed after a restart)
still erases every identifier.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


class UnreadableSubjectError(ValueError):
    """A job's recorded subject is not what :meth:`Subject.dumps` writes (the file was edited
    by hand or damaged); cancel the request and queue it again."""


@dataclass(frozen=True)
class Subject:
    """The surviving profile id and every merged-away id, and every ``(id_type, value)`` of
    the person (values as identity resolution stores them).

    >>> Subject.loads(Subject(("p1",), (("email", "a@x.test"),)).dumps())
    Subject(profile_ids=('p1',), identifiers=(('email', 'a@x.test'),))
    """

    profile_ids: tuple[str, ...]
    identifiers: tuple[tuple[str, str], ...]

    def union(self, other: Subject) -> Subject:
        """Both subjects' ids and identifiers, this one's first, without repeats."""
        return Subject(
            tuple(dict.fromkeys((*self.profile_ids, *other.profile_ids))),
            tuple(dict.fromkeys((*self.identifiers, *other.identifiers))),
        )

    def dumps(self) -> str:
        """The subject as the job stores it (JSON text)."""
        return json.dumps(
            {"profile_ids": list(self.profile_ids), "identifiers": list(self.identifiers)},
            ensure_ascii=False,
        )

    @classmethod
    def loads(cls, text: str) -> Subject:
        """The subject :meth:`dumps` wrote; raises :class:`UnreadableSubjectError` otherwise."""
        try:
            doc = json.loads(text)
            return cls(
                tuple(_strings(doc["profile_ids"])),
                tuple((t, v) for t, v in (_pair(i) for i in doc["identifiers"])),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise UnreadableSubjectError(
                f"the request's recorded subject cannot be read ({type(exc).__name__}); "
                "queue the request again"
            ) from None

    @classmethod
    def of(cls, other: SubjectLike) -> Subject:
        """A copy of any object with ``profile_ids`` and ``identifiers``."""
        return cls(tuple(other.profile_ids), tuple((t, v) for t, v in other.identifiers))


class SubjectLike(Protocol):
    """Anything with a subject's two fields (the runner's stand-ins in tests)."""

    @property
    def profile_ids(self) -> Iterable[str]: ...
    @property
    def identifiers(self) -> Iterable[tuple[str, str]]: ...


def _strings(values: object) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise TypeError("a list of strings was expected")
    return values


def _pair(value: object) -> tuple[str, str]:
    items = _strings(value)
    if len(items) != 2:
        raise TypeError("an [id_type, value] pair was expected")
    return items[0], items[1]
