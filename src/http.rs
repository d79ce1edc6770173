//! `/healthz`, `/readyz` and `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::context::Context;

/// The operations endpoints.
pub(crate) fn router(ctx: Arc<Context>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ctx)
}

/// Ready when the database answers and every role is connected.
async fn readyz(State(ctx): State<Arc<Context>>) -> impl IntoResponse {
    let mut problems = Vec::new();
    if !crate::store::ping(&ctx.pool).await {
        problems.push("database unreachable".to_string());
    }
    let down = ctx.health.down();
    if ctx.health.roles().is_empty() {
        // Roles register once migrations are applied: until then, not ready.
        problems.push("starting".to_string());
    } else if !down.is_empty() {
        problems.push(format!("not connected: {}", down.join(", ")));
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("{}\n", problems.join("; ")))
    }
}

async fn metrics(State(ctx): State<Arc<Context>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ctx.metrics.render(),
    )
}
