"""Deciding whether a record is a person's never fails on a malformed record: one that cannot
be read (invalid UTF-8, a lone surrogate escape, not JSON, fields of the wrong type) is
matched as bytes, so it is erased when it holds one of the person's identifiers and kept
when it does not; well-formed records are still matched by identity rules."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clew.identity.rules import IdentityRules
from clew.log.base import Record
from clew.privacy._erase_match import Matcher
from clew.privacy.subject import Subject

EMAIL = "ada.lovelace@analytical.test"
USER = "user-ada-1815"
# Identifiers whose JSON form differs from their UTF-8: non-ASCII text and a quote.
ACCENTED = "josé-ümlaut-1815"
QUOTED = 'ada "the countess" 1815'
ADA = Subject(
    ("p-ada",),
    (("email", EMAIL), ("user_id", USER), ("anonymous_id", ACCENTED), ("user_id", QUOTED)),
)
HEADERS = (("source", b"web"), ("type", b"batch"), ("request_id", b"r-1"))


def _matcher(seen: list[Record] | None = None) -> Matcher:
    return Matcher(ADA, IdentityRules(), on_unreadable=None if seen is None else seen.append)


def _record(topic: str, value: bytes) -> Record:
    return Record(topic, 0, 7, None, value, HEADERS if topic == "raw" else (), 0)


def _forms(value: str) -> list[bytes]:
    """The ways a value appears in a request's bytes: as UTF-8, and as JSON writers escape it."""
    forms = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    if "@" in value:
        forms.add(value.upper())
    return sorted(f.encode() for f in forms)


FORMS = [f for _, v in ADA.identifiers for f in _forms(v)]


@pytest.mark.parametrize(
    "body",
    [
        b'{"batch":[{"type":"track","userId":"user-ada-1815","properties":{"n":"caf\xe9"}}]}',
        b'{"batch":[{"type":"track","userId":"user-ada-1815","properties":{"n":"\\ud800"}}]}',
        b"userId=user-ada-1815&event=Viewed",
        b'{"batch":[{"type":"identify","userId":["x"],"traits":{"email":"ADA.LOVELACE@'
        b'analytical.test"},"context":"\xff"}]}',
    ],
    ids=["invalid-utf8", "lone-surrogate", "not-json", "wrong-type-and-utf8"],
)
def test_the_persons_malformed_request_is_theirs_and_reported_unreadable(body: bytes) -> None:
    seen: list[Record] = []
    matcher = _matcher(seen)
    mine, total = matcher.raw(_record("raw", body))
    assert mine >= 1 and mine == total
    assert matcher.record(_record("dlq", body))
    assert matcher.payload(body)
    assert seen, "the record is reported as unreadable"


def test_a_record_of_the_wrong_shape_is_matched_as_bytes() -> None:
    seen: list[Record] = []
    matcher = _matcher(seen)
    batch_not_a_list = b'{"batch":{"userId":"user-ada-1815"}}'
    assert matcher.raw(_record("raw", batch_not_a_list)) == (1, 1)
    dead_letter_without_text = b'{"reason":"invalid_json","payload":["user-ada-1815"]}'
    assert matcher.record(_record("dlq", dead_letter_without_text))
    assert len(seen) == 2


def test_a_strangers_malformed_request_is_not_theirs() -> None:
    body = b'{"batch":[{"type":"track","anonymousId":"anon-stranger","properties":{"n":"\xfe"}}]}'
    matcher = _matcher()
    assert matcher.raw(_record("raw", body)) == (0, 1)
    assert not matcher.record(_record("events", body))


def test_in_a_batch_only_the_unreadable_event_is_matched_as_bytes() -> None:
    # Bob's readable event quotes Ada's email in a property: not Ada's by identity rules. The
    # unreadable event is Ada's by its bytes.
    body = (
        b'{"batch":[{"type":"track","userId":"bob","properties":{"to":"ada.lovelace@'
        b'analytical.test"}},{"type":"track","userId":"user-ada-1815","properties":'
        b'{"n":"\xff"}},{"type":"track","userId":"cy"}]}'
    )
    assert _matcher().raw(_record("raw", body)) == (1, 3)


def test_a_time_range_does_not_claim_a_record_without_a_time() -> None:
    body = b'{"type":"track","userId":"user-ada-1815","properties":{"n":"\xff"}}'
    ranged = Matcher(ADA, IdentityRules(), since_ms=0, until_ms=1 << 50)
    assert not ranged.record(_record("events", body))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=st.binary(max_size=64),
    form=st.sampled_from(FORMS),
    after=st.binary(max_size=64),
    bad=st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\\ud800", b"\x00"]),
)
def test_an_identifier_in_malformed_bytes_is_always_found(
    before: bytes, form: bytes, after: bytes, bad: bytes
) -> None:
    # `bad` right after the value keeps the bytes malformed whatever surrounds them.
    value = before + form + bad + after
    matcher = _matcher()
    assert matcher.in_bytes(value)
    assert matcher.record(_record("events", value))
    assert matcher.record(_record("changes", value))
    assert matcher.payload(value)
    mine, total = matcher.raw(_record("raw", value))
    assert mine >= 1, (mine, total)


@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=80).map(lambda t: t.encode("utf-8", errors="surrogatepass")),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(
                    st.sampled_from(["batch", "type", "userId", "traits", "context", "payload"]),
                    inner,
                    max_size=4,
                )
            ),
            max_leaves=12,
        ).map(lambda d: json.dumps(d).encode()),
    ),
    topic=st.sampled_from(["raw", "events", "dlq", "changes"]),
)
def test_the_matcher_never_raises(value: bytes, topic: str) -> None:
    matcher = _matcher()
    rec = _record(topic, value)
    mine, total = matcher.raw(rec)
    assert 0 <= mine <= total
    matcher.record(rec)
    matcher.payload(value)
    matcher.dead_letter({"payload": value.decode("utf-8", errors="surrogateescape")})
