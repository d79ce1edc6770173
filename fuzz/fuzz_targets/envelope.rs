//! The inbound envelope: `protocol::envelope::open` (with tenant
//! authentication off and on), `envelope::header_str` and
//! `envelope::reply_address`, on message properties built from the input.
//!
//! Input layout, read through `arbitrary::Unstructured` (missing bytes read
//! as zero):
//!
//! | bytes | meaning |
//! |---|---|
//! | 1 | options: bit 0 the authentication settings list `user_id` for the merchant; bits 1-2 `max_bytes` (0: 1 MiB, 1: the body's length, 2: one less, 3: zero); bit 3 adds unrelated headers |
//! | 1 | the `x-merchantid` header: 0 missing, 1 long string, 2 short string, 3 byte array, 4 a number, 5 a long string under the name `X-MerchantId` |
//! | 1 | which properties are set: bit 0 `content_type`, 1 `message_id`, 2 `reply_to`, 3 `correlation_id`, 4 `user_id` |
//! | 6 × (1 + n) | a length byte and its bytes for: the merchant, `content_type`, `message_id`, `reply_to`, `correlation_id`, `user_id` (short strings: invalid UTF-8 replaced, cut at 255 bytes) |
//! | rest | the body |
//!
//! Invariants: `header_str` reads the header whichever string type carries
//! it; `reply_address` is the trimmed, non-empty `reply_to`; `open` applies
//! the README's checks in their order (size, content type, tenant, user) and
//! the first failure decides the code; an accepted envelope reports the
//! trimmed tenant, message id, reply address and correlation id; enabling
//! authentication only ever adds `FORBIDDEN`; every rejection keeps the shared
//! promises (message length and quotes).
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Unstructured;
use billing_worker::domain::ids::check_id;
use billing_worker::error::{ErrorCode, Rejection};
use billing_worker::protocol::envelope::{self, Envelope, MERCHANT_HEADER};
use billing_worker::settings::AuthSettings;
use billing_worker_fuzz::check_rejection;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, ByteArray, FieldTable, LongString, ShortString};
use libfuzzer_sys::fuzz_target;

const CODES: &[ErrorCode] = &[
    ErrorCode::MessageTooLarge,
    ErrorCode::InvalidField,
    ErrorCode::MissingMerchant,
    ErrorCode::Forbidden,
];

/// A user the authentication settings always list, for another merchant.
const OTHER_USER: &str = "svc-other";

fn field<'a>(u: &mut Unstructured<'a>) -> &'a [u8] {
    let len = usize::from(u.arbitrary::<u8>().unwrap_or(0));
    u.bytes(len.min(u.len())).unwrap_or(&[])
}

/// An AMQP short string as a broker delivers it: UTF-8, at most 255 bytes.
fn short(bytes: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(bytes).into_owned();
    while s.len() > 255 {
        s.pop();
    }
    s
}

struct Input<'a> {
    list_user: bool,
    max_bytes_choice: u8,
    extra_headers: bool,
    header_kind: u8,
    merchant: &'a [u8],
    content_type: Option<String>,
    message_id: Option<String>,
    reply_to: Option<String>,
    correlation_id: Option<String>,
    user_id: Option<String>,
    body: &'a [u8],
}

