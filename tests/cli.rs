//! The `palisade` binary as a user runs it: a GarinChat `.env`, signals, and the subcommands.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::http::{free_port, get, post_from};
use common::{sign, Client, TestServer};
use jsonwebtoken::Algorithm;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_palisade");

/// The binary with an empty environment (but PATH) in `dir`.
fn palisade(dir: &Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(dir);
    command
}

/// Waits until `/healthz` answers on `port`.
async fn wait_ready(port: u16, child: &mut Child) -> SocketAddr {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("palisade exited early: {status}");
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            let head = common::raw::http(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
            if common::raw::status(&head) == 200 {
                return addr;
            }
        }
        assert!(Instant::now() < deadline, "palisade did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sigterm(child: &Child) {
    // SAFETY: kill(2) with a pid we spawned and a valid signal number has no memory effects.
    let result = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(result, 0);
}

/// Waits for the child to exit, at most `limit`.
fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("palisade did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garinchat_env_starts_palisade_and_a_garinchat_client_works() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join(".env"),
        format!("PORT={port}\nALLOWED_ORIGINS=http://garin.test\nJWT_DECODE_SECRET=garin-secret\n"),
    )
    .unwrap();
    // The .env is GarinChat's alone; the test's own environment only moves the admin port off
    // 9090, which another test process may hold.
    let mut child = palisade(dir.path())
        .env("METRICS_PORT", free_port().to_string())
        .env("LOG_LEVEL", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = capture_output(&mut child);
    let addr = wait_ready(port, &mut child).await;

    // A GarinChat client: HS256 token, then auth, join with a username, message, userleave.
    let token = |sub: &str| {
        sign(
            &json!({"sub": sub, "exp": common::now() + 600}),
            b"garin-secret",
            Algorithm::HS256,
        )
    };
    let (alice_token, bob_token) = (token("alice"), token("bob"));
    let url = format!("ws://{addr}/");
    let mut alice = Client::connect(&url, Some("http://garin.test")).await;
    alice
        .send_json(json!({"type": "auth", "body": alice_token}))
        .await;
    alice
        .send_json(json!({"type": "join", "username": "alice", "room": "general"}))
        .await;
    let joined = alice.recv_json().await;
    assert_eq!(
        (joined["type"].as_str(), joined["totalUsers"].as_u64()),
        (Some("join"), Some(1))
    );

    let mut bob = Client::connect(&url, Some("http://garin.test")).await;
    bob.send_json(json!({"type": "auth", "body": bob_token}))
        .await;
    bob.send_json(json!({"type": "join", "username": "bob", "room": "general"}))
        .await;
    assert_eq!(bob.recv_json().await["totalUsers"], 2);
    assert_eq!(alice.recv_json().await["username"], "bob");
    alice
        .send_json(json!({"type": "message", "body": "hello bob"}))
        .await;
    let message = bob.recv_json().await;
    assert_eq!(
        (message["body"].as_str(), message["username"].as_str()),
        (Some("hello bob"), Some("alice"))
    );
    bob.send_json(json!({"type": "userleave"})).await;
    let left = alice.recv_json().await;
    assert_eq!(
        (left["type"].as_str(), left["totalUsers"].as_u64()),
        (Some("userleave"), Some(1))
    );

    bob.send_json(json!({"type": "join", "room": "general"}))
        .await;
    assert_eq!(bob.recv_json().await["totalUsers"], 2);

    // SIGTERM starts the drain: /readyz turns 503 at once while /healthz stays 200 and
    // sockets are still served for DRAIN_DELAY_SECS (2); then every socket gets 1001 and the
    // process exits cleanly within the grace period.
    let started = Instant::now();
    sigterm(&child);
    let not_ready = loop {
        let head = common::raw::http(addr, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        if common::raw::status(&head) == 503 {
            break started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(not_ready < Duration::from_secs(1), "{not_ready:?}");
    let head = common::raw::http(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(common::raw::status(&head), 200);
    let late = Client::connect(&url, Some("http://garin.test")).await;
    drop(late);
    assert_eq!(alice.expect_close().await.0, 1001);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "closed before the drain delay"
    );
    assert_eq!(bob.expect_close().await.0, 1001);
    let status = wait_exit(&mut child, Duration::from_secs(12));
    assert!(status.success(), "{status}");
    assert!(started.elapsed() < Duration::from_secs(11));

    // Even at trace level, the logs name sessions, users and reasons, never secrets or bodies.
    let logs = logs.join().unwrap();
    assert!(logs.contains("session ended"), "{logs}");
    assert!(logs.contains("alice"));
    for secret in [
        alice_token.clone(),
        bob_token.clone(),
        "garin-secret".into(),
        "hello bob".into(),
    ] {
        assert!(!logs.contains(&secret), "logs leak {secret:?}");
    }
}

/// Collects the child's stdout and stderr until it exits.
fn capture_output(child: &mut Child) -> std::thread::JoinHandle<String> {
    use std::io::Read;
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let err = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text + &err.join().unwrap()
    })
}

#[test]
fn the_real_environment_wins_over_dotenv() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "PORT=1111\nALLOWED_ORIGINS=http://a.test\nJWT_DECODE_SECRET=s\n",
    )
    .unwrap();
    let output = palisade(dir.path())
        .env("PORT", "2222")
        .arg("check-config")
        .output()
        .unwrap();
    assert!(output.status.success());
    let config: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(config["port"], 2222);
}

