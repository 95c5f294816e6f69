//! Draws the [`Model`] with ratatui: the room list on the left, the current
//! room's messages, the error (when there is one), the input line and the
//! status line. It reads the model and writes a frame, nothing else.
//!
//! Text from other people is shown as it is, never interpreted: control
//! characters (an escape sequence in a message, say) become visible
//! stand-ins before they reach the terminal, and bidirectional overrides
//! are shown as `�`, so a message cannot move the cursor, recolour the
//! screen or reorder what others wrote. Long lines wrap by display width
//! (wide characters count two columns), so nothing is cut but what does
//! not fit a terminal of a few columns.

use ratatui::Frame;
use ratatui::layout::Constraint;
use ratatui::layout::Layout;
use ratatui::layout::Position;
use ratatui::layout::Rect;
use ratatui::style::Color;
use ratatui::style::Modifier;
use ratatui::style::Style;
use ratatui::text::Line;
use ratatui::text::Span;
use ratatui::widgets::Paragraph;
use unicode_segmentation::UnicodeSegmentation;
use unicode_width::UnicodeWidthStr;

use super::model::Connection;
use super::model::Item;
use super::model::Model;
use super::model::RoomState;

/// What a drawing found out that the model needs for scrolling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drawn {
    /// Rows the message pane can scroll up at most.
    pub max_scroll: usize,
    /// Rows of messages the pane shows.
    pub pane_rows: usize,
}

/// Below this width the room list is left out (Tab still switches rooms,
/// and the pane's header names the room).
const LIST_FROM_WIDTH: u16 = 30;

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, model: &Model) -> Drawn {
    let area = frame.area();
    let error_rows = u16::from(model.error().is_some());
    let [main, error, input, status] = Layout::vertical([
        Constraint::Min(1),
        Constraint::Length(error_rows),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    let list_width = if area.width < LIST_FROM_WIDTH { 0 } else { (area.width / 4).clamp(10, 24) };
    let [list, separator, pane] = Layout::horizontal([
        Constraint::Length(list_width),
        Constraint::Length(u16::from(list_width > 0)),
        Constraint::Min(1),
    ])
    .areas(main);
    draw_room_list(frame, model, list);
    if separator.width > 0 {
        let bar = vec![Line::from("│"); usize::from(separator.height)];
        frame.render_widget(Paragraph::new(bar).style(dim()), separator);
    }
    let drawn = draw_pane(frame, model, pane);
    if let Some(text) = model.error() {
        let line = Line::from(vec![Span::raw("! "), Span::raw(visible(text))]);
        frame.render_widget(Paragraph::new(line).style(Style::new().fg(Color::Red)), error);
    }
    draw_input(frame, model, input);
    frame.render_widget(Paragraph::new(status_line(model)), status);
    drawn
}

fn dim() -> Style {
    Style::new().fg(Color::DarkGray)
}

fn draw_room_list(frame: &mut Frame, model: &Model, area: Rect) {
    if area.width == 0 {
        return;
    }
    let width = usize::from(area.width);
    let lines: Vec<Line> = model
        .rooms()
        .iter()
        .map(|r| {
            let current = model.current_id() == Some(r.id.as_str());
            let unread = r.unread();
            let count = if unread > 0 { format!(" {unread}") } else { String::new() };
            let marker = if current { "▸" } else { " " };
            let room_width = width.saturating_sub(count.width() + 1);
            let name = fit(&visible(&model.display_name(&r.id)), room_width);
            let pad = " ".repeat(room_width.saturating_sub(name.width()));
            let style =
                if current { Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED) } else { Style::new() };
            Line::from(vec![
                Span::styled(marker, style),
                Span::styled(format!("{name}{pad}"), style),
                Span::styled(count, Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD)),
            ])
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), area);
}

