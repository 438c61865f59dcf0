//! Prometheus metrics (`GET /metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

pub struct Metrics {
    registry: Registry,
    pub sandboxes: Family<StateLabel, Gauge>,
    pub create_seconds: Histogram,
    pub restore_seconds: Histogram,
    pub exec_seconds: Histogram,
    pub failures: Family<ReasonLabel, Counter>,
    pub vmm_unexpected_exits: Counter,
    pub readopted: Counter,
    pub template_builds: Counter,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ]
    .into_iter()
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tartarus");
        let sandboxes = Family::<StateLabel, Gauge>::default();
        registry.register("sandboxes", "Sandboxes by state", sandboxes.clone());
        let create_seconds = Histogram::new(latency_buckets());
        registry.register(
            "sandbox_create_seconds",
            "Create request to the agent's first answer",
            create_seconds.clone(),
        );
        let restore_seconds = Histogram::new(latency_buckets());
        registry.register(
            "sandbox_restore_seconds",
            "The VMM's snapshot load",
            restore_seconds.clone(),
        );
        let exec_seconds = Histogram::new(latency_buckets());
        registry.register(
            "exec_seconds",
            "Exec request to the process's exit",
            exec_seconds.clone(),
        );
        let failures = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "sandbox_failures",
            "Sandbox failures by reason",
            failures.clone(),
        );
        let vmm_unexpected_exits = Counter::default();
        registry.register(
            "vmm_unexpected_exits",
            "VMMs that exited without the daemon asking",
            vmm_unexpected_exits.clone(),
        );
        let readopted = Counter::default();
        registry.register(
            "vmm_readopted",
            "Running VMMs taken over again after a daemon restart",
            readopted.clone(),
        );
        let template_builds = Counter::default();
        registry.register(
            "template_builds",
            "Template builds finished",
            template_builds.clone(),
        );
        Metrics {
            registry,
            sandboxes,
            create_seconds,
            restore_seconds,
            exec_seconds,
            failures,
            vmm_unexpected_exits,
            readopted,
            template_builds,
        }
    }

    pub fn fail(&self, reason: &str) {
        self.failures
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
