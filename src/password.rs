//! Passwords typed by a person: from the terminal without echo, or from the
//! first line of standard input (for scripts).

use std::io::Write;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;

/// Reads a password from the first line of standard input.
pub fn from_stdin() -> Result<String> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        bail!("no password on standard input (--password-stdin reads its first line)");
    }
    Ok(password.to_string())
}

/// Asks for a password on the terminal after `prompt`, without echoing it.
pub fn prompt(prompt: &str) -> Result<String> {
    use crossterm::event::Event;
    use crossterm::event::KeyCode;
    use crossterm::event::KeyEventKind;
    use crossterm::event::KeyModifiers;

    /// Leaves raw mode however the prompt ends.
    struct Raw;
    impl Drop for Raw {
        fn drop(&mut self) {
            let _ = crossterm::terminal::disable_raw_mode();
        }
    }

    crossterm::terminal::enable_raw_mode()
        .context("no terminal to ask for the password on (pass it with --password-stdin)")?;
    let _raw = Raw;
    let mut out = std::io::stderr();
    write!(out, "{prompt}").and_then(|()| out.flush()).context("writing the prompt")?;
    let mut password = String::new();
    loop {
        let event = crossterm::event::read().context("reading the password")?;
        let Event::Key(key) = event else { continue };
        if key.kind == KeyEventKind::Release {
            continue;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Enter => break,
            KeyCode::Char('c') | KeyCode::Char('d') if ctrl => {
                let _ = write!(out, "\r\n");
                bail!("cancelled");
            }
            KeyCode::Esc => {
                let _ = write!(out, "\r\n");
                bail!("cancelled");
            }
            KeyCode::Char('u') if ctrl => password.clear(),
            KeyCode::Char(c) if !ctrl => password.push(c),
            KeyCode::Backspace => {
                password.pop();
            }
            _ => {}
        }
    }
    let _ = write!(out, "\r\n");
    if password.is_empty() {
        bail!("no password given");
    }
    Ok(password)
}
