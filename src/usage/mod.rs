//! Metered usage: what an execution has used in its open period.

use sqlx::PgConnection;

use crate::protocol::documents::Usage;
use crate::store::executions::ExecutionRow;

/// `used_till_now` and `used_amount` per metric for the open period.
/// Metrics with no usage are absent and read as zero.
pub async fn live_usage(
    _conn: &mut PgConnection,
    _row: &ExecutionRow,
) -> Result<Usage, sqlx::Error> {
    Ok(Usage::new())
}
