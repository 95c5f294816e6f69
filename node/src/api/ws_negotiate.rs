//! Negotiation of WebSocket `permessage-deflate` (RFC 7692 §5, §7.1): reads
//! the client's `Sec-WebSocket-Extensions` offers and answers the first one
//! this server can honour. Pure: header text in, agreement out.
//!
//! The server always answers `server_no_context_takeover`, whether asked or
//! not (§7.1.1.1 lets it): each message it sends is compressed on its own,
//! so one event's compressed bytes are the same for every recipient and are
//! made once ([`crate::hub::Event::deflated`]).

/// Smallest LZ77 window (as a power of two) a peer may name (§7.1.2).
const MIN_WINDOW: u8 = 8;
/// Largest window, and the one assumed when none is named.
pub const MAX_WINDOW: u8 = 15;
/// The smallest window zlib compresses raw deflate with: asked for 8, it
/// uses 9, whose output a peer with a 256-byte window cannot read. An offer
/// that limits the server to 8 is declined.
const MIN_SERVER_WINDOW: u8 = 9;

/// What was agreed for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// The window the server compresses with: the client's
    /// `server_max_window_bits`, or 15.
    pub server_window: u8,
    /// The client's window as it offered it (`client_max_window_bits=N`),
    /// echoed in the answer; `None` when it named none.
    pub client_window: Option<u8>,
    /// The client resets its compressor for every message, so the server
    /// keeps no inflate state between messages.
    pub client_no_context_takeover: bool,
    /// The client asked for `server_max_window_bits`, which the answer must repeat.
    server_window_asked: bool,
}

impl Agreement {
    /// The `Sec-WebSocket-Extensions` value answering the accepted offer.
    pub fn response(&self) -> String {
        let mut out = String::from("permessage-deflate; server_no_context_takeover");
        if self.client_no_context_takeover {
            out.push_str("; client_no_context_takeover");
        }
        if self.server_window_asked {
            out.push_str(&format!("; server_max_window_bits={}", self.server_window));
        }
        if let Some(bits) = self.client_window {
            out.push_str(&format!("; client_max_window_bits={bits}"));
        }
        out
    }

    /// The window the server inflates the client's messages with: the
    /// client's, but at least 9, the smallest zlib accepts (a larger window
    /// reads any stream made with a smaller one).
    pub fn inflate_window(&self) -> u8 {
        self.client_window.unwrap_or(MAX_WINDOW).max(MIN_SERVER_WINDOW)
    }
}

/// The agreement for the first acceptable `permessage-deflate` offer among
/// the values of every `Sec-WebSocket-Extensions` header, in order; `None`
/// when there is none (the connection then runs without extensions).
pub fn negotiate<'a>(headers: impl IntoIterator<Item = &'a str>) -> Option<Agreement> {
    headers.into_iter().flat_map(split_outside_quotes).find_map(accept)
}

/// Splits a header value into its comma-separated elements, ignoring
/// commas inside quoted strings.
fn split_outside_quotes(value: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts
}

/// One parameter's value: a token or a quoted string (unquoted), which
/// RFC 7692 §7.1 requires to be a token once unquoted.
fn param_value(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let value = match raw.strip_prefix('"') {
        Some(rest) => {
            let inner = rest.strip_suffix('"')?;
            let mut out = String::new();
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                out.push(if c == '\\' { chars.next()? } else { c });
            }
            out
        }
        None => raw.to_string(),
    };
    (!value.is_empty() && value.bytes().all(is_token_byte)).then_some(value)
}

/// RFC 7230 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A window size: a decimal 8..=15 without leading zeros (§7.1.2.1).
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') {
        return None;
    }
    value.parse::<u8>().ok().filter(|b| (MIN_WINDOW..=MAX_WINDOW).contains(b))
}

