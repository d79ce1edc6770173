//! The inbound envelope: tenant, identity, reply address and size.

use lapin::BasicProperties;
use lapin::types::AMQPValue;

use crate::domain::ids::check_id;
use crate::error::{ErrorCode, Rejection, short};
use crate::settings::AuthSettings;

/// Header naming the tenant of a message.
pub const MERCHANT_HEADER: &str = "x-merchantid";
/// The header that places a usage message on a shard (`usage.shards` > 1):
/// upstreams set it to the message's billing execution id, so that one
/// execution's usage is counted by one worker at a time. Optional: messages
/// without it are spread by their `message_id`.
pub const EXECUTION_HEADER: &str = "x-execution-id";

/// What the worker needs to know about a message besides its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Envelope {
    pub merchant_id: String,
    pub message_id: Option<String>,
    pub reply_to: Option<String>,
    pub correlation_id: Option<String>,
}

/// The direct reply-to pseudo queue of RabbitMQ (and its per-channel names).
pub(crate) const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Whether `queue` may receive answers: the direct reply-to pseudo queue,
/// or a queue whose name starts with `reply_prefix`. Anything else (another
/// tenant's queue, the worker's own queues) never gets a message from a
/// sender's say-so.
pub(crate) fn is_reply_queue(queue: &str, reply_prefix: &str) -> bool {
    queue.starts_with(DIRECT_REPLY_TO) || (!reply_prefix.is_empty() && queue.starts_with(reply_prefix))
}

/// Where and how to answer, known even when the rest of the message is bad:
/// only a reply queue (see [`is_reply_queue`]) is ever answered.
pub(crate) fn reply_address(props: &BasicProperties, reply_prefix: &str) -> Option<(String, Option<String>)> {
    let reply_to = props.reply_to().as_ref()?.as_str().trim();
    if reply_to.is_empty() || !is_reply_queue(reply_to, reply_prefix) {
        return None;
    }
    let correlation = props.correlation_id().as_ref().map(|c| c.as_str().to_string());
    Some((reply_to.to_string(), correlation))
}

/// Reads a string header, whichever AMQP string type the publisher used.
pub(crate) fn header_str(props: &BasicProperties, name: &str) -> Option<String> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        AMQPValue::ByteArray(b) => Some(String::from_utf8_lossy(b.as_slice()).into_owned()),
        _ => None,
    }
}

