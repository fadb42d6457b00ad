-- Broker replicas sharing this database, by the QUIC address clients dial.
-- Each running broker refreshes its row every few seconds and removes it when
-- it stops; enrollment and sign-in answers list the recently seen ones so a
-- client can fail over. Keep equivalent to ../sqlite/0010_broker_replicas.sql.
CREATE TABLE broker_replicas (
    quic_addr TEXT PRIMARY KEY NOT NULL,
    last_seen BIGINT NOT NULL    -- unix seconds
);