fn run(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    palisade(dir)
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn missing_or_invalid_settings_exit_non_zero_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("ALLOWED_ORIGINS", "http://a.test")], "JWT_DECODE_SECRET"),
        (
            &[("JWT_DECODE_SECRET", "very-secret-value")],
            "ALLOWED_ORIGINS",
        ),
        (
            &[
                ("ALLOWED_ORIGINS", "http://a.test"),
                ("JWT_DECODE_SECRET", "very-secret-value"),
                ("PORT", "http"),
            ],
            "PORT",
        ),
        (
            &[
                ("ALLOWED_ORIGINS", "http://a.test"),
                ("JWT_DECODE_SECRET", "very-secret-value"),
                ("JWT_LEEWAY_SECS", "300"),
            ],
            "JWT_LEEWAY_SECS",
        ),
    ];
    for (env, variable) in cases {
        let output = run(dir.path(), env, &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{variable}");
        assert!(stderr.contains(variable), "{variable}: {stderr}");
        assert!(!stderr.contains("very-secret-value"), "{stderr}");
    }
}

#[test]
fn check_config_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("ALLOWED_ORIGINS", "http://a.test"),
        ("JWT_DECODE_SECRET", "very-secret-value"),
    ];
    let output = run(dir.path(), &env, &["check-config"]);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("[redacted]"), "{stdout}");
    assert!(!stdout.contains("very-secret-value"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_passes_against_a_live_gateway_and_fails_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let env = [
        ("PORT", port.as_str()),
        ("BIND_ADDR", "127.0.0.1"),
        ("METRICS_PORT", "0"),
        ("ALLOWED_ORIGINS", "http://a.test"),
        ("JWT_DECODE_SECRET", common::SECRET),
    ];
    let dead = run(dir.path(), &env, &["healthcheck"]);
    assert!(!dead.status.success(), "nothing listens yet");
    assert!(String::from_utf8_lossy(&dead.stderr).contains("did not answer"));

    let mut child = palisade(dir.path()).envs(env).spawn().unwrap();
    wait_ready(port.parse().unwrap(), &mut child).await;
    for path in ["/healthz", "/readyz"] {
        let output = run(dir.path(), &env, &["healthcheck", "--path", path]);
        assert!(output.status.success(), "{path}: {output:?}");
    }
    let missing = run(dir.path(), &env, &["healthcheck", "--path", "/nowhere"]);
    assert!(!missing.status.success());
    sigterm(&child);
    assert!(child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_mints_what_the_gateway_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("ALLOWED_ORIGINS", "http://a.test"),
        ("JWT_DECODE_SECRET", common::SECRET),
    ];
    let output = run(
        dir.path(),
        &env,
        &["token", "--sub", "zed", "--name", "Zed Z", "--ttl", "60"],
    );
    assert!(output.status.success());
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();

    let server = TestServer::start().await;
    let mut client = server.connect().await;
    client.auth(&token).await;
    client
        .send_json(json!({"type": "join", "room": "lobby"}))
        .await;
    let joined = client.recv_json().await;
    assert_eq!(
        (joined["username"].as_str(), joined["userId"].as_str()),
        (Some("Zed Z"), Some("zed"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_with_nothing_configured_and_prints_working_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = palisade(dir.path())
        .env("PORT", port.to_string())
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Read the tokens, then keep draining stdout so the gateway never writes into a closed pipe.
    let (found, tokens_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tokens = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some((name, token)) = line.trim().split_once(": ") {
                if ["Alice", "Bob", "Carol"].contains(&name) {
                    tokens.push(token.to_owned());
                    if tokens.len() == 3 {
                        let _ = found.send(std::mem::take(&mut tokens));
                    }
                }
            }
        }
    });
    let tokens = tokens_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the demo prints three tokens");
    assert_eq!(tokens.len(), 3);
    let addr = wait_ready(port, &mut child).await;

    // No Origin (a command-line client) and a localhost page are both admitted.
    let mut alice = Client::connect(&format!("ws://{addr}/"), None).await;
    alice
        .send_json(json!({"type": "auth", "body": tokens[0]}))
        .await;
    alice
        .send_json(json!({"type": "join", "room": "lobby"}))
        .await;
    assert_eq!(alice.recv_json().await["username"], "Alice");
    let mut bob = Client::connect(
        &format!("ws://{addr}/"),
        Some(&format!("http://localhost:{port}")),
    )
    .await;
    bob.send_json(json!({"type": "auth", "body": tokens[1]}))
        .await;
    bob.send_json(json!({"type": "join", "room": "lobby"}))
        .await;
    assert_eq!(bob.recv_json().await["totalUsers"], 2);

    // The page, its script and the client module are served, and the demo-only token
    // endpoint mints tokens that work.
    let (status, page) = get(addr, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>Palisade demo</title>"));
    let (_, module) = get(addr, "/palisade.js").await;
    assert!(module.contains("export class PalisadeClient"));
    let (status, _) = get(addr, "/demo.js").await;
    assert_eq!(status, 200);
    let (status, reply) = http_post(addr, "/demo/token", r#"{"name":"Dora"}"#).await;
    assert_eq!(status, 200, "{reply}");
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    let mut dora = Client::connect(
        &format!("ws://{addr}/"),
        Some(&format!("http://127.0.0.1:{port}")),
    )
    .await;
    dora.send_json(json!({"type": "auth", "body": reply["token"]}))
        .await;
    dora.send_json(json!({"type": "join", "room": "lobby"}))
        .await;
    let joined = dora.recv_json().await;
    assert_eq!(joined["username"], "Dora");
    assert!(joined["userId"].as_str().unwrap().starts_with("guest-"));
    let (status, _) = http_post(addr, "/demo/token", r#"{"name":"x"}"#).await;
    assert_eq!(status, 400, "names follow the rules");
    let (status, _) = http_post(
        addr,
        "/demo/token",
        &format!(r#"{{"name":"{}"}}"#, "x".repeat(2000)),
    )
    .await;
    assert_eq!(status, 413, "bounded body");
    // Only this server's own page may ask: another Host (DNS rebinding) or another page's
    // Origin is refused; the demo page's own Origin is fine.
    let name = r#"{"name":"Mallory"}"#;
    let (status, _) = post_from(addr, "evil.test", None, "/demo/token", name).await;
    assert_eq!(status, 403);
    let (status, _) = post_from(
        addr,
        &addr.to_string(),
        Some("http://evil.test"),
        "/demo/token",
        name,
    )
    .await;
    assert_eq!(status, 403);
    let own = format!("http://127.0.0.1:{port}");
    let (status, _) = post_from(addr, &addr.to_string(), Some(&own), "/demo/token", name).await;
    assert_eq!(status, 200);

    sigterm(&child);
    assert_eq!(alice.expect_close().await.0, 1001);
    assert!(wait_exit(&mut child, Duration::from_secs(12)).success());
}

async fn http_post(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    post_from(addr, &addr.to_string(), None, path, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_one_structured_line_per_session() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = palisade(dir.path())
        .envs([
            ("PORT", port.to_string().as_str()),
            ("BIND_ADDR", "127.0.0.1"),
            ("ALLOWED_ORIGINS", "http://a.test"),
            ("JWT_DECODE_SECRET", "s"),
            ("METRICS_PORT", "0"),
            ("AUTH_TIMEOUT_MS", "200"),
            ("DRAIN_DELAY_SECS", "0"),
            ("LOG_FORMAT", "json"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = capture_output(&mut child);
    let addr = wait_ready(port, &mut child).await;
    let mut client = Client::connect(&format!("ws://{addr}/"), Some("http://a.test")).await;
    assert_eq!(client.expect_close().await.0, 4001);
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(10)).success());
    let logs = logs.join().unwrap();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let ended = lines
        .iter()
        .find(|line| line["message"] == "session ended")
        .expect("a session-end line");
    assert_eq!(ended["close_code"], 4001);
    assert_eq!(ended["reason"], "auth timeout");
    assert_eq!(ended["peer"], "127.0.0.1");
    assert!(ended["duration_ms"].as_u64().unwrap() >= 200);
}
