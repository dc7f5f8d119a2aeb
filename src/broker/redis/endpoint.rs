//! How the broker reaches Redis: one URL, a master found through Sentinel, or a Redis
//! Cluster; TLS ([`TlsFiles`]) for any of them.
//!
//! [`Endpoint::master`] gives a [`Client`] for the Redis to use *now*. The driver asks for one
//! at every connect, so with Sentinel a reconnect after a failover finds the new master; with
//! a URL it is the same client every time. A cluster is reached through [`ClusterNodes`]
//! instead: the redis crate learns the shards from the seed nodes, routes each command to the
//! master of its key's slot, and follows failovers and slot migrations itself.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Client, ClientTlsConfig, ConnectionAddr, ProtocolVersion, PushInfo, RedisError,
    TlsCertificates, TlsMode,
};
use tokio::sync::Mutex;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{invalid, CommaList, Config, ConfigError, Secret};

/// The broker's way to Redis.
#[derive(Clone)]
pub(crate) enum Endpoint {
    /// `REDIS_URL`: one Redis (`rediss://` for TLS).
    Url(Box<Client>),
    /// `REDIS_SENTINELS` and `REDIS_SENTINEL_MASTER`: whichever Redis the Sentinels call the
    /// master.
    Sentinel(Sentinel),
    /// `REDIS_CLUSTER_NODES`: a Redis Cluster.
    Cluster(ClusterNodes),
}

/// A Redis Cluster's seed nodes and how to talk to them.
#[derive(Clone)]
pub(crate) struct ClusterNodes {
    /// `redis://host:port` or `rediss://host:port`.
    seeds: Vec<String>,
    username: Option<String>,
    password: Option<Secret>,
    tls: Option<TlsCertificates>,
}

/// A master found through Sentinels.
#[derive(Clone)]
pub(crate) struct Sentinel {
    /// The master's name, as the Sentinels know it (`+switch-master` notices start with it).
    pub master: String,
    /// The redis crate's Sentinel client: it asks each Sentinel in turn for the master's
    /// address and checks that the server there says it is the master (`ROLE`).
    client: Arc<Mutex<SentinelClient>>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the URL or the passwords.
        match self {
            Endpoint::Url(_) => f.write_str("Endpoint::Url"),
            Endpoint::Sentinel(sentinel) => f
                .debug_struct("Endpoint::Sentinel")
                .field("master", &sentinel.master)
                .finish(),
            Endpoint::Cluster(nodes) => f
                .debug_struct("Endpoint::Cluster")
                .field("seeds", &nodes.seeds.len())
                .finish(),
        }
    }
}

impl Endpoint {
    /// The endpoint the settings name; `None` (one node on its own) when none of `REDIS_URL`,
    /// `REDIS_SENTINELS` and `REDIS_CLUSTER_NODES` is set.
    pub(crate) fn from_env(env: &Config) -> Result<Option<Endpoint>, ConfigError> {
        let url = env.redis_url.as_ref().map(Secret::expose);
        let listed =
            |list: &Option<CommaList>| list.as_ref().filter(|list| !list.is_empty()).cloned();
        let sentinels = listed(&env.redis_sentinels);
        let cluster = listed(&env.redis_cluster_nodes);
        let tls = TlsFiles::from_env(env)?;
        let modes = [url.is_some(), sentinels.is_some(), cluster.is_some()];
        if modes.iter().filter(|set| **set).count() > 1 {
            let var = if cluster.is_some() {
                "REDIS_CLUSTER_NODES"
            } else {
                "REDIS_SENTINELS"
            };
            return Err(invalid(
                var,
                "set one of REDIS_URL, REDIS_SENTINELS and REDIS_CLUSTER_NODES",
            ));
        }
        if sentinels.is_none() && env.redis_sentinel_master.is_some() {
            return Err(invalid(
                "REDIS_SENTINEL_MASTER",
                "only with REDIS_SENTINELS",
            ));
        }
        if let Some(url) = url {
            refuse_credentials(
                env,
                "only with REDIS_SENTINELS or REDIS_CLUSTER_NODES (REDIS_URL carries its own)",
            )?;
            return Ok(Some(Endpoint::Url(Box::new(url_client(url, tls)?))));
        }
        if tls.is_some() && !env.redis_tls {
            return Err(invalid(
                "REDIS_TLS_CA_FILE",
                "REDIS_TLS_* files need REDIS_TLS=true (or a rediss:// REDIS_URL)",
            ));
        }
        if let Some(sentinels) = sentinels {
            return Ok(Some(Endpoint::Sentinel(Sentinel::from_env(
                env,
                sentinels.iter(),
                tls,
            )?)));
        }
        if let Some(nodes) = cluster {
            let scheme = if env.redis_tls { "rediss" } else { "redis" };
            let seeds = addresses("REDIS_CLUSTER_NODES", nodes.iter())?
                .into_iter()
                .map(|(host, port)| match host.contains(':') {
                    true => format!("{scheme}://[{host}]:{port}"),
                    false => format!("{scheme}://{host}:{port}"),
                })
                .collect();
            let nodes = ClusterNodes {
                seeds,
                username: env.redis_username.clone(),
                password: env.redis_password.clone(),
                tls: if env.redis_tls {
                    Some(tls.unwrap_or(NO_FILES))
                } else {
                    None
                },
            };
            // Checks what can be checked before connecting: the seeds' syntax, the files.
            nodes
                .client(None, std::time::Duration::from_secs(1))
                .map_err(|err| invalid("REDIS_CLUSTER_NODES", format!("{:?}", err.kind())))?;
            return Ok(Some(Endpoint::Cluster(nodes)));
        }
        refuse_credentials(env, "only with REDIS_SENTINELS or REDIS_CLUSTER_NODES")?;
        Ok(None)
    }

