//! Health: what one check result means, and when a node flips.
//!
//! Pure code. [`Hysteresis`] is a function of consecutive results: a node
//! goes down after `down_after` failures in a row and comes back after
//! `up_after` successes in a row, so one lost probe does not move clients
//! around. [`classify`] turns a `/healthz` answer into a [`Probe`]. Sending
//! the probes is the `probe` module's business.

use serde::Deserialize;

/// Consecutive results needed to flip a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// Failures in a row that take an up node down.
    pub down_after: u32,
    /// Successes in a row that bring a down node up.
    pub up_after: u32,
}

/// A flip of a node's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The node was down and is up now.
    WentUp,
    /// The node was up and is down now.
    WentDown,
}

/// A node's health with the streak that may flip it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hysteresis {
    up: bool,
    /// Results in a row that disagree with `up`.
    streak: u32,
}

impl Hysteresis {
    /// A node starting up (configured nodes) or down (discovered ones, until proven).
    pub fn new(up: bool) -> Self {
        Hysteresis { up, streak: 0 }
    }

    /// Whether the node counts as up.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Records one result; answers the flip it caused, if any.
    pub fn observe(&mut self, ok: bool, t: Thresholds) -> Option<Transition> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { t.down_after } else { t.up_after };
        if self.streak < needed.max(1) {
            return None;
        }
        self.up = ok;
        self.streak = 0;
        Some(if ok { Transition::WentUp } else { Transition::WentDown })
    }
}

/// What one health check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// 200 `{"status":"ok"}`: serving.
    Ok,
    /// 200 `{"status":"draining"}`: healthy, but send it no new clients.
    Draining,
    /// Anything else: no answer, another status or body, a timeout.
    Failed(String),
}

impl Probe {
    /// Whether the result counts as a success for [`Hysteresis`].
    pub fn healthy(&self) -> bool {
        !matches!(self, Probe::Failed(_))
    }
}

#[derive(Deserialize)]
struct HealthBody {
    status: String,
}

/// Reads a `/healthz` answer: HTTP status and body.
pub fn classify(status: u16, body: &[u8]) -> Probe {
    if status != 200 {
        let detail = serde_json::from_slice::<HealthBody>(body).map(|b| format!(" ({})", b.status)).unwrap_or_default();
        return Probe::Failed(format!("status {status}{detail}"));
    }
    match serde_json::from_slice::<HealthBody>(body) {
        Ok(b) if b.status == "ok" => Probe::Ok,
        Ok(b) if b.status == "draining" => Probe::Draining,
        Ok(b) => Probe::Failed(format!("status {:?}", b.status)),
        Err(e) => Probe::Failed(format!("unreadable health answer: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds { down_after: 3, up_after: 2 };

    /// Feeds `results` (`+` ok, `-` failed) and writes the state after each:
    /// `U`/`D`, lowercase when unchanged, uppercase on a flip.
    fn check(start_up: bool, t: Thresholds, results: &str, expected: &str) {
        let mut h = Hysteresis::new(start_up);
        let got: String = results
            .chars()
            .map(|r| {
                let flip = h.observe(r == '+', t);
                match (h.is_up(), flip) {
                    (true, Some(Transition::WentUp)) => 'U',
                    (false, Some(Transition::WentDown)) => 'D',
                    (true, None) => 'u',
                    (false, None) => 'd',
                    (up, flip) => panic!("inconsistent: up={up} flip={flip:?}"),
                }
            })
            .collect();
        assert_eq!(got, expected, "start up={start_up}, {t:?}, results {results}");
    }

    #[test]
    fn hysteresis_sequences() {
        let cases = [
            (true, T, "+++", "uuu"),
            (true, T, "--", "uu"),
            (true, T, "---", "uuD"),
            (true, T, "--+--+---", "uuuuuuuuD"),
            (true, T, "-----", "uuDdd"),
            (true, T, "---+", "uuDd"),
            (true, T, "---++", "uuDdU"),
            (true, T, "---+-++", "uuDdddU"),
            (false, T, "+", "d"),
            (false, T, "++", "dU"),
            (false, T, "+-++-", "dddUu"),
            (true, Thresholds { down_after: 1, up_after: 1 }, "-+-+", "DUDU"),
            // Zero thresholds act as one.
            (true, Thresholds { down_after: 0, up_after: 0 }, "-+", "DU"),
        ];
        for (start, t, results, expected) in cases {
            check(start, t, results, expected);
        }
    }

    #[test]
    fn health_answers() {
        let cases: [(u16, &str, Probe); 7] = [
            (200, r#"{"status":"ok","node":1}"#, Probe::Ok),
            (200, r#"{"status":"draining","node":2}"#, Probe::Draining),
            (200, r#"{"status":"no_leader","node":1}"#, Probe::Failed(r#"status "no_leader""#.into())),
            (503, r#"{"status":"no_leader","node":1}"#, Probe::Failed("status 503 (no_leader)".into())),
            (503, "", Probe::Failed("status 503".into())),
            (404, "not here", Probe::Failed("status 404".into())),
            (200, "{}", Probe::Failed("unreadable health answer: missing field `status` at line 1 column 2".into())),
        ];
        for (status, body, expected) in cases {
            assert_eq!(classify(status, body.as_bytes()), expected, "{status} {body}");
        }
        assert!(Probe::Draining.healthy());
        assert!(!Probe::Failed(String::new()).healthy());
    }
}
