//! The screen model of `palaver chat`: rooms, their messages keyed by seq,
//! sends still waiting for their `ok`, unread counts, who is typing, the
//! connection state and the last error, and the input line.
//!
//! It is changed only by the methods below, each a plain function of its
//! inputs: events from the client, answers to requests, keys, and the clock
//! (`now` is always passed in). It does no I/O and knows nothing of the
//! terminal; it answers what should go out (typing notices, read markers,
//! history pages) and the event loop sends it. Messages are keyed by
//! (room, seq), so a message seen twice (a replay after a reconnect, a
//! send's `ok` and its own event) is shown once.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::time::Duration;
use std::time::Instant;

use palaver_client::ClientEvent;
use palaver_client::Error;
use palaver_client::Event;
use palaver_client::History;
use palaver_client::HistoryPage;
use palaver_client::Member;
use palaver_client::Message;
use palaver_client::Room;
use palaver_client::Visibility;

/// At most one typing notice per room this often (docs/protocol.md asks for
/// nothing finer; the server rate-limits typing with sends).
pub const TYPING_EVERY: Duration = Duration::from_secs(3);
/// How long someone else's typing notice stays shown without a new one.
pub const TYPING_SHOWN_FOR: Duration = Duration::from_secs(5);
/// At most one round of read markers this often.
pub const READ_EVERY: Duration = Duration::from_secs(1);
/// How long an error stays on screen.
pub const ERROR_SHOWN_FOR: Duration = Duration::from_secs(15);
/// A history request that failed is asked again after this long.
pub const HISTORY_RETRY: Duration = Duration::from_secs(2);
/// Messages per history page.
pub const PAGE: u32 = 50;

/// The connection as the status line shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Connection {
    /// Before the first session.
    Connecting,
    /// A session is up.
    Connected,
    /// The session ended and the client is trying again.
    Reconnecting {
        /// Attempts since the session ended, from 1.
        attempt: u32,
        /// Why the last session or attempt ended, in words.
        reason: String,
    },
    /// The client gave up for good (say, the password changed).
    Stopped {
        /// Why.
        reason: String,
    },
}

/// A message as shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its seq in the room.
    pub seq: u64,
    /// Sender.
    pub from: String,
    /// Text; `None` once deleted.
    pub body: Option<String>,
    /// Its sender changed the text.
    pub edited: bool,
    /// The message of the room it answers.
    pub reply_to: Option<u64>,
    /// Each emoji with who chose it.
    pub reactions: Vec<(String, Vec<String>)>,
    /// Files it carries: (name, attachment id).
    pub attachments: Vec<(String, String)>,
}

/// A send that has no `ok` yet (shown with `*`) or that failed (with `!`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// The client_id it was sent with.
    pub client_id: String,
    /// What was typed.
    pub body: String,
    /// Why it failed, once it did.
    pub failed: Option<String>,
}

/// A line from the program itself (command output, membership changes),
/// shown after the message with seq `after`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// The seq it follows (0: before every message).
    pub after: u64,
    /// The text.
    pub text: String,
}

/// One row of the message pane, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item<'a> {
    /// A stored message.
    Message(&'a Entry),
    /// A program note.
    Note(&'a Note),
    /// One of the user's sends not yet answered (or failed).
    Pending(&'a Pending),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Paging {
    /// The newest page has been read.
    loaded: bool,
    /// A request is out.
    loading: bool,
    /// Where the next older page ends (`before=`); `None` once the start
    /// of the room was reached.
    before: Option<u64>,
    /// Do not ask again before this (after a failure).
    retry_at: Option<Instant>,
}

/// One room the user belongs to.
#[derive(Clone, Debug)]
pub struct RoomState {
    /// Room id.
    pub id: String,
    /// Title.
    pub title: String,
    /// Visibility.
    pub visibility: Visibility,
    messages: BTreeMap<u64, Entry>,
    pending: Vec<Pending>,
    notes: Vec<Note>,
    /// Newest seq known.
    last_seq: u64,
    /// Seq through which the user has seen the room.
    read_seq: u64,
    /// The read marker last handed out to be stored.
    read_sent: u64,
    typing: BTreeMap<String, Instant>,
    paging: Paging,
    /// Rows scrolled up from the bottom of the pane.
    scroll: usize,
}

impl RoomState {
    fn new(id: &str, title: &str, visibility: Visibility) -> Self {
        RoomState {
            id: id.to_string(),
            title: title.to_string(),
            visibility,
            messages: BTreeMap::new(),
            pending: Vec::new(),
            notes: Vec::new(),
            last_seq: 0,
            read_seq: 0,
            read_sent: 0,
            typing: BTreeMap::new(),
            paging: Paging::default(),
            scroll: 0,
        }
    }

    /// Messages not yet seen.
    pub fn unread(&self) -> u64 {
        self.last_seq.saturating_sub(self.read_seq)
    }

    /// The pane's rows: messages by seq with the notes after the seq they
    /// follow, then the pending sends.
    pub fn items(&self) -> Vec<Item<'_>> {
        let mut items = Vec::with_capacity(self.messages.len() + self.notes.len() + self.pending.len());
        let mut notes = self.notes.iter().peekable();
        for (seq, entry) in &self.messages {
            while let Some(note) = notes.next_if(|n| n.after < *seq) {
                items.push(Item::Note(note));
            }
            items.push(Item::Message(entry));
        }
        items.extend(notes.map(Item::Note));
        items.extend(self.pending.iter().map(Item::Pending));
        items
    }

    /// Who is typing now, by name.
    pub fn typing(&self) -> Vec<&str> {
        self.typing.keys().map(String::as_str).collect()
    }

    /// Rows scrolled up from the bottom.
    pub fn scroll(&self) -> usize {
        self.scroll
    }

    /// Whether older history may exist that is not loaded.
    pub fn more_history(&self) -> bool {
        !self.paging.loaded || self.paging.before.is_some()
    }

    /// The seq the next note goes after: the newest shown.
    fn tail(&self) -> u64 {
        self.messages.keys().next_back().copied().unwrap_or(0)
    }

    fn note(&mut self, text: String) {
        let after = self.tail();
        self.notes.push(Note { after, text });
    }

    fn insert(&mut self, m: Message) {
        self.last_seq = self.last_seq.max(m.seq);
        let body = if m.deleted { None } else { m.body };
        let entry = Entry {
            seq: m.seq,
            from: m.from,
            body,
            edited: m.edited_at.is_some(),
            reply_to: m.reply_to,
            reactions: m.reactions.0,
            attachments: if m.deleted {
                Vec::new()
            } else {
                m.attachments.into_iter().map(|a| (a.name, a.id)).collect()
            },
        };
        self.messages.insert(m.seq, entry);
    }

    /// The message at `seq`, if shown.
    pub fn message(&self, seq: u64) -> Option<&Entry> {
        self.messages.get(&seq)
    }

    /// The newest message still there, sent by `me` (`mine`) or by anyone else.
    pub fn newest(&self, me: &str, mine: bool) -> Option<&Entry> {
        self.messages.values().rev().find(|e| e.body.is_some() && (e.from == me) == mine)
    }
}

/// Adds `user` to `emoji`'s reactors (`on`) or takes them off, as a
/// `reaction` event says; an emoji no one chooses any more goes.
fn react(reactions: &mut Vec<(String, Vec<String>)>, emoji: String, user: String, on: bool) {
    let at = reactions.iter().position(|(e, _)| *e == emoji);
    match (at, on) {
        (Some(i), true) if !reactions[i].1.contains(&user) => reactions[i].1.push(user),
        (None, true) => reactions.push((emoji, vec![user])),
        (Some(i), false) => {
            reactions[i].1.retain(|u| *u != user);
            if reactions[i].1.is_empty() {
                reactions.remove(i);
            }
        }
        _ => {}
    }
}

/// The line being typed, with a cursor (a char index).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InputLine {
    text: String,
    cursor: usize,
}

