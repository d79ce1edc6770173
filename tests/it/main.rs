//! Integration tests: each test runs a worker on its own database and
//! topology prefix and talks to it only through RabbitMQ (and SQL reads).

mod gateway;
#[allow(dead_code)] // shared with the faults target, which uses other parts
mod helpers;

mod billing;
mod binary;
mod credit;
mod dead_letters;
mod hostile;
mod late_results;
mod operations;
mod outbox;
mod pricing;
mod progressive;
mod proration;
mod provisioning;
mod retention;
mod seed;
mod usage;
