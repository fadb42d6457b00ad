-- People, their sign-in sessions, and revocations that every broker replica
-- (and through it every connector) acts on. Keep equivalent to
-- ../postgres/0002_sessions_revocations.sql.

-- A person is an identity with role 'user'; this row says where they come from.
CREATE TABLE users (
    identity_id  TEXT PRIMARY KEY NOT NULL REFERENCES identities (id),
    issuer       TEXT NOT NULL,          -- OIDC issuer URL, or 'local' for invite-only accounts
    subject      TEXT NOT NULL,          -- OIDC `sub`, or the invite's account id
    email        TEXT,
    display_name TEXT,
    created_at   INTEGER NOT NULL,
    last_login   INTEGER
);

CREATE UNIQUE INDEX users_issuer_subject ON users (issuer, subject);

CREATE TABLE sessions (
    id           TEXT PRIMARY KEY NOT NULL,
    identity_id  TEXT NOT NULL REFERENCES identities (id),
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    mfa_at       INTEGER,
    auth_methods TEXT NOT NULL DEFAULT '[]',
    client_addr  TEXT,
    user_agent   TEXT,
    revoked_at   INTEGER,
    revoked_by   TEXT
);

CREATE INDEX sessions_identity ON sessions (identity_id);

-- Append-only feed of revocations; replicas poll it by seq.
CREATE TABLE revocations (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    kind   TEXT NOT NULL CHECK (kind IN ('session', 'identity')),
    target TEXT NOT NULL,
    reason TEXT NOT NULL,
    at     INTEGER NOT NULL
);