impl InputLine {
    /// The text typed.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The cursor, in chars from the start.
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    fn byte_at(&self, char_index: usize) -> usize {
        self.text.char_indices().nth(char_index).map_or(self.text.len(), |(i, _)| i)
    }

    /// Inserts `c` at the cursor.
    pub fn insert(&mut self, c: char) {
        let at = self.byte_at(self.cursor);
        self.text.insert(at, c);
        self.cursor += 1;
    }

    /// Deletes the char before the cursor.
    pub fn backspace(&mut self) {
        if self.cursor > 0 {
            self.cursor -= 1;
            let at = self.byte_at(self.cursor);
            self.text.remove(at);
        }
    }

    /// Deletes the char at the cursor.
    pub fn delete(&mut self) {
        if self.cursor < self.text.chars().count() {
            let at = self.byte_at(self.cursor);
            self.text.remove(at);
        }
    }

    /// Moves the cursor one char left.
    pub fn left(&mut self) {
        self.cursor = self.cursor.saturating_sub(1);
    }

    /// Moves the cursor one char right.
    pub fn right(&mut self) {
        self.cursor = (self.cursor + 1).min(self.text.chars().count());
    }

    /// Moves the cursor to the start.
    pub fn home(&mut self) {
        self.cursor = 0;
    }

    /// Moves the cursor to the end.
    pub fn end(&mut self) {
        self.cursor = self.text.chars().count();
    }

    /// Replaces the line, with the cursor at its end.
    pub fn replace(&mut self, text: &str) {
        self.text = text.to_string();
        self.end();
    }

    /// Empties the line and answers what it held.
    pub fn take(&mut self) -> String {
        self.cursor = 0;
        std::mem::take(&mut self.text)
    }

    /// Whether what is typed is a message (not a command) in the making.
    fn is_message(&self) -> bool {
        !self.text.trim().is_empty() && (!self.text.starts_with('/') || self.text.starts_with("//"))
    }
}

/// Everything the screen shows.
#[derive(Debug)]
pub struct Model {
    me: String,
    rooms: BTreeMap<String, RoomState>,
    current: Option<String>,
    /// The line being typed.
    pub input: InputLine,
    connection: Connection,
    error: Option<(String, Instant)>,
    /// Notes shown while there is no room.
    notes: Vec<String>,
    typing_sent: HashMap<String, Instant>,
    read_sent_at: Option<Instant>,
    /// Rows the pane can scroll up at most (from the last drawing).
    max_scroll: usize,
    /// Rows the pane shows (from the last drawing).
    pane_rows: usize,
    /// The server's address, for the links of attachments.
    base: String,
}

impl Model {
    /// An empty model for user `me`.
    pub fn new(me: &str) -> Self {
        Model {
            me: me.to_string(),
            rooms: BTreeMap::new(),
            current: None,
            input: InputLine::default(),
            connection: Connection::Connecting,
            error: None,
            notes: Vec::new(),
            typing_sent: HashMap::new(),
            read_sent_at: None,
            max_scroll: 0,
            pane_rows: 0,
            base: String::new(),
        }
    }

    /// The same model, showing attachments as links under `base`
    /// (`http://host:port`).
    pub fn with_base(mut self, base: &str) -> Self {
        self.base = base.trim_end_matches('/').to_string();
        self
    }

    /// Where an attachment is downloaded (with the session's token).
    pub fn attachment_url(&self, id: &str) -> String {
        format!("{}/api/attachments/{id}", self.base)
    }

    /// The user's name.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The connection state.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// The error on screen, if any.
    pub fn error(&self) -> Option<&str> {
        self.error.as_ref().map(|(e, _)| e.as_str())
    }

    /// Notes shown while there is no room.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The room shown.
    pub fn current(&self) -> Option<&RoomState> {
        self.current.as_ref().and_then(|id| self.rooms.get(id))
    }

