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

use icu_properties::props::{
    BinaryProperty, DefaultIgnorableCodePoint, GeneralCategory, WhiteSpace,
};
use icu_properties::CodePointMapData;
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
    #[error("nothing visible")]
    Blank,
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
    let allowed = |c: char| {
        !is_invisible(c)
            && (c.is_alphanumeric() || is_mark(c) || matches!(c, ' ' | '_' | '-' | '.'))
    };
    if !name.chars().all(allowed) {
        return Err(NameError::BadCharacter);
    }
    if name.starts_with(' ') || name.ends_with(' ') || name.contains("  ") {
        return Err(NameError::BadSpacing);
    }
    if !is_nfc(name) {
        return Err(NameError::NotNormalized);
    }
    if !name.chars().any(char::is_alphanumeric) {
        // Marks, dots and dashes alone look like nothing, or like anybody.
        return Err(NameError::Blank);
    }
    Ok(())
}

/// Combining marks (accents written as separate code points); allowed inside NFC names.
fn is_mark(c: char) -> bool {
    matches!(
        CodePointMapData::<GeneralCategory>::new().get(c),
        GeneralCategory::NonspacingMark
            | GeneralCategory::SpacingMark
            | GeneralCategory::EnclosingMark
    )
}

/// Characters that show nothing, by their Unicode properties: default-ignorable code points
/// (soft hyphen, bidi and Arabic letter marks, zero-width joiners, variation selectors, tag
/// characters, Hangul fillers), format and control characters, and private-use, surrogate or
/// unassigned code points.
fn is_invisible(c: char) -> bool {
    DefaultIgnorableCodePoint::for_char(c)
        || matches!(
            CodePointMapData::<GeneralCategory>::new().get(c),
            GeneralCategory::Format
                | GeneralCategory::Control
                | GeneralCategory::PrivateUse
                | GeneralCategory::Surrogate
                | GeneralCategory::Unassigned
        )
}

/// Cleans a display name from a token claim: invisible characters dropped, white space of any
/// kind made one space, NFC, truncated. `None` when nothing visible is left.
pub(crate) fn sanitize_display_name(raw: &str, max_chars: usize) -> Option<String> {
    let visible: String = raw
        .nfc()
        .map(|c| if WhiteSpace::for_char(c) { ' ' } else { c })
        .filter(|c| !is_invisible(*c))
        .collect();
    let cleaned = visible
        .split(' ')
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let truncated: String = cleaned.chars().take(max_chars).collect();
    let truncated = truncated.trim_end().to_owned();
    truncated.chars().any(|c| !is_mark(c)).then_some(truncated)
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
        assert_eq!(
            sanitize_display_name("Ann\nLee", 32).as_deref(),
            Some("Ann Lee")
        );
    }

    /// Invisible or blank-looking characters that got through a hand-written list.
    const INVISIBLE: [char; 9] = [
        '\u{00AD}',  // soft hyphen
        '\u{061C}',  // Arabic letter mark
        '\u{E0041}', // tag latin capital A
        '\u{E007F}', // cancel tag
        '\u{115F}',  // Hangul choseong filler
        '\u{1160}',  // Hangul jungseong filler
        '\u{3164}',  // Hangul filler
        '\u{FFA0}',  // halfwidth Hangul filler
        '\u{FE0F}',  // variation selector
    ];

    #[test]
    fn invisible_characters_are_removed_from_token_names_by_property() {
        for c in INVISIBLE {
            assert_eq!(
                sanitize_display_name(&format!("An{c}n"), 32).as_deref(),
                Some("Ann"),
                "U+{:04X}",
                c as u32
            );
            assert_eq!(
                sanitize_display_name(&format!("{c}{c}{c}"), 32),
                None,
                "blank after cleaning: U+{:04X}",
                c as u32
            );
        }
        // Any kind of white space is one space.
        assert_eq!(
            sanitize_display_name("Ann\u{3000}\u{2028}Lee", 32).as_deref(),
            Some("Ann Lee")
        );
        assert_eq!(sanitize_display_name("\u{301}\u{301}", 32), None);
    }

    #[test]
    fn chosen_usernames_with_invisible_characters_are_refused() {
        for c in INVISIBLE {
            assert_eq!(
                validate_username(&format!("bob{c}"), 32),
                Err(NameError::BadCharacter),
                "U+{:04X}",
                c as u32
            );
        }
        assert_eq!(
            validate_username("\u{3164}\u{3164}\u{3164}", 32),
            Err(NameError::BadCharacter)
        );
        assert_eq!(validate_username("...", 32), Err(NameError::Blank));
        assert_eq!(validate_username("a..", 32), Ok(()));
    }
}
