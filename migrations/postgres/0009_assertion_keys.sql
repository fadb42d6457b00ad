-- Public keys connectors sign identity assertions with (ES256), registered over
-- their control link and served at GET /.well-known/palisade/jwks.json so a
-- workload can verify the x-palisade-identity header. A connector makes a new
-- key each time it starts; keys not seen for a day drop out of the JWKS.
-- Keep equivalent to ../sqlite/0009_assertion_keys.sql.

CREATE TABLE assertion_keys (
    kid          TEXT PRIMARY KEY NOT NULL,  -- JWK thumbprint-style id chosen by the connector
    connector_id TEXT NOT NULL,              -- the connector that registered it
    jwk          TEXT NOT NULL,              -- the public JWK as JSON (EC P-256)
    created_at   BIGINT NOT NULL,            -- unix seconds
    last_seen_at BIGINT NOT NULL             -- unix seconds, refreshed on every registration
);
