//! Every protocol type against its exact JSON text: encoding gives the
//! text, decoding the text gives the value back. A renamed field, a
//! reordered one or a changed name fails here.

use std::fmt::Debug;

use palaver_protocol::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// `value` encodes to exactly `json`, and `json` decodes to `value`.
fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: T, json: &str) {
    assert_eq!(serde_json::to_string(&value).expect("encodes"), json, "encoding {value:?}");
    let back: T = serde_json::from_str(json).unwrap_or_else(|e| panic!("decoding {json}: {e}"));
    assert_eq!(back, value, "decoding {json}");
}

fn s(text: &str) -> String {
    text.to_string()
}

fn message(body: Option<&str>) -> Message {
    Message {
        room: s("lobby"),
        seq: 7,
        from: s("ann"),
        body: body.map(s),
        ts: 1_767_139_260_000,
        client_id: Some(s("m-7")),
        deleted: body.is_none(),
        ..Message::default()
    }
}

#[test]
fn events_have_their_exact_text() {
    let cases: Vec<(ServerEvent, &str)> = vec![
        (
            ServerEvent::Message(message(Some("hi"))),
            r#"{"type":"message","room":"lobby","seq":7,"from":"ann","body":"hi","ts":1767139260000,"client_id":"m-7"}"#,
        ),
        (
            ServerEvent::Message(message(None)),
            r#"{"type":"message","room":"lobby","seq":7,"from":"ann","ts":1767139260000,"client_id":"m-7","deleted":true}"#,
        ),
        (
            ServerEvent::Presence { room: s("lobby"), username: s("bob"), online: true },
            r#"{"type":"presence","room":"lobby","username":"bob","online":true}"#,
        ),
        (
            ServerEvent::Typing { room: s("lobby"), username: s("bob") },
            r#"{"type":"typing","room":"lobby","username":"bob"}"#,
        ),
        (
            ServerEvent::Member {
                room: s("lobby"),
                username: s("bob"),
                change: MemberChange::Joined,
                role: Some(Role::Member),
            },
            r#"{"type":"member","room":"lobby","username":"bob","change":"joined","role":"member"}"#,
        ),
        (
            ServerEvent::Member { room: s("lobby"), username: s("bob"), change: MemberChange::Kicked, role: None },
            r#"{"type":"member","room":"lobby","username":"bob","change":"kicked"}"#,
        ),
        (
            ServerEvent::Removed { room: s("lobby"), reason: Removal::Kicked },
            r#"{"type":"removed","room":"lobby","reason":"kicked"}"#,
        ),
        (ServerEvent::Deleted { room: s("lobby"), seq: 8 }, r#"{"type":"deleted","room":"lobby","seq":8}"#),
        (ServerEvent::RoomDeleted { room: s("lobby") }, r#"{"type":"room_deleted","room":"lobby"}"#),
        (
            ServerEvent::Message(Message {
                reply_to: Some(3),
                edited_at: Some(1_767_139_261_000),
                reactions: Reactions(vec![(s("👍"), vec![s("bob"), s("cy")]), (s(":tada:"), vec![s("ann")])]),
                ..message(Some("hi"))
            }),
            r#"{"type":"message","room":"lobby","seq":7,"from":"ann","body":"hi","ts":1767139260000,"client_id":"m-7","reply_to":3,"edited_at":1767139261000,"reactions":{"👍":["bob","cy"],":tada:":["ann"]}}"#,
        ),
        (
            ServerEvent::Message(Message {
                attachments: vec![Attachment {
                    id: s("lobby.0a1b"),
                    name: s("cat.png"),
                    kind: s("image/png"),
                    size: 42,
                }],
                ..message(Some("look"))
            }),
            r#"{"type":"message","room":"lobby","seq":7,"from":"ann","body":"look","ts":1767139260000,"client_id":"m-7","attachments":[{"id":"lobby.0a1b","name":"cat.png","type":"image/png","size":42}]}"#,
        ),
        (
            ServerEvent::Edited { room: s("lobby"), seq: 7, body: s("fixed"), edited_at: 5 },
            r#"{"type":"edited","room":"lobby","seq":7,"body":"fixed","edited_at":5}"#,
        ),
        (
            ServerEvent::Read { room: s("lobby"), username: s("bob"), seq: 7 },
            r#"{"type":"read","room":"lobby","username":"bob","seq":7}"#,
        ),
        (
            ServerEvent::Reaction { room: s("lobby"), seq: 7, emoji: s("👍"), username: s("bob"), on: true },
            r#"{"type":"reaction","room":"lobby","seq":7,"emoji":"👍","username":"bob","on":true}"#,
        ),
    ];
    for (event, json) in cases {
        check(event, json);
    }
    check(StreamClosed { code: close::TOKEN_REVOKED }, r#"{"type":"closed","code":4003}"#);
}

#[test]
fn borrowed_strings_encode_like_owned_ones() {
    let owned = ServerEvent::Message(message(Some("hi")));
    let borrowed: ServerEvent<&str> = ServerEvent::Message(Message {
        room: "lobby",
        seq: 7,
        from: "ann",
        body: Some("hi"),
        ts: 1_767_139_260_000,
        client_id: Some("m-7"),
        deleted: false,
        ..Message::default()
    });
    assert_eq!(serde_json::to_string(&borrowed).ok(), serde_json::to_string(&owned).ok());
    let page = HistoryPage { messages: vec![message(Some("hi"))], next: None };
    let borrowed_page: HistoryPage<&str> = serde_json::from_str(r#"{"messages":[]}"#).expect("borrows");
    assert!(borrowed_page.messages.is_empty());
    assert_eq!(ServerEvent::Typing { room: "r", username: "u" }.room(), "r");
    check(
        page,
        r#"{"messages":[{"room":"lobby","seq":7,"from":"ann","body":"hi","ts":1767139260000,"client_id":"m-7"}]}"#,
    );
}

#[test]
fn replies_have_their_exact_text() {
    check(
        Reply::<_>::Ok { id: Some(1), answer: Authenticated { username: s("ann") } },
        r#"{"type":"ok","id":1,"username":"ann"}"#,
    );
    check(Reply::<_>::Ok { id: Some(3), answer: Subscribed { last_seq: 42 } }, r#"{"type":"ok","id":3,"last_seq":42}"#);
    check(
        Reply::<_>::Ok { id: Some(5), answer: SendAck { seq: 43, ts: 9 } },
        r#"{"type":"ok","id":5,"seq":43,"ts":9}"#,
    );
    check(Reply::<_>::Ok { id: Some(4), answer: Done {} }, r#"{"type":"ok","id":4}"#);
    check(Reply::<_>::Ok { id: None, answer: Done {} }, r#"{"type":"ok","id":null}"#);
    check(
        Reply::<_>::Ok {
            id: Some(6),
            answer: HistoryPage::<String> { messages: vec![], next: Some(Page::Before(40)) },
        },
        r#"{"type":"ok","id":6,"messages":[],"next":{"before":40}}"#,
    );
    check(
        Reply::<_>::Ok { id: Some(6), answer: HistoryPage::<String> { messages: vec![], next: Some(Page::After(12)) } },
        r#"{"type":"ok","id":6,"messages":[],"next":{"after":12}}"#,
    );
    check(
        Reply::<Done>::Error {
            id: Some(7),
            error: ErrorBody { code: Code::Forbidden, message: s("you are muted in this room"), retry_after_ms: None },
        },
        r#"{"type":"error","id":7,"code":"forbidden","message":"you are muted in this room"}"#,
    );
    check(
        Reply::<Done>::Error {
            id: None,
            error: ErrorBody { code: Code::RateLimited, message: s("too many requests"), retry_after_ms: Some(250) },
        },
        r#"{"type":"error","id":null,"code":"rate_limited","message":"too many requests","retry_after_ms":250}"#,
    );
    check(
        HttpError {
            error: ErrorBody { code: Code::NotFound, message: s("room lobby not found"), retry_after_ms: None },
        },
        r#"{"error":{"code":"not_found","message":"room lobby not found"}}"#,
    );
    check(
        HttpError { error: ErrorBody { code: Code::Unavailable, message: s("busy"), retry_after_ms: Some(1500) } },
        r#"{"error":{"code":"unavailable","message":"busy","retry_after_ms":1500}}"#,
    );
    check(SendAck { seq: 43, ts: 1_767_139_262_000 }, r#"{"seq":43,"ts":1767139262000}"#);
}

#[test]
fn a_reply_is_told_by_its_type() {
    let error = r#"{"type":"error","id":4,"code":"bad_request","message":"no"}"#;
    let reply: Reply<Subscribed> = serde_json::from_str(error).expect("an error reply");
    assert!(matches!(reply, Reply::Error { id: Some(4), error } if error.code == Code::BadRequest));
    assert!(serde_json::from_str::<Reply<Subscribed>>(r#"{"type":"ok","id":4}"#).is_err(), "no last_seq");
    assert!(serde_json::from_str::<Reply<Done>>(r#"{"type":"fine","id":4}"#).is_err());
}

#[test]
fn views_have_their_exact_text() {
    let room = Room {
        room: s("lobby"),
        title: s("Lobby"),
        visibility: Visibility::Public,
        owner: Some(s("ann")),
        created_at: 1_767_139_200_000,
        last_seq: 42,
        unread: Some(3),
        retention_days: Some(30),
    };
    check(
        room.clone(),
        r#"{"room":"lobby","title":"Lobby","visibility":"public","owner":"ann","created_at":1767139200000,"last_seq":42,"unread":3,"retention_days":30}"#,
    );
    check(
        Room { unread: None, visibility: Visibility::Direct, title: s(""), retention_days: None, ..room },
        r#"{"room":"lobby","title":"","visibility":"direct","owner":"ann","created_at":1767139200000,"last_seq":42}"#,
    );
    check(
        Member { room: Some(s("lobby")), username: s("bob"), role: Role::Member, online: None },
        r#"{"room":"lobby","username":"bob","role":"member"}"#,
    );
    check(
        Member { room: None, username: s("ann"), role: Role::Owner, online: Some(true) },
        r#"{"username":"ann","role":"owner","online":true}"#,
    );
    check(
        message(Some("hi")),
        r#"{"room":"lobby","seq":7,"from":"ann","body":"hi","ts":1767139260000,"client_id":"m-7"}"#,
    );
    check(
        message(None),
        r#"{"room":"lobby","seq":7,"from":"ann","ts":1767139260000,"client_id":"m-7","deleted":true}"#,
    );
    let audit = AuditEntry {
        ts: 1_767_139_300_000,
        actor: s("ann"),
        action: s("role"),
        target: Some(s("bob")),
        detail: Some(s("moderator")),
    };
    check(audit.clone(), r#"{"ts":1767139300000,"actor":"ann","action":"role","target":"bob","detail":"moderator"}"#);
    check(
        AuditEntry { action: s("kick"), detail: None, ..audit },
        r#"{"ts":1767139300000,"actor":"ann","action":"kick","target":"bob"}"#,
    );
    check(Registered { username: s("ann") }, r#"{"username":"ann"}"#);
    check(
        Login { token: s("t"), username: s("ann"), expires_at: 1_767_225_600_000 },
        r#"{"token":"t","username":"ann","expires_at":1767225600000}"#,
    );
    check(Me { username: s("ann"), role: UserRole::Admin }, r#"{"username":"ann","role":"admin"}"#);
    check(Ticket { ticket: s("x") }, r#"{"ticket":"x"}"#);
    check(
        PollAnswer { events: vec![ServerEvent::Deleted { room: s("a"), seq: 2 }], cursor: s("a:13,b:40") },
        r#"{"events":[{"type":"deleted","room":"a","seq":2}],"cursor":"a:13,b:40"}"#,
    );
}

#[test]
fn readers_accept_what_a_lenient_server_leaves_out() {
    let bare: Message = serde_json::from_str(r#"{"room":"r","seq":1,"from":"a","body":null,"ts":2}"#).expect("bare");
    assert_eq!((bare.body, bare.client_id, bare.deleted), (None, None, false));
    let room: Room =
        serde_json::from_str(r#"{"room":"r","visibility":"private","created_at":1,"last_seq":0,"extra":1}"#)
            .expect("room");
    assert_eq!((room.title.as_str(), room.owner), ("", None));
}

#[test]
fn request_bodies_have_their_exact_text() {
    check(
        Credentials { username: s("ann"), password: s("correct horse") },
        r#"{"username":"ann","password":"correct horse"}"#,
    );
    check(
        NewRoom { room: s("lobby"), title: Some(s("Lobby")), visibility: Some(s("public")) },
        r#"{"room":"lobby","title":"Lobby","visibility":"public"}"#,
    );
    check(NewRoom { room: s("lobby"), title: None, visibility: None }, r#"{"room":"lobby"}"#);
    check(
        NewMessage { body: Some(s("hello")), client_id: Some(s("m1")), reply_to: None, attachments: vec![] },
        r#"{"body":"hello","client_id":"m1"}"#,
    );
    check(
        NewMessage { body: Some(s("re")), client_id: Some(s("m2")), reply_to: Some(4), attachments: vec![] },
        r#"{"body":"re","client_id":"m2","reply_to":4}"#,
    );
    check(
        NewMessage { body: Some(s("see")), client_id: Some(s("m3")), reply_to: None, attachments: vec![s("a.1f")] },
        r#"{"body":"see","client_id":"m3","attachments":["a.1f"]}"#,
    );
    check(NewMessage::<String> { body: None, client_id: None, reply_to: None, attachments: vec![] }, r#"{}"#);
    check(UserTarget { username: s("bob") }, r#"{"username":"bob"}"#);
    check(RoleChange { username: s("bob"), role: s("moderator") }, r#"{"username":"bob","role":"moderator"}"#);
    check(Mute { username: s("bob"), seconds: 60 }, r#"{"username":"bob","seconds":60}"#);
    check(ReadMarker { seq: 43 }, r#"{"seq":43}"#);
}

/// Every variant of a named enum: serde's name is `as_str`, and both lead back.
fn names_agree<T: Serialize + DeserializeOwned + PartialEq + Debug + Copy + std::fmt::Display>(
    all: &[T],
    as_str: fn(T) -> &'static str,
    from_name: fn(&str) -> Option<T>,
) {
    for &v in all {
        check(v, &format!("\"{}\"", as_str(v)));
        assert_eq!(from_name(as_str(v)), Some(v));
        assert_eq!(v.to_string(), as_str(v));
    }
}

#[test]
fn named_enums_agree_with_serde() {
    names_agree(Code::ALL, Code::as_str, Code::from_name);
    names_agree(Visibility::ALL, Visibility::as_str, Visibility::from_name);
    names_agree(Role::ALL, Role::as_str, Role::from_name);
    names_agree(UserRole::ALL, UserRole::as_str, UserRole::from_name);
    names_agree(MemberChange::ALL, MemberChange::as_str, MemberChange::from_name);
    names_agree(Removal::ALL, Removal::as_str, Removal::from_name);
    assert_eq!(Role::from_name("admin"), None);
    assert!(Role::Moderator == "moderator" && Role::Owner > Role::Moderator && Role::Moderator > Role::Member);
    assert!(UserRole::Admin == *"admin");
}

#[test]
fn codes_have_their_http_status() {
    let statuses: Vec<(Code, u16)> = Code::ALL.iter().map(|c| (*c, c.status())).collect();
    assert_eq!(
        statuses,
        [
            (Code::BadRequest, 400),
            (Code::Unauthorized, 401),
            (Code::Forbidden, 403),
            (Code::NotFound, 404),
            (Code::Conflict, 409),
            (Code::Timeout, 408),
            (Code::TooLarge, 413),
            (Code::RateLimited, 429),
            (Code::Unavailable, 503),
            (Code::Internal, 500),
        ]
    );
    assert_eq!(Code::parse("method_not_allowed"), Code::Internal);
    assert_eq!(serde_json::from_str::<Code>(r#""teapot""#).ok(), Some(Code::Internal));
}

/// A frame's text, parsed and checked as the node does.
fn parse(text: &str) -> Result<Command, String> {
    let frame: Frame = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Command::from_frame(frame).map_err(|e| e.to_string())
}

#[test]
fn frames_become_commands_and_back() {
    let cases = [
        (r#"{"type":"auth","id":1,"token":"t"}"#, Command::Auth { token: s("t") }),
        (r#"{"type":"subscribe","id":2,"room":"a","since":5}"#, Command::Subscribe { room: s("a"), since: Some(5) }),
        (r#"{"type":"subscribe","id":2,"room":"a"}"#, Command::Subscribe { room: s("a"), since: None }),
        (r#"{"type":"unsubscribe","id":3,"room":"a"}"#, Command::Unsubscribe { room: s("a") }),
        (
            r#"{"type":"send","id":4,"room":"a","body":"hi","client_id":"c"}"#,
            Command::Send { room: s("a"), body: s("hi"), client_id: s("c"), reply_to: None, attachments: vec![] },
        ),
        (
            r#"{"type":"send","id":4,"room":"a","body":"re","client_id":"c","reply_to":2}"#,
            Command::Send { room: s("a"), body: s("re"), client_id: s("c"), reply_to: Some(2), attachments: vec![] },
        ),
        (
            r#"{"type":"send","id":4,"room":"a","body":"see","client_id":"c","attachments":["a.1f"]}"#,
            Command::Send {
                room: s("a"),
                body: s("see"),
                client_id: s("c"),
                reply_to: None,
                attachments: vec![s("a.1f")],
            },
        ),
        (
            r#"{"type":"edit","id":6,"room":"a","body":"fixed","seq":2}"#,
            Command::Edit { room: s("a"), seq: 2, body: s("fixed") },
        ),
        (
            r#"{"type":"react","id":7,"room":"a","seq":2,"emoji":"👍","on":false}"#,
            Command::React { room: s("a"), seq: 2, emoji: s("👍"), on: false },
        ),
        (
            r#"{"type":"history","id":5,"room":"a","after":3,"limit":9}"#,
            Command::History { room: s("a"), page: Page::After(3), limit: Some(9) },
        ),
        (
            r#"{"type":"history","id":5,"room":"a","before":40}"#,
            Command::History { room: s("a"), page: Page::Before(40), limit: None },
        ),
        (r#"{"type":"history","id":5,"room":"a"}"#, Command::History { room: s("a"), page: Page::NEWEST, limit: None }),
        (r#"{"type":"typing","id":6,"room":"a"}"#, Command::Typing { room: s("a") }),
        (r#"{"type":"read","id":7,"room":"a","seq":43}"#, Command::Read { room: s("a"), seq: 43 }),
    ];
    for (text, command) in cases {
        assert_eq!(parse(text), Ok(command.clone()), "{text}");
        let frame: Frame = serde_json::from_str(text).expect("frame");
        let id = frame.id;
        assert_eq!(serde_json::to_string(&command.clone().frame(id)).ok().as_deref(), Some(text));
        let without_id = serde_json::to_string(&command).expect("encodes");
        assert_eq!(serde_json::from_str::<Command>(&without_id).ok(), Some(command));
    }
    assert_eq!(parse(r#"{"type":"typing","room":"a","extra":[1]}"#), Ok(Command::Typing { room: s("a") }));
}

#[test]
fn bad_frames_say_what_is_wrong() {
    for (text, message) in [
        (r#"{"id":1}"#, r#"a frame needs "type""#),
        (r#"{"type":"auth"}"#, r#"auth needs "token""#),
        (r#"{"type":"send","room":"a","body":"x"}"#, r#"send needs "client_id""#),
        (r#"{"type":"send","room":"a","client_id":"x"}"#, r#"send needs "body""#),
        (r#"{"type":"read","room":"a"}"#, r#"read needs "seq""#),
        (r#"{"type":"typing"}"#, r#"typing needs "room""#),
        (r#"{"type":"fly"}"#, r#"unknown command type "fly""#),
        (r#"{"type":"history","before":1,"after":2}"#, r#"history takes "before" or "after", not both"#),
    ] {
        assert_eq!(parse(text), Err(message.to_string()), "{text}");
    }
    for text in [r#"{"type":"send","id":"x"}"#, "[1,2]", r#"{"type":5}"#] {
        let err = parse(text).expect_err(text);
        assert!(err.contains("invalid type"), "{text}: {err}");
    }
    assert!(serde_json::from_str::<Command>(r#"{"type":"fly"}"#).is_err());
}

#[test]
fn a_frame_id_is_read_from_any_object() {
    let id = |text: &str| serde_json::from_str::<FrameId>(text).ok().and_then(|f| f.id);
    assert_eq!(id(r#"{"type":5,"id":7}"#), Some(7));
    assert_eq!(id(r#"{"type":"presence","room":"r"}"#), None);
    assert_eq!(id(r#"{"id":null}"#), None);
    assert_eq!(id("nonsense"), None);
}
