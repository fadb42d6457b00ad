-- People, their sign-in sessions, and revocations that every broker replica
-- (and through it every connector) acts on. Keep equivalent to
-- ../sqlite/0002_sessions_revocations.sql.

CREATE TABLE users (
    identity_id  TEXT PRIMARY KEY NOT NULL REFERENCES identities (id),
    issuer       TEXT NOT NULL,
    subject      TEXT NOT NULL,
    email        TEXT,
    display_name TEXT,
    created_at   BIGINT NOT NULL,
    last_login   BIGINT
);

CREATE UNIQUE INDEX users_issuer_subject ON users (issuer, subject);

CREATE TABLE sessions (
    id           TEXT PRIMARY KEY NOT NULL,
    identity_id  TEXT NOT NULL REFERENCES identities (id),
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    mfa_at       BIGINT,
    auth_methods TEXT NOT NULL DEFAULT '[]',
    client_addr  TEXT,
    user_agent   TEXT,
    revoked_at   BIGINT,
    revoked_by   TEXT
);

CREATE INDEX sessions_identity ON sessions (identity_id);

CREATE TABLE revocations (
    seq    BIGSERIAL PRIMARY KEY,
    kind   TEXT NOT NULL CHECK (kind IN ('session', 'identity')),
    target TEXT NOT NULL,
    reason TEXT NOT NULL,
    at     BIGINT NOT NULL
);
