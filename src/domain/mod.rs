//! Pure billing rules: no I/O, no clock reads, unit-tested where they live.
//! Adapters (`store`, `broker`) and loops (`workers`) call into these.

pub(crate) mod aggregation;
pub(crate) mod bill;
pub(crate) mod catalog;
pub(crate) mod execution;
pub(crate) mod ids;
pub(crate) mod ledger;
pub(crate) mod money;
pub(crate) mod period;
pub(crate) mod pricing;
pub(crate) mod proration;
pub(crate) mod thresholds;
pub(crate) mod webhook;
