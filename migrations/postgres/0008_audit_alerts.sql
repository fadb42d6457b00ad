-- State of the audit alert rules (broker/src/audit/sinks/novelty.rs and
-- broker/src/audit/sinks/offline.rs), kept in the database so a restarted
-- broker remembers it.
-- Keep equivalent to ../sqlite/0008_audit_alerts.sql.

-- What each person signed in from: one row per (person, device or address).
-- A sign-in from a value not listed for a person who already has a row of
-- that kind raises alert.new_device / alert.new_address.
CREATE TABLE audit_seen_signins (
    identity     TEXT NOT NULL,             -- user/ID, as in the session.created actor
    kind         TEXT NOT NULL,             -- 'device' (user agent) or 'address' (client IP)
    value        TEXT NOT NULL,
    first_seq    BIGINT NOT NULL,           -- the session.created event that first showed it
    last_seen_ms BIGINT NOT NULL,           -- ms since the epoch
    PRIMARY KEY (identity, kind, value)
);

-- Connectors whose control link is down, from the connector.offline event
-- until the next connector.online.
CREATE TABLE audit_connectors_offline (
    connector  TEXT PRIMARY KEY NOT NULL,   -- the connector's SPIFFE id (event actor)
    since_ms   BIGINT NOT NULL,             -- ts_ms of its connector.offline event
    alerted    BIGINT NOT NULL DEFAULT 0    -- 1 once alert.connector_offline was recorded
);
