-- Throttles set after an extraction or abuse alert (`[alerts]
-- throttle_after_alert`): the identity's HTTP requests to the service are
-- held to requests_per_minute by every connector serving it, until an admin
-- clears the row (`palisade-broker alerts clear`). Only the broker writes
-- here; each broker replica sends the rows for the services a connector
-- serves over that connector's control link.
-- Keep equivalent to ../sqlite/0017_alert_throttles.sql.
CREATE TABLE alert_throttles (
    service             TEXT NOT NULL,
    identity            TEXT NOT NULL,      -- the caller's SPIFFE id
    requests_per_minute BIGINT NOT NULL CHECK (requests_per_minute > 0),
    rule                TEXT NOT NULL,      -- the alert rule that set it
    created_ms          BIGINT NOT NULL,   -- unix milliseconds
    PRIMARY KEY (service, identity)
);
CREATE INDEX alert_throttles_identity ON alert_throttles (identity);
