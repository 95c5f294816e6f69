//! The input line read as a command: a pure parse, no I/O and no state.
//!
//! A line starting with `/` is a command; `//` at its start stands for a
//! literal `/` (so `//shrug` sends `/shrug`); anything else is a message,
//! sent as typed. Names are checked here against the protocol's rules so a
//! typo gets a readable answer at once, without a round trip.

/// What one submitted input line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Nothing to do (an empty or blank line).
    Empty,
    /// Send this body to the current room.
    Message(String),
    /// Run a command.
    Command(Command),
}

/// A slash command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `/join ROOM`: join the room (or switch to it) and show it.
    Join(String),
    /// `/leave`: leave the current room.
    Leave,
    /// `/create ROOM [private]`: create a room, public unless `private`.
    Create {
        /// Room id.
        room: String,
        /// Private (invited users only) rather than public.
        private: bool,
    },
    /// `/dm USER`: open the direct room with USER.
    Dm(String),
    /// `/invite USER`: invite USER to the current room.
    Invite(String),
    /// `/who`: the current room's members and who is online.
    Who,
    /// `/reply TEXT`: answer the newest message of someone else.
    Reply(String),
    /// `/edit TEXT`: change the text of one's newest message.
    Edit(String),
    /// `/react EMOJI`: add (or, chosen again, take back) a reaction to the
    /// newest message of someone else.
    React(String),
    /// `/attach PATH`: upload the file and send it to the current room.
    Attach(String),
    /// `/search WORDS`: messages holding every word, in every room one may read.
    Search(String),
    /// `/quit`: leave the program.
    Quit,
    /// `/help`: list the commands and keys.
    Help,
}

/// Why a line is not a valid command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// No command of that name.
    #[error("unknown command /{0}: /help lists the commands (start with // to send a line beginning with /)")]
    Unknown(String),
    /// The command needs an argument that is missing.
    #[error("/{command} needs {what}: /{command} {usage}")]
    Missing {
        /// Command name.
        command: &'static str,
        /// What is missing, in words.
        what: &'static str,
        /// Its arguments, as `/help` shows them.
        usage: &'static str,
    },
    /// More arguments than the command takes.
    #[error("/{command} takes {usage}, not {extra:?}")]
    Extra {
        /// Command name.
        command: &'static str,
        /// Its arguments, as `/help` shows them.
        usage: &'static str,
        /// The first argument too many.
        extra: String,
    },
    /// A room id the server would refuse.
    #[error("{0:?} is not a room name: use 1 to 64 of a-z, 0-9, _ and -")]
    BadRoom(String),
    /// A username the server would refuse.
    #[error("{0:?} is not a username: use 3 to 32 of a-z, 0-9, _, . and -")]
    BadUser(String),
}

/// One line per command, for `/help`.
pub const HELP: &[&str] = &[
    "/join ROOM            join a room (or switch to one you are in)",
    "/leave                leave the current room",
    "/create ROOM [private] create a room (public unless private)",
    "/dm USER              talk to USER in a direct room",
    "/invite USER          invite USER to the current room",
    "/who                  members of the current room, and who is online",
    "/reply TEXT           answer the newest message of someone else",
    "/edit TEXT            change the text of your newest message",
    "/react EMOJI          react to the newest message of someone else (again: take it back)",
    "/attach PATH          upload a file and send it to the current room",
    "/search WORDS         find messages holding every word, in every room you may read",
    "/quit                 leave (Ctrl-C too)",
    "//text                send a line that starts with /",
    "keys: Enter send · Tab/Shift-Tab, Ctrl-N/Ctrl-P rooms · PageUp/PageDown scroll",
];

/// Reads one submitted input line.
pub fn parse(line: &str) -> Result<Input, ParseError> {
    // A line is sent as typed, but a trailing newline from a paste is not
    // part of it, and a blank line sends nothing.
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Ok(Input::Empty);
    }
    if let Some(literal) = line.strip_prefix("//") {
        return Ok(Input::Message(format!("/{literal}")));
    }
    let Some(rest) = line.strip_prefix('/') else {
        return Ok(Input::Message(line.to_string()));
    };
    // `/ join` is not `/join`: the name follows the slash directly.
    if rest.starts_with(char::is_whitespace) {
        return Err(ParseError::Unknown(String::new()));
    }
    let mut words = rest.split_whitespace();
    let name = words.next().unwrap_or_default().to_lowercase();
    let args: Vec<&str> = words.collect();
    let command = match name.as_str() {
        "join" | "j" => Command::Join(room_arg("join", &args)?),
        "leave" | "part" => {
            no_args("leave", "no argument", &args)?;
            Command::Leave
        }
        "create" => {
            let room = one_room("create", "ROOM [private]", &args)?;
            let private = match args.get(1).map(|a| a.to_lowercase()) {
                None => false,
                Some(v) if v == "private" => true,
                Some(v) if v == "public" => false,
                Some(v) => return Err(ParseError::Extra { command: "create", usage: "ROOM [private]", extra: v }),
            };
            if let Some(extra) = args.get(2) {
                return Err(ParseError::Extra { command: "create", usage: "ROOM [private]", extra: extra.to_string() });
            }
            Command::Create { room, private }
        }
        "dm" | "msg" => Command::Dm(user_arg("dm", &args)?),
        "invite" => Command::Invite(user_arg("invite", &args)?),
        "who" | "members" => {
            no_args("who", "no argument", &args)?;
            Command::Who
        }
        "reply" | "re" => Command::Reply(text_arg("reply", "TEXT", rest)?),
        "edit" => Command::Edit(text_arg("edit", "TEXT", rest)?),
        "search" | "find" => Command::Search(text_arg("search", "WORDS", rest)?),
        "react" => {
            let emoji =
                args.first().ok_or(ParseError::Missing { command: "react", what: "an emoji", usage: "EMOJI" })?;
            if let Some(extra) = args.get(1) {
                return Err(ParseError::Extra { command: "react", usage: "EMOJI", extra: extra.to_string() });
            }
            Command::React(emoji.to_string())
        }
        "attach" | "file" => {
            let path = rest.split_once(char::is_whitespace).map_or("", |(_, path)| path).trim();
            if path.is_empty() {
                return Err(ParseError::Missing { command: "attach", what: "a path", usage: "PATH" });
            }
            Command::Attach(path.to_string())
        }
        "quit" | "exit" | "q" => Command::Quit,
        "help" | "h" | "?" => Command::Help,
        _ => return Err(ParseError::Unknown(name)),
    };
    Ok(Input::Command(command))
}

