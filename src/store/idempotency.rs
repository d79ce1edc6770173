//! Answers to commands that carried a `message_id`: a repeat gets the stored answer.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// The stored answer of a message, if it was processed before.
pub(crate) async fn find(
    conn: &mut PgConnection,
    merchant_id: &str,
    message_id: &str,
) -> Result<Option<serde_json::Value>, sqlx::Error> {
    sqlx::query_scalar("SELECT response FROM processed_messages WHERE merchant_id = $1 AND message_id = $2")
        .bind(merchant_id)
        .bind(message_id)
        .fetch_optional(conn)
        .await
}

/// Records the answer; `false` when another process recorded one first.
pub(crate) async fn save(
    conn: &mut PgConnection,
    merchant_id: &str,
    message_id: &str,
    command: &str,
    response: &serde_json::Value,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO processed_messages (merchant_id, message_id, command, response, created_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(merchant_id)
    .bind(message_id)
    .bind(command)
    .bind(response)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
