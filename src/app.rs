//! Start-up and shutdown: the shared context, the roles, the HTTP endpoints,
//! and the order in which they stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backoff_policy::Backoff;
use crate::broker::Names;
use crate::clock::SharedClock;
use crate::context::{Context, Health};
use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::store;
use crate::workers;

/// A built worker, its HTTP port bound, ready to [`Application::run`].
pub struct Application {
    ctx: Arc<Context>,
    listener: TcpListener,
}

impl Application {
    /// Prepares the pool (lazily connected) and binds the HTTP address.
    pub async fn build(settings: Settings, clock: SharedClock) -> anyhow::Result<Application> {
        let pool = store::pool(&settings.database).context("database settings")?;
        let listener = TcpListener::bind(settings.http.listen)
            .await
            .with_context(|| format!("bind http.listen {}", settings.http.listen))?;
        let ctx = Arc::new(Context {
            names: Names::new(&settings.amqp.prefix),
            settings,
            pool,
            clock,
            metrics: Metrics::new(),
            health: Health::default(),
            outbox_wake: Notify::new(),
            billing_wake: Notify::new(),
            instance: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
        });
        Ok(Application { ctx, listener })
    }

    /// The bound HTTP address (useful when `http.listen` asks for port 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.ctx.settings.http.listen)
    }

    /// The shared context, for tests and tools that read metrics or the pool.
    pub fn context(&self) -> Arc<Context> {
        self.ctx.clone()
    }

    /// Runs until `shutdown` fires, then stops in order: consumers finish and
    /// ack what they hold, the outbox is flushed, and the HTTP server closes;
    /// all within `shutdown.grace_period`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let ctx = self.ctx;
        let http_stop = CancellationToken::new();
        let http = {
            let router = crate::http::router(ctx.clone());
            let stop = http_stop.clone();
            tokio::spawn(async move {
                axum::serve(self.listener, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
            })
        };
        tracing::info!(addr = %ctx.settings.http.listen, prefix = %ctx.settings.amqp.prefix, "billing-worker starting");

        if ctx.settings.database.migrate_on_start && !migrate_until_done(&ctx, &shutdown).await {
            http_stop.cancel();
            let _ = http.await;
            return Ok(());
        }

        let consumers_stop = CancellationToken::new();
        let relay_stop = CancellationToken::new();
        for role in ["provisioning", "usage", "payments", "scheduler", "outbox"] {
            ctx.health.register(role);
        }
        let mut consumers = JoinSet::new();
        consumers.spawn(workers::provisioning::run(ctx.clone(), consumers_stop.clone()));
        consumers.spawn(workers::usage::run(ctx.clone(), consumers_stop.clone()));
        consumers.spawn(workers::payments::run(ctx.clone(), consumers_stop.clone()));
        consumers.spawn(workers::scheduler::run(ctx.clone(), consumers_stop.clone()));
        let relay = tokio::spawn(workers::outbox_relay::run(ctx.clone(), relay_stop.clone()));

        shutdown.cancelled().await;
        tracing::info!("shutting down: finishing work in hand");
        let deadline = tokio::time::Instant::now() + ctx.settings.shutdown.grace_period;
        consumers_stop.cancel();
        let consumers_done =
            tokio::time::timeout_at(deadline, async { while consumers.join_next().await.is_some() {} }).await;
        relay_stop.cancel();
        let relay_done = tokio::time::timeout_at(deadline, relay).await;
        http_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), http).await;
        if consumers_done.is_err() || relay_done.is_err() {
            tracing::warn!("grace period ran out; unacked work returns to the queues");
        }
        ctx.pool.close().await;
        tracing::info!("billing-worker stopped");
        Ok(())
    }
}

/// Applies migrations, waiting for the database if it is down. `false` if
/// shutdown came first.
async fn migrate_until_done(ctx: &Context, shutdown: &CancellationToken) -> bool {
    let amqp = &ctx.settings.amqp;
    let mut backoff = Backoff::reconnect(amqp);
    loop {
        match store::migrate(&ctx.pool).await {
            Ok(()) => return true,
            Err(err) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %err, retry_in = ?delay, "migrations not applied yet; waiting for the database");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return false,
                }
            }
        }
    }
}
