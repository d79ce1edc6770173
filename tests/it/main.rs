//! Integration tests: each test runs a worker on its own database and
//! topology prefix and talks to it only through RabbitMQ (and SQL reads).

mod gateway;
mod helpers;

mod billing;
mod binary;
mod dead_letters;
mod operations;
mod outbox;
mod provisioning;
mod usage;
