"""The embedded log's doorbell: wakes consumers in other processes when records are committed.

Each log handle that has consumers binds a UNIX datagram socket in the doorbell directory of
its database (:func:`bell_dir`) and runs a thread that turns every datagram into an
in-process wake-up. After each committed transaction that appended records, the handle's
writer sends every other socket there one datagram naming the topics appended to, so that
consumers of other topics sleep on. Ringing never blocks and never fails an append: a full
queue means that consumer has wake-ups pending anyway, and a socket nobody listens on any
more (its process died) is removed. A lost ring, or a platform without UNIX sockets, costs
latency only, because waiting consumers still look for records on a slow poll
(:data:`SAFETY_NET_POLL_S`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import secrets
import socket
import stat
import tempfile
import threading
from collections.abc import Callable, Collection
from pathlib import Path

from clew._datadir import user_temp_dir

log = logging.getLogger(__name__)

# Each socket in a doorbell directory is ``<pid>-<random>.bell``.
BELL_SUFFIX = ".bell"
# How long a waiting consumer sleeps at most when its doorbell works: only a lost ring (or a
# writer that cannot ring, such as an older Clew) waits this long.
SAFETY_NET_POLL_S = 0.25
# How long it sleeps at most when this process cannot listen for rings.
POLL_WITHOUT_DOORBELL_S = 0.02

# ``sun_path`` holds 108 bytes on Linux and 104 on macOS, with the terminating NUL; a
# socket's name is at most 7 digits of pid, "-", 8 hex digits and the suffix.
_MAX_SOCKET_PATH = 103
_MAX_NAME = 7 + 1 + 8 + len(BELL_SUFFIX)
# A ring is the topics' names, each followed by a newline, and never longer than this; when
# they do not fit, it is empty, meaning "any topic".
_MAX_RING = 1024
_SEP = b"\n"


def bell_dir(database: Path) -> Path | None:
    """Where the sockets of ``database``'s doorbell live: a directory of this user under the
    system's temp directory (``/tmp`` when that path is too long for a socket address) named
    by a hash of the database's absolute path, so every process of the user computes the same
    one however long the data directory's path is. None when no such path fits.

    Not beside the database: whatever reads every file of the data directory (privacy
    verification, backups) would meet sockets it cannot open.

    >>> a, b = bell_dir(Path("/" + "d" * 200) / "log.db"), bell_dir(Path("/data/log.db"))
    >>> a != b and len(os.fsencode(a)) + 1 + _MAX_NAME <= _MAX_SOCKET_PATH
    True
    """
    digest = hashlib.sha256(os.fsencode(database.resolve())).hexdigest()[:16]
    for tmp in (tempfile.gettempdir(), "/tmp"):
        where = user_temp_dir(tmp) / "bells" / digest
        if len(os.fsencode(where)) + 1 + _MAX_NAME <= _MAX_SOCKET_PATH:
            return where
    return None


def _topics(rings: list[bytes]) -> frozenset[str] | None:
    """The topics named by ``rings``; None when one of them may be about any topic.

    >>> sorted(_topics([b"raw\\n", b"events\\nraw\\n"]))
    ['events', 'raw']
    >>> _topics([b"raw\\n", b""]) is None
    True
    """
    topics: set[str] = set()
    for ring in rings:
        if not ring.endswith(_SEP):
            return None
        topics.update(name.decode(errors="replace") for name in ring.split(_SEP)[:-1])
    return frozenset(topics)


def _sweep(root: Path) -> None:
    """Remove the sockets under ``root`` (the doorbell directories of every database) whose
    process died without closing, and the directories left empty: a ring removes those of
    its own database only, and a database may never be written again."""
    try:
        dirs = [d.path for d in os.scandir(root) if d.is_dir(follow_symlinks=False)]
    except OSError:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        for where in dirs:
            try:
                names = os.listdir(where)
            except OSError:
                continue
            for name in names:
                if not name.endswith(BELL_SUFFIX):
                    continue
                path = os.path.join(where, name)
                try:
                    # Sends nothing: only finds out whether anyone listens there.
                    probe.connect(path)
                except ConnectionRefusedError:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                except OSError:
                    pass
            with contextlib.suppress(OSError):
                os.rmdir(where)


def _private(user_dir: Path) -> bool:
    """Whether ``user_dir`` (``clew-<uid>`` under the temp directory) is this user's alone:
    another user who made it first could ring, or remove, this user's sockets."""
    try:
        st = user_dir.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


