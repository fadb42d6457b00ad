-- The versioned policy store: every applied policy set, and which one is active.
-- Keep equivalent to ../sqlite/0005_policy_versions.sql.

CREATE TABLE policy_versions (
    version    BIGINT PRIMARY KEY NOT NULL,         -- 1, 2, 3 … in apply order
    parent     BIGINT REFERENCES policy_versions (version),  -- the active version it was applied on top of
    author     TEXT NOT NULL,
    comment    TEXT NOT NULL,
    created_at BIGINT NOT NULL,                     -- unix seconds
    files      TEXT NOT NULL,                       -- JSON [{"name": "...", "text": "..."}]
    digest     TEXT NOT NULL                        -- hex SHA-256 of the files (PolicyBundle::digest without services)
);

-- Exactly one row once a version was applied.
CREATE TABLE policy_active (
    id      INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    version BIGINT NOT NULL REFERENCES policy_versions (version)
);
