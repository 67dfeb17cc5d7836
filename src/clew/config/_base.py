"""What every table of the settings shares: unknown keys are errors, secrets are masked when
printed unless asked for, and the environment's naming of a setting."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, SerializationInfo

# How the environment names a setting: CLEW_PORT, CLEW_LAKE__FLUSH_ROWS.
ENV_PREFIX = "CLEW_"
ENV_NESTING = "__"

# Serialization context under which secrets are written out in full; without it, printed and
# JSON settings show a password in a URL and each secret value masked.
REVEAL_SECRETS = "reveal_secrets"


def reveal(info: SerializationInfo) -> bool:
    """Whether a serializer runs under the context that writes secrets out in full."""
    return isinstance(info.context, dict) and bool(info.context.get(REVEAL_SECRETS))


class Section(BaseModel):
    """A table of the settings: an unknown key in it is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


def option_text(value: Any) -> Any:
    """An option value as the object store wants it: text (``true``, ``30``), not a number or
    a boolean."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int | float) else value
