-- Change notifications between broker replicas exist only on PostgreSQL
-- (../postgres/0014_change_notifications.sql): a SQLite file has one broker,
-- which polls. This migration keeps the two histories numbered alike.
SELECT 1;
