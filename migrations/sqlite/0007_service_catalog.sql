-- Services and segments as data: the catalog the policy engine decides over.
-- Keep equivalent to ../postgres/0007_service_catalog.sql.

-- A named set of services that policies grant together (`Segment::"<name>"`).
CREATE TABLE segments (
    name        TEXT PRIMARY KEY NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL                 -- unix seconds
);

-- Every service the broker knows: seeded from `[[services]]` in broker.toml,
-- advertised by connectors, assigned by admins. A service without a segment
-- is not in the policy catalog: nobody reaches it (deny on doubt).
CREATE TABLE services (
    name       TEXT PRIMARY KEY NOT NULL,
    segment    TEXT REFERENCES segments (name),
    protocol   TEXT NOT NULL DEFAULT 'tcp' CHECK (protocol IN ('tcp', 'http')),
    labels     TEXT NOT NULL DEFAULT '[]',         -- JSON array of strings
    origin     TEXT NOT NULL,                      -- 'config', 'connector' or 'admin'
    updated_at INTEGER NOT NULL                    -- unix seconds
);

-- Which connectors said they serve a service (from their hello), and when.
CREATE TABLE service_connectors (
    service      TEXT NOT NULL,
    connector_id TEXT NOT NULL,
    connector    TEXT NOT NULL,                    -- display name
    last_seen    INTEGER NOT NULL,                 -- unix seconds
    PRIMARY KEY (service, connector_id)
);

-- The catalog's version: bumped by every change, with what changed, so a
-- running broker notices (polling) and names the change when it cuts tunnels.
CREATE TABLE catalog_version (
    id          INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    version     INTEGER NOT NULL,
    last_change TEXT NOT NULL
);
INSERT INTO catalog_version (id, version, last_change) VALUES (1, 0, 'empty catalog');
