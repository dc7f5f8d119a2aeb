//! Serving `wss://` directly: TLS on the public port with rustls, from `TLS_CERT_FILE` (the PEM
//! chain, leaf first) and `TLS_KEY_FILE` (its private key).
//!
//! TLS 1.2 and 1.3 only, with rustls's defaults (AEAD suites with forward secrecy; nothing
//! older exists in rustls). The pair is re-read when either file changes (checked every
//! `HOUSEKEEPING_INTERVAL_MS`): new connections get the new certificate, open sockets keep
//! theirs. A pair that does not load is refused at start (naming the variable) and, on a
//! reload, logged while the old pair stays in force.
//!
//! Admission happens before the handshake (the per-address cap, bans, the global cap, all at
//! accept), and the handshake counts against the time a connection has before it upgrades
//! (`HEADER_READ_TIMEOUT_MS`), so a slow or garbage handshake holds nothing for longer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::config::{invalid, Config, ConfigError};

/// Where the certificate and key are: `None` without `TLS_CERT_FILE` (plain `ws://`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TlsSettings {
    pub(crate) fn from_env(env: &Config) -> Result<Option<TlsSettings>, ConfigError> {
        let settings = match (&env.tls_cert_file, &env.tls_key_file) {
            (None, None) => return Ok(None),
            (Some(cert_file), Some(key_file)) => TlsSettings {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
            },
            (Some(_), None) => return Err(ConfigError::Missing("TLS_KEY_FILE".into())),
            (None, Some(_)) => return Err(ConfigError::Missing("TLS_CERT_FILE".into())),
        };
        // Checked now, so a wrong file stops the start naming its variable.
        load(&settings)?;
        Ok(Some(settings))
    }
}

/// The certificate in force, swapped when its files change.
#[derive(Debug)]
struct Current {
    key: Arc<CertifiedKey>,
    modified: (Option<SystemTime>, Option<SystemTime>),
}

/// Serves the current certificate to every handshake.
#[derive(Debug)]
struct Resolver {
    settings: TlsSettings,
    current: RwLock<Current>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().expect("never poisoned").key,
        ))
    }
}

/// The public port's TLS: the acceptor, and the reload of its certificate.
pub(crate) struct Tls {
    acceptor: TlsAcceptor,
    resolver: Arc<Resolver>,
}

impl Tls {
    pub(crate) fn new(settings: &TlsSettings) -> Result<Tls, ConfigError> {
        let resolver = Arc::new(Resolver {
            settings: settings.clone(),
            current: RwLock::new(Current {
                key: load(settings)?,
                modified: modified(settings),
            }),
        });
        let mut config = ServerConfig::builder_with_protocol_versions(&[
            &rustls::version::TLS13,
            &rustls::version::TLS12,
        ])
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            resolver,
        })
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Loads the pair again if either file changed; a pair that does not load is logged and
    /// the one in force kept.
    pub(crate) fn reload_if_changed(&self) {
        let settings = &self.resolver.settings;
        let now = modified(settings);
        if now
            == self
                .resolver
                .current
                .read()
                .expect("never poisoned")
                .modified
        {
            return;
        }
        match load(settings) {
            Ok(key) => {
                *self.resolver.current.write().expect("never poisoned") =
                    Current { key, modified: now };
                info!(cert = %settings.cert_file.display(), "TLS certificate reloaded");
            }
            Err(err) => {
                warn!(%err, "TLS certificate not reloaded; keeping the one in force");
            }
        }
    }
}

fn modified(settings: &TlsSettings) -> (Option<SystemTime>, Option<SystemTime>) {
    let of = |path: &Path| {
        std::fs::metadata(path)
            .and_then(|meta| meta.modified())
            .ok()
    };
    (of(&settings.cert_file), of(&settings.key_file))
}

/// Reads and checks the pair: a chain, a key rustls can sign with, and the two matching.
fn load(settings: &TlsSettings) -> Result<Arc<CertifiedKey>, ConfigError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| ConfigError::Io {
            path: path.clone(),
            source,
        })
    };
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&read(&settings.cert_file)?)
            .collect::<Result<_, _>>()
            .map_err(|err| invalid("TLS_CERT_FILE", format!("not PEM certificates: {err}")))?;
    if chain.is_empty() {
        return Err(invalid("TLS_CERT_FILE", "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&settings.key_file)?)
        .map_err(|err| invalid("TLS_KEY_FILE", format!("not a PEM private key: {err}")))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|err| {
        invalid(
            "TLS_KEY_FILE",
            format!("does not match TLS_CERT_FILE: {err}"),
        )
    })?;
    Ok(Arc::new(certified))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{assert_names, env};

    fn pair(dir: &Path) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (
            cert_file.to_str().unwrap().to_owned(),
            key_file.to_str().unwrap().to_owned(),
        )
    }

    #[test]
    fn a_pair_loads_and_each_half_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path());
        let loaded =
            TlsSettings::from_env(&env(&[("TLS_CERT_FILE", &cert), ("TLS_KEY_FILE", &key)]));
        assert!(loaded.unwrap().is_some());
        assert!(
            TlsSettings::from_env(&env(&[])).unwrap().is_none(),
            "plain ws:// by default"
        );
        assert_names(
            TlsSettings::from_env(&env(&[("TLS_CERT_FILE", &cert)])),
            "TLS_KEY_FILE",
        );
        assert_names(
            TlsSettings::from_env(&env(&[("TLS_KEY_FILE", &key)])),
            "TLS_CERT_FILE",
        );
        // A key that is not the certificate's, and files that are not PEM.
        let other = tempfile::tempdir().unwrap();
        let (_, other_key) = pair(other.path());
        assert_names(
            TlsSettings::from_env(&env(&[
                ("TLS_CERT_FILE", &cert),
                ("TLS_KEY_FILE", &other_key),
            ])),
            "TLS_KEY_FILE",
        );
        assert_names(
            TlsSettings::from_env(&env(&[("TLS_CERT_FILE", &key), ("TLS_KEY_FILE", &key)])),
            "TLS_CERT_FILE",
        );
        assert_names(
            TlsSettings::from_env(&env(&[("TLS_CERT_FILE", &cert), ("TLS_KEY_FILE", &cert)])),
            "TLS_KEY_FILE",
        );
    }
}