/// Whether `room` is an id the server accepts: a created room's
/// (`^[a-z0-9_-]{1,64}$`) or a direct room's (`dm:a:b`).
pub fn valid_room(room: &str) -> bool {
    let plain = |r: &str| {
        (1..=64).contains(&r.len())
            && r.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    };
    match room.strip_prefix("dm:").and_then(|r| r.split_once(':')) {
        Some((a, b)) => valid_user(a) && valid_user(b),
        None => plain(room),
    }
}

/// Whether `user` is a username the server accepts (`^[a-z0-9_.-]{3,32}$`).
pub fn valid_user(user: &str) -> bool {
    (3..=32).contains(&user.len())
        && user.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'))
}

/// The rest of the line after the command's name, as typed (less the one
/// space that follows the name).
fn text_arg(command: &'static str, usage: &'static str, rest: &str) -> Result<String, ParseError> {
    let text = rest.split_once(char::is_whitespace).map_or("", |(_, text)| text);
    if text.trim().is_empty() {
        return Err(ParseError::Missing { command, what: "some text", usage });
    }
    Ok(text.to_string())
}

fn no_args(command: &'static str, usage: &'static str, args: &[&str]) -> Result<(), ParseError> {
    match args.first() {
        None => Ok(()),
        Some(extra) => Err(ParseError::Extra { command, usage, extra: extra.to_string() }),
    }
}

fn one_room(command: &'static str, usage: &'static str, args: &[&str]) -> Result<String, ParseError> {
    let room = args.first().ok_or(ParseError::Missing { command, what: "a room name", usage })?;
    // `#lobby` is how the room list shows it; accept it back.
    let room = room.strip_prefix('#').unwrap_or(room);
    if !valid_room(room) {
        return Err(ParseError::BadRoom(room.to_string()));
    }
    Ok(room.to_string())
}

fn room_arg(command: &'static str, args: &[&str]) -> Result<String, ParseError> {
    let room = one_room(command, "ROOM", args)?;
    if let Some(extra) = args.get(1) {
        return Err(ParseError::Extra { command, usage: "ROOM", extra: extra.to_string() });
    }
    Ok(room)
}

