"""The settings of privacy: the salt, PII policies (applied by :mod:`clew.privacy.pii`),
data-subject requests and crypto-shredding on Kafka; see docs/privacy.md."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, SerializationInfo, field_serializer, field_validator

from clew.config._base import Section, reveal

PiiAction = Literal["keep", "hash", "truncate", "drop"]
PII_ACTIONS: tuple[PiiAction, ...] = ("keep", "hash", "truncate", "drop")
PII_ROOTS = ("properties", "traits", "context")
"""The members of an event a PII path starts at."""


def pii_path_problem(path: str) -> str | None:
    """What is wrong with ``path`` as the field of a PII policy, ``None`` when nothing.

    >>> pii_path_problem("context.ip") is None, pii_path_problem("context.") is None
    (True, False)
    """
    parts = path.split(".")
    if parts[0] not in PII_ROOTS or len(parts) < 2 or not all(parts):
        return (
            f"PII path {path!r}: start at one of {', '.join(PII_ROOTS)} and name a field, "
            "e.g. 'context.ip' or 'traits.phone'"
        )
    return None


class PrivacySettings(Section):
    """Consent, PII policies and data-subject requests; see docs/privacy.md."""

    salt: SecretStr = Field(
        default=SecretStr(""),
        description=(
            "Secret salt for hashed PII fields and for the identifier hashes in suppression lists "
            "and audit records; empty: generated on first use and kept in `data_dir/privacy.salt`."
        ),
    )
    pii: dict[str, PiiAction] = Field(
        default_factory=dict,
        description=(
            "Field path (`context.ip`, `traits.phone`, `properties.card.last4`) -> keep, hash, "
            "truncate or drop, done by the validate stage before anything reaches the lake."
        ),
    )
    poll_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="Seconds between two looks for queued data-subject requests in `clew serve`.",
    )
    kafka_encryption: bool = Field(
        default=True,
        description=(
            "Kafka log only: seal every record with data keys kept outside Kafka, so that a "
            "deletion makes a person's records unreadable (crypto-shredding)."
        ),
    )
    master_key: SecretStr = Field(
        default=SecretStr(""),
        description=(
            "Secret that wraps the data keys and hashes record keys, the same on every process; "
            "empty: derived from `salt` (then set `salt` on every machine alike)."
        ),
    )
    key_cache_s: float = Field(
        default=5.0,
        ge=0,
        description=(
            "Seconds a process may keep using a data key it fetched (a deletion waits as long after"
            " destroying keys)."
        ),
    )

    key_store_persistence: Literal["check", "assumed"] = Field(
        default="check",
        description=(
            "Data keys in Redis only: `check` refuses to start unless that Redis writes an "
            "append-only file (`appendonly yes`), since records whose keys are lost can never be "
            "read; `assumed`: skip the check, for a managed Redis that persists but forbids CONFIG."
        ),
    )

    @field_serializer("salt", "master_key", when_used="json")
    def _secret_json(self, value: SecretStr, info: SerializationInfo) -> str:
        return value.get_secret_value() if reveal(info) else str(value)

    @field_validator("pii")
    @classmethod
    def _pii_paths(cls, value: dict[str, PiiAction]) -> dict[str, PiiAction]:
        for path in value:
            problem = pii_path_problem(path)
            if problem is not None:
                raise ValueError(problem)
        return value
