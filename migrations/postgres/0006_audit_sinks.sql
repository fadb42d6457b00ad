-- Delivery cursors of the audit sinks (broker/src/audit/sinks/): per configured
-- sink, the seq of the last event it delivered. A sink resumes after it, so
-- delivery is at-least-once and in order across restarts.
-- Keep equivalent to ../sqlite/0006_audit_sinks.sql.

CREATE TABLE audit_sink_cursors (
    sink       TEXT PRIMARY KEY NOT NULL,   -- [[audit.sinks]] name
    last_seq   BIGINT NOT NULL,             -- audit_events.seq last delivered
    updated_at BIGINT NOT NULL              -- unix seconds
);
