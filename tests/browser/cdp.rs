//! A small Chrome DevTools Protocol driver for the browser tests: it starts
//! a headless Chromium, opens pages in separate browser contexts (separate
//! storage, like separate people), and evaluates JavaScript, clicks, types
//! and takes screenshots in them.
//!
//! Why not a crate: fantoccini and thirtyfour need chromedriver and a
//! WebDriver stack, chromiumoxide and headless_chrome bring hundreds of
//! generated protocol types and their own WebSocket stacks. The few commands
//! used here (Target, Page, Runtime, Input, Emulation) are JSON over one
//! WebSocket, which the workspace's tokio-tungstenite already speaks. The
//! browser picks its own debugging port (`--remote-debugging-port=0`) and
//! writes it to `DevToolsActivePort` in the profile folder, so nothing is
//! fixed and tests can run side by side.
//!
//! Every page input goes through the browser's own input pipeline (real
//! mouse events at an element's centre, key events, text insertion), so a
//! covered or hidden element fails the click instead of being clicked.

use std::collections::HashMap;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use anyhow::anyhow;
use anyhow::bail;
use base64::Engine;
use futures_util::SinkExt;
use futures_util::StreamExt;
use serde_json::Value;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

/// How long one protocol command may take.
const COMMAND: Duration = Duration::from_secs(30);
/// How long the browser may take to start and say where it listens.
const START: Duration = Duration::from_secs(30);

/// The Chromium executable: `$PALAVER_CHROMIUM`, else the first of the
/// usual names on `PATH`.
pub fn find_chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PALAVER_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"]
        .iter()
        .find_map(|name| std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file()))
}

/// What a page did that a test may want to know: dialogs it opened, and
/// errors in its console.
#[derive(Default)]
struct PageLog {
    dialogs: Vec<String>,
    problems: Vec<String>,
}

/// State shared with the task that reads the browser's socket.
struct Shared {
    out: mpsc::UnboundedSender<String>,
    next_id: AtomicU64,
    replies: Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>,
    pages: Mutex<HashMap<String, PageLog>>,
}

impl Shared {
    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            frame["sessionId"] = json!(s);
        }
        let (tx, rx) = oneshot::channel();
        self.replies.lock().map_err(|_| anyhow!("poisoned"))?.insert(id, tx);
        self.out.send(frame.to_string()).map_err(|_| anyhow!("the browser connection is closed"))?;
        match tokio::time::timeout(COMMAND, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => bail!("{method}: {e}"),
            Ok(Err(_)) => bail!("{method}: the browser connection closed"),
            Err(_) => bail!("{method}: no answer within {COMMAND:?}"),
        }
    }

    /// Takes one frame from the browser: a reply, or an event worth keeping.
    fn on_frame(&self, text: &str) {
        let Ok(v) = serde_json::from_str::<Value>(text) else { return };
        if let Some(id) = v.get("id").and_then(Value::as_u64) {
            let tx = self.replies.lock().ok().and_then(|mut r| r.remove(&id));
            if let Some(tx) = tx {
                let answer = match v.get("error") {
                    Some(e) => Err(e.to_string()),
                    None => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
                };
                let _ = tx.send(answer);
            }
            return;
        }
        let (Some(method), Some(session)) =
            (v.get("method").and_then(Value::as_str), v.get("sessionId").and_then(Value::as_str))
        else {
            return;
        };
        let params = v.get("params").cloned().unwrap_or(Value::Null);
        let Ok(mut pages) = self.pages.lock() else { return };
        let log = pages.entry(session.to_string()).or_default();
        match method {
            "Page.javascriptDialogOpening" => {
                log.dialogs.push(params["message"].as_str().unwrap_or_default().to_string());
                // An open dialog blocks the page's scripts: dismiss it so the
                // test goes on to report it instead of hanging.
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let frame = json!({"id": id, "sessionId": session, "method": "Page.handleJavaScriptDialog",
                                   "params": {"accept": true}});
                let _ = self.out.send(frame.to_string());
            }
            "Runtime.exceptionThrown" => {
                let d = &params["exceptionDetails"];
                let text = d["exception"]["description"].as_str().or(d["text"].as_str()).unwrap_or("?");
                log.problems.push(format!("exception: {text}"));
            }
            "Runtime.consoleAPICalled" if params["type"] == "error" => {
                let args: Vec<String> = params["args"]
                    .as_array()
                    .map(|a| a.iter().map(|x| x["value"].as_str().unwrap_or("?").to_string()).collect())
                    .unwrap_or_default();
                log.problems.push(format!("console.error: {}", args.join(" ")));
            }
            "Log.entryAdded" if params["entry"]["level"] == "error" => {
                let e = &params["entry"];
                log.problems.push(format!("{}: {} {}", e["source"], e["text"], e["url"].as_str().unwrap_or("")));
            }
            _ => {}
        }
    }
}

/// A headless Chromium, killed when dropped.
pub struct Chrome {
    shared: Arc<Shared>,
    child: Child,
    io: tokio::task::JoinHandle<()>,
    // Last: removed after the browser is gone.
    _profile: tempfile::TempDir,
}

