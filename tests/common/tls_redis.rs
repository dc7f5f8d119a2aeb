//! A redis-server that speaks TLS only, with certificates from a test CA written to a
//! directory of the test's own.

use std::path::PathBuf;

use super::redis::RedisServer;
use super::tls::TestCa;

pub(crate) struct TlsRedis {
    pub server: RedisServer,
    pub ca: TestCa,
    dir: tempfile::TempDir,
}

impl TlsRedis {
    /// Starts it; with `require_client_certs`, clients must show a certificate from the CA
    /// (`--tls-auth-clients yes`). Requires `requirepass` `password` if one is given.
    pub(crate) async fn start(require_client_certs: bool, password: Option<&str>) -> TlsRedis {
        let ca = TestCa::new();
        let dir = tempfile::tempdir().unwrap();
        let (cert, _, key) = ca.leaf("redis");
        let write = |name: &str, pem: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path.display().to_string()
        };
        let mut args = vec![
            "--tls-cert-file".to_owned(),
            write("redis.crt", &cert),
            "--tls-key-file".to_owned(),
            write("redis.key", &key),
            "--tls-ca-cert-file".to_owned(),
            write("ca.crt", &ca.pem()),
            "--tls-auth-clients".to_owned(),
            if require_client_certs { "yes" } else { "no" }.to_owned(),
        ];
        if let Some(password) = password {
            args.extend(["--requirepass".to_owned(), password.to_owned()]);
        }
        let server = RedisServer::start_tls(&args).await;
        TlsRedis { server, ca, dir }
    }

    /// A file in the test's directory holding `pem`.
    pub(crate) fn file(&self, name: &str, pem: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    }

    /// The CA's certificate, as a file.
    pub(crate) fn ca_file(&self) -> PathBuf {
        self.file("trusted-ca.crt", &self.ca.pem())
    }

    /// A client certificate and key signed by the CA, as files.
    pub(crate) fn client_files(&self) -> (PathBuf, PathBuf) {
        let (cert, _, key) = self.ca.leaf("palisade");
        (
            self.file("client.crt", &cert),
            self.file("client.key", &key),
        )
    }

    pub(crate) fn url(&self, password: Option<&str>) -> String {
        let auth = password.map(|p| format!(":{p}@")).unwrap_or_default();
        format!("rediss://{auth}127.0.0.1:{}/", self.server.port())
    }
}
