//! The `upload` scenario: 10 MiB files uploaded through the balancer of a
//! 3-node cluster (each is copied to the room shard's replicas before it
//! is answered), one at a time and four at once, and downloaded back.

use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use anyhow::ensure;

use crate::Results;
use crate::harness;
use crate::harness::CpuMeter;
use crate::harness::ms;

/// Bytes per file.
const FILE: usize = 10 * 1024 * 1024;

/// `uploads` files one after another, then as many four at a time.
pub async fn upload(uploads: usize, res: &mut Results) -> Result<()> {
    let nodes = harness::palaver_cluster(3, "upload").await?;
    let addrs: Vec<&str> = nodes.iter().map(|n| n.addr.as_str()).collect();
    let balancer = harness::palaver_balancer(&addrs, "round-robin", "upload-balancer")?;
    let tokens = harness::Api::new(&nodes[0].addr).users("up", 4).await?;
    let api = harness::Api::new(&balancer.addr);
    api.room("files", &tokens[0], &tokens).await?;
    let sc = format!("upload, {} MiB files via balancer, 3 nodes", FILE >> 20);
    // Each file differs (its first bytes are its number): no two share content.
    let file = |n: usize| {
        let mut bytes = vec![b'x'; FILE];
        bytes[..8].copy_from_slice(&(n as u64).to_be_bytes());
        bytes
    };
    let meter = CpuMeter::start();
    let mut h = harness::histogram();
    let started = Instant::now();
    let mut last = None;
    for n in 0..uploads {
        let t0 = Instant::now();
        let id = api.upload("files", &tokens[n % 4], file(n)).await?;
        h.saturating_record(t0.elapsed().as_micros() as u64);
        last = Some(id);
    }
    let secs = started.elapsed().as_secs_f64();
    res.push(
        &sc,
        "palaver-cluster",
        "one at a time: MiB/s",
        (uploads * FILE) as f64 / secs / 1048576.0,
        "MiB/s",
        &meter,
    );
    res.push(&sc, "palaver-cluster", "one at a time: upload p50", ms(&h, 0.5), "ms", &meter);
    res.push(&sc, "palaver-cluster", "one at a time: upload p99", ms(&h, 0.99), "ms", &meter);

    let meter = CpuMeter::start();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (t, token) in tokens.iter().take(4).enumerate() {
        let (api, token) = (api.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0..uploads.div_ceil(4) {
                api.upload("files", &token, file(1_000_000 + t * 10_000 + n)).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let bytes = uploads.div_ceil(4) * 4 * FILE;
    res.push(&sc, "palaver-cluster", "four at once: MiB/s", bytes as f64 / secs / 1048576.0, "MiB/s", &meter);

    let id = last.context("no upload was made")?;
    let meter = CpuMeter::start();
    let t0 = Instant::now();
    let got = api.download(&id, &tokens[1]).await?;
    let elapsed = t0.elapsed().as_secs_f64();
    ensure!(got == FILE, "downloaded {got} bytes of {FILE}");
    res.push(&sc, "palaver-cluster", "download: MiB/s", FILE as f64 / elapsed / 1048576.0, "MiB/s", &meter);
    Ok(())
}
