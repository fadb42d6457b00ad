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
