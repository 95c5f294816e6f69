//! Smoke run of the load harness (`benches/load.rs`), bounded to seconds, so
//! its code cannot rot: a real node with 10 idle connections and a 1-second
//! fan-out to 20 sockets, the bare broadcast server in-process, the charts,
//! and the peers of `benches/peers/` when `benches/peers/setup.sh` has
//! installed them. Missing peers are skipped with a message, except with
//! `PALAVER_CI` set, where they are a failure.

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Result;

#[path = "../benches/peers/bare.rs"]
mod bare;
#[path = "../benches/harness.rs"]
mod harness;
#[path = "../benches/report.rs"]
mod report;

use harness::Dial;
use harness::FanoutSpec;
use harness::Proto;
use harness::Target;

fn spec(members: usize, room: &str) -> FanoutSpec {
    FanoutSpec {
        rooms: 1,
        members,
        senders: 1,
        rates: vec![50.0],
        step_secs: 1.0,
        drain_secs: 3.0,
        stop_on_saturation: false,
        room: room.into(),
        parallel: 8,
        dial: Dial { src: None, read_buffer: 4096 },
    }
}

/// A fan-out of 20 sockets for one second on `target`: every message reaches
/// every socket, with latencies recorded.
async fn fanout_20(target: &Target, room: &str) -> Result<()> {
    let run = harness::fanout(target, &spec(20, room)).await?;
    let step = &run.steps[0];
    assert!(step.sent >= 10, "{}: only {} sends in a second", target.system, step.sent);
    assert_eq!(step.delivered, step.expected, "{}: {step:?}", target.system);
    assert!(step.p50 > 0.0 && step.p99 >= step.p50, "{}: {step:?}", target.system);
    Ok(())
}

/// Whether a missing peer fails the test (CI) or is skipped.
fn missing(what: &str, why: Option<String>) -> bool {
    let Some(why) = why else { return false };
    if std::env::var_os("PALAVER_CI").is_some_and(|v| !v.is_empty()) {
        panic!("PALAVER_CI is set and the {what} peer is missing: {why}");
    }
    eprintln!("bench smoke: skipping the {what} peer: {why}");
    true
}

#[test]
fn harness_smoke_run() -> Result<()> {
    let started = Instant::now();
    harness::raise_nofile();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        // Palaver: one node, 10 idle connections, then a fan-out to 20.
        let node = harness::palaver_node("smoke-node").await?;
        let api = harness::Api::new(&node.addr);
        let tokens = api.users("smoke", 2).await?;
        api.room("smoke", &tokens[0], &tokens).await?;
        let tokens = Arc::new(tokens);
        let palaver = Target {
            system: "palaver-node".into(),
            proto: Proto::Palaver { receivers: tokens.clone(), senders: tokens },
            addrs: vec![node.addr.clone()],
        };
        let idle = harness::idle_rss(&node, &palaver, "smoke", 10, 500.0).await?;
        assert_eq!((idle.sockets, idle.failed), (10, 0));
        assert!(idle.connect_p50 > 0.0);
        fanout_20(&palaver, "smoke").await?;

        // The bare server, in this process.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let server = tokio::spawn(bare::serve(listener, 4096));
        fanout_20(&Target { system: "bare".into(), proto: Proto::Plain, addrs: vec![addr] }, "bench").await?;
        server.abort();

        // The Node.js peers, when installed.
        if !missing("Node.js", harness::node_peers_missing()) {
            let ws = harness::node_peer("ws-server.js", "smoke-ws")?;
            fanout_20(&Target { system: "ws".into(), proto: Proto::Plain, addrs: vec![ws.addr.clone()] }, "bench")
                .await?;
            let sio = harness::node_peer("socketio-server.js", "smoke-socketio")?;
            fanout_20(
                &Target { system: "socketio".into(), proto: Proto::SocketIo, addrs: vec![sio.addr.clone()] },
                "bench",
            )
            .await?;
        }

        // HAProxy in front of the node, when installed.
        if !missing("HAProxy", harness::haproxy_missing()) {
            let proxy = harness::haproxy(&[node.addr.as_str()], "smoke-haproxy")?;
            let through = Target { addrs: vec![proxy.addr.clone()], ..palaver.clone() };
            let r = harness::ramp(&through, "smoke", 10, 500.0, Dial::default(), Duration::from_secs(10)).await?;
            assert_eq!((r.sockets.len(), r.failed), (10, 0), "{:?}", r.first_error);
        }
        anyhow::Ok(())
    })?;

    // The report renders.
    let row = report::Row {
        scenario: "smoke".into(),
        system: "palaver-node".into(),
        figure: "deliveries/s".into(),
        value: 1234.5,
        unit: "/s",
        load1: 0.5,
        other_cores: 0.1,
    };
    assert!(report::table(&[row]).contains("1,234"));
    let bars = report::bar_chart("t", "/s", &[("a".into(), 1.0), ("b".into(), 2.0)]);
    let lines = report::line_panels(
        "t",
        "x",
        "y",
        &[report::Panel {
            title: "p".into(),
            x: vec!["1".into(), "2".into()],
            series: vec![("p50".into(), vec![0.5, 2.0])],
        }],
    );
    assert!(bars.starts_with("<svg") && bars.contains("<rect") && lines.contains("<polyline"));
    assert_eq!(harness::parse_stamp(r#"{"body":"@3:12345;xx"}"#), Some((3, 12345)));
    assert!(started.elapsed() < Duration::from_secs(120), "the smoke run took {:?}", started.elapsed());
    Ok(())
}
