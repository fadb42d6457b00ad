-- Change notifications between broker replicas (PostgreSQL only).
-- Every broker LISTENs on 'palisade_changes' (broker/src/sync/listen.rs) and
-- re-reads the revocation feed, the active policy version and the catalog
-- when one of these tables changes, instead of waiting for its periodic
-- resync. NOTIFY is delivered at commit, so a listener never sees a change
-- that rolled back. SQLite has no equivalent (one broker per file; it polls):
-- ../sqlite/0014_change_notifications.sql is empty on purpose, and the
-- schema-equivalence test leaves out triggers named palisade_notify_*.

CREATE FUNCTION palisade_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('palisade_changes', TG_TABLE_NAME);
    RETURN NULL;
END;
$$;

CREATE TRIGGER palisade_notify_revocations AFTER INSERT ON revocations
    FOR EACH STATEMENT EXECUTE FUNCTION palisade_notify_change();
CREATE TRIGGER palisade_notify_policy_active AFTER INSERT OR UPDATE ON policy_active
    FOR EACH STATEMENT EXECUTE FUNCTION palisade_notify_change();
CREATE TRIGGER palisade_notify_catalog_version AFTER INSERT OR UPDATE ON catalog_version
    FOR EACH STATEMENT EXECUTE FUNCTION palisade_notify_change();
CREATE TRIGGER palisade_notify_identities AFTER UPDATE ON identities
    FOR EACH STATEMENT EXECUTE FUNCTION palisade_notify_change();
