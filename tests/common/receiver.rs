//! A webhook receiver over real HTTP: it records every POST (headers, body, the status it
//! answered) and answers with a status the test sets. It can be stopped and started again on
//! the same port, as a receiver that goes down and comes back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The secret test gateways sign webhooks with.
pub(crate) const WEBHOOK_SECRET: &str = "whsec-test-0123456789abcdef0123456789";

/// One POST received.
#[derive(Clone, Debug)]
pub(crate) struct Post {
    pub signature: String,
    pub body: String,
    /// The status it was answered with.
    pub status: u16,
}

impl Post {
    pub(crate) fn events(&self) -> Vec<Value> {
        let body: Value = serde_json::from_str(&self.body).expect("a JSON body");
        body["events"].as_array().expect("an events array").clone()
    }
}

pub(crate) struct Receiver {
    pub addr: SocketAddr,
    posts: Arc<Mutex<Vec<Post>>>,
    status: Arc<AtomicU16>,
    /// How long it takes to answer, in milliseconds.
    delay_ms: Arc<AtomicU64>,
    task: Option<JoinHandle<()>>,
}

impl Receiver {
    pub(crate) async fn start() -> Receiver {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), Arc::default()).await
    }

    async fn start_on(addr: SocketAddr, posts: Arc<Mutex<Vec<Post>>>) -> Receiver {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(200));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (task_posts, task_status, task_delay) = (
            Arc::clone(&posts),
            Arc::clone(&status),
            Arc::clone(&delay_ms),
        );
        let task = tokio::spawn(async move {
            // Connections live in the set, so stopping the receiver closes them too (the
            // gateway's client keeps connections alive).
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (posts, status, delay) = (
                    Arc::clone(&task_posts),
                    Arc::clone(&task_status),
                    Arc::clone(&task_delay),
                );
                connections.spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let (posts, status) = (Arc::clone(&posts), Arc::clone(&status));
                        let delay = Duration::from_millis(delay.load(Ordering::SeqCst));
                        async move {
                            tokio::time::sleep(delay).await;
                            let signature = request
                                .headers()
                                .get("palisade-signature")
                                .and_then(|value| value.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            let answered = status.load(Ordering::SeqCst);
                            posts.lock().unwrap().push(Post {
                                signature,
                                body: String::from_utf8(body.to_vec()).unwrap(),
                                status: answered,
                            });
                            let mut response = Response::new(Full::new(Bytes::new()));
                            *response.status_mut() = StatusCode::from_u16(answered).unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            posts,
            status,
            delay_ms,
            task: Some(task),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    /// Settings that send a gateway's webhooks here, batching for `batch_wait_ms`.
    pub(crate) fn settings(&self, batch_wait_ms: &str) -> Vec<(&'static str, String)> {
        vec![
            ("WEBHOOK_URL", self.url()),
            ("WEBHOOK_SECRET", WEBHOOK_SECRET.into()),
            ("WEBHOOK_BATCH_WAIT_MS", batch_wait_ms.into()),
        ]
    }

    /// Answers every POST with `status` from now on.
    pub(crate) fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Takes `delay` to answer every POST from now on (a slow receiver).
    pub(crate) fn slow_down(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Every POST so far.
    pub(crate) fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }

    /// The events of the POSTs answered with a 2xx, in order.
    pub(crate) fn accepted(&self) -> Vec<Value> {
        self.posts()
            .iter()
            .filter(|post| (200..300).contains(&post.status))
            .flat_map(Post::events)
            .collect()
    }

    /// `(type, data)` of the accepted events, for comparing sequences.
    pub(crate) fn accepted_kinds(&self) -> Vec<(String, Value)> {
        self.accepted()
            .iter()
            .map(|event| {
                (
                    event["type"].as_str().unwrap().to_owned(),
                    event["data"].clone(),
                )
            })
            .collect()
    }

    /// Waits until `check` holds for the accepted events, or fails after `wait`.
    pub(crate) async fn wait_until(
        &self,
        what: &str,
        wait: Duration,
        check: impl Fn(&[Value]) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + wait;
        while !check(&self.accepted()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out: {what}; got {:?}",
                self.accepted_kinds()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `check` holds, then `quiet` longer for anything that should not come (a
    /// repeat from another node), and returns the accepted events.
    pub(crate) async fn settled(
        &self,
        what: &str,
        wait: Duration,
        check: impl Fn(&[Value]) -> bool,
        quiet: Duration,
    ) -> Vec<Value> {
        self.wait_until(what, wait, check).await;
        tokio::time::sleep(quiet).await;
        self.accepted()
    }

    /// Waits until at least `count` POSTs arrived (whatever they were answered).
    pub(crate) async fn wait_until_posted(&self, count: usize, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while self.posts().len() < count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out: {count} posts"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops listening (connections are refused) and gives back what it received.
    pub(crate) fn stop(&mut self) -> Arc<Mutex<Vec<Post>>> {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        Arc::clone(&self.posts)
    }

    /// Listens again on the same port, keeping what it received.
    pub(crate) async fn restart(&mut self) {
        self.stop();
        let posts = Arc::clone(&self.posts);
        let status = self.status.load(Ordering::SeqCst);
        let mut again = Self::start_on(self.addr, posts).await;
        again.answer(status);
        again.slow_down(Duration::from_millis(self.delay_ms.load(Ordering::SeqCst)));
        self.task = again.task.take();
        self.status = Arc::clone(&again.status);
        self.delay_ms = Arc::clone(&again.delay_ms);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The types of the events whose `data[key]` is `value`, in order.
pub(crate) fn kinds_for(events: &[Value], key: &str, value: &str) -> Vec<String> {
    events
        .iter()
        .filter(|event| event["data"][key] == value)
        .map(|event| event["type"].as_str().unwrap().to_owned())
        .collect()
}

/// `body` changed as an attacker on the path might change it: in a way no JSON
/// reader would notice (one trailing space), which the signature must still catch.
/// Unlike replacing a name, it changes every body, whatever events it carries.
pub(crate) fn tampered(body: &str) -> String {
    format!("{body} ")
}

/// Whether `signature` (`t=…,v1=…`) signs `body` with the test secret.
pub(crate) fn verify(signature: &str, body: &str) -> bool {
    let mut timestamp = None;
    let mut v1 = None;
    for part in signature.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => timestamp = Some(value),
            Some(("v1", value)) => v1 = Some(value),
            _ => {}
        }
    }
    let (Some(timestamp), Some(v1)) = (timestamp, v1) else {
        return false;
    };
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, WEBHOOK_SECRET.as_bytes());
    let expected: String = aws_lc_rs::hmac::sign(&key, format!("{timestamp}.{body}").as_bytes())
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    expected == v1
}
