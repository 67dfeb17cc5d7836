"""Known-answer vectors for every hash Clew stores or hands out: fixed inputs, and the digests
written out in hex (computed once with ``openssl dgst``/``openssl kdf``/``openssl mac``, not
with Clew). A change of format (the separator, the normalisation, the key derivation, the
digest size) would make the hashes already stored match nothing: a suppression list would
stop suppressing the people on it, an erasure would miss their partitions, the key store
would refuse its own keys. Such a change needs a migration, and these tests failing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Mapping
from contextlib import closing
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from clew.audiences.definitions import fingerprint as definition_fingerprint
from clew.destinations.webhook import sign
from clew.keys import KeyRing, KeyStore, StoredKey
from clew.lake.person_index import PersonIndex
from clew.log.base import partition_for
from clew.privacy._salt import digest_normalised, hash_normalised, identifier_hash
from clew.privacy.pii import PiiPolicy
from clew.schema._jsonschema import fingerprint as schema_fingerprint
from clew.sources import _hash as write_key_hash

SALT = b"clew-test-salt"

# printf 'email\0ada@example.test' | openssl dgst -sha256 -hmac clew-test-salt
ADA_EMAIL = "f1dad30e1dd17c8b6d1e853374759a207c8191a895268696d1818522fabb5325"


def test_identifier_hash_is_hmac_sha256_of_type_nul_normalised_value() -> None:
    """The hash on suppression lists and audit records (clew.privacy._salt)."""
    assert hash_normalised(SALT, "email", "ada@example.test") == ADA_EMAIL
    assert digest_normalised(SALT, "email", "ada@example.test") == bytes.fromhex(ADA_EMAIL)
    # Normalised first: trimmed, an email lower-cased, a phone in E.164.
    assert identifier_hash(SALT, "email", " Ada@Example.TEST ") == ADA_EMAIL
    # printf 'user_id\0u-1815' | openssl dgst -sha256 -hmac clew-test-salt
    assert identifier_hash(SALT, "user_id", "u-1815") == (
        "ea839bd8e08efe9c8671c20cf10e9cf48a657130e13541d0db250253d9f39fcf"
    )
    # printf 'phone\0+442079460958' | openssl dgst -sha256 -hmac clew-test-salt
    assert identifier_hash(SALT, "phone", "+44 20 7946 0958") == (
        "535f2dcefa393e920541910be2e99df9190947337e4137cc34ba06974f883330"
    )


def test_pii_hash_is_hmac_sha256_of_the_text_or_its_sorted_json() -> None:
    """``hash`` in ``privacy.pii``, applied by the validate stage before anything is stored."""
    policy = PiiPolicy(
        {"traits.email": "hash", "traits.prefs": "hash", "properties.n": "hash"}, salt=SALT
    )
    roots = {
        "traits": {"email": "ada@example.test", "prefs": {"b": [2, 3], "a": 1}},
        "properties": {"n": 42},
        "context": {},
    }
    assert policy.apply_to(roots) == {
        "traits": {
            # printf 'ada@example.test' | openssl dgst -sha256 -hmac clew-test-salt
            "email": "a65e0cc80c31b6a0dc38fe7064a111d7488078296736e06c0c0631437e524028",
            # printf '{"a": 1, "b": [2, 3]}' | openssl dgst -sha256 -hmac clew-test-salt
            "prefs": "0d6743c303158ecd4d99d1bd38a6d772e20a51abf20d0fa3a97a180098f24a08",
        },
        # printf '42' | openssl dgst -sha256 -hmac clew-test-salt
        "properties": {"n": "7b0bf52fedfca84d22857aa52b880f7cc0bd096d5856928e8759d5708b1f7eb9"},
        "context": {},
    }


MASTER = b"m" * 32
# openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt hexkey:6d6d…6d (32 times 'm') -kdfopt
# info:"clew record key ids" HKDF
IDS_KEY = "44b687a8a5657a33bcb463d52c0939b3b3a209da7e679fcc7205c6064a3d16d8"
# The same with info:"clew data key wrapping"
WRAP_KEY = "fb1b1c2ccde7fff7a7f1815053bacc9f73a5f014f0d61f463d005227c6f4a645"
# printf 'ada@example.test' | openssl dgst -sha256 -mac HMAC -macopt hexkey:$IDS_KEY
ADA_KEY_ID = "d3551354c2742b2a4b51060a393e56c0bcc4bd21800571e7b67bf2b2d6bdc9ef"
# printf 'clew master key check' | openssl dgst -sha256 -mac HMAC -macopt hexkey:$IDS_KEY
CHECK = "96ccf5af44a257fcc05fb2833f091c00e4270e758dd034cd0603649b10f8801f"
# AES-256-GCM under WRAP_KEY, nonce 12 zero bytes, associated data ADA_KEY_ID, of the data
# key bytes 00 01 … 1f: the nonce, then the ciphertext and tag.
WRAPPED = (
    "000000000000000000000000"
    "5a1de9fd846b8eecce8e2977941071d06deb9eef3605258491550491092bf6b7072cbf1d9085967081b87e7fe4ef0e81"
)


class OneKeyStore(KeyStore):
    """A key store holding Ada's wrapped data key, as a store written earlier would."""

    def __init__(self) -> None:
        self.checked: bytes | None = None

    def get(self, key_ids: Collection[bytes]) -> dict[bytes, StoredKey]:
        ada = bytes.fromhex(ADA_KEY_ID)
        return {ada: StoredKey(1, bytes.fromhex(WRAPPED))} if ada in key_ids else {}

    def get_or_create(self, candidates: Mapping[bytes, bytes]) -> dict[bytes, StoredKey]:
        return self.get(candidates)

    def put(self, entries: Mapping[bytes, bytes], ttl_ms: int | None) -> None:
        raise AssertionError("not called")

    def destroy(self, key_ids: Collection[bytes]) -> int:
        raise AssertionError("not called")

    def check(self, value: bytes) -> bytes:
        self.checked = value
        return value

    def close(self) -> None:
        pass


