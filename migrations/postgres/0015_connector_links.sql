-- Each connector's control links, one row per (connector, broker replica):
-- the connector's version, when the link came up, when the broker last saw
-- it (refreshed with the broker's replica heartbeat) and when it went down.
-- The console and `palisade-broker connector list` show status, version and
-- last seen from it; the offline alert does not fire while another replica
-- still holds a live link. Keep equivalent to ../sqlite/0015_connector_links.sql.
CREATE TABLE connector_links (
    connector_id    TEXT NOT NULL REFERENCES identities (id),
    broker          TEXT NOT NULL,      -- the replica's QUIC address
    link_id         TEXT NOT NULL,      -- this link; an older link of the pair ending later changes nothing
    remote          TEXT NOT NULL,      -- the connector's address as the broker saw it
    version         TEXT NOT NULL,
    connected_at    BIGINT NOT NULL,    -- unix seconds
    last_seen       BIGINT NOT NULL,    -- unix seconds
    disconnected_at BIGINT,             -- unix seconds; NULL while linked
    PRIMARY KEY (connector_id, broker)
);
