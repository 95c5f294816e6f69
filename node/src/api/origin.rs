//! Which browser origins may open a WebSocket (docs/protocol.md §5): parsing
//! an `Origin` header and the allow-list entries into (scheme, host, port),
//! and the rule that compares them.
//!
//! Pure: it sees the header's bytes and the configured strings, never the
//! request. The `Host` header plays no part on purpose: a page on a name the
//! attacker controls, rebound to this node's IP, sends a `Host` equal to its
//! own origin, so "same host" proves nothing.

/// A scheme a browser origin may have here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `http`, default port 80.
    Http,
    /// `https`, default port 443.
    Https,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// A tuple origin (RFC 6454): compared field by field, ports made explicit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The scheme.
    pub scheme: Scheme,
    /// The host, lowercased; an IPv6 address keeps its brackets.
    pub host: String,
    /// The port, the scheme's default when none was written.
    pub port: u16,
}

/// Why a text is not an origin; each names the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    /// Not `http://` or `https://` (this includes `null`).
    #[error("{0:?} is not an origin: it must start with http:// or https://")]
    Scheme(String),
    /// Something after the host and port: a path, query, fragment or user.
    #[error("{0:?} is not an origin: only scheme://host[:port] is allowed, without a path, query or user")]
    Extra(String),
    /// An empty or malformed host.
    #[error("{0:?} is not an origin: bad host")]
    Host(String),
    /// A port that is not a number from 1 to 65535.
    #[error("{0:?} is not an origin: bad port")]
    Port(String),
}

/// Longest host name DNS allows.
const MAX_HOST: usize = 253;

impl Origin {
    /// Parses `scheme://host[:port]`, allowing one trailing `/` (copied URLs
    /// have it). Scheme and host are case-insensitive.
    pub fn parse(text: &str) -> Result<Origin, OriginError> {
        let (scheme, rest) = text.split_once("://").ok_or_else(|| OriginError::Scheme(text.into()))?;
        let scheme = if scheme.eq_ignore_ascii_case("http") {
            Scheme::Http
        } else if scheme.eq_ignore_ascii_case("https") {
            Scheme::Https
        } else {
            return Err(OriginError::Scheme(text.into()));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@', '\\']) {
            return Err(OriginError::Extra(text.into()));
        }
        let (host, port) = split_port(authority).ok_or_else(|| OriginError::Host(text.into()))?;
        if !valid_host(host) {
            return Err(OriginError::Host(text.into()));
        }
        let port = match port {
            None => scheme.default_port(),
            Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| OriginError::Port(text.into()))?
            }
            Some(_) => return Err(OriginError::Port(text.into())),
        };
        Ok(Origin { scheme, host: host.to_ascii_lowercase(), port })
    }
}

/// `host` and the text after its `:`, if any; `None` for an unclosed `[`.
fn split_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, after) = authority.split_at(end + 1);
        return match after {
            "" => Some((host, None)),
            _ => after.strip_prefix(':').map(|port| (host, Some(port))),
        };
    }
    Some(match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    })
}

fn valid_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.contains(':') && inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
    }
    // Browsers send IDNs as punycode, so ASCII is all an origin holds.
    !host.is_empty()
        && host.len() <= MAX_HOST
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// The allow-list, parsed.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    any: bool,
    allowed: Vec<Origin>,
}

impl OriginPolicy {
    /// Parses `security.allowed_origins` (`"*"` allows every origin) and
    /// `security.public_url`; the error names the first bad entry.
    pub fn new(entries: &[String], public_url: Option<&str>) -> Result<Self, OriginError> {
        let mut policy = OriginPolicy::default();
        for entry in entries {
            if entry == "*" {
                policy.any = true;
            } else {
                policy.allowed.push(Origin::parse(entry)?);
            }
        }
        if let Some(url) = public_url {
            policy.allowed.push(Origin::parse(url)?);
        }
        Ok(policy)
    }

    /// Whether an upgrade whose `Origin` header is `origin` (`None`: no
    /// header, a non-browser client) may proceed.
    pub fn allows(&self, origin: Option<&[u8]>) -> bool {
        let Some(origin) = origin else { return true };
        if self.any {
            return true;
        }
        let Ok(origin) = std::str::from_utf8(origin) else { return false };
        match Origin::parse(origin) {
            Ok(origin) => self.allowed.contains(&origin),
            Err(_) => false,
        }
    }
}

