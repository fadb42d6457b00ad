-- People signing in: WebAuthn credentials, pending sign-ins and their ceremonies,
-- one-time codes for the CLI, device codes and invites for local accounts.
-- Keep equivalent to ../postgres/0003_login.sql. Secrets (cookies, codes,
-- invite tokens) are stored only as hex SHA-256.

CREATE TABLE webauthn_credentials (
    id              TEXT PRIMARY KEY NOT NULL,          -- base64url credential id
    identity_id     TEXT NOT NULL REFERENCES identities (id),
    passkey         TEXT NOT NULL,                      -- webauthn-rs Passkey JSON: key, counter, backup flags
    label           TEXT NOT NULL DEFAULT '',
    created_at      INTEGER NOT NULL,
    last_used_at    INTEGER,
    disabled_at     INTEGER,
    disabled_reason TEXT
);

CREATE INDEX webauthn_credentials_identity ON webauthn_credentials (identity_id);

-- One browser's sign-in attempt, bound to its __Host-palisade-login cookie.
CREATE TABLE pending_logins (
    id_hash       TEXT PRIMARY KEY NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('portal', 'cli', 'local', 'invite')),
    return_to     TEXT,
    cli           TEXT,                                 -- CLI logins: {"port", "state", "challenge"}
    mfa_session   TEXT,                                 -- mfa_only: the session to refresh
    oidc_state    TEXT UNIQUE,                          -- hex SHA-256 of `state`; NULL once used
    oidc_nonce    TEXT,
    pkce_verifier TEXT,
    identity_id   TEXT REFERENCES identities (id),      -- set by the OIDC step or the invite
    auth_methods  TEXT NOT NULL DEFAULT '[]',
    invite_hash   TEXT,
    client_addr   TEXT,
    user_agent    TEXT,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL
);

CREATE INDEX pending_logins_expires ON pending_logins (expires_at);

-- At most one WebAuthn ceremony per pending sign-in; deleted on first use.
CREATE TABLE webauthn_ceremonies (
    pending_id  TEXT PRIMARY KEY NOT NULL REFERENCES pending_logins (id_hash) ON DELETE CASCADE,
    kind        TEXT NOT NULL CHECK (kind IN ('register', 'authenticate', 'discoverable')),
    identity_id TEXT,
    state       TEXT NOT NULL,
    expires_at  INTEGER NOT NULL
);

-- One-time codes the CLI exchanges for a certificate.
CREATE TABLE login_codes (
    code_hash  TEXT PRIMARY KEY NOT NULL,
    session_id TEXT NOT NULL REFERENCES sessions (id),
    challenge  TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);

CREATE TABLE device_codes (
    device_code_hash TEXT PRIMARY KEY NOT NULL,
    user_code        TEXT NOT NULL UNIQUE,
    client_addr      TEXT,
    created_at       INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    interval_secs    INTEGER NOT NULL,
    last_poll_at     INTEGER,
    approved_by      TEXT REFERENCES identities (id),
    session_id       TEXT REFERENCES sessions (id),
    redeemed_at      INTEGER
);

CREATE INDEX device_codes_expires ON device_codes (expires_at);

CREATE TABLE user_invites (
    token_hash  TEXT PRIMARY KEY NOT NULL,
    identity_id TEXT NOT NULL REFERENCES identities (id),
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER
);

CREATE INDEX user_invites_identity ON user_invites (identity_id);

-- Browser sign-ins: the __Host-palisade-session cookie names a session.
CREATE TABLE session_cookies (
    cookie_hash TEXT PRIMARY KEY NOT NULL,
    session_id  TEXT NOT NULL REFERENCES sessions (id),
    created_at  INTEGER NOT NULL
);

CREATE INDEX session_cookies_session ON session_cookies (session_id);
