//! # billing-worker
//!
//! A queue-driven usage-based billing worker. Upstream services publish
//! provisioning commands and usage events to RabbitMQ; the worker keeps the
//! truth in Postgres and announces changes as webhooks through an outbox.
//!
//! ## Layout
//!
//! Layers, lowest first; a module uses only modules of lower layers (the
//! `architecture` test checks this, and that no two files import each other):
//!
//! 1. Plumbing: [`error`] (rejections and faults), [`clock`], [`settings`],
//!    [`metrics`], [`telemetry`], [`backoff_policy`] (the one user of the
//!    `backoff` crate).
//! 2. [`domain`]: the rules, pure: catalog (metrics, plans), pricing,
//!    aggregation, periods, bills, the credit ledger, money, webhooks.
//! 3. [`store`]: the Postgres adapter, static SQL, one module per table family.
//! 4. [`protocol`]: the wire: envelopes, commands, usage messages, response
//!    documents; then [`broker`]: the RabbitMQ adapter (topology, confirms,
//!    replies, dead letters).
//! 5. Services, each operation in one transaction: [`usage`] (metered usage),
//!    then [`billing`] (bills, credit, debits, retries, actions on failure),
//!    then [`provisioning`] (what each command does).
//! 6. [`context`]: what every role shares; then [`workers`] (the role loops:
//!    receive, decide, commit, ack; the billing pass; the outbox relay),
//!    [`http`] (health and metrics) and [`client`] (`billing-worker send`).
//! 7. [`app`]: start-up, roles, shutdown order.
//!
//! ## What is public
//!
//! Items are `pub(crate)` unless the binary, the tests or the examples use
//! them; what is `pub` is documented. The rest of a module is its own
//! business.

#![deny(missing_docs)]

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
