//! Provisioning commands: decide, write, and say what to answer.
//! Each handler runs inside the caller's transaction and changes nothing
//! when it fails; webhooks go to the outbox in the same transaction.

mod catalog;
mod executions;
mod outcome;
mod reading;

pub(crate) use outcome::Outcome;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::error::{ErrorCode, HandleError, Rejection};
use crate::protocol::provisioning::Command;

/// Runs one command for one merchant at `now`. `pre_debit_notice` is how
/// far ahead of its debit a bill issued by `present` is announced.
pub(crate) async fn execute(
    conn: &mut PgConnection,
    merchant_id: &str,
    now: DateTime<Utc>,
    pre_debit_notice: chrono::Duration,
    command: Command,
) -> Result<Outcome, HandleError> {
    // A change by the merchant may mend what parked one of its executions:
    // billing tries those again at its next pass.
    if !command.is_query() {
        crate::store::executions::unpark_merchant(conn, merchant_id).await?;
    }
    match command {
        Command::CreateMetric(c) => catalog::create_metric(conn, merchant_id, now, c).await,
        Command::CreatePlan(c) => catalog::create_plan(conn, merchant_id, now, c).await,
        Command::UpdatePlan(c) => catalog::update_plan(conn, merchant_id, now, c).await,
        Command::CreateCustomer(c) => catalog::create_customer(conn, merchant_id, now, c).await,
        Command::Create(c) => executions::create(conn, merchant_id, now, c).await,
        Command::Get(c) => executions::get(conn, merchant_id, now, c).await,
        Command::List(c) => executions::list(conn, merchant_id, now, c).await,
        Command::UpdateStatus(c) => executions::update_status(conn, merchant_id, now, c).await,
        Command::AddCredit(c) => executions::add_credit(conn, merchant_id, now, c).await,
        Command::ChangePlan(c) => executions::change_plan(conn, merchant_id, now, pre_debit_notice, c).await,
        Command::PreviewProratedAmount(c) => {
            let target = crate::billing::proration::Target {
                plan_id: &c.updated_fields.plan_id,
                plan_amount: c.updated_fields.plan_amount,
            };
            crate::domain::ids::check_id(&c.updated_fields.plan_id)
                .map_err(|p| Rejection::field("updated_fields.plan_id", p))?;
            let doc = crate::billing::proration::preview(
                conn,
                merchant_id,
                &c.billing_execution_info_id,
                &c.request_id,
                target,
                now,
            )
            .await?;
            Ok(Outcome::quiet(crate::protocol::documents::success(merchant_id, doc)))
        }
        Command::SetAlerts(c) => executions::set_alerts(conn, merchant_id, now, c).await,
        Command::ListBills(c) => reading::list_bills(conn, merchant_id, c).await,
        Command::GetBill(c) => reading::get_bill(conn, merchant_id, c).await,
        Command::ListCredit(c) => reading::list_credit(conn, merchant_id, c).await,
        Command::Present(c) => {
            let bill =
                crate::billing::issue::present(conn, merchant_id, &c.billing_execution_info_id, now, pre_debit_notice)
                    .await?;
            let doc = match &bill {
                Some(b) => crate::billing::bill_document(b, &crate::store::bills::lines(conn, &b.id).await?),
                None => serde_json::Value::Null,
            };
            Ok(Outcome {
                response: crate::protocol::documents::success(merchant_id, serde_json::json!({ "bill": doc })),
                announced: true,
            })
        }
        Command::AddBillingPlan(request, raw) => {
            let response = crate::billing::plans::add(conn, merchant_id, now, *request, raw).await?;
            Ok(Outcome {
                response: crate::protocol::documents::success(merchant_id, response),
                announced: true,
            })
        }
        // Runs outside a command transaction, in the provisioning role.
        Command::RunBilling(_) => Err(HandleError::Rejected(Rejection::new(
            ErrorCode::InternalError,
            "run_billing is run by the provisioning role",
        ))),
    }
}