impl<'a> Input<'a> {
    fn read(data: &'a [u8]) -> Input<'a> {
        let mut u = Unstructured::new(data);
        let options = u.arbitrary::<u8>().unwrap_or(0);
        let header_kind = u.arbitrary::<u8>().unwrap_or(0) % 6;
        let present = u.arbitrary::<u8>().unwrap_or(0);
        let merchant = field(&mut u);
        let mut property = |bit: u8| {
            let bytes = field(&mut u);
            (present & (1 << bit) != 0).then(|| short(bytes))
        };
        let content_type = property(0);
        let message_id = property(1);
        let reply_to = property(2);
        let correlation_id = property(3);
        let user_id = property(4);
        Input {
            list_user: options & 1 != 0,
            max_bytes_choice: (options >> 1) & 3,
            extra_headers: options & 8 != 0,
            header_kind,
            merchant,
            content_type,
            message_id,
            reply_to,
            correlation_id,
            user_id,
            body: u.take_rest(),
        }
    }

    fn max_bytes(&self) -> usize {
        match self.max_bytes_choice {
            0 => 1 << 20,
            1 => self.body.len(),
            2 => self.body.len().saturating_sub(1),
            _ => 0,
        }
    }

    fn properties(&self) -> BasicProperties {
        let mut headers = FieldTable::default();
        if self.extra_headers {
            headers.insert("x-retry".into(), AMQPValue::LongInt(3));
            headers.insert(
                "x-tenant".into(),
                AMQPValue::LongString(LongString::from(self.merchant)),
            );
        }
        let merchant = match self.header_kind {
            1 => Some(AMQPValue::LongString(LongString::from(self.merchant))),
            2 => Some(AMQPValue::ShortString(ShortString::from(short(self.merchant)))),
            3 => Some(AMQPValue::ByteArray(ByteArray::from(self.merchant))),
            4 => Some(AMQPValue::LongLongInt(i64::from(self.merchant.len() as u32))),
            _ => None,
        };
        if let Some(value) = merchant {
            headers.insert(MERCHANT_HEADER.into(), value);
        } else if self.header_kind == 5 {
            headers.insert(
                "X-MerchantId".into(),
                AMQPValue::LongString(LongString::from(self.merchant)),
            );
        }
        let mut props = BasicProperties::default().with_headers(headers);
        let s = |v: &String| ShortString::from(v.clone());
        if let Some(v) = &self.content_type {
            props = props.with_content_type(s(v));
        }
        if let Some(v) = &self.message_id {
            props = props.with_message_id(s(v));
        }
        if let Some(v) = &self.reply_to {
            props = props.with_reply_to(s(v));
        }
        if let Some(v) = &self.correlation_id {
            props = props.with_correlation_id(s(v));
        }
        if let Some(v) = &self.user_id {
            props = props.with_user_id(s(v));
        }
        props
    }

    /// What `header_str` must read: the header's text, whichever string type.
    fn header_text(&self) -> Option<String> {
        match self.header_kind {
            1 | 3 => Some(String::from_utf8_lossy(self.merchant).into_owned()),
            2 => Some(short(self.merchant)),
            _ => None,
        }
    }

    /// The README's envelope checks, in order: the code of the first failure.
    fn expected(&self, auth: &AuthSettings) -> Result<(), ErrorCode> {
        if self.body.len() > self.max_bytes() {
            return Err(ErrorCode::MessageTooLarge);
        }
        if let Some(ct) = &self.content_type
            && !ct.is_empty()
            && !ct.to_ascii_lowercase().starts_with("application/json")
        {
            return Err(ErrorCode::InvalidField);
        }
        let merchant = self.header_text().map(|m| m.trim().to_string()).unwrap_or_default();
        if check_id(&merchant).is_err() {
            return Err(ErrorCode::MissingMerchant);
        }
        if auth.enabled {
            let allowed = self
                .user_id
                .as_ref()
                .and_then(|user| auth.users.get(user))
                .is_some_and(|merchants| merchants.contains(&merchant));
            if !allowed {
                return Err(ErrorCode::Forbidden);
            }
        }
        // Answers go only to reply queues.
        if let Some(to) = self.reply_to.as_ref().map(|r| r.trim())
            && !to.is_empty()
            && !envelope::is_reply_queue(to, REPLY_PREFIX)
        {
            return Err(ErrorCode::InvalidField);
        }
        Ok(())
    }

    fn inputs(&self) -> Vec<&[u8]> {
        let mut inputs = vec![self.merchant];
        for v in [
            &self.content_type,
            &self.message_id,
            &self.reply_to,
            &self.correlation_id,
            &self.user_id,
        ]
        .into_iter()
        .flatten()
        {
            inputs.push(v.as_bytes());
        }
        inputs
    }
}

fn check(input: &Input<'_>, props: &BasicProperties, auth: &AuthSettings, result: &Result<Envelope, Rejection>) {
    let which = if auth.enabled { "auth on" } else { "auth off" };
    let expected = input.expected(auth);
    let got = result.as_ref().map(|_| ()).map_err(|r| r.code);
    assert_eq!(
        got, expected,
        "[envelope] invariant `check-order` ({which}): open answered {got:?}, the README's checks give {expected:?}"
    );
    match result {
        Err(rejection) => check_rejection("envelope", rejection, CODES, &input.inputs()),
        Ok(env) => {
            let merchant = input.header_text().map(|m| m.trim().to_string());
            assert_eq!(
                Some(&env.merchant_id),
                merchant.as_ref(),
                "[envelope] invariant `accepted-fields` ({which}): merchant_id"
            );
            let message_id = input
                .message_id
                .as_ref()
                .map(|m| m.trim().to_string())
                .filter(|m| !m.is_empty());
            assert_eq!(
                env.message_id, message_id,
                "[envelope] invariant `accepted-fields` ({which}): message_id"
            );
            assert_eq!(
                env.reply_to,
                envelope::reply_address(props, REPLY_PREFIX).map(|(to, _)| to),
                "[envelope] invariant `accepted-fields` ({which}): reply_to"
            );
            assert_eq!(
                env.correlation_id, input.correlation_id,
                "[envelope] invariant `accepted-fields` ({which}): correlation_id"
            );
        }
    }
}

/// The prefix of reply queues, as the worker's default settings have it.
const REPLY_PREFIX: &str = "amq.gen-";

fuzz_target!(|data: &[u8]| {
    let input = Input::read(data);
    let props = input.properties();

    assert_eq!(
        envelope::header_str(&props, MERCHANT_HEADER),
        input.header_text(),
        "[envelope] invariant `header-read`: header kind {}",
        input.header_kind
    );
    let expected_reply = input
        .reply_to
        .as_ref()
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty() && envelope::is_reply_queue(r, REPLY_PREFIX))
        .map(|r| (r, input.correlation_id.clone()));
    assert_eq!(
        envelope::reply_address(&props, REPLY_PREFIX),
        expected_reply,
        "[envelope] invariant `reply-address`"
    );

    let off = AuthSettings {
        enabled: false,
        users: BTreeMap::new(),
    };
    let mut users = BTreeMap::from([(OTHER_USER.to_string(), vec!["m1".to_string()])]);
    if input.list_user
        && let (Some(user), Some(merchant)) = (&input.user_id, input.header_text())
    {
        users
            .entry(user.clone())
            .or_insert_with(Vec::new)
            .push(merchant.trim().to_string());
    }
    let on = AuthSettings { enabled: true, users };

    let max_bytes = input.max_bytes();
    let without = envelope::open(&props, input.body, max_bytes, &off, Some(REPLY_PREFIX));
    let with = envelope::open(&props, input.body, max_bytes, &on, Some(REPLY_PREFIX));
    check(&input, &props, &off, &without);
    check(&input, &props, &on, &with);
    match (&without, &with) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "[envelope] invariant `auth-adds-forbidden`: the envelopes differ"),
        (Ok(_), Err(r)) => assert_eq!(
            r.code,
            ErrorCode::Forbidden,
            "[envelope] invariant `auth-adds-forbidden`"
        ),
        // The reply_to check comes after authentication: with it on, a
        // refused user is named first.
        (Err(a), Err(b)) => assert!(
            a == b || b.code == ErrorCode::Forbidden,
            "[envelope] invariant `auth-adds-forbidden`: {a:?} without authentication, {b:?} with it"
        ),
        (Err(a), Ok(_)) => panic!(
            "[envelope] invariant `auth-adds-forbidden`: {} without authentication, accepted with it",
            a.code
        ),
    }
});
