"""How settings that hold secrets are shown: in a ``repr``, a log line or an error, a
password inside a URL and the value of a secret-looking option become :data:`MASK`.

The values themselves are untouched; only what is printed changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

# What pydantic's ``SecretStr`` prints, so every hidden value looks the same.
MASK = "**********"

# An option whose name holds one of these (case ignored) carries a secret: librdkafka's
# ``sasl.password``, ``ssl.key.password`` and ``ssl.key.pem``, object-store
# ``AWS_SECRET_ACCESS_KEY`` and ``AWS_SESSION_TOKEN``, ...
_SECRET_WORDS = ("secret", "password", "token", "credential", "private", ".pem", "oauthbearer")


def redact_url(url: str) -> str:
    """``url`` with the password of its user part masked (the rest is kept, so an operator
    still sees which server is meant).

    >>> redact_url("redis://:hunter2@10.0.0.5:6379/0")
    'redis://:**********@10.0.0.5:6379/0'
    >>> redact_url("rediss://clew:hunter2@cache:6380")
    'rediss://clew:**********@cache:6380'
    >>> redact_url("redis://127.0.0.1:6379/0")
    'redis://127.0.0.1:6379/0'
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def is_secret_option(name: str) -> bool:
    """Whether an option called ``name`` holds a secret.

    >>> is_secret_option("sasl.password"), is_secret_option("AWS_SECRET_ACCESS_KEY")
    (True, True)
    >>> is_secret_option("AWS_REGION"), is_secret_option("security.protocol")
    (False, False)
    """
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def redact_options(options: Mapping[str, object]) -> dict[str, object]:
    """``options`` with the value of every secret option masked.

    >>> redact_options({"sasl.username": "clew", "sasl.password": "hunter2"})
    {'sasl.username': 'clew', 'sasl.password': '**********'}
    """
    return {k: MASK if is_secret_option(k) else v for k, v in options.items()}
