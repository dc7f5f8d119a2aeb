//! Replays every committed fuzz corpus and regression input through the fuzz targets' bodies
//! on stable `cargo test`, so a crash once found (and fixed) can never come back unnoticed.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let mut replayed = 0;
    for dir in ["corpus", "regressions"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz")
            .join(dir)
            .join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target}: {} fails", path.display());
            replayed += 1;
        }
    }
    assert!(
        replayed >= 5,
        "{target}: only {replayed} inputs in the corpus"
    );
}

#[test]
fn client_frame_corpus() {
    replay("client_frame", harness::client_frame);
}

#[test]
fn ws_stream_corpus() {
    replay("ws_stream", harness::ws_stream);
}

#[test]
fn ws_chunks_corpus() {
    replay("ws_chunks", harness::ws_chunks);
}

#[test]
fn token_corpus() {
    replay("token", |data| {
        harness::token(data);
    });
}

/// The signed road of the token target reaches the claim checks: good claims pass them,
/// bad ones do not.
#[test]
fn token_seeds_exercise_the_claim_checks() {
    let seed = |name: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus/token")
            .join(name);
        harness::token(&std::fs::read(path).unwrap())
    };
    assert!(seed("signed_valid"));
    assert!(seed("signed_huge_exp"));
    for refused in [
        "signed_expired",
        "signed_no_exp",
        "signed_exp_string",
        "signed_future_nbf",
        "signed_sub_number",
        "signed_long_sub",
        "wrong_key",
    ] {
        assert!(!seed(refused), "{refused}");
    }
}

#[test]
fn session_corpus() {
    replay("session", |data| {
        harness::session(data);
    });
}

/// The session harness is not vacuous: its seeds reach rooms and see closes.
#[test]
fn session_seeds_exercise_rooms_and_closes() {
    let seed = |name: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus/session")
            .join(name);
        harness::session(&std::fs::read(path).unwrap())
    };
    let chat = seed("auth_join_chat_leave");
    assert!(chat.room_frames >= 3, "{chat:?}");
    let crowd = seed("many_clients");
    assert!(crowd.total_checks >= 1, "{crowd:?}");
    let violation = seed("message_before_join");
    assert!(violation.closes >= 1, "{violation:?}");
    let timeout = seed("no_auth_timeout");
    assert!(timeout.closes >= 1, "{timeout:?}");
    // v2: one client in two rooms (its third, "x", breaks the naming rules: an error frame),
    // one in one after leaving the other: three room sizes checked.
    let v2 = seed("v2_many_rooms");
    assert!(v2.total_checks >= 3 && v2.room_frames >= 2, "{v2:?}");
}
