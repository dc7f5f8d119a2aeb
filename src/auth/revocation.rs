//! A denylist of token ids (`jti`) and subjects, from `REVOCATION_FILE`, re-read when it
//! changes (checked every `HOUSEKEEPING_INTERVAL_MS`), so revoking needs no restart.
//!
//! One entry per line: a kind (`jti` or `sub`), a value, and optionally the Unix time (seconds)
//! at which the revocation ends. A line whose first non-blank character is `#` is a comment;
//! a `#` anywhere else is part of the text. A value that holds spaces, or starts with `"`, is
//! written in double quotes, inside which `\"` is a quote and `\\` a backslash:
//!
//! ```text
//! # this token, until it expires by itself
//! jti 5f2b8c1e-...
//! # this user, until the given Unix time
//! sub auth0|1234 1767225600
//! sub ops#1
//! sub "Jane Doe"
//! ```
//!
//! A line that does not follow the format is skipped with a warning naming its number (and
//! counted in `palisade_revocation_invalid_lines`); every other line applies.
//!
//! A revoked token is refused at auth and at refresh (4002). Sessions already open end at their
//! token's expiry (4013), which identity providers keep short.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;
use std::time::SystemTime;

use tracing::{info, warn};

use crate::config::ConfigError;

#[derive(Default)]
struct Entries {
    /// Value → revoked until (Unix seconds), or for ever.
    jti: HashMap<String, Option<u64>>,
    sub: HashMap<String, Option<u64>>,
}

pub(crate) struct Revocations {
    path: PathBuf,
    entries: RwLock<Entries>,
    modified: RwLock<Option<SystemTime>>,
    /// Lines of the last read that were not entries.
    invalid_lines: AtomicUsize,
}

impl Revocations {
    /// Loads the file; it must exist (a wrong path would silently revoke nothing).
    pub(crate) fn load(path: &Path) -> Result<Revocations, ConfigError> {
        let revocations = Revocations {
            path: path.to_owned(),
            entries: RwLock::default(),
            modified: RwLock::default(),
            invalid_lines: AtomicUsize::new(0),
        };
        revocations.reload().map_err(|err| ConfigError::Invalid {
            var: "REVOCATION_FILE",
            why: err,
        })?;
        Ok(revocations)
    }

    /// Whether a token with this `jti` and subject is revoked at `now` (Unix seconds).
    pub(crate) fn is_revoked(&self, jti: Option<&str>, sub: &str, now: u64) -> bool {
        let entries = self.entries.read().expect("revocations lock");
        let active = |until: &Option<u64>| until.is_none_or(|until| now < until);
        entries.sub.get(sub).is_some_and(active)
            || jti.is_some_and(|jti| entries.jti.get(jti).is_some_and(active))
    }

    /// Lines of the file's last read that were skipped.
    pub(crate) fn invalid_lines(&self) -> usize {
        self.invalid_lines.load(Ordering::Relaxed)
    }

    /// Re-reads the file if it changed since the last read. Errors keep the old list.
    pub(crate) fn reload_if_changed(&self) {
        let modified = std::fs::metadata(&self.path)
            .and_then(|meta| meta.modified())
            .ok();
        if modified.is_some() && modified == *self.modified.read().expect("revocations lock") {
            return;
        }
        if let Err(err) = self.reload() {
            warn!(path = %self.path.display(), err, "revocation file not reloaded; keeping the old list");
        }
    }

    fn reload(&self) -> Result<(), String> {
        let modified = std::fs::metadata(&self.path)
            .and_then(|meta| meta.modified())
            .map_err(|err| err.to_string())?;
        let text = std::fs::read_to_string(&self.path).map_err(|err| err.to_string())?;
        let (entries, invalid) = parse(&text);
        for line in &invalid {
            warn!(path = %self.path.display(), line, "revocation file line skipped: not `jti VALUE [UNTIL]` or `sub VALUE [UNTIL]`");
        }
        self.invalid_lines.store(invalid.len(), Ordering::Relaxed);
        info!(
            jti = entries.jti.len(),
            sub = entries.sub.len(),
            invalid = invalid.len(),
            "revocation list loaded"
        );
        *self.entries.write().expect("revocations lock") = entries;
        *self.modified.write().expect("revocations lock") = Some(modified);
        Ok(())
    }
}