    /// The shown room's id.
    pub fn current_id(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// A room by id.
    pub fn room(&self, id: &str) -> Option<&RoomState> {
        self.rooms.get(id)
    }

    /// Rooms in the order of the room list: group rooms by id, then direct
    /// rooms by the other user's name.
    pub fn rooms(&self) -> Vec<&RoomState> {
        let mut rooms: Vec<&RoomState> = self.rooms.values().collect();
        rooms.sort_by_cached_key(|r| (r.visibility == Visibility::Direct, self.display_name(&r.id)));
        rooms
    }

    /// How the room list names a room: `#lobby`, or `@bob` for the direct
    /// room with bob.
    pub fn display_name(&self, id: &str) -> String {
        match id.strip_prefix("dm:").and_then(|r| r.split_once(':')) {
            Some((a, b)) if a == self.me => format!("@{b}"),
            Some((a, b)) if b == self.me => format!("@{a}"),
            Some(_) => id.to_string(),
            None => format!("#{id}"),
        }
    }

    // ----- errors and notes -----

    /// Shows `text` as the error until it expires or another replaces it.
    pub fn set_error(&mut self, text: impl Into<String>, now: Instant) {
        self.error = Some((text.into(), now + ERROR_SHOWN_FOR));
    }

    /// Takes the error off the screen.
    pub fn clear_error(&mut self) {
        self.error = None;
    }

    /// Adds a program line to `room` (or to the current room, or to the
    /// screen without rooms).
    pub fn note(&mut self, room: Option<&str>, text: impl Into<String>) {
        let text = text.into();
        let id = room.map(str::to_string).or_else(|| self.current.clone());
        match id.and_then(|id| self.rooms.get_mut(&id)) {
            Some(r) => r.note(text),
            None => self.notes.push(text),
        }
    }

    // ----- the connection -----

    /// Takes the client's connection events; answers whether a new session
    /// came up after an earlier one (then the room list is worth reading
    /// again: rooms may have come or gone meanwhile).
    pub fn on_client_event(&mut self, event: ClientEvent, now: Instant) -> bool {
        match event {
            ClientEvent::Connected { session } => {
                self.connection = Connection::Connected;
                if session > 1 {
                    // Whatever failed while the server was away (a room
                    // list, a page) is asked again; its error is stale.
                    self.error = None;
                }
                return session > 1;
            }
            ClientEvent::Disconnected { reason, .. } => {
                if !matches!(self.connection, Connection::Stopped { .. }) {
                    self.connection = Connection::Reconnecting { attempt: 1, reason };
                }
            }
            ClientEvent::ConnectFailed { reason } => {
                let attempt = match &self.connection {
                    Connection::Reconnecting { attempt, .. } => attempt + 1,
                    _ => 1,
                };
                self.connection = Connection::Reconnecting { attempt, reason };
            }
            ClientEvent::Stopped { reason } => self.connection = Connection::Stopped { reason },
            ClientEvent::Message(m) => self.on_message(m),
            ClientEvent::Gap { room, expected, got } => {
                self.note(Some(&room), format!("messages {expected} to {} are missing", got.saturating_sub(1)))
            }
            ClientEvent::Unsubscribed { room, reason } => {
                if self.rooms.contains_key(&room) {
                    let name = self.display_name(&room);
                    self.remove_room(&room);
                    self.set_error(format!("you are no longer in {name} ({})", reason.replace('_', " ")), now);
                }
            }
            ClientEvent::Event(e) => self.on_event(e, now),
        }
        false
    }

    fn on_event(&mut self, event: Event, now: Instant) {
        match event {
            Event::Message(m) => self.on_message(m),
            Event::Typing { room, username } => {
                if username != self.me
                    && let Some(r) = self.rooms.get_mut(&room)
                {
                    r.typing.insert(username, now + TYPING_SHOWN_FOR);
                }
            }
            Event::Deleted { room, seq } => {
                if let Some(e) = self.rooms.get_mut(&room).and_then(|r| r.messages.get_mut(&seq)) {
                    e.body = None;
                    e.reactions.clear();
                    e.attachments.clear();
                }
            }
            Event::Edited { room, seq, body, .. } => {
                if let Some(e) = self.rooms.get_mut(&room).and_then(|r| r.messages.get_mut(&seq))
                    && e.body.is_some()
                {
                    e.body = Some(body);
                    e.edited = true;
                }
            }
            Event::Reaction { room, seq, emoji, username, on } => {
                if let Some(e) = self.rooms.get_mut(&room).and_then(|r| r.messages.get_mut(&seq)) {
                    react(&mut e.reactions, emoji, username, on);
                }
            }
            Event::Member { room, username, change, role } => {
                let text = match (change.as_str(), role) {
                    ("joined", _) => format!("{username} joined"),
                    ("left", _) => format!("{username} left"),
                    ("kicked", _) => format!("{username} was kicked"),
                    ("banned", _) => format!("{username} was banned"),
                    ("role", Some(role)) => format!("{username} is now {role}"),
                    (other, _) => format!("{username}: {other}"),
                };
                if self.rooms.contains_key(&room) {
                    self.note(Some(&room), text);
                }
            }
            Event::Error { code, message } => self.set_error(readable(&code, &message, None), now),
            // Presence is read on demand (/who); the rest has no place on screen.
            Event::Presence { .. }
            | Event::Removed { .. }
            | Event::RoomDeleted { .. }
            | Event::Read { .. }
            | Event::Other(_) => {}
        }
    }

    /// A message of a room (live, replayed, or the echo of a send).
    pub fn on_message(&mut self, m: Message) {
        let Some(r) = self.rooms.get_mut(&m.room) else { return };
        r.typing.remove(&m.from);
        if m.from == self.me
            && let Some(id) = &m.client_id
        {
            r.pending.retain(|p| &p.client_id != id);
        }
        r.insert(m);
        self.mark_read();
    }

    // ----- rooms -----

    /// Takes `GET /api/rooms`. Only rooms the user belongs to are listed
    /// (public rooms it does not belong to answer without `unread`). With
    /// `complete`, rooms missing from `list` are dropped (the user left
    /// them elsewhere); a list read while the user joined or left something
    /// here is not complete. Answers the rooms new to the model, with the
    /// seq to subscribe from.
    pub fn apply_room_list(&mut self, list: &[Room], complete: bool) -> Vec<(String, u64)> {
        let mine: Vec<&Room> = list.iter().filter(|r| r.unread.is_some()).collect();
        if complete {
            let keep: Vec<&str> = mine.iter().map(|r| r.room.as_str()).collect();
            let gone: Vec<String> = self.rooms.keys().filter(|id| !keep.contains(&id.as_str())).cloned().collect();
            for id in gone {
                self.remove_room(&id);
            }
        }
        let mut new = Vec::new();
        for room in mine {
            if self.add_room(room) {
                new.push((room.room.clone(), room.last_seq));
            }
        }
        if self.current.is_none() {
            self.current = self.rooms().first().map(|r| r.id.clone());
        }
        self.mark_read();
        new
    }

    /// Adds a room (or refreshes what is known of it); answers whether it
    /// is new.
    pub fn add_room(&mut self, room: &Room) -> bool {
        let new = !self.rooms.contains_key(&room.room);
        let r = self
            .rooms
            .entry(room.room.clone())
            .or_insert_with(|| RoomState::new(&room.room, &room.title, room.visibility));
        r.title.clone_from(&room.title);
        r.last_seq = r.last_seq.max(room.last_seq);
        // The server's marker may be ahead (read on another device); never
        // move the user's own back.
        let server_read = room.last_seq.saturating_sub(room.unread.unwrap_or(0));
        r.read_seq = r.read_seq.max(server_read);
        r.read_sent = r.read_sent.max(server_read);
        new
    }

    /// Drops a room; the next one is shown if it was the current one.
    pub fn remove_room(&mut self, id: &str) {
        if self.rooms.remove(id).is_none() {
            return;
        }
        self.typing_sent.remove(id);
        if self.current.as_deref() == Some(id) {
            self.current = self.rooms().first().map(|r| r.id.clone());
            self.mark_read();
        }
    }

    /// Shows room `id` (if the user is in it).
    pub fn switch_to(&mut self, id: &str) {
        if self.rooms.contains_key(id) {
            self.current = Some(id.to_string());
            self.mark_read();
        }
    }

    /// Shows the next room of the list (`step` 1) or the previous (-1),
    /// wrapping around.
    pub fn cycle(&mut self, step: isize) {
        let ids: Vec<String> = self.rooms().iter().map(|r| r.id.clone()).collect();
        if ids.is_empty() {
            return;
        }
        let at = self.current.as_ref().and_then(|c| ids.iter().position(|id| id == c)).unwrap_or(0);
        let len = ids.len() as isize;
        let next = (at as isize + step).rem_euclid(len) as usize;
        self.switch_to(&ids[next]);
    }

    // ----- sends -----

    /// Shows a send waiting for its `ok`.
    pub fn add_pending(&mut self, room: &str, client_id: &str, body: &str) {
        if let Some(r) = self.rooms.get_mut(room) {
            r.pending.push(Pending { client_id: client_id.to_string(), body: body.to_string(), failed: None });
            r.scroll = 0;
        }
    }

    /// A send was answered: with its seq (the message is shown in its place
    /// if its event has not come yet), or with an error.
    pub fn on_sent(&mut self, room: &str, client_id: &str, answer: Result<u64, String>, now: Instant) {
        let me = self.me.clone();
        let Some(r) = self.rooms.get_mut(room) else { return };
        let Some(at) = r.pending.iter().position(|p| p.client_id == client_id) else { return };
        match answer {
            Ok(seq) => {
                let p = r.pending.remove(at);
                r.last_seq = r.last_seq.max(seq);
                r.messages.entry(seq).or_insert(Entry {
                    seq,
                    from: me,
                    body: Some(p.body),
                    edited: false,
                    reply_to: None,
                    reactions: Vec::new(),
                    attachments: Vec::new(),
                });
                self.mark_read();
            }
            Err(why) => {
                r.pending[at].failed = Some(why.clone());
                self.set_error(format!("not sent: {why}"), now);
            }
        }
    }

    // ----- history -----

    /// The history page to ask for next, if any: the newest page of the
    /// current room once, then older pages while its top is on screen.
    /// Marks the request as out.
    pub fn history_wanted(&mut self, now: Instant) -> Option<(String, Option<History>)> {
        let at_top = self.at_top();
        let r = self.current.as_ref().and_then(|id| self.rooms.get_mut(id))?;
        if r.paging.loading || r.paging.retry_at.is_some_and(|t| now < t) {
            return None;
        }
        let at = if !r.paging.loaded {
            None
        } else {
            match r.paging.before {
                Some(before) if at_top => Some(History::Before(before)),
                _ => return None,
            }
        };
        r.paging.loading = true;
        r.paging.retry_at = None;
        Some((r.id.clone(), at))
    }

    /// Takes a history page asked for at `at`.
    pub fn on_history(&mut self, room: &str, at: Option<History>, page: HistoryPage) {
        let Some(r) = self.rooms.get_mut(room) else { return };
        r.paging.loading = false;
        r.paging.loaded = true;
        let first = page.messages.first().map(|m| m.seq);
        let full = page.messages.len() >= PAGE as usize;
        for m in page.messages {
            // A live event may have replaced the message since (deleted
            // meanwhile): the newer state stays.
            if !r.messages.contains_key(&m.seq) {
                r.insert(m);
            }
        }
        r.paging.before = match (page.next, first) {
            (Some(History::Before(n)), _) if n > 1 => Some(n),
            (Some(_), _) => None,
            (None, Some(first)) if full && first > 1 => Some(first),
            _ => None,
        };
        // An older page must not move what is on screen; a first page of a
        // room entered just now starts at the bottom.
        if at.is_none() {
            r.scroll = 0;
        }
        self.mark_read();
    }

    /// A history request failed: asked again a little later.
    pub fn history_failed(&mut self, room: &str, error: String, now: Instant) {
        if let Some(r) = self.rooms.get_mut(room) {
            r.paging.loading = false;
            r.paging.retry_at = Some(now + HISTORY_RETRY);
        }
        self.set_error(error, now);
    }

    // ----- scrolling -----

    /// Takes what the last drawing of the pane found: how far it can scroll
    /// and how many rows it shows.
    pub fn set_pane(&mut self, max_scroll: usize, rows: usize) {
        self.max_scroll = max_scroll;
        self.pane_rows = rows;
        if let Some(r) = self.current.as_ref().and_then(|id| self.rooms.get_mut(id)) {
            r.scroll = r.scroll.min(max_scroll);
        }
        self.mark_read();
    }

    /// Whether the top of the current room's loaded rows is on screen.
    fn at_top(&self) -> bool {
        self.current().is_some_and(|r| r.scroll >= self.max_scroll)
    }

    /// PageUp: a pane's height up (older).
    pub fn page_up(&mut self) {
        let step = self.pane_rows.saturating_sub(1).max(1);
        let max = self.max_scroll;
        if let Some(r) = self.current.as_ref().and_then(|id| self.rooms.get_mut(id)) {
            r.scroll = (r.scroll + step).min(max);
        }
    }

    /// PageDown: a pane's height down (newer).
    pub fn page_down(&mut self) {
        let step = self.pane_rows.saturating_sub(1).max(1);
        if let Some(r) = self.current.as_ref().and_then(|id| self.rooms.get_mut(id)) {
            r.scroll = r.scroll.saturating_sub(step);
        }
        self.mark_read();
    }

    // ----- what goes out -----

    /// The shown room's messages count as read while its newest are on
    /// screen (scrolled to the bottom).
    fn mark_read(&mut self) {
        if let Some(r) = self.current.as_ref().and_then(|id| self.rooms.get_mut(id))
            && r.scroll == 0
        {
            let newest = r.messages.keys().next_back().copied().unwrap_or(0);
            r.read_seq = r.read_seq.max(newest);
        }
    }

    /// The read markers to store now: at most one round per [`READ_EVERY`],
    /// one marker per room whose read seq moved since.
    pub fn read_markers_due(&mut self, now: Instant) -> Vec<(String, u64)> {
        if self.read_sent_at.is_some_and(|at| now.duration_since(at) < READ_EVERY) {
            return Vec::new();
        }
        let mut due = Vec::new();
        for r in self.rooms.values_mut() {
            if r.read_seq > r.read_sent {
                r.read_sent = r.read_seq;
                due.push((r.id.clone(), r.read_seq));
            }
        }
        if !due.is_empty() {
            self.read_sent_at = Some(now);
        }
        due
    }

    /// A read marker was refused: it is handed out again next round.
    pub fn read_marker_failed(&mut self, room: &str, seq: u64) {
        if let Some(r) = self.rooms.get_mut(room)
            && r.read_sent == seq
        {
            r.read_sent = seq.saturating_sub(1);
        }
    }

    /// After the input line changed: the room to send a typing notice to,
    /// when the user is typing a message and none went there within
    /// [`TYPING_EVERY`].
    pub fn typing_due(&mut self, now: Instant) -> Option<String> {
        if !self.input.is_message() {
            return None;
        }
        let room = self.current.clone()?;
        if self.typing_sent.get(&room).is_some_and(|at| now.duration_since(*at) < TYPING_EVERY) {
            return None;
        }
        self.typing_sent.insert(room.clone(), now);
        Some(room)
    }

    /// Drops what expired: typing notices, the error.
    pub fn tick(&mut self, now: Instant) {
        for r in self.rooms.values_mut() {
            r.typing.retain(|_, until| *until > now);
        }
        if self.error.as_ref().is_some_and(|(_, until)| *until <= now) {
            self.error = None;
        }
    }
}

/// `/who`'s answer in one line: each member with its role (unless plain
/// member) and whether it is online.
pub fn members_text(room: &str, members: &[Member]) -> String {
    let online = members.iter().filter(|m| m.online == Some(true)).count();
    let list: Vec<String> = members
        .iter()
        .map(|m| {
            let state = match m.online {
                Some(true) => "online",
                Some(false) => "offline",
                None => "?",
            };
            match m.role.as_str() {
                "member" => format!("{} ({state})", m.username),
                role => format!("{} ({role}, {state})", m.username),
            }
        })
        .collect();
    format!("{room}: {} members, {online} online: {}", members.len(), list.join(", "))
}

/// An error in words for the user: what happened and what to do, without
/// the protocol's codes.
pub fn describe(e: &Error) -> String {
    match e {
        Error::Api { code, message, retry_after_ms, .. } => readable(code, message, *retry_after_ms),
        Error::Http(e) => format!("cannot reach the server: {}", root_cause(e)),
        Error::Ws(e) => format!("connection failed: {}", root_cause(e)),
        Error::Closed { reason, .. } => format!("connection closed: {reason}"),
        Error::Timeout(what) => format!("no answer in time ({what})"),
        Error::Decode(what) => format!("unexpected answer from the server: {what}"),
        Error::Status { status, .. } => format!("unexpected answer from the server (HTTP {status})"),
    }
}

/// A protocol error (`code`, the server's `message`) in words.
pub fn readable(code: &str, message: &str, retry_after_ms: Option<u64>) -> String {
    match code {
        "rate_limited" => match retry_after_ms {
            Some(ms) => format!("slow down: try again in {} s", ms.div_ceil(1000).max(1)),
            None => "slow down: try again in a moment".to_string(),
        },
        "unauthorized" => format!("not signed in: {message}"),
        "forbidden" => format!("not allowed: {message}"),
        "not_found" => format!("not found: {message}"),
        "conflict" => message.to_string(),
        "too_large" => format!("too long: {message}"),
        "bad_request" => format!("refused: {message}"),
        "unavailable" => format!("the server is busy, try again: {message}"),
        "timeout" => format!("timed out: {message}"),
        "internal" => format!("server error: {message}"),
        other => format!("{}: {message}", other.replace('_', " ")),
    }
}

/// The deepest cause of an error: reqwest's own text names the URL and
/// the layer ("error sending request for url …"), its last cause says what
/// a person can act on ("Connection refused").
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Rooms and messages for the tests of the model and the view.
#[cfg(test)]
pub(crate) mod fixtures {
    use palaver_client::Message;
    use palaver_client::Room;
    use palaver_client::Visibility;

