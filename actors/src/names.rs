//! The one naming rule for collections, documents, peers and op ids, checked in one place.
//!
//! A name is 1 to [`MAX_NAME_BYTES`] bytes of UTF-8 with no control characters. The bound keeps
//! keys small; the control-character ban keeps names printable in logs and URLs.

use crate::error::{Error, Result};

/// Longest accepted name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// Checks `value` against the naming rule; `field` names it in the error.
///
/// # Errors
/// [`Error::InvalidName`] when empty, too long, or containing a control character.
pub fn validate(field: &'static str, value: &str) -> Result<()> {
    let reason = if value.is_empty() {
        "must not be empty".to_string()
    } else if value.len() > MAX_NAME_BYTES {
        format!("is {} bytes, longer than {MAX_NAME_BYTES}", value.len())
    } else if value.chars().any(char::is_control) {
        "must not contain control characters".to_string()
    } else {
        return Ok(());
    };
    Err(Error::InvalidName { field, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naming_rule_table() {
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        let max = "x".repeat(MAX_NAME_BYTES);
        let cases: &[(&str, bool)] = &[
            ("todos", true),
            ("a/b c-é", true),
            (&max, true),
            ("", false),
            (&long, false),
            ("a\nb", false),
            ("\u{0}", false),
        ];
        for (name, ok) in cases {
            assert_eq!(validate("collection", name).is_ok(), *ok, "{name:?}");
        }
    }
}
