-- Quota usage shared by the connector replicas of a service, so a per-identity
-- token or request quota holds across them (approximately: within about 2 s).
-- One row per (service, identity, policy, window, connector instance): a
-- connector's report only ever adds to its own instance's rows (its id comes
-- from its certificate, never from the report); the broker sends each
-- connector the sum of the other instances' rows for the services it serves.
-- Windows are aligned to the Unix epoch (window_start_ms is a multiple of
-- window_ms). Rows of windows that ended are pruned.
-- Keep equivalent to ../sqlite/0016_quota_usage.sql.
CREATE TABLE quota_usage (
    service         TEXT NOT NULL,
    identity        TEXT NOT NULL,      -- the caller's SPIFFE id
    policy_id       TEXT NOT NULL,      -- the @id of the policy that sets the quota
    window_ms       BIGINT NOT NULL CHECK (window_ms > 0),
    window_start_ms BIGINT NOT NULL,    -- unix milliseconds
    connector_id    TEXT NOT NULL REFERENCES identities (id),
    instance        TEXT NOT NULL,      -- the connector process that counted
    tokens          BIGINT NOT NULL CHECK (tokens >= 0),
    requests        BIGINT NOT NULL CHECK (requests >= 0),
    updated_ms      BIGINT NOT NULL,    -- unix milliseconds, the writing broker's clock
    PRIMARY KEY (service, identity, policy_id, window_ms, window_start_ms, connector_id, instance)
);
CREATE INDEX quota_usage_service_updated ON quota_usage (service, updated_ms);
CREATE INDEX quota_usage_window_start ON quota_usage (window_start_ms);
