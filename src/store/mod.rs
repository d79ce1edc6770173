//! Postgres adapter: thin functions over `&mut PgConnection` (a transaction
//! derefs to one), static SQL with binds, no rules of its own.

pub(crate) mod billing_plans;
pub(crate) mod bills;
pub(crate) mod catalog;
pub(crate) mod customers;
pub(crate) mod executions;
pub(crate) mod idempotency;
pub(crate) mod ledger;
pub(crate) mod outbox;
pub(crate) mod usage;

use std::str::FromStr;
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::settings::DatabaseSettings;

/// The migrations in `migrations/`, embedded in the binary.
pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A pool that connects lazily, so the worker starts (and reports not ready)
/// while the database is still down.
pub fn pool(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(settings.url.expose_secret())?.application_name("billing-worker");
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.connect_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        .connect_lazy_with(options))
}

/// Applies pending migrations; safe to run from several processes at once
/// (sqlx takes an advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Whether the database answers now, on a fresh connection: a pooled one
/// could hide an outage behind the pool's own reconnect attempts.
pub(crate) async fn ping(pool: &PgPool) -> bool {
    use sqlx::Connection as _;
    let options = pool.connect_options();
    let check = async {
        let mut conn = sqlx::PgConnection::connect_with(&options).await?;
        sqlx::query("SELECT 1").execute(&mut conn).await?;
        conn.close().await
    };
    matches!(tokio::time::timeout(Duration::from_secs(2), check).await, Ok(Ok(())))
}
pub(crate) mod plan_changes;
