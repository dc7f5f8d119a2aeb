//! A denylist of token ids (`jti`) and subjects, from `REVOCATION_FILE`, re-read when it
//! changes (checked every `HOUSEKEEPING_INTERVAL_MS`), so revoking needs no restart.
//!
//! One entry per line; `#` starts a comment:
//!
//! ```text
//! jti 5f2b8c1e-...            # this token, until it expires by itself
//! sub auth0|1234 1767225600   # this user, until the given Unix time
//! ```
//!
//! A revoked token is refused at auth and at refresh (4002). Sessions already open end at their
//! token's expiry (4013), which identity providers keep short.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
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
}

impl Revocations {
    /// Loads the file; it must exist (a wrong path would silently revoke nothing).
    pub(crate) fn load(path: &Path) -> Result<Revocations, ConfigError> {
        let revocations = Revocations {
            path: path.to_owned(),
            entries: RwLock::default(),
            modified: RwLock::default(),
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
        let entries = parse(&text)?;
        info!(
            jti = entries.jti.len(),
            sub = entries.sub.len(),
            "revocation list loaded"
        );
        *self.entries.write().expect("revocations lock") = entries;
        *self.modified.write().expect("revocations lock") = Some(modified);
        Ok(())
    }
}

fn parse(text: &str) -> Result<Entries, String> {
    let mut entries = Entries::default();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (kind, value) = (fields.next(), fields.next());
        let until = match fields.next() {
            None => None,
            Some(time) => Some(
                time.parse::<u64>()
                    .map_err(|_| format!("line {}: expiry is not a Unix time", number + 1))?,
            ),
        };
        let map = match (kind, value) {
            (Some("jti"), Some(_)) => &mut entries.jti,
            (Some("sub"), Some(_)) => &mut entries.sub,
            _ => {
                return Err(format!(
                    "line {}: expected `jti VALUE [UNTIL]` or `sub VALUE [UNTIL]`",
                    number + 1
                ))
            }
        };
        map.insert(value.unwrap_or_default().to_owned(), until);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_revoke_until_they_expire() {
        let dir = std::env::temp_dir().join(format!("palisade-revocations-{}", std::process::id()));
        std::fs::write(&dir, "# revoked\njti abc\nsub bob 1000 # until then\n").unwrap();
        let list = Revocations::load(&dir).unwrap();
        assert!(list.is_revoked(Some("abc"), "alice", 5000));
        assert!(!list.is_revoked(Some("abd"), "alice", 5000));
        assert!(list.is_revoked(None, "bob", 999));
        assert!(!list.is_revoked(None, "bob", 1000));
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn bad_lines_are_errors() {
        assert!(parse("jti").is_err());
        assert!(parse("kid x").is_err());
        assert!(parse("sub x tomorrow").is_err());
    }
}