fn draw_pane(frame: &mut Frame, model: &Model, area: Rect) -> Drawn {
    if area.height == 0 || area.width == 0 {
        return Drawn::default();
    }
    let [header, body] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(area);
    let width = usize::from(area.width);
    let rows: Vec<Line<'static>> = match model.current() {
        None => {
            let mut rows = Vec::new();
            let welcome =
                "No room yet: /join ROOM or /create ROOM to start, /dm USER to talk to someone, /help for more.";
            for text in std::iter::once(welcome).chain(model.notes().iter().map(String::as_str)) {
                rows.extend(wrap(vec![Span::styled(visible(text), dim())], width));
            }
            frame.render_widget(Paragraph::new(Line::from(Span::styled(" palaver", bold()))), header);
            rows
        }
        Some(room) => {
            frame.render_widget(Paragraph::new(header_line(model, room)), header);
            room_rows(model, room, width)
        }
    };
    let shown = usize::from(body.height);
    let max_scroll = rows.len().saturating_sub(shown);
    let scroll = model.current().map_or(0, RoomState::scroll).min(max_scroll);
    let end = rows.len() - scroll;
    let start = end.saturating_sub(shown);
    let window: Vec<Line> = rows[start..end].to_vec();
    frame.render_widget(Paragraph::new(window), body);
    Drawn { max_scroll, pane_rows: shown }
}

fn bold() -> Style {
    Style::new().add_modifier(Modifier::BOLD)
}

fn header_line(model: &Model, room: &RoomState) -> Line<'static> {
    let mut spans = vec![Span::styled(format!(" {}", visible(&model.display_name(&room.id))), bold())];
    if !room.title.is_empty() && room.title != room.id {
        spans.push(Span::raw(format!(" · {}", visible(&room.title))));
    }
    if room.visibility == palaver_client::Visibility::Private {
        spans.push(Span::styled(" (private)", dim()));
    }
    if room.scroll() > 0 {
        spans.push(Span::styled(" · scrolled up: PageDown for newer", Style::new().fg(Color::Yellow)));
    }
    Line::from(spans)
}

/// Every row of a room's pane, wrapped to `width`.
fn room_rows(model: &Model, room: &RoomState, width: usize) -> Vec<Line<'static>> {
    let mut rows = Vec::new();
    if room.more_history() {
        rows.push(Line::from(Span::styled("⋯ older messages: PageUp", dim())));
    }
    let me = model.me();
    for item in room.items() {
        let spans = match item {
            Item::Message(e) => {
                let name_style =
                    if e.from == me { Style::new().fg(Color::Cyan) } else { Style::new().fg(Color::Green) };
                let mut spans =
                    vec![Span::styled(format!("{}:", visible(&e.from)), name_style.add_modifier(Modifier::BOLD))];
                if let Some(to) = e.reply_to {
                    let whom = room.message(to).map_or_else(|| format!("#{to}"), |q| visible(&q.from));
                    spans.push(Span::styled(format!(" ↪ {whom}"), dim()));
                }
                match &e.body {
                    Some(body) => spans.push(Span::raw(format!(" {}", visible(body)))),
                    None => spans.push(Span::styled(" (deleted)", dim().add_modifier(Modifier::ITALIC))),
                }
                if e.edited && e.body.is_some() {
                    spans.push(Span::styled(" (edited)", dim()));
                }
                for (name, id) in &e.attachments {
                    let link = format!(" [{}]({})", visible(name), visible(&model.attachment_url(id)));
                    spans.push(Span::styled(link, Style::new().fg(Color::Blue)));
                }
                if !e.reactions.is_empty() {
                    let counts: Vec<String> = e
                        .reactions
                        .iter()
                        .map(|(emoji, users)| format!("{} {}", visible(emoji), users.len()))
                        .collect();
                    spans.push(Span::styled(format!(" [{}]", counts.join(" ")), dim()));
                }
                spans
            }
            Item::Pending(p) => {
                let (mark, style) = match &p.failed {
                    None => ("* ", Style::new().fg(Color::Yellow)),
                    Some(_) => ("! ", Style::new().fg(Color::Red)),
                };
                let mut spans = vec![
                    Span::styled(mark, style.add_modifier(Modifier::BOLD)),
                    Span::styled(
                        format!("{}:", visible(me)),
                        Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
                    ),
                    Span::styled(format!(" {}", visible(&p.body)), Style::new().fg(Color::Gray)),
                ];
                if let Some(why) = &p.failed {
                    spans.push(Span::styled(format!(" (not sent: {})", visible(why)), style));
                }
                spans
            }
            Item::Note(n) => {
                vec![Span::styled(format!("· {}", visible(&n.text)), dim().add_modifier(Modifier::ITALIC))]
            }
        };
        rows.extend(wrap(spans, width));
    }
    rows
}

