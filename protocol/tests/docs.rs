//! Every JSON example of `docs/protocol.md` is what the protocol types
//! encode: the ```json blocks and the inline `{"type":…}` / `{"error":…}`
//! examples each decode into the type they illustrate, and encode back to
//! the same text (white space aside). Examples shortened with `…` are not
//! JSON and are skipped; anything else that does not parse fails.

use palaver_protocol::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const DOC: &str = include_str!("../../docs/protocol.md");

/// The command types, whose examples are frames a client sends.
const COMMANDS: &[&str] = &["auth", "subscribe", "unsubscribe", "send", "edit", "react", "history", "typing", "read"];

/// The ```json blocks: one example per block, or one per line.
fn fenced() -> Vec<String> {
    let mut out = Vec::new();
    let mut block: Option<Vec<&str>> = None;
    for line in DOC.lines() {
        match (&mut block, line.trim()) {
            (None, "```json") => block = Some(Vec::new()),
            (Some(lines), "```") => {
                let whole = lines.join("\n");
                if serde_json::from_str::<Value>(&whole).is_ok() {
                    out.push(whole);
                } else {
                    out.extend(lines.iter().filter(|l| !l.trim().is_empty()).map(|l| l.to_string()));
                }
                block = None;
            }
            (Some(lines), _) => lines.push(line),
            (None, _) => {}
        }
    }
    out
}

/// The inline code spans that start like a frame, an event or an error body.
fn inline() -> Vec<String> {
    DOC.split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| span.starts_with(r#"{"type":"#) || span.starts_with(r#"{"error":"#))
        .map(str::to_string)
        .collect()
}

/// The text without white space outside strings.
fn minify(text: &str) -> String {
    let (mut out, mut quoted, mut escaped) = (String::new(), false, false);
    for c in text.chars() {
        if quoted {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
            }
        } else if c == '"' {
            quoted = true;
        } else if c.is_whitespace() {
            continue;
        }
        out.push(c);
    }
    out
}

/// `example` decodes as a `T` that encodes to the same text.
fn same<T: Serialize + DeserializeOwned>(example: &str) -> Result<(), String> {
    let value: T = serde_json::from_str(example).map_err(|e| format!("does not decode: {e}"))?;
    let text = serde_json::to_string(&value).map_err(|e| e.to_string())?;
    if text == minify(example) { Ok(()) } else { Err(format!("encodes back as {text}")) }
}

/// A command frame: checked as the node checks it, and written back.
fn frame(example: &str) -> Result<(), String> {
    let frame: Frame = serde_json::from_str(example).map_err(|e| format!("not a frame: {e}"))?;
    let id = frame.id;
    let command = Command::from_frame(frame).map_err(|e| format!("refused: {e}"))?;
    let text = serde_json::to_string(&command.frame(id)).map_err(|e| e.to_string())?;
    if text == minify(example) { Ok(()) } else { Err(format!("writes back as {text}")) }
}

/// Checks one example against the type it illustrates; `Ok(false)` for an
/// example outside the client protocol.
fn check(example: &str) -> Result<bool, String> {
    let v: Value = serde_json::from_str(example).map_err(|e| format!("not JSON: {e}"))?;
    let has = |key: &str| v.get(key).is_some();
    match v.get("type").and_then(Value::as_str) {
        Some("ok") if has("username") => same::<Reply<Authenticated>>(example),
        Some("ok") if has("last_seq") => same::<Reply<Subscribed>>(example),
        Some("ok") if has("seq") => same::<Reply<SendAck>>(example),
        Some("ok") if has("messages") => same::<Reply<HistoryPage>>(example),
        Some("ok") => same::<Reply<Done>>(example),
        Some("error") => same::<Reply<Done>>(example),
        Some("closed") => same::<StreamClosed>(example),
        // `typing` is a command and an event too: commands carry an `id`.
        Some(kind) if COMMANDS.contains(&kind) && has("id") => frame(example),
        Some(_) => same::<ServerEvent>(example),
        None if has("error") => same::<HttpError>(example),
        None if has("actor") => same::<AuditEntry>(example),
        None if has("visibility") => same::<Room>(example),
        None if has("from") => same::<Message>(example),
        // `GET /api/cluster`: an operations view, not part of this crate.
        None if has("nodes") => return Ok(false),
        None => Err("no protocol type illustrated".to_string()),
    }
    .map(|()| true)
}

#[test]
fn every_example_in_the_docs_is_a_protocol_value() {
    let (mut checked, mut shortened, mut failures) = (0, Vec::new(), Vec::new());
    for example in fenced().into_iter().chain(inline()) {
        match check(&example) {
            Ok(true) => checked += 1,
            Ok(false) => {}
            Err(_) if example.contains('…') && serde_json::from_str::<Value>(&example).is_err() => {
                shortened.push(example)
            }
            Err(why) => failures.push(format!("{example}\n    {why}")),
        }
    }
    assert!(failures.is_empty(), "examples that are not what the protocol types say:\n{}", failures.join("\n"));
    assert!(checked >= 25, "only {checked} examples found: did the extractor break?");
    assert!(shortened.len() <= 8, "more examples are shortened with … than expected: {shortened:#?}");
}

#[test]
fn the_extractor_finds_both_kinds_of_example() {
    assert!(fenced().iter().any(|e| e.contains(r#""visibility":"public""#)), "{:#?}", fenced());
    assert!(inline().iter().any(|e| e.starts_with(r#"{"type":"presence""#)), "{:#?}", inline());
    assert_eq!(minify(r#"{"a": "b c",  "d" :1}"#), r#"{"a":"b c","d":1}"#);
    assert_eq!(minify(r#"{"a": "x\" y"}"#), r#"{"a":"x\" y"}"#);
}
