-- Palisade broker schema, PostgreSQL dialect. Keep equivalent to ../sqlite/0001_initial.sql.
-- Flags are BIGINT 0/1, times are BIGINT unix seconds (audit_events.ts_ms: milliseconds).

CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

CREATE TABLE identities (
    id         TEXT PRIMARY KEY NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('machine', 'connector', 'user')),
    name       TEXT NOT NULL,
    groups     TEXT NOT NULL DEFAULT '[]',
    disabled   BIGINT NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    created_at BIGINT NOT NULL
);

CREATE UNIQUE INDEX identities_role_name ON identities (role, name) WHERE role IN ('machine', 'connector');

CREATE TABLE enrollment_tokens (
    token_hash  TEXT PRIMARY KEY NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('machine', 'connector')),
    name        TEXT NOT NULL,
    groups      TEXT NOT NULL DEFAULT '[]',
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    redeemed_at BIGINT,
    identity_id TEXT REFERENCES identities (id)
);

CREATE INDEX enrollment_tokens_role_name ON enrollment_tokens (role, name);

CREATE TABLE certificates (
    serial            TEXT PRIMARY KEY NOT NULL,
    identity_id       TEXT NOT NULL REFERENCES identities (id),
    public_key_sha256 TEXT NOT NULL,
    issued_at         BIGINT NOT NULL,
    not_after         BIGINT NOT NULL
);

CREATE INDEX certificates_identity ON certificates (identity_id);
CREATE INDEX certificates_public_key ON certificates (public_key_sha256);

CREATE TABLE audit_events (
    seq         BIGINT PRIMARY KEY NOT NULL,
    ts_ms       BIGINT NOT NULL,
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

-- Append-only: the broker never updates or deletes an event. Someone with enough privileges
-- can drop these triggers; the hash chain (`palisade-broker audit verify`) catches that.
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only';
END;
$$;

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