/// The entries of a revocation file, and the numbers of the lines that were not entries.
fn parse(text: &str) -> (Entries, Vec<usize>) {
    let mut entries = Entries::default();
    let mut invalid = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Some((kind, value, until)) => {
                let map = if kind == "jti" {
                    &mut entries.jti
                } else {
                    &mut entries.sub
                };
                map.insert(value, until);
            }
            None => invalid.push(index + 1),
        }
    }
    (entries, invalid)
}

/// `KIND VALUE [UNTIL]`; `None` for anything else.
fn parse_line(line: &str) -> Option<(&str, String, Option<u64>)> {
    let (kind, rest) = line.split_once(char::is_whitespace)?;
    if kind != "jti" && kind != "sub" {
        return None;
    }
    let (value, rest) = value(rest.trim_start())?;
    let until = match rest.trim() {
        "" => None,
        time => Some(time.parse::<u64>().ok()?),
    };
    (!value.is_empty()).then_some((kind, value, until))
}

/// A bare word, or a double-quoted string with `\"` and `\\` escapes; and what follows it.
fn value(text: &str) -> Option<(String, &str)> {
    let Some(quoted) = text.strip_prefix('"') else {
        let end = text.find(char::is_whitespace).unwrap_or(text.len());
        return Some((text[..end].to_owned(), &text[end..]));
    };
    let mut value = String::new();
    let mut chars = quoted.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => {
                let rest = &quoted[at + 1..];
                // The closing quote ends the value: only blanks may separate what follows.
                return (rest.is_empty() || rest.starts_with(char::is_whitespace))
                    .then_some((value, rest));
            }
            '\\' => match chars.next()? {
                (_, escaped @ ('"' | '\\')) => value.push(escaped),
                _ => return None,
            },
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_revoke_until_they_expire() {
        let dir = std::env::temp_dir().join(format!("palisade-revocations-{}", std::process::id()));
        std::fs::write(&dir, "# revoked\njti abc\n# until then\nsub bob 1000\n").unwrap();
        let list = Revocations::load(&dir).unwrap();
        assert!(list.is_revoked(Some("abc"), "alice", 5000));
        assert!(!list.is_revoked(Some("abd"), "alice", 5000));
        assert!(list.is_revoked(None, "bob", 999));
        assert!(!list.is_revoked(None, "bob", 1000));
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn a_hash_inside_a_value_is_text_and_quotes_allow_spaces() {
        let (entries, invalid) = parse(
            "sub ops#1\n  # a comment, indented\nsub \"Jane Doe\" 99\njti \"say \\\"hi\\\"\\\\\"\n",
        );
        assert_eq!(invalid, Vec::<usize>::new());
        assert_eq!(entries.sub.get("ops#1"), Some(&None));
        assert_eq!(entries.sub.get("ops"), None, "not cut at the #");
        assert_eq!(entries.sub.get("Jane Doe"), Some(&Some(99)));
        assert_eq!(entries.jti.get("say \"hi\"\\"), Some(&None));
    }

    #[test]
    fn bad_lines_are_skipped_by_number_and_the_rest_applies() {
        let (entries, invalid) = parse(
            "jti\nsub good-1\nkid x\nsub x tomorrow\nsub \"unclosed\nsub \"a\"b\nsub y 5 6\njti good-2\n",
        );
        assert_eq!(invalid, [1, 3, 4, 5, 6, 7]);
        assert!(entries.sub.contains_key("good-1") && entries.jti.contains_key("good-2"));
        assert_eq!(entries.sub.len() + entries.jti.len(), 2);
    }
}
