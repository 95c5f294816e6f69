//! Waiting for conditions (poll a predicate against a deadline, never a
//! fixed sleep) and the small assertions every test module shares.

use std::fmt::Debug;
use std::time::Duration;
use std::time::Instant;

use anyhow::Result;
use anyhow::bail;
use palaver_client::Ws;

/// Generous deadline for anything a test waits on.
pub const WAIT: Duration = Duration::from_secs(30);

/// Polls `f` until it answers `Some`, for at most `timeout`. The pause
/// between tries grows from 20 ms to 250 ms; the count of tries is bounded
/// by the deadline.
pub async fn eventually<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Result<Option<T>>) -> Result<T> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(20);
    let mut last_err = None;
    loop {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > timeout {
            match last_err {
                Some(e) => bail!("{what}: not true within {timeout:?}; last error: {e:#}"),
                None => bail!("{what}: not true within {timeout:?}"),
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Asserts that `r` failed with protocol code `code`; answers the error.
#[track_caller]
pub fn expect_code<T: Debug>(r: palaver_client::Result<T>, code: &str) -> palaver_client::Error {
    match r {
        Ok(v) => panic!("expected error {code}, got success: {v:?}"),
        Err(e) => {
            assert_eq!(e.code(), code, "expected error code {code}, got: {e}");
            e
        }
    }
}

/// The protocol code of a refused request, or what it answered instead
/// (for `assert_eq!` against a code, which then shows the answer).
pub fn code_of<T: Debug>(r: palaver_client::Result<T>) -> String {
    match r {
        Err(e) => e.code().to_string(),
        Ok(v) => format!("ok: {v:?}"),
    }
}

/// Asserts the WebSocket is (or gets) closed with `code`.
pub async fn expect_close(ws: &mut Ws, code: u16) {
    match ws.wait_closed(WAIT).await {
        Ok(got) => assert_eq!(got, Some(code), "expected close code {code}, got {got:?}"),
        Err(e) => panic!("expected close code {code}, got: {e}"),
    }
}

/// Now as Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default()
}
