//! The webhook outbox: rows written with the change they announce, published
//! by the relay in `seq` order and then marked.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::webhook::Webhook;

/// Key of the advisory lock that makes one relay publish at a time, so that
/// webhooks leave in the order they were written.
const RELAY_LOCK: i64 = 0x6269_6c6c_6f62_7831;

/// A webhook waiting to be published.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct PendingRow {
    pub seq: i64,
    pub id: String,
    pub merchant_id: String,
    pub event_name: String,
    /// The JSON text as written, published as it is.
    pub payload: String,
}

/// Writes a webhook in the caller's transaction.
pub(crate) async fn enqueue(
    conn: &mut PgConnection,
    webhook: &Webhook,
    execution_id: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO outbox (id, merchant_id, execution_id, event_name, payload, created_at)
         VALUES ($1, $2, $3, $4, $5::json, $6)",
    )
    .bind(&webhook.id)
    .bind(&webhook.merchant_id)
    .bind(execution_id)
    .bind(&webhook.event_name)
    .bind(webhook.payload.to_string())
    .bind(webhook.date_created)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes many webhooks in one statement, in order.
pub(crate) async fn enqueue_many(
    conn: &mut PgConnection,
    webhooks: &[(Webhook, Option<String>)],
) -> Result<(), sqlx::Error> {
    if webhooks.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO outbox (id, merchant_id, execution_id, event_name, payload, created_at)
         SELECT id, merchant_id, execution_id, event_name, payload::json, created_at
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[]) WITH ORDINALITY
              AS t(id, merchant_id, execution_id, event_name, payload, created_at, n)
         ORDER BY n",
    )
    .bind(webhooks.iter().map(|(w, _)| w.id.as_str()).collect::<Vec<_>>())
    .bind(webhooks.iter().map(|(w, _)| w.merchant_id.as_str()).collect::<Vec<_>>())
    .bind(webhooks.iter().map(|(_, e)| e.as_deref()).collect::<Vec<_>>())
    .bind(webhooks.iter().map(|(w, _)| w.event_name.as_str()).collect::<Vec<_>>())
    .bind(webhooks.iter().map(|(w, _)| w.payload.to_string()).collect::<Vec<_>>())
    .bind(webhooks.iter().map(|(w, _)| w.date_created).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Takes the relay lock for this transaction; `false` if another relay holds it.
pub(crate) async fn try_lock_relay(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(RELAY_LOCK)
        .fetch_one(conn)
        .await
}

/// The oldest unpublished webhooks, in the order they were written.
pub(crate) async fn pending(conn: &mut PgConnection, limit: i64) -> Result<Vec<PendingRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT seq, id, merchant_id, event_name, payload::text AS payload FROM outbox
         WHERE published_at IS NULL ORDER BY seq LIMIT $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Marks webhooks as published.
pub(crate) async fn mark_published(
    conn: &mut PgConnection,
    seqs: &[i64],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE outbox SET published_at = $2 WHERE seq = ANY($1)")
        .bind(seqs)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// How many webhooks wait, and the age of the oldest in seconds.
pub(crate) async fn backlog(conn: &mut PgConnection, now: DateTime<Utc>) -> Result<(i64, f64), sqlx::Error> {
    let (count, oldest): (i64, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT count(*), min(created_at) FROM outbox WHERE published_at IS NULL")
            .fetch_one(conn)
            .await?;
    let age = oldest.map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0);
    Ok((count, age))
}
