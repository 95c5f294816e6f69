//! `palaver chat`: a terminal client for a person, on top of the client
//! crate's resilient session.
//!
//! # Layout
//! - [`command`]: the input line read as a message or a `/command` (pure).
//! - [`model`]: what the screen shows, changed by events with the clock
//!   passed in; answers what should go out (pure).
//! - [`view`]: draws the model with ratatui (pure but for the frame).
//! - `app`: the event loop: keys, the session's events, requests as tasks,
//!   ticks.
//!
//! This module signs the user in (registering first with `--register`),
//! then hands over to the loop. It knows the protocol only through
//! `palaver-client`.

pub mod command;
pub mod model;
pub mod view;

mod app;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use palaver_client::Http;
use palaver_client::ResilientClient;
use palaver_client::ResilientOptions;

/// The keys and commands, for `palaver chat --help`.
pub const KEYS_HELP: &str = "\
Keys:
  Enter                 send the line (or run the /command)
  Tab, Shift-Tab        next, previous room (also Ctrl-N, Ctrl-P)
  PageUp, PageDown      scroll the messages; PageUp at the top loads older ones
  Left, Right, Home, End, Backspace, Delete, Ctrl-U   edit the line
  Esc                   hide the error
  Ctrl-C                quit

Commands:
  /join ROOM            join a room (or switch to one you are in)
  /leave                leave the current room
  /create ROOM [private]  create a room (public unless private)
  /dm USER              talk to USER in a direct room
  /invite USER          invite USER to the current room
  /who                  members of the current room, and who is online
  /help                 this list, on screen
  /quit                 quit
  //text                send a line that starts with /

A message marked * is on its way: the server has not confirmed it yet.";

/// Flags of `palaver chat`.
#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    /// Where the cluster is: its balancer's public address (or one node's).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Your username.
    #[arg(long, value_name = "NAME")]
    pub user: String,
    /// Read the password from the first line of standard input instead of
    /// asking for it.
    #[arg(long)]
    pub password_stdin: bool,
    /// Create the account first.
    #[arg(long)]
    pub register: bool,
}

/// Runs `palaver chat`: signs in, then shows the chat screen until the
/// user quits.
pub fn main(args: ChatArgs) -> Result<()> {
    let addr = address(&args.url)?;
    if !command::valid_user(&args.user) {
        bail!("{:?} is not a username: use 3 to 32 of a-z, 0-9, _, . and -", args.user);
    }
    let password = if args.password_stdin {
        crate::password::from_stdin()?
    } else {
        crate::password::prompt(&format!("password for {}: ", args.user))?
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    let result = runtime.block_on(run(&addr, &args, &password));
    // Tasks still waiting on the network are of no use any more.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

async fn run(addr: &str, args: &ChatArgs, password: &str) -> Result<()> {
    let http = Http::new(addr).context("setting up HTTP")?;
    let user = args.user.as_str();
    if args.register {
        match http.register(user, password).await {
            Ok(_) => {}
            Err(e) if e.code() == "conflict" => bail!("the username {user} is taken (drop --register to sign in)"),
            Err(e) => bail!("registering {user}: {}", model::describe(&e)),
        }
    }
    let login = match http.login(user, password).await {
        Ok(login) => login,
        Err(e) if e.code() == "unauthorized" => {
            bail!("wrong username or password for {user} (new here? add --register)")
        }
        Err(e) => bail!("signing in at {}: {}", args.url, model::describe(&e)),
    };
    // Straight to the node the balancer assigns, when it is on the same host:
    // the balancer then relays none of the chat's bytes.
    let opts = ResilientOptions::new(addr).token(login.token.clone()).credentials(user, password).follow_assign();
    let (client, events) = ResilientClient::connect(opts)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to {}: {}", args.url, model::describe(&e)))?;
    let api = app::Api::new(http, &login.token, user, password);
    app::run(client, events, api, user).await
}

/// `host:port` out of `http://host:port` (or a bare `host:port`).
fn address(url: &str) -> Result<String> {
    let url = url.trim();
    let rest = match url.split_once("://") {
        None => url,
        Some(("http", rest)) => rest,
        Some(("https", _)) => bail!("{url}: palaver chat speaks plain http only so far (no TLS): use http://HOST:PORT"),
        Some(_) => bail!("{url}: expected http://HOST:PORT"),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        bail!("{url}: expected http://HOST:PORT");
    }
    Ok(rest.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_plain_http_address() {
        let cases = [
            ("http://127.0.0.1:8080", Ok("127.0.0.1:8080")),
            ("http://127.0.0.1:8080/", Ok("127.0.0.1:8080")),
            (" localhost:9000 ", Ok("localhost:9000")),
            ("http://[::1]:8080", Ok("[::1]:8080")),
            ("https://chat.example.com", Err("palaver chat speaks plain http only")),
            ("ws://127.0.0.1:8080", Err("expected http://HOST:PORT")),
            ("http://", Err("expected http://HOST:PORT")),
            ("http://host:1/path", Err("expected http://HOST:PORT")),
            ("http://user@host:1", Err("expected http://HOST:PORT")),
        ];
        for (url, want) in cases {
            match (address(url), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{url}"),
                (Err(e), Err(want)) => assert!(e.to_string().contains(want), "{url}: {e}"),
                (got, want) => panic!("{url}: got {got:?}, want {want:?}"),
            }
        }
    }
}