    /// A room as `GET /api/rooms` lists it.
    pub(crate) fn room(id: &str, last_seq: u64, unread: Option<u64>) -> Room {
        let visibility = if id.starts_with("dm:") { Visibility::Direct } else { Visibility::Public };
        Room {
            room: id.to_string(),
            title: id.to_string(),
            visibility,
            owner: None,
            created_at: 0,
            last_seq,
            unread,
            retention_days: None,
        }
    }

    /// A message of `room` from `from`.
    pub(crate) fn msg(room: &str, seq: u64, from: &str, body: &str) -> Message {
        Message {
            room: room.to_string(),
            seq,
            from: from.to_string(),
            body: Some(body.to_string()),
            ts: 0,
            client_id: Some(format!("{from}-{seq}")),
            deleted: false,
            ..Message::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::msg;
    use super::fixtures::room;
    use super::*;

    fn page(messages: Vec<Message>, next: Option<History>) -> HistoryPage {
        HistoryPage { messages, next }
    }

    fn seqs(m: &Model, room: &str) -> Vec<u64> {
        m.room(room)
            .map(|r| {
                r.items()
                    .iter()
                    .filter_map(|i| match i {
                        Item::Message(e) => Some(e.seq),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn the_room_list_keeps_only_rooms_of_the_user_in_order() {
        let mut m = Model::new("ann");
        let new = m.apply_room_list(
            &[room("zoo", 3, Some(0)), room("dm:ann:bob", 2, Some(2)), room("open", 9, None), room("dev", 5, Some(4))],
            true,
        );
        assert_eq!(new, vec![("zoo".to_string(), 3), ("dm:ann:bob".to_string(), 2), ("dev".to_string(), 5)]);
        let names: Vec<String> = m.rooms().iter().map(|r| m.display_name(&r.id)).collect();
        assert_eq!(names, ["#dev", "#zoo", "@bob"]);
        assert_eq!(m.current_id(), Some("dev"));
        // The room shown is read (nothing is loaded yet, so nothing more).
        assert_eq!(m.room("dev").map(RoomState::unread), Some(4));
        assert_eq!(m.room("dm:ann:bob").map(RoomState::unread), Some(2));
        // Known rooms are not new again; a complete list drops rooms left elsewhere.
        let new = m.apply_room_list(&[room("dev", 6, Some(0)), room("dm:ann:bob", 2, Some(2))], true);
        assert!(new.is_empty());
        assert!(m.room("zoo").is_none());
        assert_eq!(m.room("dev").map(RoomState::unread), Some(0));
        // An incomplete one drops nothing.
        m.apply_room_list(&[], false);
        assert!(m.room("dev").is_some());
    }

    #[test]
    fn messages_are_keyed_by_seq_so_replays_show_once() {
        let mut m = Model::new("ann");
        let now = Instant::now();
        m.apply_room_list(&[room("lobby", 0, Some(0))], true);
        for seq in [1, 2, 3, 2, 1, 3] {
            m.on_message(msg("lobby", seq, "bob", &format!("m{seq}")));
        }
        assert_eq!(seqs(&m, "lobby"), [1, 2, 3]);
        // A replayed page overlapping live messages adds only what is new.
        m.history_wanted(now);
        m.on_history("lobby", None, page(vec![msg("lobby", 3, "bob", "m3"), msg("lobby", 4, "bob", "m4")], None));
        assert_eq!(seqs(&m, "lobby"), [1, 2, 3, 4]);
        // Messages of unknown rooms are ignored.
        m.on_message(msg("elsewhere", 1, "bob", "x"));
        assert!(m.room("elsewhere").is_none());
    }

    #[test]
    fn a_send_is_pending_until_its_ok_or_its_own_event() {
        let mut m = Model::new("ann");
        let now = Instant::now();
        m.apply_room_list(&[room("lobby", 0, Some(0))], true);
        m.add_pending("lobby", "c1", "first");
        m.add_pending("lobby", "c2", "second");
        m.add_pending("lobby", "c3", "third");
        let pending = |m: &Model| -> Vec<String> {
            m.room("lobby")
                .map(|r| {
                    r.items()
                        .iter()
                        .filter_map(|i| match i {
                            Item::Pending(p) => Some(p.body.clone()),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        assert_eq!(pending(&m), ["first", "second", "third"]);
        // The event first: the pending line goes, the message stays once.
        let mut echo = msg("lobby", 1, "ann", "first");
        echo.client_id = Some("c1".into());
        m.on_message(echo);
        m.on_sent("lobby", "c1", Ok(1), now);
        // The ok first: the message is shown in its place; its event later changes nothing.
        m.on_sent("lobby", "c2", Ok(2), now);
        let mut echo = msg("lobby", 2, "ann", "second");
        echo.client_id = Some("c2".into());
        m.on_message(echo);
        assert_eq!(seqs(&m, "lobby"), [1, 2]);
        assert_eq!(pending(&m), ["third"]);
        // A refused send stays, marked, and says why.
        m.on_sent("lobby", "c3", Err("too long: message over 4096 characters".into()), now);
        assert_eq!(m.error(), Some("not sent: too long: message over 4096 characters"));
        let failed = m.room("lobby").and_then(|r| r.pending.first().and_then(|p| p.failed.clone()));
        assert_eq!(failed.as_deref(), Some("too long: message over 4096 characters"));
    }

    #[test]
    fn unread_counts_what_is_not_on_screen() {
        let mut m = Model::new("ann");
        m.apply_room_list(&[room("a", 2, Some(0)), room("b", 2, Some(1))], true);
        assert_eq!(m.current_id(), Some("a"));
        m.on_message(msg("b", 3, "bob", "x"));
        m.on_message(msg("a", 3, "bob", "y"));
        assert_eq!(m.room("a").map(RoomState::unread), Some(0));
        assert_eq!(m.room("b").map(RoomState::unread), Some(2));
        // Scrolled up, new messages are not read yet.
        m.set_pane(10, 5);
        m.page_up();
        m.on_message(msg("a", 4, "bob", "z"));
        assert_eq!(m.room("a").map(RoomState::unread), Some(1));
        m.page_down();
        assert_eq!(m.room("a").map(RoomState::unread), Some(0));
        // Entering b reads what it holds.
        m.cycle(1);
        assert_eq!(m.current_id(), Some("b"));
        assert_eq!(m.room("b").map(RoomState::unread), Some(0));
        m.cycle(1);
        assert_eq!(m.current_id(), Some("a"));
        m.cycle(-1);
        assert_eq!(m.current_id(), Some("b"));
    }

    #[test]
    fn read_markers_go_out_at_most_once_a_second() {
        let mut m = Model::new("ann");
        let t0 = Instant::now();
        m.apply_room_list(&[room("a", 0, Some(0)), room("b", 0, Some(0))], true);
        assert!(m.read_markers_due(t0).is_empty());
        m.on_message(msg("a", 1, "bob", "x"));
        assert_eq!(m.read_markers_due(t0), [("a".to_string(), 1)]);
        m.on_message(msg("a", 2, "bob", "x"));
        assert!(m.read_markers_due(t0 + Duration::from_millis(500)).is_empty());
        assert_eq!(m.read_markers_due(t0 + Duration::from_millis(1000)), [("a".to_string(), 2)]);
        // Unread rooms send nothing; a refused marker goes again.
        m.on_message(msg("b", 1, "bob", "x"));
        let t1 = t0 + Duration::from_secs(5);
        assert!(m.read_markers_due(t1).is_empty());
        m.on_message(msg("a", 3, "bob", "x"));
        assert_eq!(m.read_markers_due(t1), [("a".to_string(), 3)]);
        m.read_marker_failed("a", 3);
        assert_eq!(m.read_markers_due(t1 + READ_EVERY), [("a".to_string(), 3)]);
    }

    #[test]
    fn typing_notices_go_out_at_most_every_three_seconds_per_room() {
        let mut m = Model::new("ann");
        let t0 = Instant::now();
        m.apply_room_list(&[room("a", 0, Some(0)), room("b", 0, Some(0))], true);
        assert_eq!(m.typing_due(t0), None, "nothing typed");
        m.input.insert('/');
        assert_eq!(m.typing_due(t0), None, "a command is not a message");
        m.input.insert('/');
        assert_eq!(m.typing_due(t0), Some("a".into()), "// starts a message");
        m.input.insert('x');
        assert_eq!(m.typing_due(t0 + Duration::from_secs(2)), None);
        m.cycle(1);
        assert_eq!(m.typing_due(t0 + Duration::from_secs(2)), Some("b".into()), "another room");
        m.cycle(1);
        assert_eq!(m.typing_due(t0 + Duration::from_secs(3)), Some("a".into()));
    }

    #[test]
    fn others_typing_expires_and_ends_with_their_message() {
        let mut m = Model::new("ann");
        let t0 = Instant::now();
        m.apply_room_list(&[room("a", 0, Some(0))], true);
        let typing =
            |room: &str, who: &str| ClientEvent::Event(Event::Typing { room: room.into(), username: who.into() });
        m.on_client_event(typing("a", "bob"), t0);
        m.on_client_event(typing("a", "carol"), t0);
        m.on_client_event(typing("a", "ann"), t0);
        assert_eq!(m.current().map(RoomState::typing), Some(vec!["bob", "carol"]));
        m.on_message(msg("a", 1, "bob", "done"));
        assert_eq!(m.current().map(RoomState::typing), Some(vec!["carol"]));
        m.tick(t0 + TYPING_SHOWN_FOR);
        assert_eq!(m.current().map(RoomState::typing), Some(vec![]));
    }

    /// Edits, reactions and replies as the events and history bring them.
    #[test]
    fn edits_and_reactions_change_what_is_shown() {
        let mut m = Model::new("ann");
        let now = Instant::now();
        m.apply_room_list(&[room("a", 0, Some(0))], true);
        m.on_message(msg("a", 1, "bob", "helo"));
        m.on_message(Message { reply_to: Some(1), ..msg("a", 2, "ann", "hi bob") });
        let ev = |e: Event| ClientEvent::Event(e);
        m.on_client_event(ev(Event::Edited { room: "a".into(), seq: 1, body: "hello".into(), edited_at: 5 }), now);
        let reaction = |who: &str, on: bool| {
            ev(Event::Reaction { room: "a".into(), seq: 1, emoji: "👍".into(), username: who.into(), on })
        };
        m.on_client_event(reaction("ann", true), now);
        m.on_client_event(reaction("carol", true), now);
        m.on_client_event(reaction("ann", true), now);
        m.on_client_event(reaction("carol", false), now);
        let r = m.current().expect("room a");
        let e = r.message(1).expect("message 1");
        assert_eq!((e.body.as_deref(), e.edited), (Some("hello"), true));
        assert_eq!(e.reactions, vec![("👍".to_string(), vec!["ann".to_string()])]);
        assert_eq!(r.message(2).and_then(|e| e.reply_to), Some(1));
        assert_eq!(r.newest("ann", false).map(|e| e.seq), Some(1), "the newest of someone else");
        assert_eq!(r.newest("ann", true).map(|e| e.seq), Some(2), "the newest of one's own");
        m.on_client_event(ev(Event::Deleted { room: "a".into(), seq: 1 }), now);
        let r = m.current().expect("room a");
        assert!(r.message(1).is_some_and(|e| e.body.is_none() && e.reactions.is_empty()));
        assert_eq!(r.newest("ann", false).map(|e| e.seq), None, "a deleted message is not answered");
    }

    /// A message's files are kept as (name, id) and linked under the
    /// server's address; a deletion takes them.
    #[test]
    fn attachments_are_shown_until_the_message_is_deleted() {
        let mut m = Model::new("ann").with_base("http://127.0.0.1:8080/");
        let now = Instant::now();
        m.apply_room_list(&[room("a", 0, Some(0))], true);
        let file =
            palaver_client::Attachment { id: "a.0f".into(), name: "cat.png".into(), kind: "image/png".into(), size: 3 };
        m.on_message(Message { attachments: vec![file], ..msg("a", 1, "bob", "look") });
        let r = m.current().expect("room a");
        assert_eq!(r.message(1).map(|e| e.attachments.clone()), Some(vec![("cat.png".into(), "a.0f".into())]));
        assert_eq!(m.attachment_url("a.0f"), "http://127.0.0.1:8080/api/attachments/a.0f");
        m.on_client_event(ClientEvent::Event(Event::Deleted { room: "a".into(), seq: 1 }), now);
        assert!(m.current().and_then(|r| r.message(1)).is_some_and(|e| e.attachments.is_empty()));
    }

    #[test]
    fn the_connection_state_counts_attempts() {
        let mut m = Model::new("ann");
        let now = Instant::now();
        assert_eq!(m.connection(), &Connection::Connecting);
        assert!(!m.on_client_event(ClientEvent::Connected { session: 1 }, now));
        assert_eq!(m.connection(), &Connection::Connected);
        m.on_client_event(ClientEvent::Disconnected { close_code: Some(1012), reason: "restarting".into() }, now);
        m.on_client_event(ClientEvent::ConnectFailed { reason: "refused".into() }, now);
        m.on_client_event(ClientEvent::ConnectFailed { reason: "refused again".into() }, now);
        assert_eq!(m.connection(), &Connection::Reconnecting { attempt: 3, reason: "refused again".into() });
        m.set_error("reading your rooms: cannot reach the server: Connection refused", now);
        assert!(m.on_client_event(ClientEvent::Connected { session: 2 }, now), "a reconnect reads the rooms again");
        assert_eq!(m.error(), None, "an error of the outage goes with it");
        m.on_client_event(ClientEvent::Stopped { reason: "password changed".into() }, now);
        assert_eq!(m.connection(), &Connection::Stopped { reason: "password changed".into() });
    }

    #[test]
    fn history_pages_go_back_until_the_start() {
        let mut m = Model::new("ann");
        let t0 = Instant::now();
        m.apply_room_list(&[room("a", 120, Some(0))], true);
        assert_eq!(m.history_wanted(t0), Some(("a".into(), None)));
        assert_eq!(m.history_wanted(t0), None, "one request at a time");
        let newest: Vec<Message> = (71..=120).map(|s| msg("a", s, "bob", "x")).collect();
        m.on_history("a", None, page(newest, None));
        // Not at the top: nothing more.
        m.set_pane(40, 10);
        assert_eq!(m.history_wanted(t0), None);
        // At the top: the page before the first loaded.
        m.page_up();
        m.page_up();
        m.page_up();
        m.page_up();
        m.page_up();
        assert_eq!(m.history_wanted(t0), Some(("a".into(), Some(History::Before(71)))));
        // A page cut at the byte cap says where to go on.
        m.on_history("a", Some(History::Before(71)), page(vec![msg("a", 70, "bob", "big")], Some(History::Before(70))));
        assert_eq!(m.history_wanted(t0), Some(("a".into(), Some(History::Before(70)))));
        // A failure waits before asking again.
        m.history_failed("a", "the server is busy".into(), t0);
        assert_eq!(m.history_wanted(t0), None);
        assert_eq!(m.history_wanted(t0 + HISTORY_RETRY), Some(("a".into(), Some(History::Before(70)))));
        // A short page without a cursor is the start.
        m.on_history("a", Some(History::Before(70)), page((1..=69).map(|s| msg("a", s, "bob", "x")).collect(), None));
        assert_eq!(seqs(&m, "a"), (1..=120).collect::<Vec<_>>());
        assert_eq!(m.history_wanted(t0 + HISTORY_RETRY), None);
        assert!(!m.current().is_some_and(RoomState::more_history));
    }

    #[test]
    fn removals_and_member_changes_show_in_words() {
        let mut m = Model::new("ann");
        let now = Instant::now();
        m.apply_room_list(&[room("a", 0, Some(0)), room("b", 0, Some(0))], true);
        let member = ClientEvent::Event(Event::Member {
            room: "a".into(),
            username: "bob".into(),
            change: "role".into(),
            role: Some("moderator".into()),
        });
        m.on_client_event(member, now);
        let notes: Vec<String> = m
            .current()
            .map(|r| {
                r.items()
                    .iter()
                    .filter_map(|i| match i {
                        Item::Note(n) => Some(n.text.clone()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(notes, ["bob is now moderator"]);
        m.on_client_event(ClientEvent::Unsubscribed { room: "a".into(), reason: "kicked".into() }, now);
        assert!(m.room("a").is_none());
        assert_eq!(m.current_id(), Some("b"));
        assert_eq!(m.error(), Some("you are no longer in #a (kicked)"));
        m.tick(now + ERROR_SHOWN_FOR);
        assert_eq!(m.error(), None);
    }

    #[test]
    fn errors_read_as_words() {
        let api = |code: &str, message: &str, retry: Option<u64>| Error::Api {
            status: None,
            code: code.into(),
            message: message.into(),
            retry_after_ms: retry,
        };
        let cases = [
            (api("rate_limited", "too many sends", Some(1200)), "slow down: try again in 2 s"),
            (api("rate_limited", "too many sends", Some(1)), "slow down: try again in 1 s"),
            (api("rate_limited", "too many sends", None), "slow down: try again in a moment"),
            (api("forbidden", "you are muted in this room", None), "not allowed: you are muted in this room"),
            (api("not_found", "room x not found", None), "not found: room x not found"),
            (api("conflict", "room dev exists", None), "room dev exists"),
            (api("unavailable", "no leader", None), "the server is busy, try again: no leader"),
            (api("some_new_code", "what", None), "some new code: what"),
            (Error::Timeout("the login answer".into()), "no answer in time (the login answer)"),
        ];
        for (e, want) in cases {
            assert_eq!(describe(&e), want);
        }
    }

    #[test]
    fn who_lists_roles_and_presence() {
        let member = |name: &str, role: &str, online: Option<bool>| Member {
            username: name.into(),
            room: None,
            role: palaver_protocol::Role::from_name(role).expect("a role name"),
            online,
        };
        let members =
            [member("ann", "owner", Some(true)), member("bob", "member", Some(false)), member("cy", "moderator", None)];
        assert_eq!(
            members_text("#lobby", &members),
            "#lobby: 3 members, 1 online: ann (owner, online), bob (offline), cy (moderator, ?)"
        );
    }

    #[test]
    fn the_input_line_edits_at_its_cursor() {
        let mut l = InputLine::default();
        for c in "héllo".chars() {
            l.insert(c);
        }
        l.left();
        l.left();
        l.backspace();
        assert_eq!((l.text(), l.cursor()), ("hélo", 2));
        l.home();
        l.delete();
        l.insert('H');
        l.end();
        l.insert('!');
        l.right();
        assert_eq!((l.text(), l.cursor()), ("Hélo!", 5));
        assert_eq!(l.take(), "Hélo!");
        assert_eq!((l.text(), l.cursor()), ("", 0));
        l.backspace();
        l.delete();
        l.left();
        assert_eq!((l.text(), l.cursor()), ("", 0));
    }
}