impl Chrome {
    /// Starts `exe` headless with a fresh profile and connects to it;
    /// `extra` flags go on its command line.
    pub async fn launch(exe: &Path, extra: &[String]) -> Result<Chrome> {
        let profile = tempfile::tempdir().context("creating the browser profile folder")?;
        // The flags this machine's Chromium needs: no sandbox as root, no GPU,
        // and none of its background calls to Google's hosts.
        let mut child = Command::new(exe)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let endpoint = match wait_endpoint(profile.path(), &mut child).await {
            Ok(e) => e,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        let (socket, _) = tokio_tungstenite::connect_async(endpoint.as_str())
            .await
            .with_context(|| format!("connecting to the browser at {endpoint}"))?;
        let (mut sink, mut stream) = socket.split();
        let (out, mut outgoing) = mpsc::unbounded_channel::<String>();
        let shared = Arc::new(Shared {
            out,
            next_id: AtomicU64::new(1),
            replies: Mutex::new(HashMap::new()),
            pages: Mutex::new(HashMap::new()),
        });
        let reader = shared.clone();
        let io = tokio::spawn(async move {
            loop {
                tokio::select! {
                    frame = outgoing.recv() => match frame {
                        Some(text) => if sink.send(Message::text(text)).await.is_err() { break },
                        None => break,
                    },
                    frame = stream.next() => match frame {
                        Some(Ok(Message::Text(text))) => reader.on_frame(text.as_str()),
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                }
            }
            if let Ok(mut r) = reader.replies.lock() {
                r.clear();
            }
        });
        Ok(Chrome { shared, child, io, _profile: profile })
    }

    /// A new page of `width`×`height` CSS pixels in its own browser context
    /// (its own cookies, storage and cache); `name` labels its failures.
    pub async fn page(&self, name: &str, width: u32, height: u32) -> Result<Page> {
        let s = &self.shared;
        let context = s.call(None, "Target.createBrowserContext", json!({})).await?;
        let context = context["browserContextId"].as_str().context("no browserContextId")?.to_string();
        let target = s
            .call(
                None,
                "Target.createTarget",
                json!({"url": "about:blank", "browserContextId": context, "width": width, "height": height}),
            )
            .await?;
        let target = target["targetId"].as_str().context("no targetId")?.to_string();
        let attached = s.call(None, "Target.attachToTarget", json!({"targetId": target, "flatten": true})).await?;
        let session = attached["sessionId"].as_str().context("no sessionId")?.to_string();
        let page = Page { shared: s.clone(), session, name: name.to_string() };
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            page.call(domain, json!({})).await?;
        }
        page.resize(width, height).await?;
        Ok(page)
    }
}

impl Drop for Chrome {
    fn drop(&mut self) {
        self.io.abort();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for the browser to write `DevToolsActivePort` (its port, then the
/// browser target's path) and answers the WebSocket URL.
async fn wait_endpoint(profile: &Path, child: &mut Child) -> Result<String> {
    let file = profile.join("DevToolsActivePort");
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            let mut lines = text.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                return Ok(format!("ws://127.0.0.1:{}{}", port.trim(), path.trim()));
            }
        }
        if let Some(status) = child.try_wait().context("waiting for the browser")? {
            bail!("the browser exited ({status}) before it opened its debugging port");
        }
        if start.elapsed() > START {
            bail!("the browser wrote no {} within {START:?}", file.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One tab, attached with its own protocol session.
pub struct Page {
    shared: Arc<Shared>,
    session: String,
    /// The label used in failure messages.
    pub name: String,
}

impl Page {
    /// One protocol command in this page's session.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value> {
        self.shared.call(Some(&self.session), method, params).await.with_context(|| format!("page {}", self.name))
    }

    /// Sets the viewport (CSS pixels, device scale 1; below 500 px wide it
    /// is a touch-less "mobile" viewport).
    pub async fn resize(&self, width: u32, height: u32) -> Result<()> {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 500}),
        )
        .await
        .map(drop)
    }

    /// Navigates and waits until the document has loaded.
    pub async fn goto(&self, url: &str) -> Result<()> {
        let r = self.call("Page.navigate", json!({"url": url})).await?;
        if let Some(e) = r.get("errorText").and_then(Value::as_str) {
            bail!("page {}: navigating to {url}: {e}", self.name);
        }
        self.wait("the page to load", "document.readyState === 'complete'").await.map(drop)
    }

