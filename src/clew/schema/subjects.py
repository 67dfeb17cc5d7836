"""Subject names: what part of which event a schema describes.

==================  ==========================================  ===============
subject             validates                                   event types
==================  ==========================================  ===============
``track:<name>``    ``properties`` of track events named <name>  track
``identify``        ``traits``                                  identify
``page``            ``properties``                              page
``screen``          ``properties``                              screen
``context``         ``context``                                 every type
==================  ==========================================  ===============
"""

from __future__ import annotations

from clew.schema.errors import InvalidSubjectError

TRACK_PREFIX = "track:"
IDENTIFY = "identify"
PAGE = "page"
SCREEN = "screen"
CONTEXT = "context"
FIXED_SUBJECTS = (CONTEXT, IDENTIFY, PAGE, SCREEN)
MAX_EVENT_NAME = 200

# The event field each subject's schema applies to.
FIELD_OF = {IDENTIFY: "traits", PAGE: "properties", SCREEN: "properties", CONTEXT: "context"}


def track_subject(event_name: str) -> str:
    """The subject of track events called ``event_name``.

    >>> track_subject("Order Completed")
    'track:Order Completed'
    """
    return validate_subject(TRACK_PREFIX + event_name)


def event_name_of(subject: str) -> str | None:
    """The event name of a ``track:`` subject, ``None`` for the other subjects."""
    return subject[len(TRACK_PREFIX) :] if subject.startswith(TRACK_PREFIX) else None


def validate_subject(subject: str) -> str:
    """Return ``subject`` unchanged, or raise :class:`InvalidSubjectError` saying why not."""
    if subject in FIXED_SUBJECTS:
        return subject
    name = event_name_of(subject)
    if name is None:
        raise InvalidSubjectError(
            f"unknown subject {subject!r}: use 'track:<event name>', "
            + ", ".join(repr(s) for s in FIXED_SUBJECTS)
        )
    if not name.strip() or len(name) > MAX_EVENT_NAME:
        raise InvalidSubjectError(
            f"subject {subject!r}: an event name must be 1 to {MAX_EVENT_NAME} characters "
            "and not only spaces"
        )
    return subject


def subject_order(subject: str) -> tuple[int, str]:
    """Sort key: the fixed subjects first, then track events by name."""
    if subject in FIXED_SUBJECTS:
        return (FIXED_SUBJECTS.index(subject), "")
    return (len(FIXED_SUBJECTS), subject)