    /// A client for the Redis to use now: with Sentinel, the current master.
    /// Not for a cluster, which has no one Redis: see [`ClusterNodes::client`].
    pub(crate) async fn master(&self) -> Result<Client, RedisError> {
        match self {
            Endpoint::Url(client) => Ok(Client::clone(client)),
            Endpoint::Sentinel(sentinel) => sentinel.client.lock().await.async_get_client().await,
            Endpoint::Cluster(_) => unreachable!("a cluster is reached through ClusterNodes"),
        }
    }
}

/// TLS with the system's roots and no client certificate.
const NO_FILES: TlsCertificates = TlsCertificates {
    client_tls: None,
    root_cert: None,
};

impl ClusterNodes {
    /// A client for the cluster. A subscriber's client speaks RESP3 and hands what the shards
    /// push (messages of its channels) to `pushes`.
    pub(crate) fn client(
        &self,
        pushes: Option<tokio::sync::mpsc::UnboundedSender<PushInfo>>,
        timeout: std::time::Duration,
    ) -> Result<ClusterClient, RedisError> {
        let mut builder = ClusterClientBuilder::new(self.seeds.iter().map(String::as_str))
            .connection_timeout(timeout)
            .response_timeout(timeout);
        if let Some(username) = &self.username {
            builder = builder.username(username);
        }
        if let Some(password) = &self.password {
            builder = builder.password(password.expose());
        }
        if let Some(certificates) = &self.tls {
            builder = builder.tls(TlsMode::Secure).certs(certificates.clone());
        }
        if let Some(pushes) = pushes {
            builder = builder
                .use_protocol(ProtocolVersion::RESP3)
                .push_sender(pushes);
        }
        builder.build()
    }
}

