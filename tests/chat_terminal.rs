//! `palaver chat` in a pseudo-terminal: tmux runs the real binary against a
//! real node, the test types with `send-keys` and reads the screen with
//! `capture-pane`. A line typed is shown and stored; a message sent by
//! someone else over HTTP shows up; the node restarting costs nothing (a
//! line typed while it is down waits with `*`, then goes through once); a
//! resize does not stop the program; `/attach` sends a file, shown as a
//! link; `/quit` ends it with status 0.
//!
//! Without tmux the test says why and passes; with `PALAVER_CI` set (as
//! `.ci/run` does) that is a failure instead.

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use palaver_client::Event;
use palaver_client::Visibility;
use palaver_testkit::Cluster;
use palaver_testkit::User;
use palaver_testkit::WAIT;
use palaver_testkit::eventually;

/// A screen change may take a while on a busy two-core machine.
const SCREEN_WAIT: Duration = Duration::from_secs(60);

/// A tmux server of this test's own (its own socket), killed when dropped.
struct Tmux {
    socket: String,
    session: &'static str,
}

impl Tmux {
    /// tmux's version line, or why it cannot run.
    fn version() -> Result<String> {
        let out = Command::new("tmux").arg("-V").output().context("running tmux -V")?;
        anyhow::ensure!(out.status.success(), "tmux -V failed: {}", out.status);
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Starts `command` (a shell line) in a detached `width`×`height` session.
    fn start(width: u16, height: u16, command: &str) -> Result<Tmux> {
        let tmux = Tmux { socket: format!("palaver-chat-test-{}", std::process::id()), session: "chat" };
        let (w, h) = (width.to_string(), height.to_string());
        tmux.run(&["new-session", "-d", "-s", tmux.session, "-x", &w, "-y", &h, command])?;
        Ok(tmux)
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            // tmux wants to know what it runs in, even detached.
            .env("TERM", std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into()))
            .output()
            .with_context(|| format!("running tmux {args:?}"))?;
        anyhow::ensure!(
            out.status.success(),
            "tmux {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Types `text` as it is (no key names), then Enter.
    fn type_line(&self, text: &str) -> Result<()> {
        self.run(&["send-keys", "-t", self.session, "-l", text])?;
        self.run(&["send-keys", "-t", self.session, "Enter"]).map(drop)
    }

    /// The screen's text.
    fn screen(&self) -> Result<String> {
        self.run(&["capture-pane", "-p", "-t", self.session])
    }

    /// Polls the screen until `pred` holds; fails with the last screen.
    async fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> Result<String> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < SCREEN_WAIT {
            match self.screen() {
                Ok(screen) if pred(&screen) => return Ok(screen),
                Ok(screen) => last = screen,
                // The session is gone (the program ended): nothing more will show.
                Err(e) => bail!("waiting for {what}: {e:#}\nlast screen:\n{last}"),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!("the screen did not show {what} within {SCREEN_WAIT:?}; it shows:\n{last}")
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // Ends this test's own tmux server and what runs in it, nothing else.
        let _ = Command::new("tmux").arg("-L").arg(&self.socket).arg("kill-server").output();
    }
}

/// How many times `text` is on `screen`.
fn count(screen: &str, text: &str) -> usize {
    screen.matches(text).count()
}

/// Checks that `room` holds `body` from `from` exactly once. A line the
/// screen shows without `*` was answered, so it is stored (and readable on
/// every node) by then.
async fn stored_once(user: &User, room: &str, from: &str, body: &str) -> Result<()> {
    let messages = user.http.messages_after(room, 0, Some(500)).await?;
    let found: Vec<_> = messages.iter().filter(|m| m.body.as_deref() == Some(body)).collect();
    anyhow::ensure!(found.len() == 1, "{body:?} is stored {} times in {room}", found.len());
    anyhow::ensure!(found[0].from == from, "{body:?} is from {}, not {from}", found[0].from);
    Ok(())
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_chats_in_a_terminal_through_a_node_restart() -> Result<()> {
    match Tmux::version() {
        Ok(v) => eprintln!("using {v}"),
        Err(e) if std::env::var_os("PALAVER_CI").is_some() => {
            bail!("tmux is needed for this test in CI (.ci/run installs it): {e:#}")
        }
        Err(e) => {
            eprintln!("skipping: tmux is not available ({e:#}); install tmux to run this test");
            return Ok(());
        }
    }
    let mut c = Cluster::start(1).await?;
    let ann = c.user(1, "ann").await?;
    let bob = c.user(1, "bob").await?;
    ann.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    bob.http.join("lobby").await?;
    bob.http.post_message("lobby", "before you came", "b-0").await?;

    let dir: PathBuf = c.scratch_dir("chat")?;
    let password = dir.join("password");
    let exit = dir.join("exit");
    std::fs::write(&password, format!("{}\n", ann.password)).context("writing the password file")?;
    // The password comes from a file, so the program runs with its standard
    // input at its end (it reads keys from the terminal itself).
    let command = format!(
        "{bin} chat --url http://{addr} --user ann --password-stdin < {pw}; echo \"exit=$?\" > {exit}",
        bin = shell_quote(Path::new(env!("CARGO_BIN_EXE_palaver"))),
        addr = c.addr(1),
        pw = shell_quote(&password),
        exit = shell_quote(&exit),
    );
    let tmux = Tmux::start(100, 30, &command)?;

    // The room, its history and the connection show.
    tmux.wait_for("the room, its history and the connection", |s| {
        s.contains("#lobby") && s.contains("bob: before you came") && s.contains("connected as ann")
    })
    .await?;

    // A line typed is shown, confirmed (no `*`), and stored.
    tmux.type_line("hello from a terminal")?;
    tmux.wait_for("the line sent", |s| s.contains("ann: hello from a terminal") && !s.contains("* ann:")).await?;
    stored_once(&bob, "lobby", "ann", "hello from a terminal").await?;

    // A message sent by someone else shows up.
    bob.http.post_message("lobby", "hi ann, over http", "b-1").await?;
    tmux.wait_for("bob's message", |s| s.contains("bob: hi ann, over http")).await?;

    // Typing tells the others; Ctrl-U takes the line back unsent.
    let mut bob_ws = c.ws(1, &bob).await?;
    bob_ws.subscribe("lobby", None).await?;
    // A notice goes at most every 3 s per room, and one went with the line
    // typed above: keep typing, as a person would, until bob hears of it.
    let is_ann_typing =
        |e: &Event| matches!(e, Event::Typing { room, username } if room == "lobby" && username == "ann");
    let mut heard = false;
    for word in ["half ", "a ", "thought ", "that ", "never ", "gets ", "sent ", "at ", "all ", "really"] {
        tmux.run(&["send-keys", "-t", tmux.session, "-l", word])?;
        if bob_ws.wait_for(is_ann_typing, Duration::from_secs(2)).await.is_ok() {
            heard = true;
            break;
        }
    }
    anyhow::ensure!(heard, "bob never saw ann typing:\n{}", tmux.screen()?);
    tmux.run(&["send-keys", "-t", tmux.session, "C-u"])?;
    tmux.wait_for("the emptied input line", |s| !s.contains("half a")).await?;
    drop(bob_ws);

    // What was on screen counts as read.
    eventually("ann's read marker at the newest message", WAIT, async || {
        let rooms = ann.http.rooms().await?;
        Ok(rooms.iter().any(|r| r.room == "lobby" && r.last_seq == 3 && r.unread == Some(0)).then_some(()))
    })
    .await?;

    // The node goes away: the status says so, and a line typed meanwhile
    // waits with `*`.
    c.kill(1);
    tmux.wait_for("the reconnecting status", |s| s.contains("reconnecting (attempt")).await?;
    tmux.type_line("typed while the node was down")?;
    tmux.wait_for("the waiting line", |s| s.contains("* ann: typed while the node was down")).await?;

    // It comes back: the line goes through once, and what others send
    // afterwards shows, each message once.
    c.restart(1).await?;
    tmux.wait_for("the line sent after the restart", |s| {
        s.contains("connected as ann") && s.contains("ann: typed while the node was down") && !s.contains("* ann:")
    })
    .await?;
    stored_once(&bob, "lobby", "ann", "typed while the node was down").await?;
    bob.http.post_message("lobby", "after the restart", "b-2").await?;
    let screen = tmux.wait_for("bob's message after the restart", |s| s.contains("bob: after the restart")).await?;
    for line in [
        "bob: before you came",
        "ann: hello from a terminal",
        "bob: hi ann, over http",
        "ann: typed while the node was down",
        "bob: after the restart",
    ] {
        assert_eq!(count(&screen, line), 1, "{line:?} once on screen:\n{screen}");
    }
    let order: Vec<Option<usize>> =
        ["before you came", "hello from a terminal", "hi ann, over http", "typed while", "after the restart"]
            .iter()
            .map(|t| screen.find(t))
            .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "in seq order:\n{screen}");

    // A resize, small and back, does not stop it.
    tmux.run(&["resize-window", "-t", tmux.session, "-x", "40", "-y", "12"])?;
    tmux.wait_for("the narrow screen", |s| s.lines().all(|l| l.chars().count() <= 40) && s.contains("#lobby")).await?;
    tmux.run(&["resize-window", "-t", tmux.session, "-x", "12", "-y", "3"])?;
    tmux.run(&["resize-window", "-t", tmux.session, "-x", "100", "-y", "30"])?;
    tmux.type_line("still here")?;
    tmux.wait_for("a line after the resizes", |s| s.contains("ann: still here") && !s.contains("* ann:")).await?;
    stored_once(&bob, "lobby", "ann", "still here").await?;

    // /attach uploads a file and sends it; the message shows it as a link.
    let notes = dir.join("notes.txt");
    std::fs::write(&notes, "a file from a terminal\n").context("writing the file to attach")?;
    tmux.type_line(&format!("/attach {}", notes.display()))?;
    tmux.wait_for("the file sent, as a link", |s| s.contains("ann: notes.txt") && s.contains("[notes.txt](")).await?;
    let sent = bob.http.messages_after("lobby", 0, Some(500)).await?;
    let carried = sent.iter().rev().find(|m| m.from == "ann" && !m.attachments.is_empty()).context("the message")?;
    let file = &carried.attachments[0];
    assert_eq!((file.name.as_str(), file.kind.as_str()), ("notes.txt", "text/plain"));
    assert_eq!(bob.http.download(&file.id).await?.bytes.as_ref(), b"a file from a terminal\n");

    // /quit ends the program with status 0.
    tmux.type_line("/quit")?;
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&exit) {
            assert_eq!(text.trim(), "exit=0", "palaver chat's exit status");
            break;
        }
        anyhow::ensure!(start.elapsed() < SCREEN_WAIT, "palaver chat did not exit after /quit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
