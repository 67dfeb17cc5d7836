"""Stand-ins for erasure and verification (clew.privacy.erase / .verify) that record what the
runner asked, for tests of the runner's own behaviour: statuses, suppression, retries, audit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clew.privacy.runner import Operations
from clew.store.base import ProfileStore


@dataclass(frozen=True)
class Subject:
    profile_ids: tuple[str, ...]
    identifiers: tuple[tuple[str, str], ...]


@dataclass
class StoreReport:
    store: str
    removed: int
    detail: str = ""
    error: str | None = None


@dataclass
class ErasureReport:
    stores: list[StoreReport]

    @property
    def ok(self) -> bool:
        return all(s.error is None for s in self.stores)


@dataclass
class Trace:
    store: str
    where: str


@dataclass
class VerifyReport:
    traces: list[Trace]
    checked: list[str]
    unreadable: list[Trace] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.traces


@dataclass
class FakeOperations:
    """``subjects`` maps an identifier to the person's identifiers; ``erase_error``,
    ``traces`` and ``raises`` shape what erasure and verification report."""

    subjects: dict[tuple[str, str], Subject] = field(default_factory=dict)
    erase_error: str | None = None
    erase_detail: str = ""
    traces: list[Trace] = field(default_factory=list)
    raises: int = 0
    erased: list[dict[str, Any]] = field(default_factory=list)
    verified: list[Subject] = field(default_factory=list)
    # Whether the subject's hashes were suppressed while erasure ran (set by `on_erase`).
    on_erase: Any = None

    def person(self, *identifiers: tuple[str, str], profile: str = "p_1") -> Subject:
        subject = Subject((profile,), tuple(identifiers))
        for ident in identifiers:
            self.subjects[ident] = subject
        return subject

    def resolve_subject(self, store: ProfileStore, id_type: str, value: str) -> Subject:
        return self.subjects.get((id_type, value), Subject((), ((id_type, value),)))

    def erase(self, settings: Any, subject: Subject, **kwargs: Any) -> ErasureReport:
        if self.raises:
            self.raises -= 1
            raise RuntimeError(f"lake unavailable while deleting {subject.identifiers}")
        self.erased.append({"subject": subject, **kwargs})
        if self.on_erase is not None:
            self.on_erase(subject)
        return ErasureReport(
            [
                StoreReport("log", 3, self.erase_detail),
                StoreReport("lake", 2, error=self.erase_error),
            ]
        )

    def verify(self, settings: Any, subject: Subject, **kwargs: Any) -> VerifyReport:
        self.verified.append(subject)
        return VerifyReport(list(self.traces), ["log", "lake", "serving"])

    def operations(self) -> Operations:
        return Operations(self.resolve_subject, self.erase, self.verify)
