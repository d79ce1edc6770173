//! `billing-worker send`: publish one message the way an upstream service
//! would, and print the worker's answer. For operators and the README's examples.

use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};

use crate::broker::{self, Names};
use crate::protocol::envelope::MERCHANT_HEADER;
use crate::settings::Settings;

/// RabbitMQ's direct reply-to pseudo-queue: answers without declaring a queue.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// What to send.
pub struct Request {
    /// The merchant to act for, sent in the `x-merchantid` header.
    pub merchant_id: String,
    /// Routing key on `billing.in`: `provisioning.*` for commands, `usage.*` for usage.
    pub routing_key: String,
    /// The message body (JSON), published as is.
    pub body: Vec<u8>,
    /// The message_id that keys the command; a fresh one when `None`.
    pub message_id: Option<String>,
    /// Wait this long for an answer; `None` publishes without asking for one.
    pub wait: Option<Duration>,
}

/// Publishes the request to `billing.in` and returns the answer, if asked for.
pub async fn send(settings: &Settings, request: Request) -> anyhow::Result<Option<serde_json::Value>> {
    let names = Names::new(&settings.amqp.prefix);
    let connection = broker::connect(&settings.amqp, "cli")
        .await
        .context("connect to the broker")?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut replies = match request.wait {
        Some(_) => Some(
            channel
                .basic_consume(
                    DIRECT_REPLY_TO.into(),
                    "".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .context("listen for the answer")?,
        ),
        None => None,
    };
    let correlation = uuid::Uuid::new_v4().to_string();
    let mut props =
        broker::json_properties().with_headers(broker::headers([(MERCHANT_HEADER, request.merchant_id.as_str())]));
    // Every message is keyed: a redelivery never acts twice.
    let message_id = request
        .message_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    props = props.with_message_id(ShortString::from(message_id.as_str()));
    if replies.is_some() {
        props = props
            .with_reply_to(ShortString::from(DIRECT_REPLY_TO))
            .with_correlation_id(ShortString::from(correlation.as_str()));
    }
    let confirm = channel
        .basic_publish(
            names.inbound.as_str().into(),
            request.routing_key.as_str().into(),
            BasicPublishOptions::default(),
            &request.body,
            props,
        )
        .await?
        .await?;
    anyhow::ensure!(confirm.is_ack(), "the broker refused the message");
    let (Some(consumer), Some(wait)) = (replies.as_mut(), request.wait) else {
        return Ok(None);
    };
    let answer = tokio::time::timeout(wait, async {
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery?;
            if delivery.properties.correlation_id().as_ref().map(|c| c.as_str()) == Some(correlation.as_str()) {
                return Ok::<_, anyhow::Error>(Some(serde_json::from_slice(&delivery.data)?));
            }
        }
        Ok(None)
    })
    .await
    .with_context(|| {
        format!(
            "no answer within {wait:?}; is the worker running with prefix '{}'?",
            settings.amqp.prefix
        )
    })??;
    let _ = connection.close(200, "done".into()).await;
    Ok(answer)
}
