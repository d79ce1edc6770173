//! Identifier rules shared by every object a merchant names.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Longest identifier accepted from a merchant.
pub(crate) const MAX_ID_LEN: usize = 100;

/// Checks a merchant-given identifier: 1 to 100 characters, no white space
/// or control characters. Returns the problem as a phrase to follow the field name.
pub(crate) fn check_id(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.chars().count() > MAX_ID_LEN {
        return Err(format!("must be at most {MAX_ID_LEN} characters"));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain white space or control characters".into());
    }
    Ok(())
}

/// The key a usage event is counted under, forever: the first 16 bytes of
/// the SHA-256 of the merchant id's length in bytes, a colon, the merchant
/// id and the event id (the length keeps `("ab", "c")` apart from
/// `("a", "bc")`). The SQL function `usage_event_key` computes the same.
pub(crate) fn usage_event_key(merchant_id: &str, event_id: &str) -> Uuid {
    let digest = Sha256::new()
        .chain_update(merchant_id.len().to_string())
        .chain_update(b":")
        .chain_update(merchant_id)
        .chain_update(event_id)
        .finalize();
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    Uuid::from_bytes(key)
}

/// A new billing execution id: 32 lower-case hex digits, as the product shows them.
pub(crate) fn new_execution_id() -> String {
    Uuid::new_v4().simple().to_string()
}

/// A new webhook id, time-ordered so ids sort roughly by creation.
pub(crate) fn new_event_id() -> String {
    format!("evt_{}", Uuid::now_v7().simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_keys_keep_merchant_and_event_apart() {
        assert_ne!(usage_event_key("ab", "c"), usage_event_key("a", "bc"));
        assert_eq!(usage_event_key("m1", "e1"), usage_event_key("m1", "e1"));
        assert_ne!(usage_event_key("m1", "e1"), usage_event_key("m2", "e1"));
    }

    #[test]
    fn id_rules() {
        assert!(check_id("cth_gjZV6jYaYxLDLu96").is_ok());
        assert!(check_id("").is_err());
        assert!(check_id("a b").is_err());
        assert!(check_id(&"x".repeat(101)).is_err());
        assert!(check_id(&"x".repeat(100)).is_ok());
    }

    #[test]
    fn generated_ids_have_their_shape() {
        let id = new_execution_id();
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(new_event_id().starts_with("evt_"));
    }
}
