//! Rules for usernames and room names.
//!
//! GarinChat only required 3 bytes and accepted a 10 000-character name. Here:
//! - a **room** is 3..=`ROOM_MAX_CHARS` ASCII letters, digits, `_`, `-`, `.` or `:`, so it is
//!   safe in logs, metrics-free, and usable as a Redis channel suffix unchanged;
//! - a **username** a client chooses is 3..=`USERNAME_MAX_CHARS` characters of letters, marks,
//!   digits, space, `_`, `-` or `.`, in Unicode NFC form (so two names that look the same are the
//!   same string), with no leading, trailing or doubled space;
//! - a display name taken from a **token** comes from the identity provider, so it is cleaned
//!   rather than refused: control and format characters dropped, NFC, truncated.

use unicode_normalization::{is_nfc, UnicodeNormalization};

use crate::config::{at_least, Config, ConfigError};

/// Usernames and rooms shorter than this are refused, as GarinChat does.
pub(crate) const MIN_NAME_CHARS: usize = 3;

/// How long names may be, and whose display name is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NameRules {
    pub username_max_chars: usize,
    pub room_max_chars: usize,
    /// GarinChat's behaviour: show the `username` the client sends in `join`.
    pub trust_client_username: bool,
}

impl NameRules {
    pub(crate) fn from_env(env: &Config) -> Result<NameRules, ConfigError> {
        Ok(NameRules {
            username_max_chars: at_least(
                "USERNAME_MAX_CHARS",
                env.username_max_chars,
                MIN_NAME_CHARS,
            )?,
            room_max_chars: at_least("ROOM_MAX_CHARS", env.room_max_chars, MIN_NAME_CHARS)?,
            trust_client_username: env.trust_client_username,
        })
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NameError {
    #[error("too short")]
    TooShort,
    #[error("too long")]
    TooLong,
    #[error("character not allowed")]
    BadCharacter,
    #[error("not in Unicode NFC form")]
    NotNormalized,
    #[error("leading, trailing or doubled space")]
    BadSpacing,
}

fn check_length(count: usize, max: usize) -> Result<(), NameError> {
    if count < MIN_NAME_CHARS {
        Err(NameError::TooShort)
    } else if count > max {
        Err(NameError::TooLong)
    } else {
        Ok(())
    }
}

pub(crate) fn validate_room(room: &str, max_chars: usize) -> Result<(), NameError> {
    // Length first: a 100 KiB room name is refused without scanning it all.
    check_length(room.len().min(max_chars + 1), max_chars)?;
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':');
    if room.bytes().all(allowed) {
        Ok(())
    } else {
        Err(NameError::BadCharacter)
    }
}

pub(crate) fn validate_username(name: &str, max_chars: usize) -> Result<(), NameError> {
    check_length(name.chars().take(max_chars + 1).count(), max_chars)?;
    let allowed = |c: char| c.is_alphanumeric() || is_mark(c) || matches!(c, ' ' | '_' | '-' | '.');
    if !name.chars().all(allowed) {
        return Err(NameError::BadCharacter);
    }
    if name.starts_with(' ') || name.ends_with(' ') || name.contains("  ") {
        return Err(NameError::BadSpacing);
    }
    if !is_nfc(name) {
        return Err(NameError::NotNormalized);
    }
    Ok(())
}

/// Combining marks (accents written as separate code points); allowed inside NFC names.
fn is_mark(c: char) -> bool {
    matches!(c as u32, 0x0300..=0x036F | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF | 0xFE20..=0xFE2F)
}

/// Cleans a display name from a token claim; `None` when nothing usable is left.
pub(crate) fn sanitize_display_name(raw: &str, max_chars: usize) -> Option<String> {
    let cleaned: String = raw
        .nfc()
        .filter(|c| !c.is_control() && !is_format_char(*c))
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let truncated: String = cleaned.chars().take(max_chars).collect();
    (!truncated.is_empty()).then_some(truncated)
}

/// Invisible format characters (bidi overrides, zero-width joiners) used to spoof names.
fn is_format_char(c: char) -> bool {
    matches!(c as u32, 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F | 0xFEFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{assert_names, env};

    #[test]
    fn rules_at_and_past_their_limits() {
        let rules = NameRules::from_env(&env(&[
            ("USERNAME_MAX_CHARS", "3"),
            ("ROOM_MAX_CHARS", "3"),
        ]))
        .unwrap();
        assert_eq!((rules.username_max_chars, rules.room_max_chars), (3, 3));
        assert_names(
            NameRules::from_env(&env(&[("USERNAME_MAX_CHARS", "2")])),
            "USERNAME_MAX_CHARS",
        );
        assert_names(
            NameRules::from_env(&env(&[("ROOM_MAX_CHARS", "2")])),
            "ROOM_MAX_CHARS",
        );
    }

    #[test]
    fn rooms() {
        assert_eq!(validate_room("lobby", 64), Ok(()));
        assert_eq!(validate_room("team-1.dev:ops_x", 64), Ok(()));
        assert_eq!(validate_room("ab", 64), Err(NameError::TooShort));
        assert_eq!(validate_room(&"a".repeat(64), 64), Ok(()));
        assert_eq!(validate_room(&"a".repeat(65), 64), Err(NameError::TooLong));
        assert_eq!(validate_room("lob by", 64), Err(NameError::BadCharacter));
        assert_eq!(validate_room("lobby\n", 64), Err(NameError::BadCharacter));
        assert_eq!(validate_room("lobbé", 64), Err(NameError::BadCharacter));
    }

    #[test]
    fn usernames() {
        assert_eq!(validate_username("bob", 32), Ok(()));
        assert_eq!(validate_username("José María", 32), Ok(()));
        assert_eq!(validate_username("李小龙", 32), Ok(()));
        assert_eq!(validate_username("bo", 32), Err(NameError::TooShort));
        assert_eq!(validate_username(&"é".repeat(32), 32), Ok(()));
        assert_eq!(
            validate_username(&"é".repeat(33), 32),
            Err(NameError::TooLong)
        );
        assert_eq!(
            validate_username("bob\u{0}", 32),
            Err(NameError::BadCharacter)
        );
        assert_eq!(
            validate_username("bob\u{202E}x", 32),
            Err(NameError::BadCharacter)
        );
        assert_eq!(
            validate_username("<script>", 32),
            Err(NameError::BadCharacter)
        );
        assert_eq!(validate_username(" bob", 32), Err(NameError::BadSpacing));
        assert_eq!(validate_username("bo  b", 32), Err(NameError::BadSpacing));
        // "é" as e + combining acute is the NFD spelling of an NFC name.
        assert_eq!(
            validate_username("jose\u{301}", 32),
            Err(NameError::NotNormalized)
        );
    }

    #[test]
    fn token_names_are_cleaned() {
        assert_eq!(
            sanitize_display_name(" Ann\u{202E}  Lee\n", 32).as_deref(),
            Some("Ann Lee")
        );
        assert_eq!(
            sanitize_display_name("jose\u{301}", 32).as_deref(),
            Some("josé")
        );
        assert_eq!(
            sanitize_display_name(&"x".repeat(50), 32).unwrap().len(),
            32
        );
        assert_eq!(sanitize_display_name("\u{200B}\t", 32), None);
    }
}
