"""The sealed record format of the shredding log (``clew.log.shredding``).

A sealed value is a clear header naming its data key, then the AES-256-GCM ciphertext of the
original key, headers and value::

    magic (2) | kind (1) | generation (4) | key id length (1) | key id | nonce (12) | ciphertext

``kind`` says whether the data key belongs to the record's key (a person: ``p``) or to this
record alone (``r``). The clear header and the topic are authenticated with the ciphertext,
so a record moved to another topic or pointed at another key fails to open like an altered
one.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from clew.log.base import LogError, Message

MAGIC = b"\xc1\x5e"
PERSON = b"p"
RECORD = b"r"
_NONCE = 12
_FIXED = len(MAGIC) + 1 + 4 + 1
_NO_KEY = 0xFFFFFFFF


class TamperedRecordError(LogError):
    """A sealed record does not authenticate under its live data key: it was altered, or
    written by a process configured with another master key."""


@dataclass(frozen=True, slots=True)
class DataKey:
    """One data key: its id in the key store, its generation (a key destroyed and created
    again gets the next one) and the cipher."""

    key_id: bytes
    generation: int
    cipher: AESGCM


@dataclass(frozen=True, slots=True)
class Envelope:
    kind: bytes
    key_id: bytes
    generation: int
    header_end: int

    @property
    def ref(self) -> tuple[bytes, int]:
        return self.key_id, self.generation


@dataclass(frozen=True, slots=True)
class Opened:
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    value: bytes


def seal(topic: str, kind: bytes, key: DataKey, message: Message) -> bytes:
    """The sealed value of ``message`` (its key and headers go inside)."""
    header = b"".join(
        (
            MAGIC,
            kind,
            struct.pack(">IB", key.generation, len(key.key_id)),
            key.key_id,
            os.urandom(_NONCE),
        )
    )
    return header + key.cipher.encrypt(header[-_NONCE:], _plaintext(message), _aad(topic, header))


def envelope(value: bytes) -> Envelope | None:
    """The clear header of a sealed value; ``None`` for a value that is not sealed (written
    before encryption was turned on)."""
    if len(value) < _FIXED or value[:2] != MAGIC or value[2:3] not in (PERSON, RECORD):
        return None
    generation, id_len = struct.unpack_from(">IB", value, 3)
    end = _FIXED + id_len + _NONCE
    if len(value) < end + 16:
        return None
    return Envelope(value[2:3], value[_FIXED : _FIXED + id_len], generation, end)


def open_sealed(
    topic: str, env: Envelope, value: bytes, key: DataKey, where: tuple[int, int]
) -> Opened:
    """Decrypt a sealed value (the record at ``where``, partition and offset); raises
    :class:`TamperedRecordError` if it does not authenticate."""
    header = value[: env.header_end]
    try:
        plain = key.cipher.decrypt(header[-_NONCE:], value[env.header_end :], _aad(topic, header))
    except InvalidTag:
        raise TamperedRecordError(
            f"record {where[1]} of {topic}[{where[0]}] does not authenticate under its data "
            "key: it was altered in the log, or written with another privacy.master_key "
            "(every process must use the same one)"
        ) from None
    return _parse(plain)


def _aad(topic: str, header: bytes) -> bytes:
    return topic.encode() + b"\x00" + header


def _plaintext(m: Message) -> bytes:
    parts = [struct.pack(">I", _NO_KEY if m.key is None else len(m.key)), m.key or b""]
    parts.append(struct.pack(">H", len(m.headers)))
    for name, data in m.headers:
        encoded = name.encode()
        parts += [struct.pack(">HI", len(encoded), len(data)), encoded, data]
    parts.append(m.value)
    return b"".join(parts)


def _parse(plain: bytes) -> Opened:
    (key_len,) = struct.unpack_from(">I", plain, 0)
    at = 4
    key: bytes | None = None
    if key_len != _NO_KEY:
        key, at = plain[at : at + key_len], at + key_len
    (n,) = struct.unpack_from(">H", plain, at)
    at += 2
    headers = []
    for _ in range(n):
        name_len, data_len = struct.unpack_from(">HI", plain, at)
        at += 6
        name = plain[at : at + name_len].decode()
        at += name_len
        headers.append((name, plain[at : at + data_len]))
        at += data_len
    return Opened(key, tuple(headers), plain[at:])
