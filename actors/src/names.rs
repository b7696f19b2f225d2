//! The one naming rule for collections, documents, peers and op ids, checked in one place.
//!
//! A name is 1 to [`MAX_NAME_BYTES`] bytes of UTF-8 with no control characters and no
//! invisible formatting characters. The bound keeps keys small; the bans keep names printable
//! and honest in logs, URLs and UIs: a bidirectional override makes `admin` + U+202E +
//! `txt.exe` display as `adminexe.txt`, and a zero-width character makes two names that look
//! the same differ.

use crate::error::{Error, Result};

/// Longest accepted name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// Whether `c` changes how the text around it is displayed without being visible itself:
/// the bidirectional embeddings and overrides U+202A–U+202E, the bidirectional isolates
/// U+2066–U+2069, the zero-width characters and direction marks U+200B–U+200F, and the
/// byte-order mark / zero-width no-break space U+FEFF. Also the line and paragraph separators
/// U+2028 and U+2029: not control characters, yet they break a log line as a newline does.
pub fn is_spoofing_format_char(c: char) -> bool {
    matches!(
        c,
        '\u{2028}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200B}'..='\u{200F}' | '\u{FEFF}'
    )
}

/// Checks `value` against the naming rule; `field` names it in the error.
///
/// # Errors
/// [`Error::InvalidName`] when empty, too long, or containing a control character or an
/// invisible formatting character (see [`is_spoofing_format_char`]).
pub fn validate(field: &'static str, value: &str) -> Result<()> {
    let reason = if value.is_empty() {
        "must not be empty".to_string()
    } else if value.len() > MAX_NAME_BYTES {
        format!("is {} bytes, longer than {MAX_NAME_BYTES}", value.len())
    } else if value.chars().any(char::is_control) {
        "must not contain control characters".to_string()
    } else if let Some((at, c)) = value
        .chars()
        .enumerate()
        .find(|(_, c)| is_spoofing_format_char(*c))
    {
        format!(
            "must not contain invisible or bidirectional formatting characters \
             (U+{:04X} at character {at})",
            c as u32
        )
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
            // Just outside the banned ranges: still fine.
            ("a\u{200A}b", true), // hair space, visible width
            ("a\u{2010}b", true), // hyphen
            ("a\u{2027}b", true), // hyphenation point, just before the separators
            ("a\u{2065}b", true), // unassigned, next to the isolates
            ("a\u{206A}b", true), // deprecated, next to the isolates
            ("a\u{202F}b", true), // narrow no-break space, just after the overrides
            ("a\u{FEFE}b", true),
            ("a\u{FEFF}", false),
            ("\u{FEFF}todos", false),
            // Line and paragraph separators.
            ("a\u{2028}b", false),
            ("a\u{2029}b", false),
            // Bidi embeddings and overrides, both ends of the range.
            ("admin\u{202E}txt.exe", false),
            ("a\u{202A}b", false),
            ("a\u{202B}b", false),
            ("a\u{202C}b", false),
            ("a\u{202D}b", false),
            // Bidi isolates.
            ("a\u{2066}b", false),
            ("a\u{2067}b", false),
            ("a\u{2068}b", false),
            ("a\u{2069}b", false),
            // Zero-width characters and direction marks.
            ("a\u{200B}b", false),
            ("a\u{200C}b", false),
            ("a\u{200D}b", false),
            ("a\u{200E}b", false),
            ("a\u{200F}b", false),
        ];
        for (name, ok) in cases {
            assert_eq!(validate("collection", name).is_ok(), *ok, "{name:?}");
        }
    }

    #[test]
    fn spoofing_error_names_the_character() {
        let err = validate("documentId", "ab\u{202E}c").unwrap_err();
        assert_eq!(err.code(), "invalid_name");
        let text = err.to_string();
        assert!(text.contains("documentId"), "{text}");
        assert!(text.contains("U+202E at character 2"), "{text}");
    }
}
