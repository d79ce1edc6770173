//! The wire: what arrives on the bus, what the worker answers and announces.
//! Decoding never panics; every failure is a [`crate::error::Rejection`].

pub mod de;
pub mod documents;
pub mod envelope;
pub mod provisioning;
pub mod usage;
pub mod webhook;