def test_key_ids_check_value_and_wrapping_follow_the_master_secret() -> None:
    """Key ids and wrapped keys in the key store (clew.privacy.keys): HKDF-SHA256 of the
    master secret, then HMAC-SHA256 of the record key, and AES-GCM with the key id bound."""
    store = OneKeyStore()
    ring = KeyRing(store, MASTER, cache_s=0)
    assert store.checked == bytes.fromhex(CHECK)
    assert ring.key_id(b"ada@example.test") == bytes.fromhex(ADA_KEY_ID)
    key = ring.person_keys([b"ada@example.test"])[b"ada@example.test"]
    assert (key.key_id, key.generation) == (bytes.fromhex(ADA_KEY_ID), 1)
    # The unwrapped data key is 00 01 … 1f: it seals as that key does.
    nonce = bytes(12)
    assert key.cipher.encrypt(nonce, b"ada", None) == AESGCM(bytes(range(32))).encrypt(
        nonce, b"ada", None
    )


def test_person_index_tokens_are_keyed_blake2b_of_type_nul_value(tmp_path: Path) -> None:
    """The lake's person index (clew.lake.person_index): 8-byte keyed BLAKE2b tokens."""
    path = tmp_path / "lake_index.db"
    PersonIndex(path).close()
    with closing(sqlite3.connect(path)) as db:  # the generated key, replaced by a known one
        db.execute("UPDATE meta SET value = ? WHERE key = 'key'", (bytes(range(16)).hex(),))
        db.commit()
    index = PersonIndex(path)
    try:
        # printf 'email\0ada@example.test' | openssl mac -macopt hexkey:000102…0f
        #   -macopt size:8 BLAKE2BMAC
        assert index.token("email", "ada@example.test").hex() == "b58676c14559d048"
    finally:
        index.close()


def test_other_stored_digests() -> None:
    # The write key's hash in the source catalog: printf wk_example | openssl dgst -sha256
    assert write_key_hash("wk_example") == (
        "be4226973f92d5fd9e8ab369edb89e81e3cbf955bfaef410d9d2a477c35aba05"
    )
    # A definition's fingerprint (first 16 hex digits), without its description:
    # printf '{"condition":"x","name":"vip"}' | openssl dgst -sha256
    assert definition_fingerprint({"name": "vip", "condition": "x", "description": "d"}) == (
        "74504993e39e8b24"
    )
    # A schema's fingerprint, of its canonical JSON:
    # printf '{"properties":{"a":{"type":"string"}},"type":"object"}' | openssl dgst -sha256
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    assert schema_fingerprint(schema) == (
        "08c8cc0e5745b1461ff0e3254761829dcd326eb328e9f4375a1ad67be880e009"
    )
    # A webhook's signature, which receivers check:
    # printf '{"batch":[],"sentAt":"2026-01-01T00:00:00.000Z"}' | openssl dgst -sha256 -hmac whsec
    body = b'{"batch":[],"sentAt":"2026-01-01T00:00:00.000Z"}'
    assert sign(b"whsec", body) == (
        "sha256=c5f24715850bc7761de1882da44483c8b76cb6795ef08ded3cbb89146dc0c22b"
    )
    # A key's partition (records already in the log stay where they are): CRC-32 mod the
    # partition count; printf ada-1815 | gzip -c | tail -c8 | od -An -tu4 gives 241354893.
    assert [partition_for(k, 4) for k in (b"ada-1815", b"bob-1791", b"")] == [1, 2, 0]