fn draw_input(frame: &mut Frame, model: &Model, area: Rect) {
    if area.width == 0 || area.height == 0 {
        return;
    }
    const PROMPT: &str = "> ";
    let room_width = usize::from(area.width).saturating_sub(PROMPT.len());
    let text = model.input.text();
    let cursor = model.input.cursor();
    let before: String = visible(&text.chars().take(cursor).collect::<String>());
    let after: String = visible(&text.chars().skip(cursor).collect::<String>());
    // Keep the cursor on screen: drop the start of a line too long for the
    // width, leaving a column for the cursor itself.
    let mut shown_before: Vec<&str> = Vec::new();
    let mut used = 0;
    for g in before.graphemes(true).rev() {
        let w = g.width();
        if used + w + 1 > room_width {
            break;
        }
        used += w;
        shown_before.push(g);
    }
    shown_before.reverse();
    let line = Line::from(vec![
        Span::styled(PROMPT, bold()),
        Span::raw(shown_before.concat()),
        Span::raw(fit(&after, room_width.saturating_sub(used))),
    ]);
    frame.render_widget(Paragraph::new(line), area);
    let x = area.x.saturating_add(PROMPT.len() as u16).saturating_add(used as u16);
    frame.set_cursor_position(Position { x: x.min(area.right().saturating_sub(1)), y: area.y });
}

fn status_line(model: &Model) -> Line<'static> {
    let me = visible(model.me());
    let (state, style, reason) = match model.connection() {
        Connection::Connecting => (format!("… connecting as {me}"), Style::new().fg(Color::Yellow), None),
        Connection::Connected => (format!("● connected as {me}"), Style::new().fg(Color::Green), None),
        Connection::Reconnecting { attempt, reason } => {
            (format!("◌ reconnecting (attempt {attempt})"), Style::new().fg(Color::Yellow), Some(reason.clone()))
        }
        Connection::Stopped { reason } => {
            ("✖ disconnected".to_string(), Style::new().fg(Color::Red), Some(reason.clone()))
        }
    };
    let mut spans = vec![Span::styled(state, style)];
    if let Some(room) = model.current() {
        let typing = room.typing();
        let who = match typing.as_slice() {
            [] => None,
            [one] => Some(format!("{} is typing…", visible(one))),
            [a, b] => Some(format!("{} and {} are typing…", visible(a), visible(b))),
            many => Some(format!("{} people are typing…", many.len())),
        };
        if let Some(who) = who {
            spans.push(Span::raw(" · "));
            spans.push(Span::styled(who, Style::new().add_modifier(Modifier::ITALIC)));
        }
    }
    if let Some(reason) = reason {
        spans.push(Span::styled(format!(" · {}", visible(&reason)), dim()));
    }
    Line::from(spans)
}

/// `s` cut to `width` columns, with `…` when something was cut.
fn fit(s: &str, width: usize) -> String {
    if s.width() <= width {
        return s.to_string();
    }
    let mut out = String::new();
    let mut used = 0;
    for g in s.graphemes(true) {
        let w = g.width();
        if used + w + 1 > width {
            break;
        }
        used += w;
        out.push_str(g);
    }
    if width > 0 {
        out.push('…');
    }
    out
}

