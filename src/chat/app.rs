//! The event loop of `palaver chat`: the terminal's keys (read on a thread
//! of their own), the resilient session's events, the answers of requests
//! (each runs as a task and reports back on a channel), and a tick for
//! what is due by time. Each turn changes the [`Model`] and draws it.
//!
//! Everything that waits on the network runs in a task, so the screen never
//! freezes: a send shows at once with `*` and loses it when answered. Room
//! actions and history go over HTTP (through the same balancer address),
//! logging in again once when the token was refused; messages, typing and
//! subscriptions go over the [`ResilientClient`]'s WebSocket.

use std::io::IsTerminal;
use std::io::Write;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use crossterm::event::Event as TermEvent;
use crossterm::event::KeyCode;
use crossterm::event::KeyEvent;
use crossterm::event::KeyEventKind;
use crossterm::event::KeyModifiers;
use crossterm::execute;
use crossterm::terminal;
use palaver_client::ClientEvent;
use palaver_client::ClientEvents;
use palaver_client::History;
use palaver_client::HistoryPage;
use palaver_client::Http;
use palaver_client::Member;
use palaver_client::ResilientClient;
use palaver_client::Room;
use palaver_client::Sent;
use palaver_client::Visibility;
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use tokio::sync::mpsc;

use super::command;
use super::command::Command;
use super::command::Input;
use super::model::Model;
use super::model::PAGE;
use super::model::describe;
use super::model::members_text;
use super::view;

/// How often timers are looked at (typing expiry, read markers).
const TICK: Duration = Duration::from_millis(250);
/// The room list is read again this often, to notice rooms joined or
/// opened elsewhere (a direct room someone else opened, say).
const ROOMS_EVERY: Duration = Duration::from_secs(20);
/// How long quitting waits for the session to close politely.
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

/// HTTP calls with the session's token; a refused token (expired, say) is
/// replaced by logging in again, once per call.
#[derive(Clone)]
pub struct Api {
    inner: Arc<ApiInner>,
}

struct ApiInner {
    anonymous: Http,
    with_token: Mutex<Http>,
    user: String,
    password: String,
}

impl Api {
    /// An API for `user` whose current token is `token`.
    pub fn new(anonymous: Http, token: &str, user: &str, password: &str) -> Api {
        let with_token = Mutex::new(anonymous.with_token(token));
        Api { inner: Arc::new(ApiInner { anonymous, with_token, user: user.into(), password: password.into() }) }
    }

    fn http(&self) -> Http {
        match self.inner.with_token.lock() {
            Ok(h) => h.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    async fn login_again(&self) -> palaver_client::Result<Http> {
        let login = self.inner.anonymous.login(&self.inner.user, &self.inner.password).await?;
        let http = self.inner.anonymous.with_token(login.token);
        match self.inner.with_token.lock() {
            Ok(mut h) => *h = http.clone(),
            Err(poisoned) => *poisoned.into_inner() = http.clone(),
        }
        Ok(http)
    }
}

/// Evaluates `$call` (an HTTP call ending in `.await`) with the session's
/// client bound to `$h`, and once more after logging in again if the token
/// was refused. A macro rather than a function taking an async closure:
/// the futures it makes must be `Send` for `tokio::spawn`, which such
/// closures cannot promise yet.
macro_rules! with_login {
    ($api:expr, |$h:ident| $call:expr) => {{
        let api: &Api = &$api;
        let $h = api.http();
        match $call {
            Err(e) if e.code() == "unauthorized" => match api.login_again().await {
                Ok($h) => $call,
                Err(e) => Err(e),
            },
            other => other,
        }
    }};
}

/// Uploads the file at `path` (`~/` is the home folder) to `room` and sends
/// a message carrying it, named after it.
async fn attach(api: &Api, room: &str, path: &str, client_id: &str) -> palaver_client::Result<String> {
    let full = match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => std::path::Path::new(&home).join(rest),
        _ => std::path::PathBuf::from(path),
    };
    let bytes = tokio::fs::read(&full).await.map_err(|e| palaver_client::Error::Api {
        status: None,
        code: "bad_request".into(),
        message: format!("cannot read {}: {e}", full.display()),
        retry_after_ms: None,
    })?;
    let name = full.file_name().map_or_else(|| "file".to_string(), |n| n.to_string_lossy().into_owned());
    let kind = media_type(&name);
    let a = with_login!(api, |h| h.upload(room, &name, kind, bytes.clone()).await)?;
    with_login!(api, |h| h.post_with(room, &a.name, client_id, None, &[a.id.as_str()]).await)?;
    Ok(format!("sent {} ({} bytes)", a.name, a.size))
}

/// The media type of a file, by its name's extension.
fn media_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "txt" | "md" | "log" => "text/plain",
        "pdf" => "application/pdf",
        "json" => "application/json",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    }
}
/// Results a `/search` lists.
const SEARCH_RESULTS: u32 = 10;

