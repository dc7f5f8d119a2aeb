//! The fuzz targets' bodies, shared by `fuzz/fuzz_targets/*` (libFuzzer) and
//! `tests/fuzz_corpus.rs` (which replays every committed corpus file on stable `cargo test`, so
//! a past crash can never come back). Each function panics when an invariant breaks.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload, WebSocket};
use palisade::config::Secret;
use palisade::mint::{mint_hs_token, TokenRequest};
use palisade::testing::{
    ClientRequest, Inbound, MessageReader, ReadLimits, TokenVerifier, Version,
};
use palisade::Settings;
use palisade::{CloseCode, Gateway};

const SECRET: &str = "fuzzing-secret-fuzzing-secret-fuzzing";
const LIMITS: ReadLimits = ReadLimits {
    max_message_bytes: 4096,
    max_fragments: 64,
};

fn settings(extra: &[(&str, &str)]) -> Settings {
    let mut pairs = vec![
        ("ALLOWED_ORIGINS", "*"),
        ("JWT_DECODE_SECRET", SECRET),
        ("AUTH_TIMEOUT_MS", "2000"),
        ("JOIN_TIMEOUT_MS", "2000"),
        ("CLOSE_TIMEOUT_MS", "100"),
        ("DRAIN_DELAY_SECS", "0"),
    ];
    pairs.extend_from_slice(palisade::testing::NO_LIMITS);
    pairs.extend_from_slice(extra);
    Settings::from_pairs(pairs).expect("fuzz settings are valid")
}

/// Target `client_frame`: the decoder never panics in either protocol, and whatever it accepts
/// re-encodes to a frame that decodes to the same value.
pub(crate) fn client_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for version in [Version::GarinChat, Version::V2] {
        if let Ok(request) = ClientRequest::decode(text, version) {
            let again = ClientRequest::decode(&request.encode(), version)
                .expect("an encoded frame decodes");
            // A GarinChat socket knows no ids: what it decoded has none to re-encode.
            assert_eq!(again, request);
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

/// Target `ws_stream`: arbitrary bytes after the handshake, through the gateway's frame
/// reader. Never panics; every message it yields is within the limits; it ends.
pub(crate) fn ws_stream(data: &[u8]) {
    runtime().block_on(read_all(MessageReader::new(data, LIMITS), data.len()));
}

/// Target `ws_chunks`: the same bytes arriving in pieces (sizes drawn from the first byte),
/// with the read interrupted (its future dropped) whenever the stream is not ready. The reader
/// yields exactly what it yields for the bytes in one piece: how bytes arrive, and how often a
/// `select!` drops a read in the middle, change nothing.
pub(crate) fn ws_chunks(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let whole = runtime().block_on(read_all(MessageReader::new(stream, LIMITS), stream.len()));
    let mut reader = MessageReader::new(Chunked::new(stream, seed), LIMITS);
    let mut chunked = Vec::new();
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    // Each poll makes a new read and drops it if it is not done: every pending read is
    // cancelled. The stream is ready at every other poll, so this ends.
    for _ in 0..4 * (stream.len() + 2) {
        let mut next = std::pin::pin!(reader.next());
        if let std::task::Poll::Ready(event) = std::future::Future::poll(next.as_mut(), &mut cx) {
            let terminal = event.is_terminal();
            chunked.push(event);
            if terminal {
                break;
            }
        }
    }
    assert_eq!(chunked, whole, "chunking changed what was read");
}

/// Every event up to the terminal one, each checked against the limits.
async fn read_all<S: tokio::io::AsyncRead + Unpin>(
    mut reader: MessageReader<S>,
    len: usize,
) -> Vec<Inbound> {
    let mut events = Vec::new();
    for _ in 0..=len {
        let event = reader.next().await;
        match &event {
            Inbound::Text(text) => assert!(text.len() <= LIMITS.max_message_bytes),
            Inbound::Binary(bytes) => assert!(bytes.len() <= LIMITS.max_message_bytes),
            Inbound::Ping(payload) => assert!(payload.len() <= 125),
            Inbound::Pong(_) => {}
            Inbound::Close(_) | Inbound::Violation(_) | Inbound::Gone => {
                events.push(event);
                return events;
            }
        }
        events.push(event);
    }
    panic!("the reader yielded more events than there were bytes");
}

/// A stream that gives its bytes in pieces of 1 to 16, and is not ready at every other read.
struct Chunked<'a> {
    rest: &'a [u8],
    state: u8,
    ready: bool,
}

impl<'a> Chunked<'a> {
    fn new(bytes: &'a [u8], seed: u8) -> Self {
        Self {
            rest: bytes,
            state: seed,
            ready: false,
        }
    }
}

impl tokio::io::AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.ready = !self.ready;
        if !self.ready {
            return std::task::Poll::Pending;
        }
        // A small linear congruential sequence: varied sizes, the same for the same seed.
        self.state = self.state.wrapping_mul(29).wrapping_add(11);
        let size = usize::from(self.state % 16 + 1)
            .min(self.rest.len())
            .min(buf.remaining());
        let (piece, rest) = self.rest.split_at(size);
        buf.put_slice(piece);
        self.rest = rest;
        std::task::Poll::Ready(Ok(()))
    }
}

