//! Nodes that reach Redis over TLS (`rediss://`): a redis-server with `--tls-port` only,
//! certificates from a test CA, trusted through `REDIS_TLS_CA_FILE`; one that requires client
//! certificates; and a CA that does not match, which is refused without leaking the password.

mod common;

use std::time::Duration;

use common::outage::{listen_until, say};
use common::redis::{node_reaching, short_periods};
use common::tls::TestCa;
use common::tls_redis::TlsRedis;
use common::TestServer;

const PASSWORD: &str = "tls-test-password-9f2c";

/// Two nodes on `pairs` exchange messages both ways.
async fn two_nodes_deliver(pairs: &[(&str, &str)]) {
    let (a, b) = (node_reaching(pairs).await, node_reaching(pairs).await);
    let mut alice = a.joined("alice", "ops").await;
    let mut bob = b.joined("bob", "ops").await;
    say(&mut alice, 1).await;
    listen_until(&mut bob, 1, Duration::from_secs(5)).await;
    say(&mut bob, 2).await;
    listen_until(&mut alice, 2, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_deliver_across_a_tls_redis_that_a_ca_file_vouches_for() {
    let redis = TlsRedis::start(false, Some(PASSWORD)).await;
    let url = redis.url(Some(PASSWORD));
    let ca = redis.ca_file();
    two_nodes_deliver(&[
        ("REDIS_URL", &url),
        ("REDIS_TLS_CA_FILE", ca.to_str().unwrap()),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_requires_client_certificates_gets_ours() {
    let redis = TlsRedis::start(true, None).await;
    let url = redis.url(None);
    let ca = redis.ca_file();
    let (cert, key) = redis.client_files();
    two_nodes_deliver(&[
        ("REDIS_URL", &url),
        ("REDIS_TLS_CA_FILE", ca.to_str().unwrap()),
        ("REDIS_TLS_CERT_FILE", cert.to_str().unwrap()),
        ("REDIS_TLS_KEY_FILE", key.to_str().unwrap()),
    ])
    .await;
    // Without one, the handshake is refused.
    let periods = short_periods();
    let mut pairs: Vec<(&str, &str)> = periods.iter().map(|(k, v)| (*k, v.as_str())).collect();
    pairs.extend([
        ("REDIS_URL", url.as_str()),
        ("REDIS_TLS_CA_FILE", ca.to_str().unwrap()),
    ]);
    let anonymous = TestServer::with(&pairs).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!anonymous.probe().is_ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_whose_certificate_another_ca_signed_is_refused_and_the_log_keeps_the_password() {
    let redis = TlsRedis::start(false, Some(PASSWORD)).await;
    let url = redis.url(Some(PASSWORD));
    let stranger = redis.file("stranger-ca.crt", &TestCa::new().pem());
    let stranger = stranger.to_str().unwrap();
    let periods = short_periods();
    let mut pairs: Vec<(&str, &str)> = periods.iter().map(|(k, v)| (*k, v.as_str())).collect();
    pairs.extend([("REDIS_URL", url.as_str()), ("REDIS_TLS_CA_FILE", stranger)]);

    // In this process: not ready, and the failures are counted.
    let node = TestServer::with(&pairs).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!node.probe().is_ready());
    let metrics = node.probe().metrics();
    assert!(
        metrics.contains("palisade_broker_errors_total{kind=\"connect\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("palisade_broker_delivery_ok 0"),
        "{metrics}"
    );

    // As a process: what it logs (at debug) never carries the password.
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("gateway.log");
    let log = std::fs::File::create(&log_path).unwrap();
    pairs.push(("LOG_LEVEL", "debug"));
    let mut gateway = common::child::Gateway::start_logging(&pairs, log).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(common::http::get(gateway.addr, "/readyz").await.0, 503);
    let _ = gateway.child.kill();
    let _ = gateway.child.wait();
    let logged = std::fs::read_to_string(&log_path).unwrap();
    assert!(logged.contains("redis unavailable"), "{logged}");
    assert!(
        !logged.contains(PASSWORD),
        "the password is in the log:\n{logged}"
    );
}