/// The agreement for one offer, if it is a valid `permessage-deflate`
/// offer this server can honour.
fn accept(offer: &str) -> Option<Agreement> {
    let mut parts = offer.split(';');
    if !parts.next()?.trim().eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut server_nct = false;
    let mut agreement = Agreement {
        server_window: MAX_WINDOW,
        client_window: None,
        client_no_context_takeover: false,
        server_window_asked: false,
    };
    let mut client_window_named = false;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(param_value(v)?)),
            None => (param.trim(), None),
        };
        // A duplicate of any parameter makes the offer invalid (§7).
        match (name.to_ascii_lowercase().as_str(), value) {
            ("server_no_context_takeover", None) if !server_nct => server_nct = true,
            ("client_no_context_takeover", None) if !agreement.client_no_context_takeover => {
                agreement.client_no_context_takeover = true;
            }
            ("server_max_window_bits", Some(v)) if !agreement.server_window_asked => {
                agreement.server_window = window_bits(&v)?;
                agreement.server_window_asked = true;
            }
            ("client_max_window_bits", v) if !client_window_named => {
                client_window_named = true;
                agreement.client_window = match v {
                    Some(v) => Some(window_bits(&v)?),
                    None => None,
                };
            }
            _ => return None,
        }
    }
    (agreement.server_window >= MIN_SERVER_WINDOW).then_some(agreement)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(header: &str) -> Option<Agreement> {
        negotiate([header])
    }

    fn answer(header: &str) -> Option<String> {
        one(header).map(|a| a.response())
    }

    #[test]
    fn a_bare_offer_gets_server_no_context_takeover() {
        let a = one("permessage-deflate").expect("accepted");
        assert_eq!(a.server_window, 15);
        assert_eq!(a.client_window, None);
        assert!(!a.client_no_context_takeover);
        assert_eq!(a.response(), "permessage-deflate; server_no_context_takeover");
        assert_eq!(a.inflate_window(), 15);
    }

    #[test]
    fn the_browsers_offer() {
        // What Chrome and Firefox send.
        assert_eq!(
            answer("permessage-deflate; client_max_window_bits").as_deref(),
            Some("permessage-deflate; server_no_context_takeover")
        );
    }

    #[test]
    fn windows_are_echoed_as_offered() {
        let a = one("permessage-deflate; client_max_window_bits=10; server_max_window_bits=12").expect("accepted");
        assert_eq!((a.server_window, a.client_window), (12, Some(10)));
        assert_eq!(a.inflate_window(), 10);
        assert_eq!(
            a.response(),
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=12; client_max_window_bits=10"
        );
        let a = one("permessage-deflate; client_max_window_bits=8").expect("accepted");
        assert_eq!(a.client_window, Some(8));
        assert_eq!(a.inflate_window(), 9, "zlib's smallest, which reads 8-bit streams too");
        let quoted = one("permessage-deflate; client_max_window_bits=\"11\"").expect("accepted");
        assert_eq!(quoted.client_window, Some(11));
    }

    #[test]
    fn context_takeover_flags() {
        let a = one("permessage-deflate; client_no_context_takeover; server_no_context_takeover").expect("accepted");
        assert!(a.client_no_context_takeover);
        assert_eq!(a.response(), "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
        let upper = one("Permessage-Deflate; Client_No_Context_Takeover").expect("case-insensitive");
        assert!(upper.client_no_context_takeover);
    }

    #[test]
    fn invalid_offers_are_declined() {
        for bad in [
            "permessage-deflate; foo",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=0",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; client_max_window_bits=\"1 0\"",
            "permessage-deflate; client_max_window_bits=\"10",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=x",
            "permessage-deflate; =10",
            "x-webkit-deflate-frame",
            "",
            ";;;",
        ] {
            assert_eq!(one(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_server_window_of_8_is_declined_as_zlib_cannot_honour_it() {
        assert_eq!(one("permessage-deflate; server_max_window_bits=8"), None);
        assert_eq!(one("permessage-deflate; server_max_window_bits=9").map(|a| a.server_window), Some(9));
    }

    #[test]
    fn the_first_acceptable_offer_wins() {
        let a = one("x-other; a=1, permessage-deflate; server_max_window_bits=8, \
             permessage-deflate; client_max_window_bits=\"a,b\", permessage-deflate; client_max_window_bits=9, \
             permessage-deflate")
        .expect("accepted");
        assert_eq!(a.client_window, Some(9));
        // Offers spread over several headers are read in order.
        let a = negotiate(["permessage-deflate; bogus", "foo, permessage-deflate; client_no_context_takeover"])
            .expect("accepted");
        assert!(a.client_no_context_takeover);
        assert_eq!(negotiate([] as [&str; 0]), None);
        assert_eq!(negotiate(["foo", "bar; baz"]), None);
    }
}