/// Target `token`: the verifier never panics and never accepts arbitrary input.
///
/// An input starting with byte 1 takes the other road: the rest is used as the claims of a
/// token *correctly signed* with the configured secret, so the claim checks behind the
/// signature are fuzzed too; then an accepted token must carry a string `sub`, a numeric
/// `exp` not in the past (beyond the leeway), and no `nbf` in the future.
/// Returns whether the token was accepted (only ever true on the signed road).
pub(crate) fn token(data: &[u8]) -> bool {
    static VERIFIER: OnceLock<TokenVerifier> = OnceLock::new();
    let verifier = VERIFIER.get_or_init(|| palisade::testing::verifier(&settings(&[])));
    if let Some((1, claims)) = data.split_first() {
        let token = signed_token(claims);
        if let Ok(identity) = runtime().block_on(verifier.verify(&token)) {
            let claims: serde_json::Value =
                serde_json::from_slice(claims).expect("accepted claims are JSON");
            let now = palisade::testing::unix_now() as f64;
            let leeway = 5.0;
            assert_eq!(
                claims["sub"].as_str(),
                Some(&*identity.user_id),
                "the user id is the sub"
            );
            let exp = claims["exp"].as_f64().expect("a numeric exp");
            assert!(
                exp + leeway >= now,
                "an expired token was accepted: exp {exp}"
            );
            if let Some(nbf) = claims.get("nbf").and_then(serde_json::Value::as_f64) {
                assert!(
                    nbf <= now + leeway,
                    "a token not yet valid was accepted: nbf {nbf}"
                );
            }
            return true;
        }
        return false;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let verified = runtime().block_on(verifier.verify(text));
    assert!(verified.is_err(), "accepted arbitrary input {text:?}");
    false
}

/// An HS256 token over exactly these claim bytes, signed with the fuzzing secret.
fn signed_token(claims: &[u8]) -> String {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let signing_input = format!("{}.{}", b64(br#"{"alg":"HS256","typ":"JWT"}"#), b64(claims));
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let signature = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &key,
        jsonwebtoken::Algorithm::HS256,
    )
    .expect("HMAC signing cannot fail");
    format!("{signing_input}.{signature}")
}

/// What a scripted client does next; the script is decoded from the fuzzer's bytes.
#[derive(Debug)]
enum Step {
    Connect,
    /// Connect speaking protocol v2 (many rooms per socket).
    ConnectV2,
    Send {
        client: usize,
        frame: String,
    },
    SendRaw {
        client: usize,
        opcode: OpCode,
        fin: bool,
        payload: Vec<u8>,
    },
    Advance(Duration),
    Close {
        client: usize,
        code: u16,
    },
    Drop {
        client: usize,
    },
}

const ROOMS: [&str; 3] = ["lobby", "side", "x"];

fn steps(data: &[u8]) -> Vec<Step> {
    let mut bytes = data.iter().copied();
    let mut steps = Vec::new();
    while let Some(op) = bytes.next() {
        let mut next = || bytes.next().unwrap_or(0);
        let client = (next() % 6) as usize;
        let step = match op % 12 {
            0 => Step::Connect,
            1 => Step::Send {
                client,
                frame: format!(r#"{{"type":"auth","body":"{}"}}"#, token_for(next())),
            },
            2 => Step::Send {
                client,
                frame: format!(
                    r#"{{"type":"join","room":"{}"}}"#,
                    ROOMS[next() as usize % 3]
                ),
            },
            // The room is v2's (a GarinChat session ignores it).
            3 => Step::Send {
                client,
                frame: format!(
                    r#"{{"type":"message","room":"{}","body":"m{}"}}"#,
                    ROOMS[client % 3],
                    next()
                ),
            },
            4 => Step::Send {
                client,
                frame: format!(r#"{{"type":"userleave","room":"{}"}}"#, ROOMS[client % 3]),
            },
            5 => Step::Advance(Duration::from_millis(u64::from(next()) * 20)),
            6 => Step::Close {
                client,
                code: [1000, 1001, 4000, 1005, 3000, 999][next() as usize % 6],
            },
            7 => Step::Drop { client },
            8 => {
                let len = (next() % 16) as usize;
                let frame: String = (0..len).map(|_| char::from(next() % 95 + 32)).collect();
                Step::Send { client, frame }
            }
            9 => {
                let opcode = [
                    OpCode::Text,
                    OpCode::Binary,
                    OpCode::Continuation,
                    OpCode::Ping,
                    OpCode::Pong,
                ][next() as usize % 5];
                let fin = next() % 2 == 0;
                let len = (next() % 8) as usize;
                let payload = (0..len).map(|_| next()).collect();
                Step::SendRaw {
                    client,
                    opcode,
                    fin,
                    payload,
                }
            }
            10 => Step::Send {
                client,
                frame: format!(
                    r#"{{"type":"join","room":"{}","username":"u{}"}}"#,
                    ROOMS[0],
                    next()
                ),
            },
            _ => Step::ConnectV2,
        };
        steps.push(step);
        if steps.len() >= 64 {
            break;
        }
    }
    steps
}

/// A token for one of four users, or garbage (`n % 5 == 4`).
fn token_for(n: u8) -> String {
    let user = n % 5;
    if user == 4 {
        return "garbage.token.value".to_owned();
    }
    let subject = format!("user{user}");
    mint_hs_token(&Secret::new(SECRET), &TokenRequest::new(&subject)).unwrap()
}

struct Client {
    ws: WebSocket<tokio::io::DuplexStream>,
    /// Close codes this client sent: the server may echo exactly these.
    sent_codes: Vec<u16>,
}

/// Target `session`: a script of clients connecting, authenticating, joining, chatting,
/// leaving, sending junk, closing and vanishing, with the clock moving, driven through the
/// real session state machine over in-memory sockets. After every step: no session is in two
/// rooms. At the end, once every client is gone: no room is left (no ghost), every close
/// code a client saw is in the table or an echo, and no unauthenticated frame reached a room.
pub(crate) fn session(data: &[u8]) -> SessionStats {
    let steps = steps(data);
    runtime().block_on(async {
        let mut stats = SessionStats::default();
        let gateway = palisade::testing::gateway(&settings(&[]));
        let mut clients: Vec<Option<Client>> = Vec::new();
        let mut sessions = Vec::new();
        // Sessions are numbered in the order clients connected: client `k` is session `k + 1`.
        let mut v2_sessions = HashSet::new();
        for step in steps {
            match step {
                Step::Connect | Step::ConnectV2 => {
                    if clients.len() < 6 {
                        let v2 = matches!(step, Step::ConnectV2);
                        let (client, session) = connect(&gateway, v2);
                        clients.push(Some(client));
                        sessions.push(session);
                        if v2 {
                            v2_sessions.insert(clients.len() as u64);
                        }
                    }
                }
                Step::Send { client, frame } => {
                    if let Some(Some(client)) = clients.get_mut(client) {
                        let _ = client
                            .ws
                            .write_frame(Frame::text(Payload::Owned(frame.into_bytes())))
                            .await;
                    }
                }
                Step::SendRaw {
                    client,
                    opcode,
                    fin,
                    payload,
                } => {
                    if let Some(Some(client)) = clients.get_mut(client) {
                        let _ = client
                            .ws
                            .write_frame(Frame::new(fin, opcode, None, Payload::Owned(payload)))
                            .await;
                    }
                }
                Step::Advance(by) => tokio::time::sleep(by).await,
                Step::Close { client, code } => {
                    if let Some(Some(client)) = clients.get_mut(client) {
                        client.sent_codes.push(code);
                        let _ = client.ws.write_frame(Frame::close(code, b"")).await;
                    }
                }
                Step::Drop { client } => {
                    if let Some(slot) = clients.get_mut(client) {
                        slot.take();
                    }
                }
            }
            tokio::task::yield_now().await;
            check_memberships(&gateway, &v2_sessions);
        }
        // Let every frame in flight arrive without moving the clock (no deadline fires), then
        // read what each client was sent. A client still in a room must have heard, last, the
        // room's true size (in each of its rooms, for v2).
        for _ in 0..64 {
            tokio::task::yield_now().await;
        }
        let memberships = palisade::testing::memberships(&gateway);
        for (index, client) in clients.iter_mut().enumerate() {
            let Some(client) = client else { continue };
            let last_totals = check_frames(client, &mut stats).await;
            let session = index as u64 + 1;
            let v2 = v2_sessions.contains(&session);
            for (room, _) in memberships.iter().filter(|(_, id)| *id == session) {
                let members = memberships
                    .iter()
                    .filter(|(other, _)| other == room)
                    .count();
                // GarinChat's frames name no room: its one room is "".
                let heard = last_totals.get(if v2 { room.as_str() } else { "" });
                assert_eq!(
                    heard.copied(),
                    Some(members as u64),
                    "session {session} in {room}: last totalUsers heard is not the room's size"
                );
                stats.total_checks += 1;
            }
        }
        drop(clients);
        // Every session ends once its client is gone. A panic inside one is re-raised here:
        // tokio would otherwise swallow it, and a replayed crash input would pass.
        for session in sessions {
            match tokio::time::timeout(Duration::from_secs(600), session).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                Ok(Err(err)) => panic!("session task failed: {err}"),
                Err(_) => panic!("a session outlived its client by ten (paused) minutes"),
            }
        }
        check_memberships(&gateway, &v2_sessions);
        assert_eq!(
            palisade::testing::room_count(&gateway),
            0,
            "a room outlived all its members"
        );
        stats
    })
}

/// What the clients of a script saw, so tests can tell a seed exercises something.
#[derive(Debug, Default)]
pub(crate) struct SessionStats {
    pub room_frames: usize,
    pub closes: usize,
    /// Members whose last `totalUsers` was checked against their room's size.
    pub total_checks: usize,
}

fn connect(gateway: &Arc<Gateway>, v2: bool) -> (Client, tokio::task::JoinHandle<()>) {
    let version = if v2 { Version::V2 } else { Version::GarinChat };
    let (ws, session) =
        palisade::testing::connect_in_memory(gateway, [127, 0, 0, 1].into(), version);
    (
        Client {
            ws,
            sent_codes: Vec::new(),
        },
        session,
    )
}

/// No session is in a room twice; a GarinChat session is in one room at most, a v2 session in
/// at most `MAX_ROOMS_PER_SOCKET` (16).
fn check_memberships(gateway: &Gateway, v2_sessions: &HashSet<u64>) {
    let memberships = palisade::testing::memberships(gateway);
    let mut rooms_of = HashMap::<u64, Vec<&str>>::new();
    for (room, session) in &memberships {
        rooms_of.entry(*session).or_default().push(room);
    }
    for (session, mut rooms) in rooms_of {
        let before = rooms.len();
        rooms.sort_unstable();
        rooms.dedup();
        assert_eq!(before, rooms.len(), "session {session} is in a room twice");
        let most = if v2_sessions.contains(&session) {
            16
        } else {
            1
        };
        assert!(
            rooms.len() <= most,
            "session {session} is in {} rooms: {memberships:?}",
            rooms.len()
        );
    }
}

/// Reads the frames buffered for a client (bounded) without moving the clock, checking close
/// codes and frames; returns the last `totalUsers` it heard in each room (by the frame's
/// `room`, "" for GarinChat's frames, which name none).
async fn check_frames(client: &mut Client, stats: &mut SessionStats) -> HashMap<String, u64> {
    let mut last_totals = HashMap::new();
    for _ in 0..1000 {
        // Frames arrive whole, so a zero timeout only ever cancels a read that has nothing.
        let frame = match tokio::time::timeout(Duration::ZERO, client.ws.read_frame()).await {
            Ok(Ok(frame)) => frame,
            _ => return last_totals,
        };
        match frame.opcode {
            OpCode::Close => {
                if frame.payload.len() >= 2 {
                    let code = u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
                    let ours = CloseCode::ALL.iter().any(|known| known.code() == code);
                    // An echo of a code this client itself sent is allowed too.
                    let echo = client.sent_codes.contains(&code);
                    assert!(
                        ours || echo,
                        "close code {code} is neither in the table nor an echo"
                    );
                }
                stats.closes += 1;
                return HashMap::new();
            }
            OpCode::Text => {
                let value: serde_json::Value =
                    serde_json::from_slice(&frame.payload).expect("the server sends JSON");
                if value["type"] == "join"
                    || value["type"] == "userleave"
                    || value["type"] == "message"
                {
                    let user = value["userId"].as_str().expect("frames carry a user id");
                    assert!(
                        user.starts_with("user"),
                        "an unauthenticated frame reached a room: {value}"
                    );
                    stats.room_frames += 1;
                }
                if let Some(total) = value["totalUsers"].as_u64() {
                    let room = value["room"].as_str().unwrap_or_default().to_owned();
                    last_totals.insert(room, total);
                }
            }
            _ => {}
        }
    }
    last_totals
}