/// Text as it may reach the terminal: control characters become visible
/// stand-ins (`␛` for escape), tabs spaces, and characters that reorder
/// text `�`. Newlines stay; [`wrap`] breaks rows at them.
pub fn visible(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\n' => '\n',
            '\t' => ' ',
            '\u{0}'..='\u{1f}' => char::from_u32(0x2400 + u32::from(c)).unwrap_or('\u{fffd}'),
            '\u{7f}' => '␡',
            '\u{80}'..='\u{9f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => '\u{fffd}',
            c => c,
        })
        .collect()
}

/// Lays styled spans out in rows of at most `width` columns, breaking at
/// newlines and wherever a row is full (by grapheme, by display width).
fn wrap(spans: Vec<Span<'static>>, width: usize) -> Vec<Line<'static>> {
    let width = width.max(1);
    let mut rows: Vec<Line<'static>> = Vec::new();
    let mut row: Vec<Span<'static>> = Vec::new();
    let mut used = 0;
    for span in spans {
        let style = span.style;
        let mut piece = String::new();
        for g in span.content.graphemes(true) {
            if g == "\n" || g == "\r\n" {
                if !piece.is_empty() {
                    row.push(Span::styled(std::mem::take(&mut piece), style));
                }
                rows.push(Line::from(std::mem::take(&mut row)));
                used = 0;
                continue;
            }
            let w = g.width();
            if used + w > width && used > 0 {
                if !piece.is_empty() {
                    row.push(Span::styled(std::mem::take(&mut piece), style));
                }
                rows.push(Line::from(std::mem::take(&mut row)));
                used = 0;
            }
            piece.push_str(g);
            used += w;
        }
        if !piece.is_empty() {
            row.push(Span::styled(piece, style));
        }
    }
    if !row.is_empty() || rows.is_empty() {
        rows.push(Line::from(row));
    }
    rows
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use palaver_client::ClientEvent;
    use palaver_client::Event;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::super::model::fixtures::msg;
    use super::super::model::fixtures::room;
    use super::*;

    /// Draws `model` on a `width`×`height` test terminal; answers its rows
    /// as text and what the drawing found.
    fn screen(model: &mut Model, width: u16, height: u16) -> (Vec<String>, Drawn) {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("a test terminal");
        let mut drawn = Drawn::default();
        terminal.draw(|f| drawn = draw(f, model)).expect("drawing on a test terminal");
        model.set_pane(drawn.max_scroll, drawn.pane_rows);
        let buffer = terminal.backend().buffer();
        let rows = (0..buffer.area.height)
            .map(|y| (0..buffer.area.width).map(|x| buffer[(x, y)].symbol().to_string()).collect::<String>())
            .collect();
        (rows, drawn)
    }

    fn has(rows: &[String], text: &str) -> bool {
        rows.iter().any(|r| r.contains(text))
    }

    /// The room list's row naming `room` (the list is the first `width` columns).
    fn list_row(rows: &[String], width: usize, room: &str) -> String {
        rows.iter().map(|r| r.chars().take(width).collect::<String>()).find(|r| r.contains(room)).unwrap_or_default()
    }

    /// ann in #lobby (three messages, one deleted, one send pending), #dev
    /// with 3 unread, a direct room with bob; bob typing; reconnecting.
    fn busy_model() -> Model {
        let now = Instant::now();
        let mut m = Model::new("ann");
        m.apply_room_list(&[room("lobby", 0, Some(0)), room("dev", 3, Some(3)), room("dm:ann:bob", 0, Some(0))], true);
        m.switch_to("lobby");
        m.history_wanted(now);
        let mut deleted = msg("lobby", 2, "bob", "");
        deleted.body = None;
        deleted.deleted = true;
        let page = palaver_client::HistoryPage {
            messages: vec![msg("lobby", 1, "bob", "hello ann"), deleted, msg("lobby", 3, "carol", "hi all")],
            next: None,
        };
        m.on_history("lobby", None, page);
        m.add_pending("lobby", "c1", "on its way");
        m.on_client_event(ClientEvent::Event(Event::Typing { room: "lobby".into(), username: "bob".into() }), now);
        m.on_client_event(ClientEvent::Connected { session: 1 }, now);
        m.on_client_event(ClientEvent::Disconnected { close_code: Some(1012), reason: "node restarting".into() }, now);
        m.on_client_event(ClientEvent::ConnectFailed { reason: "connection refused".into() }, now);
        for c in "typing here".chars() {
            m.input.insert(c);
        }
        m
    }

    #[test]
    fn a_busy_screen_at_80_by_24() {
        let mut m = busy_model();
        let (rows, drawn) = screen(&mut m, 80, 24);
        let text = rows.join("\n");
        assert!(has(&rows, "▸#lobby"), "{text}");
        assert!(list_row(&rows, 20, "#dev").ends_with(" 3"), "dev shows 3 unread:\n{text}");
        assert!(has(&rows, "@bob"), "{text}");
        assert_eq!(list_row(&rows, 20, "#lobby").trim_end(), "▸#lobby", "no count when all is read");
        assert!(has(&rows, "bob: hello ann"), "{text}");
        assert!(has(&rows, "bob: (deleted)"), "{text}");
        assert!(has(&rows, "carol: hi all"), "{text}");
        assert!(has(&rows, "* ann: on its way"), "the pending send is marked:\n{text}");
        let status = &rows[23];
        assert!(status.contains("reconnecting (attempt 2)"), "{status}");
        assert!(status.contains("bob is typing…"), "{status}");
        assert!(status.contains("connection refused"), "{status}");
        assert!(rows[22].starts_with("> typing here"), "{text}");
        // The messages come in seq order, the pending one last.
        let at = |s: &str| rows.iter().position(|r| r.contains(s));
        assert!(at("hello ann") < at("(deleted)") && at("(deleted)") < at("hi all") && at("hi all") < at("on its way"));
        assert_eq!(drawn.max_scroll, 0);
        assert_eq!(drawn.pane_rows, 21);
    }

    #[test]
    fn a_busy_screen_at_40_by_20() {
        let mut m = busy_model();
        m.set_error("slow down: try again in 2 s", Instant::now());
        let (rows, _) = screen(&mut m, 40, 20);
        let text = rows.join("\n");
        assert!(has(&rows, "▸#lobby"), "{text}");
        assert!(list_row(&rows, 10, "#dev").ends_with(" 3"), "{text}");
        assert!(has(&rows, "* ann: on its way"), "{text}");
        assert!(has(&rows, "(deleted)"), "{text}");
        assert!(rows[17].contains("! slow down: try again in 2 s"), "{text}");
        assert!(rows[18].starts_with("> typing here"), "{text}");
        assert!(rows[19].starts_with("◌ reconnecting (attempt 2)"), "{text}");
    }

    #[test]
    fn user_text_is_shown_as_is_and_never_interpreted() {
        let mut m = Model::new("ann");
        m.apply_room_list(&[room("lobby", 0, Some(0))], true);
        m.on_message(msg("lobby", 1, "bob", "\u{1b}[2J\u{1b}]0;owned\u{7} <b>not bold</b> **nor this** %s {0}"));
        m.on_message(msg("lobby", 2, "bob", "tab\there\rcr \u{202e}reversed"));
        m.on_message(msg("lobby", 3, "bob", "two\nlines"));
        let (rows, _) = screen(&mut m, 80, 24);
        let text = rows.join("\n");
        assert!(has(&rows, "bob: ␛[2J␛]0;owned␇ <b>not bold</b> **nor this** %s {0}"), "{text}");
        assert!(has(&rows, "bob: tab here␍cr �reversed"), "{text}");
        assert!(has(&rows, "bob: two") && has(&rows, "lines"), "{text}");
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "no control character reaches the terminal");
    }

    #[test]
    fn long_lines_wrap_and_tiny_terminals_do_not_panic() {
        let mut m = Model::new("ann");
        m.apply_room_list(&[room("lobby", 0, Some(0)), room(&"r".repeat(64), 0, Some(0))], true);
        m.on_message(msg("lobby", 1, "bob", &"word ".repeat(200)));
        m.on_message(msg("lobby", 2, "bob", &"漢字".repeat(100)));
        m.on_message(msg("lobby", 3, "bob", &"e\u{301}".repeat(50)));
        m.on_message(msg("lobby", 4, "bob", "the last one"));
        for c in "x".repeat(300).chars() {
            m.input.insert(c);
        }
        let (rows, drawn) = screen(&mut m, 80, 24);
        assert!(drawn.max_scroll > 0, "the long messages need more than a screen");
        assert!(has(&rows, "bob: the last one"), "the newest message is at the bottom");
        assert!(rows[22].starts_with("> xxxx"), "the input shows its end: {}", rows[22]);
        for (w, h) in [(40, 20), (20, 5), (3, 3), (1, 1), (2, 40), (200, 2), (0, 0)] {
            let (rows, _) = screen(&mut m, w, h);
            assert_eq!(rows.len(), usize::from(h));
        }
        m.on_client_event(ClientEvent::Disconnected { close_code: None, reason: "x".repeat(500) }, Instant::now());
        m.set_error("e".repeat(500), Instant::now());
        screen(&mut m, 10, 4);
    }

    #[test]
    fn page_up_shows_older_rows() {
        let mut m = Model::new("ann");
        m.apply_room_list(&[room("lobby", 0, Some(0))], true);
        for seq in 1..=60 {
            m.on_message(msg("lobby", seq, "bob", &format!("message {seq}")));
        }
        let (rows, drawn) = screen(&mut m, 80, 24);
        assert!(has(&rows, "message 60") && !has(&rows, "message 30 "), "the newest at first");
        assert!(drawn.max_scroll > 0);
        m.page_up();
        let (rows, _) = screen(&mut m, 80, 24);
        assert!(!has(&rows, "message 60") && has(&rows, "message 30"), "{}", rows.join("\n"));
        assert!(has(&rows, "scrolled up"), "the header says the view is scrolled");
        for _ in 0..10 {
            m.page_up();
        }
        let (rows, _) = screen(&mut m, 80, 24);
        assert!(has(&rows, "older messages: PageUp"), "the top says more may be loaded");
        assert!(has(&rows, "message 1"));
        for _ in 0..10 {
            m.page_down();
        }
        let (rows, _) = screen(&mut m, 80, 24);
        assert!(has(&rows, "message 60"));
    }

    #[test]
    fn without_rooms_the_pane_says_how_to_start() {
        let mut m = Model::new("ann");
        m.note(None, "/join ROOM   join a room");
        let (rows, _) = screen(&mut m, 80, 24);
        assert!(has(&rows, "No room yet"), "{}", rows.join("\n"));
        assert!(has(&rows, "/join ROOM   join a room"));
        assert!(rows[23].contains("connecting as ann"));
    }

    #[test]
    fn wrapping_counts_display_width() {
        let rows = wrap(vec![Span::raw("ab漢字cd")], 4);
        let text: Vec<String> = rows.iter().map(|l| l.spans.iter().map(|s| s.content.to_string()).collect()).collect();
        assert_eq!(text, ["ab漢", "字cd"]);
        let rows = wrap(vec![Span::raw("漢")], 1);
        assert_eq!(rows.len(), 1, "a character wider than the row gets a row of its own");
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(fit("abc", 4), "abc");
        assert_eq!(fit("abc", 0), "");
    }
}
