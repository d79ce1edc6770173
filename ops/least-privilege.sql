-- A least-privilege role for the worker. The schema belongs to the role that
-- runs `billing-worker migrate` (the owner); the worker itself only reads and
-- writes rows, and runs with `BILLING__DATABASE__MIGRATE_ON_START=false`.
--
--   psql -d billing -v worker=billing_worker -f ops/least-privilege.sql
--
-- Run it after each migration (new tables need their grants), as the owner.

SELECT format('CREATE ROLE %I LOGIN', :'worker')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'worker') \gexec

SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'worker') \gexec
GRANT USAGE ON SCHEMA public TO :"worker";
-- Every table: read, add and change rows; nothing is ever dropped or truncated.
GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO :"worker";
-- update_plan replaces a plan's metric list; the pruning pass removes the
-- allowance events of periods billed longer ago than usage.event_retention
-- (usage event bodies it sets to NULL; their keys stay).
GRANT DELETE ON plan_metrics, usage_allowance_events TO :"worker";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"worker";
-- The migration bookkeeping is read to check the schema, never written.
REVOKE INSERT, UPDATE ON _sqlx_migrations FROM :"worker";