/// `host:port` entries of a list variable, checked.
fn addresses<'a>(
    var: &'static str,
    entries: impl Iterator<Item = &'a str>,
) -> Result<Vec<(String, u16)>, ConfigError> {
    entries
        .map(|entry| {
            let (host, port) = entry
                .rsplit_once(':')
                .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
                .filter(|(host, port)| !host.is_empty() && *port > 0)
                .ok_or_else(|| invalid(var, "a comma-separated list of host:port"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            Ok((host.to_owned(), port))
        })
        .collect()
}

/// Refuses the credential settings that only Sentinel and a cluster read, naming the first
/// one set; `why` says where they belong.
fn refuse_credentials(env: &Config, why: &str) -> Result<(), ConfigError> {
    let set = [
        ("REDIS_USERNAME", env.redis_username.is_some()),
        ("REDIS_PASSWORD", env.redis_password.is_some()),
        ("REDIS_TLS", env.redis_tls),
    ];
    match set.into_iter().find(|(_, set)| *set) {
        Some((var, _)) => Err(invalid(var, why)),
        None => Ok(()),
    }
}

/// A client for `REDIS_URL`, with the TLS files when it is `rediss://`.
fn url_client(url: &str, tls: Option<TlsCertificates>) -> Result<Client, ConfigError> {
    // The parser's message may quote the URL, password included: keep only its kind.
    let refused =
        |err: RedisError| invalid("REDIS_URL", format!("not a Redis URL ({:?})", err.kind()));
    let secure = url.starts_with("rediss://");
    match tls {
        Some(_) if !secure => Err(invalid(
            "REDIS_TLS_CA_FILE",
            "REDIS_TLS_* files need a rediss:// REDIS_URL",
        )),
        Some(certificates) => Client::build_with_tls(url, certificates).map_err(refused),
        None => Client::open(url).map_err(refused),
    }
}

impl Sentinel {
    fn from_env<'a>(
        env: &Config,
        sentinels: impl Iterator<Item = &'a str>,
        tls: Option<TlsCertificates>,
    ) -> Result<Sentinel, ConfigError> {
        let master = env
            .redis_sentinel_master
            .clone()
            .filter(|name| !name.is_empty())
            .ok_or_else(|| ConfigError::Missing("REDIS_SENTINEL_MASTER".into()))?;
        let addresses: Vec<ConnectionAddr> = addresses("REDIS_SENTINELS", sentinels)?
            .into_iter()
            .map(|(host, port)| {
                if env.redis_tls {
                    ConnectionAddr::TcpTls {
                        host,
                        port,
                        insecure: false,
                        tls_params: None,
                    }
                } else {
                    ConnectionAddr::Tcp(host, port)
                }
            })
            .collect();
        let built = |err: RedisError| invalid("REDIS_SENTINELS", format!("{:?}", err.kind()));
        let mut builder =
            SentinelClientBuilder::new(addresses, &master, SentinelServerType::Master)
                .map_err(built)?;
        if let Some(username) = &env.redis_sentinel_username {
            builder = builder.set_client_to_sentinel_username(username);
        }
        if let Some(password) = &env.redis_sentinel_password {
            builder = builder.set_client_to_sentinel_password(password.expose());
        }
        if let Some(username) = &env.redis_username {
            builder = builder.set_client_to_redis_username(username);
        }
        if let Some(password) = &env.redis_password {
            builder = builder.set_client_to_redis_password(password.expose());
        }
        if env.redis_tls {
            builder = builder
                .set_client_to_sentinel_tls_mode(TlsMode::Secure)
                .set_client_to_redis_tls_mode(TlsMode::Secure);
            if let Some(certificates) = tls {
                builder = builder
                    .set_client_to_sentinel_certificates(certificates.clone())
                    .set_client_to_redis_certificates(certificates);
            }
        }
        Ok(Sentinel {
            master,
            client: Arc::new(Mutex::new(builder.build().map_err(built)?)),
        })
    }

    /// A client for one of the Sentinels (the first that answers), to hear `+switch-master`.
    pub(crate) async fn sentinel(&self) -> Result<Client, RedisError> {
        self.client.lock().await.async_get_sentinel_client().await
    }
}

/// `REDIS_TLS_CA_FILE`, `REDIS_TLS_CERT_FILE` and `REDIS_TLS_KEY_FILE`, read and checked at
/// start so that a wrong file names its variable. Without a CA file the system's roots are
/// trusted; the client certificate is for servers that require one (`tls-auth-clients yes`).
struct TlsFiles;

impl TlsFiles {
    fn from_env(env: &Config) -> Result<Option<TlsCertificates>, ConfigError> {
        let root_cert = match &env.redis_tls_ca_file {
            Some(path) => {
                let pem = read("REDIS_TLS_CA_FILE", path)?;
                let count = CertificateDer::pem_slice_iter(&pem)
                    .map(|cert| cert.map_err(|_| ()))
                    .collect::<Result<Vec<_>, ()>>()
                    .map_err(|()| invalid("REDIS_TLS_CA_FILE", "not PEM certificates"))?
                    .len();
                if count == 0 {
                    return Err(invalid("REDIS_TLS_CA_FILE", "holds no certificate"));
                }
                Some(pem)
            }
            None => None,
        };
        let client_tls = match (&env.redis_tls_cert_file, &env.redis_tls_key_file) {
            (None, None) => None,
            (Some(_), None) => return Err(ConfigError::Missing("REDIS_TLS_KEY_FILE".into())),
            (None, Some(_)) => return Err(ConfigError::Missing("REDIS_TLS_CERT_FILE".into())),
            (Some(cert), Some(key)) => {
                let client_cert = read("REDIS_TLS_CERT_FILE", cert)?;
                if CertificateDer::pem_slice_iter(&client_cert)
                    .next()
                    .is_none()
                {
                    return Err(invalid("REDIS_TLS_CERT_FILE", "holds no PEM certificate"));
                }
                let client_key = read("REDIS_TLS_KEY_FILE", key)?;
                PrivateKeyDer::from_pem_slice(&client_key)
                    .map_err(|_| invalid("REDIS_TLS_KEY_FILE", "holds no PEM private key"))?;
                Some(ClientTlsConfig {
                    client_cert,
                    client_key,
                })
            }
        };
        if root_cert.is_none() && client_tls.is_none() {
            return Ok(None);
        }
        Ok(Some(TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

fn read(var: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|err| {
        invalid(
            var,
            format!("cannot read {}: {err}", PathBuf::from(path).display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{assert_names, env};

    /// A certificate and its key, PEM, in files of a fresh directory.
    fn pem_files() -> (tempfile::TempDir, String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["redis.test".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let path = |p: std::path::PathBuf| p.to_str().unwrap().to_owned();
        (dir, path(cert_path), path(key_path))
    }

    #[test]
    fn a_url_sentinels_and_tls_files_make_endpoints() {
        let (_dir, cert, key) = pem_files();
        let tls_url = Endpoint::from_env(&env(&[
            ("REDIS_URL", "rediss://:secret@redis.test:6380/0"),
            ("REDIS_TLS_CA_FILE", &cert),
            ("REDIS_TLS_CERT_FILE", &cert),
            ("REDIS_TLS_KEY_FILE", &key),
        ]))
        .unwrap();
        assert!(matches!(tls_url, Some(Endpoint::Url(_))));
        let sentinel = Endpoint::from_env(&env(&[
            (
                "REDIS_SENTINELS",
                "10.0.0.1:26379, sentinel-2:26379,[::1]:26379",
            ),
            ("REDIS_SENTINEL_MASTER", "chat"),
            ("REDIS_SENTINEL_USERNAME", "watcher"),
            ("REDIS_SENTINEL_PASSWORD", "s"),
            ("REDIS_USERNAME", "palisade"),
            ("REDIS_PASSWORD", "p"),
            ("REDIS_TLS", "true"),
            ("REDIS_TLS_CA_FILE", &cert),
        ]))
        .unwrap();
        let Some(Endpoint::Sentinel(sentinel)) = sentinel else {
            panic!("a Sentinel endpoint");
        };
        assert_eq!(sentinel.master, "chat");
        let cluster = Endpoint::from_env(&env(&[
            (
                "REDIS_CLUSTER_NODES",
                "10.0.0.1:6379,redis-2:6379,[::1]:6380",
            ),
            ("REDIS_USERNAME", "palisade"),
            ("REDIS_PASSWORD", "p"),
            ("REDIS_TLS", "true"),
            ("REDIS_TLS_CA_FILE", &cert),
        ]))
        .unwrap();
        let Some(Endpoint::Cluster(nodes)) = cluster else {
            panic!("a cluster endpoint");
        };
        assert_eq!(
            nodes.seeds,
            [
                "rediss://10.0.0.1:6379",
                "rediss://redis-2:6379",
                "rediss://[::1]:6380"
            ]
        );
        let shown = format!("{:?}", Endpoint::Cluster(nodes));
        assert!(
            !shown.contains("palisade") && !shown.contains("10.0"),
            "{shown}"
        );
        let shown = format!("{:?}", Endpoint::Sentinel(sentinel));
        assert!(!shown.contains("watcher"), "{shown}");
        assert!(Endpoint::from_env(&env(&[])).unwrap().is_none());
    }

    #[test]
    fn endpoint_settings_that_do_not_fit_are_named() {
        let (_dir, cert, key) = pem_files();
        let sentinels = [
            ("REDIS_SENTINELS", "127.0.0.1:26379"),
            ("REDIS_SENTINEL_MASTER", "chat"),
        ];
        let url = [("REDIS_URL", "rediss://127.0.0.1:6380")];
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (
                vec![("REDIS_URL", "redis://x"), ("REDIS_SENTINELS", "a:1")],
                "REDIS_SENTINELS",
            ),
            (vec![("REDIS_SENTINELS", "a:1")], "REDIS_SENTINEL_MASTER"),
            (
                vec![("REDIS_URL", "redis://x"), ("REDIS_CLUSTER_NODES", "a:1")],
                "REDIS_CLUSTER_NODES",
            ),
            (
                vec![sentinels[0], sentinels[1], ("REDIS_CLUSTER_NODES", "a:1")],
                "REDIS_CLUSTER_NODES",
            ),
            (
                vec![("REDIS_CLUSTER_NODES", "no-port")],
                "REDIS_CLUSTER_NODES",
            ),
            (
                vec![("REDIS_CLUSTER_NODES", ":6379")],
                "REDIS_CLUSTER_NODES",
            ),
            (
                vec![("REDIS_CLUSTER_NODES", "a:1"), sentinels[1]],
                "REDIS_SENTINEL_MASTER",
            ),
            (
                vec![("REDIS_CLUSTER_NODES", "a:1"), ("REDIS_TLS_CA_FILE", &cert)],
                "REDIS_TLS_CA_FILE",
            ),
            (vec![("REDIS_PASSWORD", "p")], "REDIS_PASSWORD"),
            (
                vec![("REDIS_SENTINEL_MASTER", "chat")],
                "REDIS_SENTINEL_MASTER",
            ),
            (
                vec![("REDIS_SENTINELS", "no-port"), sentinels[1]],
                "REDIS_SENTINELS",
            ),
            (
                vec![("REDIS_SENTINELS", "a:0"), sentinels[1]],
                "REDIS_SENTINELS",
            ),
            (
                vec![("REDIS_SENTINELS", "a:65536"), sentinels[1]],
                "REDIS_SENTINELS",
            ),
            (vec![url[0], ("REDIS_PASSWORD", "p")], "REDIS_PASSWORD"),
            (vec![url[0], ("REDIS_USERNAME", "u")], "REDIS_USERNAME"),
            (vec![url[0], ("REDIS_TLS", "true")], "REDIS_TLS"),
            (vec![url[0], sentinels[1]], "REDIS_SENTINEL_MASTER"),
            (
                vec![("REDIS_URL", "redis://x"), ("REDIS_TLS_CA_FILE", &cert)],
                "REDIS_TLS_CA_FILE",
            ),
            (
                vec![sentinels[0], sentinels[1], ("REDIS_TLS_CA_FILE", &cert)],
                "REDIS_TLS_CA_FILE",
            ),
            (
                vec![url[0], ("REDIS_TLS_CA_FILE", "/nonexistent/ca.pem")],
                "REDIS_TLS_CA_FILE",
            ),
            (
                vec![url[0], ("REDIS_TLS_CA_FILE", &key)],
                "REDIS_TLS_CA_FILE",
            ),
            (
                vec![url[0], ("REDIS_TLS_CERT_FILE", &cert)],
                "REDIS_TLS_KEY_FILE",
            ),
            (
                vec![url[0], ("REDIS_TLS_KEY_FILE", &key)],
                "REDIS_TLS_CERT_FILE",
            ),
            (
                vec![
                    url[0],
                    ("REDIS_TLS_CERT_FILE", &cert),
                    ("REDIS_TLS_KEY_FILE", &cert),
                ],
                "REDIS_TLS_KEY_FILE",
            ),
            (
                vec![
                    url[0],
                    ("REDIS_TLS_CERT_FILE", &key),
                    ("REDIS_TLS_KEY_FILE", &key),
                ],
                "REDIS_TLS_CERT_FILE",
            ),
        ];
        for (pairs, var) in cases {
            assert_names(Endpoint::from_env(&env(&pairs)), var);
        }
    }
}