class Doorbell:
    """The doorbell of one log handle: :meth:`ring` after a commit that appended records,
    :meth:`listen` once the handle has consumers, :meth:`close` with the handle.

    ``on_ring`` is called on the listening thread for each burst of rings from other
    handles, with the topics appended to (None: any topic may have been); it must be quick
    (it wakes the handle's waiting consumers)."""

    def __init__(self, database: Path, on_ring: Callable[[frozenset[str] | None], None]) -> None:
        self._dir = bell_dir(database)
        self._on_ring = on_ring
        self._lock = threading.Lock()
        self._sender: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._own: str | None = None  # the path of this handle's socket
        self._owner_pid = 0
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def listening(self) -> bool:
        """Whether rings of other handles reach this one (else consumers must poll)."""
        return self._thread is not None

    # -- ringing (the writer thread) -------------------------------------------------------

    def ring(self, topics: Collection[str]) -> None:
        """Wake the consumers of ``topics`` of every other handle on this database; never
        raises."""
        if self._dir is None:
            return
        message = b"".join(t.encode() + _SEP for t in sorted(topics))
        if len(message) > _MAX_RING:
            message = b""
        try:
            names = os.listdir(self._dir)
        except OSError:
            return  # nobody has listened yet
        sender = self._sender
        if sender is None:
            if self._closed or not hasattr(socket, "AF_UNIX"):
                return
            try:
                sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            except OSError:
                return
            sender.setblocking(False)
            self._sender = sender
        for name in names:
            path = os.path.join(self._dir, name)
            if path == self._own or not name.endswith(BELL_SUFFIX):
                continue
            try:
                sender.sendto(message, path)
            except (ConnectionRefusedError, FileNotFoundError):
                # Its owner died without closing: nobody will ever read it.
                with contextlib.suppress(OSError):
                    os.unlink(path)
            except OSError as exc:
                # EAGAIN/ENOBUFS: its queue is full, so it has rings to read already.
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS):
                    log.debug("doorbell: cannot ring %s: %s", path, exc)

    # -- listening --------------------------------------------------------------------------

    def listen(self) -> None:
        """Bind this handle's socket and start the thread that reads it (once; later calls
        do nothing). When the socket cannot be bound, consumers fall back to polling."""
        with self._lock:
            if self._thread is not None or self._closed or self._dir is None:
                return
            if not hasattr(socket, "AF_UNIX"):
                return
            _sweep(self._dir.parent)
            sock = self._bind(self._dir)
            if sock is None:
                return
            self._listener = sock
            self._owner_pid = os.getpid()
            self._thread = threading.Thread(
                target=self._listen_loop, args=(sock,), name="clew-log-doorbell", daemon=True
            )
            self._thread.start()

    def _bind(self, where: Path) -> socket.socket | None:
        try:
            where.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not _private(where.parent.parent):
                log.warning("doorbell: %s is not this user's alone; not listening", where)
                return None
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        except OSError as exc:
            log.debug("doorbell: cannot listen in %s: %s", where, exc)
            return None
        for _ in range(3):
            name = f"{os.getpid()}-{secrets.token_hex(4)}{BELL_SUFFIX}"
            path = os.path.join(where, name)
            try:
                sock.bind(path)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    # Another handle's close removed the directory as it emptied.
                    with contextlib.suppress(OSError):
                        where.mkdir(mode=0o700, parents=True, exist_ok=True)
                    continue
                if exc.errno == errno.EADDRINUSE:
                    continue
                log.debug("doorbell: cannot listen in %s: %s", where, exc)
                break
            # A bound socket gets the umask's mode, 0700 under Clew's: nothing executes it.
            with contextlib.suppress(OSError):
                os.chmod(path, 0o600)
            self._own = path
            return sock
        sock.close()
        return None

    def _listen_loop(self, sock: socket.socket) -> None:
        while True:
            rings: list[bytes] = []
            try:
                rings.append(sock.recv(_MAX_RING))
                # One wake-up for everything queued: rings coalesce.
                while True:
                    rings.append(sock.recv(_MAX_RING, socket.MSG_DONTWAIT))
            except BlockingIOError:
                pass
            except OSError:
                return  # closed
            if self._closed:
                return
            self._on_ring(_topics(rings))

    # -- closing ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop listening and remove this handle's socket. In a child forked after
        :meth:`listen`, the socket stays: it is the parent's."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread, listener, own = self._thread, self._listener, self._own
        if listener is not None and own is not None and self._owner_pid == os.getpid():
            if thread is not None:
                # Wake the listening thread so that it sees it is closed.
                with (
                    contextlib.suppress(OSError),
                    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as waker,
                ):
                    waker.setblocking(False)
                    waker.sendto(b"", own)
                thread.join(timeout=2.0)
            with contextlib.suppress(OSError):
                os.unlink(own)
            # Fails while other handles listen there; else one directory per database would
            # remain under the temp directory.
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(own))
        if listener is not None:
            listener.close()
        if self._sender is not None:
            self._sender.close()