/// What a finished task reports.
enum Done {
    Rooms {
        epoch: u64,
        result: palaver_client::Result<Vec<Room>>,
    },
    Subscribed {
        room: String,
        result: palaver_client::Result<u64>,
    },
    History {
        room: String,
        at: Option<History>,
        result: palaver_client::Result<HistoryPage>,
    },
    Sent {
        room: String,
        client_id: String,
        result: palaver_client::Result<Sent>,
    },
    /// A room joined, created or opened, to show.
    Entered {
        result: palaver_client::Result<Room>,
    },
    Left {
        room: String,
        result: palaver_client::Result<()>,
    },
    /// Search results to list in the room shown.
    Found {
        query: String,
        result: palaver_client::Result<Vec<palaver_client::Message>>,
    },
    /// A line to show in `room`, or the error.
    Said {
        room: String,
        result: palaver_client::Result<String>,
    },
    ReadMarker {
        room: String,
        seq: u64,
        result: palaver_client::Result<()>,
    },
}

/// What the key thread reports.
enum Key {
    Event(TermEvent),
    Failed(String),
}

/// Raw mode and the alternate screen, undone when dropped (also on an
/// error's way out; a panic hook undoes them before the message prints).
struct Screen;

impl Screen {
    fn enter() -> Result<Screen> {
        anyhow::ensure!(
            std::io::stdout().is_terminal(),
            "palaver chat draws on a terminal, and standard output is not one"
        );
        terminal::enable_raw_mode().context("palaver chat needs a terminal (switching it to raw mode failed)")?;
        let screen = Screen;
        execute!(std::io::stdout(), terminal::EnterAlternateScreen).context("switching to the alternate screen")?;
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
        Ok(screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

fn restore() {
    let _ = execute!(std::io::stdout(), terminal::LeaveAlternateScreen, crossterm::cursor::Show);
    let _ = terminal::disable_raw_mode();
}

/// Reads the terminal's events on a thread (crossterm's reads block)
/// until `stop` is set or the terminal fails.
fn spawn_keys(tx: mpsc::UnboundedSender<Key>, stop: Arc<AtomicBool>) -> Result<()> {
    std::thread::Builder::new()
        .name("chat-keys".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let event = match crossterm::event::poll(Duration::from_millis(100)) {
                    Ok(false) => continue,
                    Ok(true) => crossterm::event::read(),
                    Err(e) => Err(e),
                };
                let report = match event {
                    Ok(e) => Key::Event(e),
                    Err(e) => Key::Failed(e.to_string()),
                };
                let failed = matches!(report, Key::Failed(_));
                if tx.send(report).is_err() || failed {
                    break;
                }
            }
        })
        .context("starting the key reader")?;
    Ok(())
}

/// Resolves on SIGTERM or SIGHUP (never where there are no such signals).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::SignalKind;
        use tokio::signal::unix::signal;
        match (signal(SignalKind::terminate()), signal(SignalKind::hangup())) {
            (Ok(mut term), Ok(mut hup)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = hup.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await
}

/// Runs the chat screen until the user quits.
pub async fn run(client: ResilientClient, events: ClientEvents, api: Api, me: &str) -> Result<()> {
    let screen = Screen::enter()?;
    let mut terminal = Terminal::new(CrosstermBackend::new(std::io::stdout())).context("opening the terminal")?;
    terminal.clear().context("clearing the terminal")?;
    let (key_tx, keys) = mpsc::unbounded_channel();
    let stop = Arc::new(AtomicBool::new(false));
    spawn_keys(key_tx, stop.clone())?;
    let (done_tx, done) = mpsc::unbounded_channel();
    let mut app = App {
        model: Model::new(me).with_base(api.http().base()),
        client: client.clone(),
        api,
        done: done_tx,
        epoch: 0,
        rooms_asked: false,
        rooms_at: Instant::now(),
        quit: false,
    };
    let result = app.run(&mut terminal, keys, events, done).await;
    stop.store(true, Ordering::Relaxed);
    drop(terminal);
    drop(screen);
    let _ = tokio::time::timeout(CLOSE_WITHIN, client.close()).await;
    result
}

struct App {
    model: Model,
    client: ResilientClient,
    api: Api,
    done: mpsc::UnboundedSender<Done>,
    /// Counts joins and leaves made here; a room list asked for before the
    /// latest one may not show it yet.
    epoch: u64,
    rooms_asked: bool,
    rooms_at: Instant,
    quit: bool,
}

impl App {
    async fn run<W: Write>(
        &mut self,
        terminal: &mut Terminal<CrosstermBackend<W>>,
        mut keys: mpsc::UnboundedReceiver<Key>,
        mut events: ClientEvents,
        mut done: mpsc::UnboundedReceiver<Done>,
    ) -> Result<()> {
        self.ask_rooms();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut client_open = true;
        let stop = stop_signal();
        tokio::pin!(stop);
        loop {
            let mut drawn = view::Drawn::default();
            terminal.draw(|f| drawn = view::draw(f, &self.model)).context("drawing")?;
            self.model.set_pane(drawn.max_scroll, drawn.pane_rows);
            if self.quit {
                return Ok(());
            }
            self.ask_history();
            tokio::select! {
                key = keys.recv() => match key {
                    Some(Key::Event(e)) => self.on_terminal(e),
                    Some(Key::Failed(why)) => anyhow::bail!("reading the terminal failed: {why}"),
                    None => anyhow::bail!("the terminal went away"),
                },
                event = events.recv(), if client_open => match event {
                    Some(e) => self.on_client_event(e),
                    None => client_open = false,
                },
                Some(d) = done.recv() => self.on_done(d),
                _ = tick.tick() => self.on_tick(),
                // A polite kill (or the terminal hanging up) still puts the
                // terminal back as it was.
                _ = &mut stop, if !self.quit => self.quit = true,
            }
            // Take whatever else is waiting before drawing again, so a burst
            // (a replay after a reconnect) is drawn once.
            for _ in 0..256 {
                if let Ok(Key::Event(e)) = keys.try_recv() {
                    self.on_terminal(e);
                } else if let Ok(e) = events.try_recv() {
                    self.on_client_event(e);
                } else if let Ok(d) = done.try_recv() {
                    self.on_done(d);
                } else {
                    break;
                }
            }
        }
    }

    fn spawn(&self, task: impl Future<Output = Done> + Send + 'static) {
        let tx = self.done.clone();
        tokio::spawn(async move {
            let _ = tx.send(task.await);
        });
    }

    fn on_client_event(&mut self, e: ClientEvent) {
        if self.model.on_client_event(e, Instant::now()) {
            self.ask_rooms();
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        self.model.tick(now);
        for (room, seq) in self.model.read_markers_due(now) {
            let api = self.api.clone();
            self.spawn(async move {
                let result = with_login!(api, |h| h.read(&room, seq).await);
                Done::ReadMarker { room, seq, result }
            });
        }
        if now.duration_since(self.rooms_at) >= ROOMS_EVERY {
            self.ask_rooms();
        }
    }

    fn ask_rooms(&mut self) {
        if self.rooms_asked {
            return;
        }
        self.rooms_asked = true;
        let (api, epoch) = (self.api.clone(), self.epoch);
        self.spawn(async move { Done::Rooms { epoch, result: with_login!(api, |h| h.rooms().await) } });
    }

    fn ask_history(&mut self) {
        if let Some((room, at)) = self.model.history_wanted(Instant::now()) {
            let api = self.api.clone();
            self.spawn(async move {
                let result = with_login!(api, |h| h.history_page(&room, at, Some(PAGE)).await);
                Done::History { room, at, result }
            });
        }
    }

    fn subscribe(&self, room: String, since: u64) {
        let client = self.client.clone();
        self.spawn(async move {
            let result = client.subscribe(&room, Some(since)).await;
            Done::Subscribed { room, result }
        });
    }

    fn on_done(&mut self, done: Done) {
        let now = Instant::now();
        match done {
            Done::Rooms { epoch, result } => {
                self.rooms_asked = false;
                self.rooms_at = now;
                match result {
                    Ok(list) => {
                        for (room, since) in self.model.apply_room_list(&list, epoch == self.epoch) {
                            self.subscribe(room, since);
                        }
                    }
                    Err(e) => self.model.set_error(format!("reading your rooms: {}", describe(&e)), now),
                }
            }
            Done::Subscribed { room, result } => {
                if let Err(e) = result
                    && self.model.room(&room).is_some()
                {
                    let name = self.model.display_name(&room);
                    self.model.remove_room(&room);
                    self.model.set_error(format!("cannot follow {name}: {}", describe(&e)), now);
                }
            }
            Done::History { room, at, result } => match result {
                Ok(page) => self.model.on_history(&room, at, page),
                Err(e) => self.model.history_failed(&room, format!("reading history: {}", describe(&e)), now),
            },
            Done::Sent { room, client_id, result } => {
                let answer = result.map(|s| s.seq).map_err(|e| describe(&e));
                self.model.on_sent(&room, &client_id, answer, now);
            }
            Done::Entered { result } => match result {
                Ok(room) => {
                    if self.model.add_room(&room) {
                        self.subscribe(room.room.clone(), room.last_seq);
                    }
                    self.model.switch_to(&room.room);
                }
                Err(e) => self.model.set_error(describe(&e), now),
            },
            Done::Left { room, result } => match result {
                Ok(()) => {
                    let name = self.model.display_name(&room);
                    self.client.unsubscribe(&room);
                    self.model.remove_room(&room);
                    self.model.note(None, format!("you left {name}"));
                }
                Err(e) => self.model.set_error(describe(&e), now),
            },
            Done::Said { room, result } => match result {
                Ok(text) => self.model.note(Some(&room), text),
                Err(e) => self.model.set_error(describe(&e), now),
            },
            Done::Found { query, result } => match result {
                Ok(found) => {
                    self.model.note(None, format!("search {query:?}: {} found, newest first", found.len()));
                    for m in found {
                        let body = m.body.unwrap_or_default();
                        self.model.note(None, format!("  #{} {} {}: {body}", m.room, m.seq, m.from));
                    }
                }
                Err(e) => self.model.set_error(describe(&e), now),
            },
            Done::ReadMarker { room, seq, result } => {
                // A marker past what this node knows (400) would fail again;
                // anything else is worth another try.
                if let Err(e) = result
                    && e.code() != "bad_request"
                {
                    self.model.read_marker_failed(&room, seq);
                }
            }
        }
    }

    fn on_terminal(&mut self, event: TermEvent) {
        match event {
            TermEvent::Key(key) => self.on_key(key),
            // The next drawing takes the new size; nothing else to do.
            TermEvent::Resize(..) => {}
            _ => {}
        }
    }

    fn on_key(&mut self, key: KeyEvent) {
        if key.kind == KeyEventKind::Release {
            return;
        }
        let now = Instant::now();
        // AltGr arrives as Ctrl+Alt on some systems: that is typing, not a shortcut.
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL) && !key.modifiers.contains(KeyModifiers::ALT);
        let input = &mut self.model.input;
        match key.code {
            KeyCode::Char('c') if ctrl => self.quit = true,
            KeyCode::Char('n') if ctrl => self.model.cycle(1),
            KeyCode::Char('p') if ctrl => self.model.cycle(-1),
            KeyCode::Char('a') if ctrl => input.home(),
            KeyCode::Char('e') if ctrl => input.end(),
            KeyCode::Char('u') if ctrl => {
                input.take();
            }
            KeyCode::Char(_) if ctrl => {}
            KeyCode::Char(c) => {
                input.insert(c);
                if let Some(room) = self.model.typing_due(now) {
                    self.client.typing(&room);
                }
            }
            KeyCode::Enter => self.submit(),
            KeyCode::Backspace => input.backspace(),
            KeyCode::Delete => input.delete(),
            KeyCode::Left => input.left(),
            KeyCode::Right => input.right(),
            KeyCode::Home => input.home(),
            KeyCode::End => input.end(),
            KeyCode::Tab => self.model.cycle(1),
            KeyCode::BackTab => self.model.cycle(-1),
            KeyCode::PageUp => self.model.page_up(),
            KeyCode::PageDown => self.model.page_down(),
            KeyCode::Esc => self.model.clear_error(),
            _ => {}
        }
    }

    fn submit(&mut self) {
        let now = Instant::now();
        let line = self.model.input.take();
        match command::parse(&line) {
            Ok(Input::Empty) => {}
            Ok(Input::Message(body)) => self.send(body),
            Ok(Input::Command(c)) => {
                self.model.clear_error();
                self.command(c);
            }
            Err(e) => {
                // Keep what was typed, to be fixed rather than typed again.
                self.model.input.replace(&line);
                self.model.set_error(e.to_string(), now);
            }
        }
    }

    fn send(&mut self, body: String) {
        let Some(room) = self.model.current_id().map(str::to_string) else {
            self.model.set_error("no room to send to: /join ROOM or /create ROOM first", Instant::now());
            self.model.input.replace(&body);
            return;
        };
        let client_id = self.client.next_client_id();
        self.model.add_pending(&room, &client_id, &body);
        let client = self.client.clone();
        self.spawn(async move {
            let result = client.send_with_id(&room, &body, &client_id).await;
            Done::Sent { room, client_id, result }
        });
    }

    /// The current room, or an error on screen saying the command needs one.
    fn current_room(&mut self, command: &str) -> Option<String> {
        let room = self.model.current_id().map(str::to_string);
        if room.is_none() {
            self.model.set_error(format!("{command} needs a room: /join ROOM first"), Instant::now());
        }
        room
    }

    fn command(&mut self, command: Command) {
        let api = self.api.clone();
        match command {
            Command::Quit => self.quit = true,
            Command::Help => {
                for line in command::HELP {
                    self.model.note(None, *line);
                }
            }
            Command::Join(room) => {
                if self.model.room(&room).is_some() {
                    self.model.switch_to(&room);
                    return;
                }
                self.epoch += 1;
                self.spawn(async move {
                    let result = match with_login!(api, |h| h.join(&room).await) {
                        // Already a member (joined elsewhere): just show it.
                        Ok(_) => with_login!(api, |h| h.room(&room).await),
                        Err(e) if e.code() == "conflict" => with_login!(api, |h| h.room(&room).await),
                        Err(e) => Err(e),
                    };
                    Done::Entered { result }
                });
            }
            Command::Create { room, private } => {
                self.epoch += 1;
                let visibility = if private { Visibility::Private } else { Visibility::Public };
                self.spawn(async move {
                    Done::Entered { result: with_login!(api, |h| h.create_room(&room, &room, visibility).await) }
                });
            }
            Command::Dm(user) => {
                if user == self.model.me() {
                    self.model.set_error("a direct room needs someone else: /dm USER", Instant::now());
                    return;
                }
                self.epoch += 1;
                self.spawn(async move { Done::Entered { result: with_login!(api, |h| h.dm(&user).await) } });
            }
            Command::Leave => {
                let Some(room) = self.current_room("/leave") else { return };
                self.epoch += 1;
                self.spawn(async move {
                    let result = with_login!(api, |h| h.leave(&room).await);
                    Done::Left { room, result }
                });
            }
            Command::Invite(user) => {
                let Some(room) = self.current_room("/invite") else { return };
                let name = self.model.display_name(&room);
                self.spawn(async move {
                    let result = with_login!(api, |h| h.invite(&room, &user).await);
                    Done::Said { room, result: result.map(|()| format!("invited {user} to {name}")) }
                });
            }
            Command::Reply(body) => {
                let Some(room) = self.current_room("/reply") else { return };
                let me = self.model.me().to_string();
                let Some(to) =
                    self.model.room(&room).and_then(|r| r.newest(&me, false)).map(|e| (e.seq, e.from.clone()))
                else {
                    self.model.set_error("/reply needs a message of someone else to answer", Instant::now());
                    return;
                };
                let client_id = self.client.next_client_id();
                self.spawn(async move {
                    let result = with_login!(api, |h| h.post_reply(&room, &body, &client_id, Some(to.0)).await);
                    Done::Said { room, result: result.map(|_| format!("replied to {}", to.1)) }
                });
            }
            Command::Edit(body) => {
                let Some(room) = self.current_room("/edit") else { return };
                let me = self.model.me().to_string();
                let Some(seq) = self.model.room(&room).and_then(|r| r.newest(&me, true)).map(|e| e.seq) else {
                    self.model.set_error("/edit needs a message of yours to change", Instant::now());
                    return;
                };
                self.spawn(async move {
                    let result = with_login!(api, |h| h.edit_message(&room, seq, &body).await);
                    Done::Said { room, result: result.map(|_| "message edited".to_string()) }
                });
            }
            Command::React(emoji) => {
                let Some(room) = self.current_room("/react") else { return };
                let me = self.model.me().to_string();
                let target = self.model.room(&room).and_then(|r| r.newest(&me, false));
                let Some((seq, from, on)) = target.map(|e| {
                    let mine = e.reactions.iter().any(|(x, users)| *x == emoji && users.contains(&me));
                    (e.seq, e.from.clone(), !mine)
                }) else {
                    self.model.set_error("/react needs a message of someone else", Instant::now());
                    return;
                };
                self.spawn(async move {
                    let result = with_login!(api, |h| h.react(&room, seq, &emoji, on).await);
                    let done = if on { format!("reacted {emoji} to {from}") } else { format!("took back {emoji}") };
                    Done::Said { room, result: result.map(|()| done) }
                });
            }
            Command::Attach(path) => {
                let Some(room) = self.current_room("/attach") else { return };
                let client_id = self.client.next_client_id();
                self.spawn(async move {
                    let result = attach(&api, &room, &path, &client_id).await;
                    Done::Said { room, result }
                });
            }
            Command::Search(query) => {
                self.spawn(async move {
                    let result = with_login!(api, |h| h.search(None, &query, Some(SEARCH_RESULTS)).await);
                    Done::Found { query, result }
                });
            }
            Command::Who => {
                let Some(room) = self.current_room("/who") else { return };
                let name = self.model.display_name(&room);
                self.spawn(async move {
                    let result: palaver_client::Result<Vec<Member>> = with_login!(api, |h| h.members(&room).await);
                    Done::Said { room, result: result.map(|m| members_text(&name, &m)) }
                });
            }
        }
    }
}