fn user_arg(command: &'static str, args: &[&str]) -> Result<String, ParseError> {
    let user = args.first().ok_or(ParseError::Missing { command, what: "a username", usage: "USER" })?;
    let user = user.strip_prefix('@').unwrap_or(user);
    if !valid_user(user) {
        return Err(ParseError::BadUser(user.to_string()));
    }
    if let Some(extra) = args.get(1) {
        return Err(ParseError::Extra { command, usage: "USER", extra: extra.to_string() });
    }
    Ok(user.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One case: a line and what it parses to (`Err` by the error's text
    /// start, so the table stays readable).
    fn check(cases: &[(&str, Result<Input, &str>)]) {
        for (line, want) in cases {
            let got = parse(line);
            match (want, &got) {
                (Ok(want), Ok(got)) => assert_eq!(got, want, "line {line:?}"),
                (Err(prefix), Err(e)) => {
                    let text = e.to_string();
                    assert!(text.starts_with(prefix), "line {line:?}: error {text:?} should start with {prefix:?}")
                }
                _ => panic!("line {line:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    fn msg(s: &str) -> Result<Input, &'static str> {
        Ok(Input::Message(s.to_string()))
    }

    fn cmd(c: Command) -> Result<Input, &'static str> {
        Ok(Input::Command(c))
    }

    #[test]
    fn messages_are_sent_as_typed() {
        check(&[
            ("hello", msg("hello")),
            ("  two  spaces  kept ", msg("  two  spaces  kept ")),
            ("hello\n", msg("hello")),
            ("a/b is not a command", msg("a/b is not a command")),
            ("<b>not markup</b> \u{1b}[31m", msg("<b>not markup</b> \u{1b}[31m")),
            ("", Ok(Input::Empty)),
            ("   ", Ok(Input::Empty)),
            ("\t\n", Ok(Input::Empty)),
        ]);
    }

    #[test]
    fn a_double_slash_is_a_literal_slash() {
        check(&[
            ("//shrug", msg("/shrug")),
            ("///", msg("//")),
            ("// leading space", msg("/ leading space")),
            ("//join lobby", msg("/join lobby")),
        ]);
    }

    #[test]
    fn commands_and_their_arguments() {
        check(&[
            ("/join lobby", cmd(Command::Join("lobby".into()))),
            ("/join #lobby", cmd(Command::Join("lobby".into()))),
            ("/join dm:ann:bob", cmd(Command::Join("dm:ann:bob".into()))),
            ("  /join lobby", msg("  /join lobby")),
            ("/join    lobby   ", cmd(Command::Join("lobby".into()))),
            ("/JOIN lobby", cmd(Command::Join("lobby".into()))),
            ("/j lobby", cmd(Command::Join("lobby".into()))),
            ("/leave", cmd(Command::Leave)),
            ("/leave  ", cmd(Command::Leave)),
            ("/create dev", cmd(Command::Create { room: "dev".into(), private: false })),
            ("/create dev private", cmd(Command::Create { room: "dev".into(), private: true })),
            ("/create dev PRIVATE", cmd(Command::Create { room: "dev".into(), private: true })),
            ("/create dev public", cmd(Command::Create { room: "dev".into(), private: false })),
            ("/dm bob", cmd(Command::Dm("bob".into()))),
            ("/dm @bob", cmd(Command::Dm("bob".into()))),
            ("/invite carol.x", cmd(Command::Invite("carol.x".into()))),
            ("/who", cmd(Command::Who)),
            ("/quit", cmd(Command::Quit)),
            ("/quit now", cmd(Command::Quit)),
            ("/help", cmd(Command::Help)),
            ("/reply sure, see you", cmd(Command::Reply("sure, see you".into()))),
            ("/search rocket launch", cmd(Command::Search("rocket launch".into()))),
            ("/re  two  spaces", cmd(Command::Reply(" two  spaces".into()))),
            ("/edit fixed typo", cmd(Command::Edit("fixed typo".into()))),
            ("/react 👍", cmd(Command::React("👍".into()))),
            ("/react :tada:", cmd(Command::React(":tada:".into()))),
            ("/attach ~/my cat.png", cmd(Command::Attach("~/my cat.png".into()))),
        ]);
    }

    #[test]
    fn bad_commands_say_why() {
        check(&[
            ("/join", Err("/join needs a room name: /join ROOM")),
            ("/join   ", Err("/join needs a room name")),
            ("/join a b", Err("/join takes ROOM, not \"b\"")),
            ("/join Lobby", Err("\"Lobby\" is not a room name")),
            ("/join dm:ann", Err("\"dm:ann\" is not a room name")),
            ("/join dm:ann:B", Err("\"dm:ann:B\" is not a room name")),
            (&format!("/join {}", "x".repeat(65)), Err("\"xxx")),
            ("/create", Err("/create needs a room name: /create ROOM [private]")),
            ("/create dev secret", Err("/create takes ROOM [private], not \"secret\"")),
            ("/create dev private now", Err("/create takes ROOM [private], not \"now\"")),
            ("/dm", Err("/dm needs a username: /dm USER")),
            ("/dm al", Err("\"al\" is not a username")),
            ("/dm bob carol", Err("/dm takes USER, not \"carol\"")),
            ("/invite", Err("/invite needs a username")),
            ("/leave lobby", Err("/leave takes no argument, not \"lobby\"")),
            ("/who everyone", Err("/who takes no argument")),
            ("/reply", Err("/reply needs some text: /reply TEXT")),
            ("/edit   ", Err("/edit needs some text")),
            ("/react", Err("/react needs an emoji: /react EMOJI")),
            ("/attach", Err("/attach needs a path: /attach PATH")),
            ("/react 👍 🎉", Err("/react takes EMOJI, not \"🎉\"")),
            ("/frobnicate", Err("unknown command /frobnicate")),
            ("/", Err("unknown command /:")),
            ("/ join lobby", Err("unknown command /:")),
        ]);
    }

    #[test]
    fn names_follow_the_protocol() {
        for ok in ["a", "lobby", "dev-2", "a_b", &"x".repeat(64), "dm:ann:bob"] {
            assert!(valid_room(ok), "{ok}");
        }
        for bad in ["", "Lobby", "a b", "a.b", &"x".repeat(65), "dm:", "dm:a:b", "é"] {
            assert!(!valid_room(bad), "{bad}");
        }
        for ok in ["ann", "bob.smith", "x_-.", &"u".repeat(32)] {
            assert!(valid_user(ok), "{ok}");
        }
        for bad in ["", "al", "Ann", "a b", &"u".repeat(33), "ann!"] {
            assert!(!valid_user(bad), "{bad}");
        }
    }
}
