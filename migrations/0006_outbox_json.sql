-- Webhook payloads are kept as the JSON text the worker wrote and publishes:
-- nothing queries inside them, so the binary form of JSONB (parsed on every
-- insert, printed again on every read by the relay) bought nothing.
ALTER TABLE outbox ALTER COLUMN payload TYPE JSON USING payload::json;
