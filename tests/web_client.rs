//! The web client as served, over plain HTTP (no browser needed): `palaver
//! up` ends its banner with the client's URL; that URL (the balancer)
//! serves the page with its security and cache headers; the assets it names
//! are versioned and kept for a year; a matching `If-None-Match` gets 304.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use anyhow::Result;
use tokio::io::AsyncBufReadExt;
use tokio::io::BufReader;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn palaver_up_ends_with_the_web_client_url_which_serves_the_page() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let addrs = palaver_testkit::ports::tcp_addrs(2)?;
    let (public, admin) = (addrs[0], addrs[1]);
    let config = palaver_testkit::config(|c| c.security.allowed_origins = vec![format!("http://{public}")]);
    let mut file = palaver_testkit::ClusterFile::new(dir.path(), &[1, 2, 3], config)?;
    let balancer =
        palaver_balancer::config::BalancerSection { listen: Some(public), admin: Some(admin), ..Default::default() };
    file.config.balancer = Some(toml::Value::try_from(&balancer)?);
    file.write()?;
    let path = file.path.clone();
    let mut up = tokio::process::Command::new(env!("CARGO_BIN_EXE_palaver"))
        .arg("up")
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting palaver up")?;
    let mut lines = BufReader::new(up.stdout.take().context("stdout")?).lines();
    let mut before = String::new();
    let last = tokio::time::timeout(Duration::from_secs(90), async {
        while let Some(line) = lines.next_line().await? {
            if line.starts_with("Open the web client:") {
                return Ok(line);
            }
            if !line.starts_with("[node ") {
                before = line;
            }
        }
        anyhow::bail!("palaver up ended its output without the web client's URL")
    })
    .await
    .context("no web client URL from palaver up within 90 s")??;
    // Keep reading, so the launcher never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    assert_eq!(before, "Ctrl-C stops the cluster.", "the line before the URL (an allowed origin gets no note)");
    let url = last.trim_start_matches("Open the web client:").trim();
    assert_eq!(url, format!("http://{public}/"));

    let http = reqwest::Client::new();
    let page = http.get(url).send().await?;
    assert_eq!(page.status(), 200);
    let h = page.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let csp = h["content-security-policy"].to_str()?;
    for part in ["default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self' ws: wss:"] {
        assert!(csp.contains(part), "CSP {csp:?} lacks {part:?}");
    }
    let etag = h["etag"].to_str()?.to_string();
    assert!(etag.starts_with('"') && !etag.starts_with("W/"), "a strong ETag: {etag}");
    let body = page.text().await?;
    for name in ["data-test=\"username\"", "data-test=\"composer\"", "data-test=\"error\""] {
        assert!(body.contains(name), "the page lacks {name}");
    }
    assert!(!body.contains("<script>") && !body.contains("style="), "inline script or style in the page");

    let again = http.get(url).header("if-none-match", &etag).send().await?;
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"].to_str()?, etag);

    let main = body
        .split('"')
        .find(|s| s.starts_with("/static/") && s.ends_with("/main.js"))
        .context("index.html names main.js")?
        .to_string();
    let script = http.get(format!("http://{public}{main}")).send().await?;
    assert_eq!(script.status(), 200);
    assert_eq!(script.headers()["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(script.headers()["cache-control"], "public, max-age=31536000, immutable");
    let stale = http.get(format!("http://{public}/static/0000000000000000/main.js")).send().await?;
    assert_eq!(
        (stale.status().as_u16(), &stale.headers()["cache-control"]),
        (200, &"no-cache".parse::<reqwest::header::HeaderValue>()?)
    );
    let missing = http.get(format!("http://{public}{}", main.replace("main.js", "nope.js"))).send().await?;
    assert_eq!(missing.status(), 404);

    let pid = up.id().context("palaver up's pid")?;
    std::process::Command::new("kill").arg("-INT").arg(pid.to_string()).status()?;
    let stopped = tokio::time::timeout(Duration::from_secs(30), up.wait()).await;
    assert!(matches!(stopped, Ok(Ok(s)) if s.success()), "palaver up did not stop cleanly on Ctrl-C: {stopped:?}");
    Ok(())
}
