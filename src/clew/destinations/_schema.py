"""The outbox file's tables (see :mod:`clew.destinations.outbox`).

``items``: records waiting per destination; ``batch`` is the delivery id once a sender has put
the record in a batch. ``batches``: the batch each destination is delivering, with its attempt
count, backoff and last error. ``dead_letters``: refused or expired batches with their records
(a JSON array) and the reason. ``deliveries``: the latest finished deliveries, without records.
``offsets``: the destinations stage's progress in the log. ``counters``: the /metrics counts.
``destinations``: when the stage first saw each destination (it gets records appended since).
"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dest TEXT NOT NULL,
    batch TEXT,
    enqueued_ms INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS items_queue ON items (dest, batch, id);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT NOT NULL UNIQUE,
    dest TEXT NOT NULL,
    events INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_attempt_ms INTEGER,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    last_status INTEGER,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS batches_dest ON batches (dest, seq);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT NOT NULL UNIQUE,
    dest TEXT NOT NULL,
    events INTEGER NOT NULL,
    items BLOB NOT NULL,
    reason TEXT NOT NULL,
    status INTEGER,
    attempts INTEGER NOT NULL,
    failed_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_dest ON dead_letters (dest, seq);
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT NOT NULL,
    dest TEXT NOT NULL,
    events INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    status INTEGER,
    attempts INTEGER NOT NULL,
    error TEXT,
    first_attempt_ms INTEGER,
    finished_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_dest ON deliveries (dest, seq);
CREATE TABLE IF NOT EXISTS offsets (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS destinations (
    name TEXT PRIMARY KEY,
    since_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    dest TEXT NOT NULL,
    name TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (dest, name)
) WITHOUT ROWID;
"""
