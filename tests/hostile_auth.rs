//! A node under a storm of failed logins keeps its memory: password hashing
//! runs on a fixed set of workers with one reused argon2 buffer each, and
//! calls beyond its queue get 503 `unavailable` with `retry_after_ms` at once
//! instead of piling up (node/src/auth.rs).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use palaver_testkit::Node;
use palaver_testkit::config;

/// Failed logins in the storm, and how many are in flight at once.
const LOGINS: usize = 1_000;
const CONCURRENT: usize = 100;
/// How much the node's RSS may grow over the storm.
const ALLOWED_GROWTH_KIB: u64 = 64 * 1024;
/// The whole storm must end within this.
const STORM_DEADLINE: Duration = Duration::from_secs(300);
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc/PID/status")?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS line")?;
    let kib = line.split_whitespace().nth(1).context("no VmRSS value")?;
    kib.parse().with_context(|| format!("VmRSS {kib:?}"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_failed_logins_leave_the_nodes_memory_where_it_was() -> Result<()> {
    let node = Node::start_with(config(|c| {
        c.limits.login_per_account_per_min = 1_000_000;
        c.limits.login_per_address_per_min = 1_000_000;
    }))
    .await?;
    let pid = node.pid().context("the node runs")?;
    let user = node.user("victim").await?;
    // Warm-up: one failed login, so the baseline includes a worker's buffer.
    let http = node.http();
    let warm = http.login(&user.name, "not the password").await.expect_err("a wrong password");
    assert_eq!(warm.status(), Some(401), "{warm}");
    let before = rss_kib(pid)?;

    let peak = Arc::new(AtomicU64::new(before));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (peak, stop) = (peak.clone(), stop.clone());
        async move {
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < STORM_DEADLINE {
                if let Ok(kib) = rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        }
    });

    let started = Instant::now();
    let per_task = LOGINS / CONCURRENT;
    let tasks: Vec<_> = (0..CONCURRENT)
        .map(|t| {
            let (http, name) = (http.clone(), user.name.clone());
            tokio::spawn(async move {
                let (mut unauthorized, mut unavailable) = (0usize, 0usize);
                for i in 0..per_task {
                    // Half against a real account, half against unknown
                    // names: both must cost a hash and answer 401.
                    let name = if (t + i) % 2 == 0 { name.clone() } else { format!("nobody-{t}-{i}") };
                    match http.login(&name, &format!("wrong password {t} {i}")).await {
                        Ok(_) => bail!("login {t}/{i} succeeded with a wrong password"),
                        Err(e) if e.status() == Some(401) => unauthorized += 1,
                        Err(e) if e.status() == Some(503) => {
                            anyhow::ensure!(e.code() == "unavailable", "503 with code {}", e.code());
                            anyhow::ensure!(
                                e.retry_after_ms().is_some_and(|ms| ms > 0),
                                "503 without retry_after_ms: {e}"
                            );
                            unavailable += 1;
                        }
                        Err(e) => bail!("login {t}/{i}: neither 401 nor 503: {e}"),
                    }
                }
                Ok((unauthorized, unavailable))
            })
        })
        .collect();
    let (mut unauthorized, mut unavailable) = (0, 0);
    for task in tasks {
        let (u, b) = tokio::time::timeout(STORM_DEADLINE, task).await.context("the storm took too long")???;
        unauthorized += u;
        unavailable += b;
    }
    let took = started.elapsed();
    let after = rss_kib(pid)?;
    stop.store(true, Ordering::Relaxed);
    sampler.await.context("the sampler")?;
    let peak = peak.load(Ordering::Relaxed).max(after);

    println!(
        "hostile_auth: {LOGINS} failed logins ({CONCURRENT} at once) in {took:.1?}: {unauthorized} x 401, \
         {unavailable} x 503; node RSS before {:.1} MiB, peak {:.1} MiB, after {:.1} MiB (growth {:+.1} MiB, \
         allowed {:.0} MiB)",
        mib(before),
        mib(peak),
        mib(after),
        mib(after) - mib(before),
        mib(ALLOWED_GROWTH_KIB),
    );
    assert_eq!(unauthorized + unavailable, LOGINS, "every login was answered 401 or 503");
    assert!(unauthorized > 0, "some logins were checked at all");
    assert!(
        after <= before + ALLOWED_GROWTH_KIB,
        "RSS grew from {:.1} MiB to {:.1} MiB (peak {:.1} MiB)",
        mib(before),
        mib(after),
        mib(peak)
    );
    // The node still serves: the right password logs in.
    http.login(&user.name, &user.password).await.context("the real password after the storm")?;
    Ok(())
}
