//! Identifier rules shared by every object a merchant names.

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
