//! A JWKS endpoint on 127.0.0.1 that tests control: which keys it serves, whether it fails,
//! hangs or returns garbage, and how many requests it got.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Serve,
    /// HTTP 500.
    Fail,
    /// Never answers (within any test's patience).
    Hang,
    /// 200 with a body that is not a key set.
    Garbage,
}

struct State {
    keys: Mutex<Vec<&'static str>>,
    mode: Mutex<Mode>,
    cache_control: Mutex<Option<String>>,
    requests: AtomicUsize,
}

pub(crate) struct JwksServer {
    pub url: String,
    state: Arc<State>,
}

/// The JWKs of the fixture keys, by kid (`rsa-1`, `rsa-2`, `ec-1`).
fn fixture_jwks() -> Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURES}/jwks_keys.json")).unwrap())
        .unwrap()
}

impl JwksServer {
    pub(crate) async fn start(kids: &[&'static str]) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let state = Arc::new(State {
            keys: Mutex::new(kids.to_vec()),
            mode: Mutex::new(Mode::Serve),
            cache_control: Mutex::new(None),
            requests: AtomicUsize::new(0),
        });
        let served = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = Arc::clone(&served);
                tokio::spawn(async move {
                    let service = service_fn(move |_request| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(answer(&state).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        JwksServer { url, state }
    }

    pub(crate) fn set_keys(&self, kids: &[&'static str]) {
        *self.state.keys.lock().unwrap() = kids.to_vec();
    }

    pub(crate) fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    pub(crate) fn set_cache_control(&self, value: Option<&str>) {
        *self.state.cache_control.lock().unwrap() = value.map(str::to_owned);
    }

    pub(crate) fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
}

async fn answer(state: &State) -> Response<Full<Bytes>> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let mode = *state.mode.lock().unwrap();
    let (status, body) = match mode {
        Mode::Serve => {
            let all = fixture_jwks();
            let keys: Vec<Value> = state
                .keys
                .lock()
                .unwrap()
                .iter()
                .map(|kid| all[*kid].clone())
                .collect();
            (
                StatusCode::OK,
                serde_json::json!({ "keys": keys }).to_string(),
            )
        }
        Mode::Fail => (StatusCode::INTERNAL_SERVER_ERROR, "oops".to_owned()),
        Mode::Garbage => (StatusCode::OK, "<html>not a key set</html>".to_owned()),
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            (StatusCode::OK, String::new())
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Some(value) = state.cache_control.lock().unwrap().as_deref() {
        response
            .headers_mut()
            .insert("cache-control", value.parse().unwrap());
    }
    response
}

/// Signs `claims` with the fixture private key behind `kid`, naming `kid` in the header.
pub(crate) fn sign_with(kid: &str, claims: &Value) -> String {
    let (file, alg) = match kid {
        "rsa-1" => ("rsa_private.pem", Algorithm::RS256),
        "rsa-2" => ("rsa2_private.pem", Algorithm::RS256),
        "ec-1" => ("ec_private.pem", Algorithm::ES256),
        other => panic!("no fixture key {other}"),
    };
    sign_as(kid, alg, file, claims)
}

/// Signs with a fixture key file and algorithm, under any `kid`.
pub(crate) fn sign_as(kid: &str, alg: Algorithm, file: &str, claims: &Value) -> String {
    let pem = std::fs::read(format!("{FIXTURES}/{file}")).unwrap();
    let key = match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}
