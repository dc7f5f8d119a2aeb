//! The hub over in-memory outboxes: fan-out, eviction, history frames, signals.

use super::*;
use crate::broker::LocalBroker;
use crate::observer::Observer;
use crate::outbox::OutboxReceiver;

fn member_with(id: SessionId, frames: usize, dialect: Dialect) -> (Member, OutboxReceiver) {
    let (outbox, rx) = Outbox::new(frames, 1 << 20);
    let name: Arc<str> = Arc::from(format!("user{id}"));
    (
        Member {
            session_id: id,
            user_id: name.clone(),
            display_name: name,
            outbox,
            dialect,
        },
        rx,
    )
}

fn member(id: SessionId) -> (Member, OutboxReceiver) {
    member_with(id, 4, Dialect::GarinChat)
}

fn settings(max_members: usize) -> RoomSettings {
    use crate::config::tests::env;
    RoomSettings {
        max_members,
        ..RoomSettings::from_env(&env(&[])).unwrap()
    }
}

fn hub(max_members: usize) -> Arc<Hub> {
    Hub::new(
        &settings(max_members),
        Arc::default(),
        Arc::new(LocalBroker),
        Observer::off(),
    )
}

fn join(hub: &Arc<Hub>, room: &str, member: Member) -> Result<Membership, RoomFull> {
    hub.join(room, member, &Request::default(), None, None)
}

#[test]
fn settings_at_and_past_their_limits() {
    use crate::config::tests::{assert_names, env};
    let settings = RoomSettings::from_env(&env(&[
        ("MAX_ROOM_MEMBERS", "1"),
        ("MAX_MEMBERS_LISTED", "1"),
        ("TYPING_INTERVAL_MS", "1"),
        ("SEEN_INTERVAL_MS", "1"),
    ]))
    .unwrap();
    assert_eq!(settings.max_members, 1);
    assert_eq!(settings.max_listed, 1);
    assert_eq!(settings.typing_interval, Duration::from_millis(1));
    assert_eq!(settings.seen_interval, Duration::from_millis(1));
    for var in [
        "MAX_ROOM_MEMBERS",
        "MAX_MEMBERS_LISTED",
        "TYPING_INTERVAL_MS",
        "SEEN_INTERVAL_MS",
    ] {
        assert_names(RoomSettings::from_env(&env(&[(var, "0")])), var);
    }
}