/// [`OriginPolicy::allows`] straight from the settings. They were checked
/// when the config was loaded; an entry that still does not parse is
/// skipped, never a reason to allow.
pub fn allowed(origin: Option<&[u8]>, entries: &[String], public_url: Option<&str>) -> bool {
    let public = public_url.into_iter().map(str::to_string);
    let entries = entries.iter().cloned().chain(public);
    let mut policy = OriginPolicy::default();
    for entry in entries {
        if entry == "*" {
            policy.any = true;
        } else if let Ok(o) = Origin::parse(&entry) {
            policy.allowed.push(o);
        }
    }
    policy.allows(origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn origins_parse_to_scheme_host_and_port() {
        let o = |scheme, host: &str, port| Ok(Origin { scheme, host: host.into(), port });
        let cases: &[(&str, Result<Origin, OriginError>)] = &[
            ("http://chat.example", o(Scheme::Http, "chat.example", 80)),
            ("https://chat.example", o(Scheme::Https, "chat.example", 443)),
            ("http://chat.example:8080", o(Scheme::Http, "chat.example", 8080)),
            ("HTTPS://Chat.Example.COM", o(Scheme::Https, "chat.example.com", 443)),
            ("https://chat.example/", o(Scheme::Https, "chat.example", 443)),
            ("http://127.0.0.1:7101", o(Scheme::Http, "127.0.0.1", 7101)),
            ("http://[::1]:8080", o(Scheme::Http, "[::1]", 8080)),
            ("http://[::1]", o(Scheme::Http, "[::1]", 80)),
            ("null", Err(OriginError::Scheme("null".into()))),
            ("", Err(OriginError::Scheme("".into()))),
            ("chat.example", Err(OriginError::Scheme("chat.example".into()))),
            ("ftp://chat.example", Err(OriginError::Scheme("ftp://chat.example".into()))),
            ("javascript://x", Err(OriginError::Scheme("javascript://x".into()))),
            ("https://chat.example/app", Err(OriginError::Extra("https://chat.example/app".into()))),
            ("https://chat.example//", Err(OriginError::Extra("https://chat.example//".into()))),
            ("https://chat.example?x=1", Err(OriginError::Extra("https://chat.example?x=1".into()))),
            ("https://chat.example#top", Err(OriginError::Extra("https://chat.example#top".into()))),
            ("https://me@chat.example", Err(OriginError::Extra("https://me@chat.example".into()))),
            ("http://", Err(OriginError::Host("http://".into()))),
            ("http://:80", Err(OriginError::Host("http://:80".into()))),
            ("http://a b", Err(OriginError::Host("http://a b".into()))),
            ("http://é.example", Err(OriginError::Host("http://é.example".into()))),
            ("http://[::1", Err(OriginError::Host("http://[::1".into()))),
            ("http://[::1]x", Err(OriginError::Host("http://[::1]x".into()))),
            ("http://a:b:80", Err(OriginError::Host("http://a:b:80".into()))),
            (" http://a", Err(OriginError::Scheme(" http://a".into()))),
            ("http://a ", Err(OriginError::Host("http://a ".into()))),
            ("http://a:", Err(OriginError::Port("http://a:".into()))),
            ("http://a:0", Err(OriginError::Port("http://a:0".into()))),
            ("http://a:65536", Err(OriginError::Port("http://a:65536".into()))),
            ("http://a:+80", Err(OriginError::Port("http://a:+80".into()))),
            ("http://a:000080", Err(OriginError::Port("http://a:000080".into()))),
        ];
        for (text, want) in cases {
            assert_eq!(&Origin::parse(text), want, "{text:?}");
        }
    }

    #[test]
    fn the_allow_rule() {
        let public = Some("https://chat.example.com");
        // (allow-list, public_url, Origin header, allowed?, why)
        type Case<'a> = (&'a [&'a str], Option<&'a str>, Option<&'a str>, bool, &'a str);
        let cases: &[Case] = &[
            (&[], None, None, true, "no Origin: not a browser"),
            (&["http://a.example"], None, Some("http://a.example"), true, "listed"),
            (&["http://a.example"], None, Some("http://a.example:80"), true, "default port written out"),
            (&["http://a.example:80"], None, Some("http://a.example"), true, "default port in the entry"),
            (&["https://a.example"], None, Some("https://a.example:443"), true, "https default port"),
            (&["HTTP://A.Example"], None, Some("http://a.example"), true, "case in the entry"),
            (&["http://a.example"], None, Some("HTTP://A.EXAMPLE"), true, "case in the header"),
            (&["http://a.example/"], None, Some("http://a.example"), true, "trailing slash in the entry"),
            (&["https://a.example"], None, Some("http://a.example"), false, "scheme mismatch"),
            (&["http://a.example"], None, Some("https://a.example"), false, "scheme mismatch, other way"),
            (&["http://a.example:443"], None, Some("https://a.example"), false, "same port, other scheme"),
            (&["http://localhost:8080"], None, Some("http://localhost:8081"), false, "port mismatch"),
            (&["http://localhost:8080"], None, Some("http://localhost"), false, "port against default"),
            (&["http://a.example"], None, Some("http://b.example"), false, "not listed"),
            (&["http://a.example"], None, Some("http://a.example.evil"), false, "suffix of a listed host"),
            (&["http://a.example"], None, Some("http://sub.a.example"), false, "subdomain of a listed host"),
            (&["http://a.example"], None, Some("null"), false, "opaque origin"),
            (&["http://a.example"], None, Some(""), false, "empty"),
            (&["http://a.example"], None, Some("http://a.example/path"), false, "a path is not an origin"),
            (&["*"], None, Some("http://anything.example"), true, "wildcard"),
            (&["*"], None, Some("null"), true, "wildcard: the operator opted out of checks"),
            (&[], public, Some("https://chat.example.com"), true, "the public URL"),
            (&[], public, Some("https://chat.example.com:443"), true, "the public URL, port written"),
            (&[], public, Some("http://chat.example.com"), false, "the public URL's scheme matters"),
            (&[], None, Some("https://chat.example.com"), false, "no public URL set"),
            // DNS rebinding: evil.example resolves to the node's IP, so the
            // page's Origin equals the request's Host; that is not enough.
            (&["http://127.0.0.1:8080"], None, Some("http://evil.example:7101"), false, "rebinding, Origin == Host"),
            (&["http://127.0.0.1:8080"], None, Some("http://127.0.0.1:7101"), false, "the node's own address"),
        ];
        for (entries, public_url, origin, want, why) in cases {
            let entries = list(entries);
            let policy = OriginPolicy::new(&entries, *public_url).expect("valid entries");
            let header = origin.map(str::as_bytes);
            assert_eq!(policy.allows(header), *want, "{why}: {origin:?} against {entries:?} / {public_url:?}");
            assert_eq!(allowed(header, &entries, *public_url), *want, "{why} (one-call form)");
        }
    }

    #[test]
    fn header_bytes_that_are_not_utf8_never_match() {
        let policy = OriginPolicy::new(&list(&["http://a.example"]), None).expect("valid");
        assert!(!policy.allows(Some(b"http://a.example\xff")));
        assert!(!policy.allows(Some(b"\xc3\x28")));
    }

    #[test]
    fn bad_entries_are_named() {
        for (entries, public_url, needle) in [
            (list(&["https://ok.example", "https://chat.example/app"]), None, "https://chat.example/app"),
            (list(&["null"]), None, "null"),
            (list(&["chat.example"]), None, "chat.example"),
            (list(&["http://a:99999"]), None, "http://a:99999"),
            (list(&[]), Some("chat.example.com"), "chat.example.com"),
            (list(&[]), Some("https://chat.example.com/app"), "https://chat.example.com/app"),
        ] {
            let err = OriginPolicy::new(&entries, public_url).expect_err(needle).to_string();
            assert!(err.contains(needle), "{err:?} should name {needle}");
        }
    }

    #[test]
    fn an_entry_that_does_not_parse_is_skipped_not_trusted() {
        let entries = list(&["not an origin", "http://a.example"]);
        assert!(!allowed(Some(b"not an origin"), &entries, None));
        assert!(allowed(Some(b"http://a.example"), &entries, None));
    }
}
