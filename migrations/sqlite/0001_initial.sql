-- Palisade broker schema, SQLite dialect. Keep equivalent to ../postgres/0001_initial.sql.
-- Flags are INTEGER 0/1, times are INTEGER unix seconds (audit_events.ts_ms: milliseconds).

CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

CREATE TABLE identities (
    id         TEXT PRIMARY KEY NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('machine', 'connector', 'user')),
    name       TEXT NOT NULL,
    groups     TEXT NOT NULL DEFAULT '[]',
    disabled   INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    created_at INTEGER NOT NULL
);

-- Machines and connectors are named by an admin and addressed by name; people may share display names.
CREATE UNIQUE INDEX identities_role_name ON identities (role, name) WHERE role IN ('machine', 'connector');

CREATE TABLE enrollment_tokens (
    token_hash  TEXT PRIMARY KEY NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('machine', 'connector')),
    name        TEXT NOT NULL,
    groups      TEXT NOT NULL DEFAULT '[]',
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    redeemed_at INTEGER,
    identity_id TEXT REFERENCES identities (id)
);

CREATE INDEX enrollment_tokens_role_name ON enrollment_tokens (role, name);

CREATE TABLE certificates (
    serial            TEXT PRIMARY KEY NOT NULL,
    identity_id       TEXT NOT NULL REFERENCES identities (id),
    public_key_sha256 TEXT NOT NULL,
    issued_at         INTEGER NOT NULL,
    not_after         INTEGER NOT NULL
);

CREATE INDEX certificates_identity ON certificates (identity_id);
CREATE INDEX certificates_public_key ON certificates (public_key_sha256);

CREATE TABLE audit_events (
    seq         INTEGER PRIMARY KEY NOT NULL,
    ts_ms       INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    actor       TEXT,
    subject     TEXT,
    decision_id TEXT,
    detail      TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);

CREATE INDEX audit_events_kind_ts ON audit_events (kind, ts_ms);

-- Append-only: the broker never updates or deletes an event. Someone with write access to the
-- file can drop these triggers; the hash chain (`palisade-broker audit verify`) catches that.
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;