    /// The value of a JavaScript expression (promises awaited).
    pub async fn eval(&self, expression: &str) -> Result<Value> {
        let r = self
            .call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true, "awaitPromise": true}))
            .await?;
        if let Some(d) = r.get("exceptionDetails") {
            let text = d["exception"]["description"].as_str().or(d["text"].as_str()).unwrap_or("?");
            bail!("page {}: {expression} threw: {text}", self.name);
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls `expression` until it is truthy (not null, false, 0 or ""), for
    /// at most `timeout`; answers its value.
    pub async fn wait_for(&self, what: &str, expression: &str, timeout: Duration) -> Result<Value> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(25);
        loop {
            let v = self.eval(expression).await?;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return Ok(v);
            }
            if start.elapsed() > timeout {
                let error = self.eval("document.querySelector('[data-test=\"error\"]')?.textContent").await;
                bail!(
                    "page {}: waited {timeout:?} for {what} ({expression}); the page's error line: {:?}; its problems: {:?}",
                    self.name,
                    error.ok(),
                    self.problems()
                );
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// [`Page::wait_for`] with the tests' usual deadline.
    pub async fn wait(&self, what: &str, expression: &str) -> Result<Value> {
        self.wait_for(what, expression, Duration::from_secs(30)).await
    }

    /// Clicks the centre of the first element matching `selector` with the
    /// mouse, after scrolling it into view; fails if it is missing, hidden
    /// or covered by another element.
    pub async fn click(&self, selector: &str) -> Result<()> {
        let sel = serde_json::to_string(selector)?;
        let probe = format!(
            "(() => {{ const e = document.querySelector({sel}); if (!e) return 'missing';
               e.scrollIntoView({{block: 'nearest'}}); const r = e.getBoundingClientRect();
               if (r.width === 0 || r.height === 0) return 'hidden';
               const x = r.left + r.width / 2, y = r.top + r.height / 2;
               const hit = document.elementFromPoint(x, y);
               if (!hit || !(e === hit || e.contains(hit))) return 'covered by ' + (hit ? hit.outerHTML.slice(0, 80) : 'nothing');
               return [x, y]; }})()"
        );
        let at = self.wait(&format!("{selector} to be clickable"), &format!("Array.isArray({probe})")).await;
        let v = self.eval(&probe).await?;
        let (Some(x), Some(y)) = (v[0].as_f64(), v[1].as_f64()) else {
            bail!("page {}: cannot click {selector}: {v} ({at:?})", self.name);
        };
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "buttons": if kind == "mousePressed" { 1 } else { 0 }, "clickCount": 1}),
            )
            .await?;
        }
        Ok(())
    }

    /// Moves the mouse over the centre of `selector` (what shows on hover).
    pub async fn hover(&self, selector: &str) -> Result<()> {
        let (x, y) = self.centre(selector).await?;
        self.call("Input.dispatchMouseEvent", json!({"type": "mouseMoved", "x": x, "y": y})).await.map(drop)
    }

    /// Types `text` where the focus is, as the keyboard's text input would.
    pub async fn type_text(&self, text: &str) -> Result<()> {
        self.call("Input.insertText", json!({"text": text})).await.map(drop)
    }

    /// Clicks `selector` (focusing it), then types `text`.
    pub async fn fill(&self, selector: &str, text: &str) -> Result<()> {
        self.click(selector).await?;
        self.type_text(text).await
    }

    /// Presses and releases a key: `Enter`, `Tab`.
    pub async fn press(&self, key: &str) -> Result<()> {
        let (code, text) = match key {
            "Enter" => (13, "\r"),
            "Tab" => (9, ""),
            other => bail!("no key code for {other}"),
        };
        let mut down = json!({"type": "keyDown", "key": key, "code": key, "windowsVirtualKeyCode": code});
        if !text.is_empty() {
            down["text"] = json!(text);
        }
        self.call("Input.dispatchKeyEvent", down).await?;
        self.call(
            "Input.dispatchKeyEvent",
            json!({"type": "keyUp", "key": key, "code": key, "windowsVirtualKeyCode": code}),
        )
        .await
        .map(drop)
    }

    /// Turns the mouse wheel over the centre of `selector` (negative `dy`: up).
    pub async fn wheel(&self, selector: &str, dy: f64) -> Result<()> {
        let (x, y) = self.centre(selector).await?;
        self.call("Input.dispatchMouseEvent", json!({"type": "mouseWheel", "x": x, "y": y, "deltaX": 0, "deltaY": dy}))
            .await
            .map(drop)
    }

    /// The centre of the first element matching `selector`, in viewport pixels.
    async fn centre(&self, selector: &str) -> Result<(f64, f64)> {
        let sel = serde_json::to_string(selector)?;
        let v = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({sel}); if (!e) return null;
                   e.scrollIntoView({{block: 'nearest'}}); const r = e.getBoundingClientRect();
                   return [r.left + r.width / 2, r.top + r.height / 2]; }})()"
            ))
            .await?;
        match (v[0].as_f64(), v[1].as_f64()) {
            (Some(x), Some(y)) => Ok((x, y)),
            _ => bail!("page {}: no {selector}", self.name),
        }
    }

    /// Saves a PNG of the viewport.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"})).await?;
        let data = shot["data"].as_str().context("no screenshot data")?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(data).context("decoding the screenshot")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
    }

    /// The messages of the dialogs (alert, confirm, prompt) the page opened.
    pub fn dialogs(&self) -> Vec<String> {
        self.shared
            .pages
            .lock()
            .map(|p| p.get(&self.session).map(|l| l.dialogs.clone()))
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// Exceptions and console errors the page reported.
    pub fn problems(&self) -> Vec<String> {
        self.shared
            .pages
            .lock()
            .map(|p| p.get(&self.session).map(|l| l.problems.clone()))
            .ok()
            .flatten()
            .unwrap_or_default()
    }
}