/// Checks size, tenant, (when enabled) the broker-validated user, and for
/// roles that answer (`reply_prefix` given) that `reply_to` is a reply queue.
pub(crate) fn open(
    props: &BasicProperties,
    body: &[u8],
    max_bytes: usize,
    auth: &AuthSettings,
    reply_prefix: Option<&str>,
) -> Result<Envelope, Rejection> {
    if body.len() > max_bytes {
        return Err(Rejection::new(
            ErrorCode::MessageTooLarge,
            format!("body is {} bytes, more than the limit of {max_bytes}", body.len()),
        ));
    }
    if let Some(content_type) = props.content_type().as_ref().map(|c| c.as_str().to_ascii_lowercase())
        && !content_type.is_empty()
        && !content_type.starts_with("application/json")
    {
        return Err(Rejection::field(
            "content_type",
            format_args!("must be application/json, got '{}'", short(&content_type)),
        ));
    }
    let merchant_id = header_str(props, MERCHANT_HEADER)
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            Rejection::new(
                ErrorCode::MissingMerchant,
                format!("header {MERCHANT_HEADER} is required and must be a non-empty string"),
            )
        })?;
    if let Err(problem) = check_id(&merchant_id) {
        return Err(Rejection::new(
            ErrorCode::MissingMerchant,
            format!("header {MERCHANT_HEADER} {problem}"),
        ));
    }
    if auth.enabled {
        let user = props.user_id().as_ref().map(|u| u.as_str().to_string());
        let allowed = user
            .as_deref()
            .and_then(|u| auth.users.get(u))
            .is_some_and(|merchants| merchants.iter().any(|m| m == &merchant_id));
        if !allowed {
            return Err(Rejection::new(
                ErrorCode::Forbidden,
                format!(
                    "user_id {} may not act for {MERCHANT_HEADER} {merchant_id}",
                    user.as_deref()
                        .map_or("(none)".to_string(), |u| format!("'{}'", short(u)))
                ),
            ));
        }
    }
    let message_id = props
        .message_id()
        .as_ref()
        .map(|m| m.as_str().trim().to_string())
        .filter(|m| !m.is_empty());
    // Roles that never answer (`reply_prefix` None) ignore reply_to.
    let reply_prefix = reply_prefix.unwrap_or_default();
    if let Some(to) = props.reply_to().as_ref().map(|r| r.as_str().trim())
        && !to.is_empty()
        && !reply_prefix.is_empty()
        && !is_reply_queue(to, reply_prefix)
    {
        return Err(Rejection::field(
            "reply_to",
            format_args!(
                "'{}' is not a reply queue: use {DIRECT_REPLY_TO} or a queue whose name starts with '{}'",
                short(to),
                short(reply_prefix)
            ),
        ));
    }
    let (reply_to, correlation_id) = match reply_address(props, reply_prefix) {
        Some((to, correlation)) => (Some(to), correlation),
        None => (None, props.correlation_id().as_ref().map(|c| c.as_str().to_string())),
    };
    Ok(Envelope {
        merchant_id,
        message_id,
        reply_to,
        correlation_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldTable;
    use std::collections::BTreeMap;

    fn props(merchant: Option<&str>) -> BasicProperties {
        let mut headers = FieldTable::default();
        if let Some(m) = merchant {
            headers.insert(MERCHANT_HEADER.into(), AMQPValue::LongString(m.into()));
        }
        BasicProperties::default().with_headers(headers)
    }

    fn no_auth() -> AuthSettings {
        AuthSettings {
            enabled: false,
            users: BTreeMap::new(),
        }
    }

    #[test]
    fn reads_the_tenant() {
        let env = open(
            &props(Some("m1")).with_message_id("abc".into()),
            b"{}",
            10,
            &no_auth(),
            Some("amq.gen-"),
        )
        .expect("ok");
        assert_eq!(env.merchant_id, "m1");
        assert_eq!(env.message_id.as_deref(), Some("abc"));
    }

    #[test]
    fn rejects_missing_tenant_and_large_bodies() {
        assert_eq!(
            open(&props(None), b"{}", 10, &no_auth(), Some("amq.gen-"))
                .expect_err("x")
                .code,
            ErrorCode::MissingMerchant
        );
        assert_eq!(
            open(&props(Some(" ")), b"{}", 10, &no_auth(), Some("amq.gen-"))
                .expect_err("x")
                .code,
            ErrorCode::MissingMerchant
        );
        assert_eq!(
            open(&props(Some("m1")), &[b' '; 11], 10, &no_auth(), Some("amq.gen-"))
                .expect_err("x")
                .code,
            ErrorCode::MessageTooLarge
        );
    }

    #[test]
    fn answers_go_only_to_reply_queues() {
        let to = |q: &str| props(Some("m1")).with_reply_to(q.into());
        assert!(open(&to("amq.gen-abc"), b"{}", 10, &no_auth(), Some("amq.gen-")).is_ok());
        assert!(
            open(
                &to("amq.rabbitmq.reply-to.g1h2"),
                b"{}",
                10,
                &no_auth(),
                Some("amq.gen-")
            )
            .is_ok()
        );
        let err = open(&to("billing.usage"), b"{}", 10, &no_auth(), Some("amq.gen-")).expect_err("not a reply queue");
        assert_eq!(err.code, ErrorCode::InvalidField);
        assert!(err.message.starts_with("reply_to"), "{}", err.message);
        assert_eq!(reply_address(&to("billing.usage"), "amq.gen-"), None);
        assert!(reply_address(&to("amq.gen-abc"), "amq.gen-").is_some());
    }

    #[test]
    fn content_type_is_json_or_absent() {
        let json = props(Some("m1")).with_content_type("application/json; charset=utf-8".into());
        assert!(open(&json, b"{}", 10, &no_auth(), Some("amq.gen-")).is_ok());
        let text = props(Some("m1")).with_content_type("text/plain".into());
        let err = open(&text, b"{}", 10, &no_auth(), Some("amq.gen-")).expect_err("not json");
        assert!(err.message.starts_with("content_type"), "{}", err.message);
    }

    #[test]
    fn authentication_maps_users_to_merchants() {
        let auth = AuthSettings {
            enabled: true,
            users: BTreeMap::from([("svc".to_string(), vec!["m1".to_string()])]),
        };
        assert!(
            open(
                &props(Some("m1")).with_user_id("svc".into()),
                b"{}",
                10,
                &auth,
                Some("amq.gen-")
            )
            .is_ok()
        );
        let err = open(
            &props(Some("m2")).with_user_id("svc".into()),
            b"{}",
            10,
            &auth,
            Some("amq.gen-"),
        )
        .expect_err("other merchant");
        assert_eq!(err.code, ErrorCode::Forbidden);
        assert_eq!(
            open(&props(Some("m1")), b"{}", 10, &auth, Some("amq.gen-"))
                .expect_err("no user")
                .code,
            ErrorCode::Forbidden
        );
    }
}
