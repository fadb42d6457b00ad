-- Signed checkpoints of the audit chain head (see broker/src/audit/checkpoint.rs).
-- The signing key lives in DATA_DIR/audit-signing.key, apart from this database;
-- only its public half is recorded here, and `audit verify` prints it so it can be
-- compared with a copy kept elsewhere.

CREATE TABLE audit_signing_keys (
    key_id     TEXT PRIMARY KEY NOT NULL,
    algorithm  TEXT NOT NULL,
    public_key TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);

CREATE TABLE audit_checkpoints (
    seq       BIGINT PRIMARY KEY NOT NULL,
    hash      TEXT NOT NULL,
    ts_ms     BIGINT NOT NULL,
    signature TEXT NOT NULL,
    key_id    TEXT NOT NULL
);

CREATE FUNCTION audit_checkpoints_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit checkpoints are append-only';
END;
$$;

CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_checkpoints_append_only();

CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_checkpoints_append_only();

-- Retention: `palisade-broker audit prune` deletes the oldest events up to a seq
-- and records a signed anchor (that seq and its hash) in the same transaction;
-- `audit verify` then starts the chain from the newest valid anchor. Deletes are
-- allowed only at or below an anchor.
CREATE TABLE audit_prune_anchors (
    seq       BIGINT PRIMARY KEY NOT NULL,
    hash      TEXT NOT NULL,
    ts_ms     BIGINT NOT NULL,
    signature TEXT NOT NULL,
    key_id    TEXT NOT NULL
);

CREATE FUNCTION audit_events_delete_only_anchored() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.seq > (SELECT COALESCE(MAX(seq), 0) FROM audit_prune_anchors) THEN
        RAISE EXCEPTION 'audit events are append-only';
    END IF;
    RETURN OLD;
END;
$$;

DROP TRIGGER audit_events_no_delete ON audit_events;

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_delete_only_anchored();
