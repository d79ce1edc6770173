//! Pure billing rules: no I/O, no clock reads, unit-tested where they live.
//! Adapters (`store`, `broker`) and loops (`workers`) call into these.

pub mod aggregation;
pub mod bill;
pub mod catalog;
pub mod execution;
pub mod ids;
pub mod ledger;
pub mod money;
pub mod period;
pub mod pricing;
pub mod webhook;
