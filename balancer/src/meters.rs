//! Prometheus metrics of one balancer.
//!
//! The balancer owns its recorder and renders it itself; it never installs
//! a global one, so it coexists with a node (or another balancer) in the
//! same process and every instance reports only its own numbers. Per-node
//! series are written from the node table's snapshot when scraped, so they
//! always agree with `/balancer/nodes`.

use metrics::Counter;
use metrics::Gauge;
use metrics::Key;
use metrics::Label;
use metrics::Level;
use metrics::Metadata;
use metrics::Recorder;
use metrics_exporter_prometheus::PrometheusBuilder;
use metrics_exporter_prometheus::PrometheusRecorder;

use crate::table::HealthView;
use crate::table::NodeView;

const META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The balancer's own counters and the recorder they live in.
pub struct Meters {
    recorder: PrometheusRecorder,
    /// Client connections accepted.
    pub accepted: Counter,
    /// Client connections closed on accept: `max_connections` reached.
    pub refused_full: Counter,
    /// Client connections closed on accept: their address's
    /// `max_connections_per_address` reached.
    pub refused_per_address: Counter,
    /// Client connections no node could take.
    pub refused_no_node: Counter,
    /// Connects retried on another node after a failure.
    pub retries: Counter,
    /// `GET /assign` answers.
    pub assigns: Counter,
    /// Relayed connections closed for idleness.
    pub idle_closed: Counter,
    /// Relayed connections closed at the end of the shutdown grace.
    pub grace_closed: Counter,
    /// TLS handshakes that failed or timed out (the client is closed).
    pub tls_failed: Counter,
    /// Client connections open now.
    pub open: Gauge,
}

impl std::fmt::Debug for Meters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meters").finish_non_exhaustive()
    }
}

impl Meters {
    /// A fresh recorder with the balancer's series described.
    pub fn new() -> Meters {
        let recorder = PrometheusBuilder::new().build_recorder();
        let describe = |name: &'static str, help: &'static str| {
            recorder.describe_counter(name.into(), None, help.into());
        };
        describe("palaver_balancer_accepted_total", "Client connections accepted.");
        describe("palaver_balancer_refused_total", "Client connections refused, by reason.");
        describe("palaver_balancer_connect_retries_total", "Connects retried on another node after a failure.");
        describe("palaver_balancer_assign_total", "GET /assign answers.");
        describe("palaver_balancer_closed_total", "Relayed connections closed by the balancer, by reason.");
        describe("palaver_balancer_open_connections", "Client connections open now.");
        describe("palaver_balancer_node_up", "1 when the node is up (suspect counts as up), else 0.");
        describe("palaver_balancer_node_draining", "1 when the node gets no new clients because it drains.");
        describe("palaver_balancer_node_active_connections", "Relayed connections open to the node.");
        describe("palaver_balancer_node_routed_total", "Relayed connections established to the node.");
        describe("palaver_balancer_node_assigned_total", "GET /assign answers naming the node.");
        describe("palaver_balancer_node_failures_total", "Failed health checks and connects of the node.");
        let counter = |name: &'static str, labels: &[(&'static str, &'static str)]| {
            let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, *v)).collect();
            recorder.register_counter(&Key::from_parts(name, labels), &META)
        };
        let open = recorder.register_gauge(&Key::from_name("palaver_balancer_open_connections"), &META);
        Meters {
            accepted: counter("palaver_balancer_accepted_total", &[]),
            refused_full: counter("palaver_balancer_refused_total", &[("reason", "max_connections")]),
            tls_failed: counter("palaver_balancer_refused_total", &[("reason", "tls_handshake")]),
            refused_per_address: counter("palaver_balancer_refused_total", &[("reason", "per_address")]),
            refused_no_node: counter("palaver_balancer_refused_total", &[("reason", "no_node")]),
            retries: counter("palaver_balancer_connect_retries_total", &[]),
            assigns: counter("palaver_balancer_assign_total", &[]),
            idle_closed: counter("palaver_balancer_closed_total", &[("reason", "idle")]),
            grace_closed: counter("palaver_balancer_closed_total", &[("reason", "shutdown")]),
            open,
            recorder,
        }
    }

    /// The Prometheus text, with per-node series taken from `nodes`.
    pub fn render(&self, nodes: &[NodeView]) -> String {
        for n in nodes {
            let labels = || vec![Label::new("node", n.id.to_string()), Label::new("address", n.addr.to_string())];
            let gauge = |name: &'static str| self.recorder.register_gauge(&Key::from_parts(name, labels()), &META);
            let counter = |name: &'static str| self.recorder.register_counter(&Key::from_parts(name, labels()), &META);
            gauge("palaver_balancer_node_up").set(if n.health == HealthView::Down { 0.0 } else { 1.0 });
            gauge("palaver_balancer_node_draining").set(if n.draining { 1.0 } else { 0.0 });
            gauge("palaver_balancer_node_active_connections").set(n.active as f64);
            counter("palaver_balancer_node_routed_total").absolute(n.routed);
            counter("palaver_balancer_node_assigned_total").absolute(n.assigned);
            counter("palaver_balancer_node_failures_total").absolute(n.failures);
        }
        self.recorder.handle().render()
    }
}

impl Default for Meters {
    fn default() -> Self {
        Meters::new()
    }
}