fn next_text(rx: &mut OutboxReceiver) -> String {
    match rx.try_recv().expect("a frame") {
        Outbound::Text(text) => String::from_utf8(text.bytes.to_vec()).unwrap(),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn rooms_live_while_they_have_members() {
    let hub = hub(2);
    let (alice, mut alice_rx) = member(1);
    let (bob, mut bob_rx) = member(2);
    let a = join(&hub, "lobby", alice).unwrap();
    assert!(next_text(&mut alice_rx).contains(r#""totalUsers":1"#));
    let b = join(&hub, "lobby", bob).unwrap();
    assert_eq!(
        join(&hub, "lobby", member(3).0).err(),
        Some(RoomFull),
        "at the cap"
    );
    assert_eq!(hub.member_count("lobby"), 2);
    assert!(next_text(&mut alice_rx).contains(r#""username":"user2","totalUsers":2"#));
    assert!(next_text(&mut bob_rx).contains(r#""totalUsers":2"#));
    assert_eq!(hub.member_count("lobby"), 2);

    b.publish("x");
    assert_eq!(
        next_text(&mut alice_rx),
        r#"{"type":"message","body":"x","username":"user2","userId":"user2"}"#
    );
    assert!(bob_rx.try_recv().is_none(), "no echo to the sender");

    drop(b);
    assert!(next_text(&mut alice_rx)
        .contains(r#""type":"userleave","username":"user2","totalUsers":1"#));
    drop(a);
    assert_eq!(hub.room_count(), 0);
}

#[test]
fn a_full_queue_evicts_instead_of_blocking() {
    let hub = hub(10);
    let (slow, _slow_rx) = member(1);
    let slow_outbox = slow.outbox.clone();
    let (fast, _fast_rx) = member(2);
    let _s = join(&hub, "lobby", slow).unwrap();
    let f = join(&hub, "lobby", fast).unwrap();
    // The slow member's queue (4) holds its own join and the fast one's: room for two more.
    for _ in 0..2 {
        f.publish("x");
    }
    assert!(
        !slow_outbox.is_evicted(),
        "a full queue is not yet an overflow"
    );
    f.publish("x");
    assert!(slow_outbox.is_evicted());
}

fn texts(rx: &mut OutboxReceiver) -> Vec<String> {
    std::iter::from_fn(|| rx.try_recv())
        .map(|frame| match frame {
            Outbound::Text(text) => String::from_utf8(text.bytes.to_vec()).unwrap(),
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

#[test]
fn members_with_the_extensions_get_offsets_and_the_others_garinchat_bytes() {
    let hub = hub(10);
    let (plain, mut plain_rx) = member_with(1, 64, Dialect::GarinChat);
    let (ext, mut ext_rx) = member_with(2, 64, Dialect::Extended);
    let (sender, _sender_rx) = member_with(3, 64, Dialect::GarinChat);
    let _p = join(&hub, "r", plain).unwrap();
    let _e = hub
        .join(
            "r",
            ext,
            &Request {
                history: 0,
                since: None,
            },
            None,
            None,
        )
        .unwrap();
    let s = join(&hub, "r", sender).unwrap();
    s.publish("one");
    s.publish("two");
    let plain_frames = texts(&mut plain_rx);
    assert_eq!(
        &plain_frames[plain_frames.len() - 2..],
        [
            r#"{"type":"message","body":"one","username":"user3","userId":"user3"}"#,
            r#"{"type":"message","body":"two","username":"user3","userId":"user3"}"#
        ]
    );
    let ext_frames = texts(&mut ext_rx);
    assert!(
        ext_frames[0].starts_with(
            r#"{"type":"join","username":"user2","totalUsers":2,"userId":"user2","epoch":""#
        ) && ext_frames[0].ends_with(r#","offset":0}"#),
        "{}",
        ext_frames[0]
    );
    assert_eq!(
        &ext_frames[ext_frames.len() - 2..],
        [
            r#"{"type":"message","body":"one","username":"user3","userId":"user3","offset":1}"#,
            r#"{"type":"message","body":"two","username":"user3","userId":"user3","offset":2}"#
        ]
    );
}

#[test]
fn a_joiner_gets_its_acknowledgement_then_history_then_live_messages() {
    let hub = hub(10);
    let (sender, _rx) = member_with(1, 64, Dialect::GarinChat);
    let s = join(&hub, "r", sender).unwrap();
    for n in 0..5 {
        s.publish(&format!("m{n}"));
    }
    let (late, mut late_rx) = member_with(2, 64, Dialect::Extended);
    let _l = hub
        .join(
            "r",
            late,
            &Request {
                history: 3,
                since: None,
            },
            None,
            None,
        )
        .unwrap();
    s.publish("live");
    let frames = texts(&mut late_rx);
    assert!(frames[0].contains(r#""type":"join""#) && frames[0].contains(r#""offset":5"#));
    for (frame, n) in frames[1..4].iter().zip(2..) {
        assert!(frame.contains(&format!(r#""body":"m{n}""#)), "{frame}");
        assert!(frame.contains(r#""history":true"#) && frame.contains(r#""ts":"#));
        assert!(frame.contains(&format!(r#""offset":{}"#, n + 1)));
    }
    assert_eq!(
        frames[4],
        r#"{"type":"message","body":"live","username":"user1","userId":"user1","offset":6}"#
    );
}

#[test]
fn history_is_held_to_half_the_joiners_queue_and_a_recovery_that_does_not_fit_says_so() {
    let hub = hub(10);
    let (sender, _rx) = member_with(1, 64, Dialect::GarinChat);
    let s = join(&hub, "r", sender).unwrap();
    for n in 0..20 {
        s.publish(&format!("m{n}"));
    }
    // A queue of 12 frames: half, less the acknowledgement's room, is 5.
    let (small, mut small_rx) = member_with(2, 12, Dialect::Extended);
    let position = hub.history.position("r").unwrap();
    let _m = hub
        .join(
            "r",
            small,
            &Request {
                history: 3,
                since: Some(crate::history::Position {
                    epoch: position.epoch,
                    offset: 10,
                }),
            },
            None,
            None,
        )
        .unwrap();
    let frames = texts(&mut small_rx);
    assert!(frames[0].contains(r#""recovered":false"#), "{}", frames[0]);
    assert_eq!(frames.len(), 1 + 3, "the newest three it asked for instead");
    assert!(frames[3].contains(r#""body":"m19""#));
}

#[test]
fn members_are_listed_once_per_user_up_to_the_cap() {
    let mut settings = settings(10);
    settings.max_listed = 2;
    let hub = Hub::new(
        &settings,
        Arc::default(),
        Arc::new(LocalBroker),
        Observer::off(),
    );
    let mut guards = Vec::new();
    for id in [3, 1, 2] {
        guards.push(join(&hub, "r", member_with(id, 64, Dialect::GarinChat).0).unwrap());
    }
    let (again, _rx) = member_with(9, 64, Dialect::GarinChat);
    let again = Member {
        user_id: Arc::from("user1"),
        display_name: Arc::from("user1"),
        ..again
    };
    guards.push(join(&hub, "r", again).unwrap());
    assert_eq!(
        &guards[0].members(None)[..],
        br#"{"type":"members","members":[{"userId":"user1","username":"user1"},{"userId":"user2","username":"user2"}],"total":3,"truncated":true}"#
    );
}

#[tokio::test(start_paused = true)]
async fn typing_and_seen_reach_only_members_with_the_extensions_coalesced() {
    let hub = hub(10);
    let (plain, mut plain_rx) = member_with(1, 64, Dialect::GarinChat);
    let (ext, mut ext_rx) = member_with(2, 64, Dialect::Extended);
    let (writer, mut writer_rx) = member_with(3, 64, Dialect::Extended);
    let extended = Request::default();
    let _p = join(&hub, "r", plain).unwrap();
    let _e = hub.join("r", ext, &extended, None, None).unwrap();
    let w = hub.join("r", writer, &extended, None, None).unwrap();
    w.publish("a");
    w.publish("b");
    let _ = (
        texts(&mut plain_rx),
        texts(&mut ext_rx),
        texts(&mut writer_rx),
    );
    w.typing();
    w.typing();
    assert_eq!(w.seen(3, None), Err(SeenAhead));
    assert_eq!(w.seen(1, None), Ok(()));
    assert_eq!(
        w.seen(2, None),
        Ok(()),
        "held: one relayed already this interval"
    );
    assert_eq!(
        texts(&mut ext_rx),
        [
            r#"{"type":"typing","username":"user3","userId":"user3"}"#,
            r#"{"type":"seen","username":"user3","userId":"user3","offset":1}"#
        ]
    );
    assert!(
        texts(&mut plain_rx).is_empty(),
        "GarinChat members get neither"
    );
    assert_eq!(
        texts(&mut writer_rx),
        [r#"{"type":"seen","username":"user3","userId":"user3","offset":1}"#],
        "typing is not echoed; a read position is (other devices of the user need it)"
    );
    tokio::time::advance(settings(10).seen_interval).await;
    hub.tick();
    assert_eq!(
        texts(&mut ext_rx),
        [r#"{"type":"seen","username":"user3","userId":"user3","offset":2}"#]
    );
}

#[test]
fn v2_members_get_every_room_frame_naming_the_room_and_their_answers_their_ids() {
    let hub = hub(10);
    let (plain, mut plain_rx) = member_with(1, 64, Dialect::GarinChat);
    let (v2, mut v2_rx) = member_with(2, 64, Dialect::V2);
    let p = join(&hub, "r", plain).unwrap();
    let v2 = hub
        .join("r", v2, &Request::default(), None, Some("j1"))
        .unwrap();
    let ack = texts(&mut v2_rx);
    assert_eq!(ack.len(), 1);
    assert!(
        ack[0].starts_with(r#"{"type":"join","id":"j1","room":"r","username":"user2","totalUsers":2,"userId":"user2","epoch":"#),
        "{}",
        ack[0]
    );
    assert!(ack[0].ends_with(r#","offset":0}"#), "{}", ack[0]);
    p.publish("hi");
    v2.typing();
    assert_eq!(
        texts(&mut v2_rx),
        [
            r#"{"type":"message","room":"r","body":"hi","username":"user1","userId":"user1","offset":1}"#
        ]
    );
    assert_eq!(
        texts(&mut plain_rx),
        [
            r#"{"type":"join","username":"user1","totalUsers":1,"userId":"user1"}"#,
            r#"{"type":"join","username":"user2","totalUsers":2,"userId":"user2"}"#,
        ],
        "GarinChat's bytes, and no typing"
    );
    assert_eq!(
        &v2.members(Some("q1"))[..],
        br#"{"type":"members","id":"q1","room":"r","members":[{"userId":"user1","username":"user1"},{"userId":"user2","username":"user2"}],"total":2,"truncated":false}"#
    );
    assert!(hub.has_user("r", "user1") && !hub.has_user("r", "user3"));
    drop(p);
    assert_eq!(
        texts(&mut v2_rx),
        [r#"{"type":"userleave","room":"r","username":"user1","totalUsers":1,"userId":"user1"}"#]
    );
}
