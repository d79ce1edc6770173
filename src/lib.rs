//! # billing-worker
//!
//! A queue-driven usage-based billing worker. Upstream services publish
//! provisioning commands and usage events to RabbitMQ; the worker keeps the
//! truth in Postgres and announces changes as webhooks through an outbox.
//!
//! ## Layout
//!
//! - [`domain`]: the rules, pure: catalog (metrics, plans), pricing,
//!   aggregation, executions and their states, the credit ledger, money.
//! - [`protocol`]: the wire: envelopes, commands, response documents, webhooks.
//! - [`provisioning`]: what each provisioning command does, in one transaction.
//! - [`usage`]: metered usage of executions.
//! - [`billing`]: bills, credit, debits through the gateway, retries, actions on failure.
//! - [`store`]: the Postgres adapter (static SQL, one module per table family).
//! - [`broker`]: the RabbitMQ adapter (topology, confirms, replies, dead letters).
//! - [`workers`]: the loops: receive, decide, commit, ack; the outbox relay.
//! - [`app`]: start-up, roles, shutdown order; [`http`]: health and metrics.
//! - [`client`]: `billing-worker send`, a publisher for operators and examples.
//! - [`settings`], [`clock`], [`metrics`], [`telemetry`], [`backoff_policy`]: plumbing.

pub mod app;
pub mod backoff_policy;
pub mod billing;
pub mod broker;
pub mod client;
pub mod clock;
pub mod context;
pub mod domain;
pub mod error;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod provisioning;
pub mod settings;
pub mod store;
pub mod telemetry;
pub mod usage;
pub mod workers;
