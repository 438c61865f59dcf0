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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub error: String,
}

/// The audit forwarder's health (issue #14), refreshed at each scrape.
#[derive(Default)]
pub struct ForwarderGauges {
    pub configured: Gauge,
    pub connected: Gauge,
    pub cursor: Gauge,
    pub log_seq: Gauge,
    pub lag: Gauge,
    pub backlog_bytes: Gauge,
    pub sent: Gauge,
    pub failed: Gauge,
    pub errors: Gauge,
    pub reconnects: Gauge,
    pub rate_limited: Gauge,
    pub last_accepted_age_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub last_error: Family<ErrorLabel, Gauge>,
}

pub struct Metrics {
    registry: Registry,
    pub auth_failures: Counter,
    pub forbidden: Counter,
    pub audit_records: Counter,
    pub audit_errors: Counter,
    pub forwarder: ForwarderGauges,
    pub sandboxes: Family<StateLabel, Gauge>,
    pub create_seconds: Histogram,
    pub restore_seconds: Histogram,
    pub exec_seconds: Histogram,
    pub wake_seconds: Histogram,
    pub hibernations: Family<ReasonLabel, Counter>,
    pub hibernated_freed_bytes: Counter,
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
        let wake_seconds = Histogram::new(latency_buckets());
        registry.register(
            "sandbox_wake_seconds",
            "Wake of a hibernated sandbox: request to the agent's first answer",
            wake_seconds.clone(),
        );
        let hibernations = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "sandbox_hibernations",
            "Hibernations by reason (request, idle)",
            hibernations.clone(),
        );
        let hibernated_freed_bytes = Counter::default();
        registry.register(
            "sandbox_hibernation_freed_bytes",
            "Resident memory of VMMs that hibernation gave back",
            hibernated_freed_bytes.clone(),
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
        let auth_failures = Counter::default();
        registry.register(
            "auth_failures",
            "Requests refused for missing or bad credentials (401)",
            auth_failures.clone(),
        );
        let forbidden = Counter::default();
        registry.register(
            "auth_forbidden",
            "Requests refused because the caller's role may not (403)",
            forbidden.clone(),
        );
        let audit_records = Counter::default();
        registry.register(
            "audit_records",
            "Audit records the API wrote",
            audit_records.clone(),
        );
        let audit_errors = Counter::default();
        registry.register(
            "audit_write_errors",
            "Audit records that could not be written (the request was refused)",
            audit_errors.clone(),
        );
        let forwarder = ForwarderGauges::default();
        let f = &forwarder;
        for (name, help, g) in [
            (
                "audit_forward_configured",
                "1 when the audit log is forwarded to syslog",
                &f.configured,
            ),
            (
                "audit_forward_connected",
                "1 while a session with the syslog sink is up",
                &f.connected,
            ),
            (
                "audit_forward_cursor",
                "Last audit record the sink accepted",
                &f.cursor,
            ),
            (
                "audit_forward_log_seq",
                "Last audit record in the log",
                &f.log_seq,
            ),
            (
                "audit_forward_lag",
                "Audit records not yet accepted by the sink",
                &f.lag,
            ),
            (
                "audit_forward_backlog_bytes",
                "Bytes of audit log after the cursor",
                &f.backlog_bytes,
            ),
            (
                "audit_forward_sent",
                "Records the sink accepted since start",
                &f.sent,
            ),
            (
                "audit_forward_failed",
                "Records sent but unacknowledged when a session broke (resent)",
                &f.failed,
            ),
            (
                "audit_forward_errors",
                "Connection or session failures",
                &f.errors,
            ),
            (
                "audit_forward_reconnects",
                "Reconnects to the sink",
                &f.reconnects,
            ),
            (
                "audit_forward_rate_limited",
                "Times the rate limit made the forwarder wait",
                &f.rate_limited,
            ),
        ] {
            registry.register(name, help, g.clone());
        }
        registry.register(
            "audit_forward_last_accepted_age_seconds",
            "Seconds since the sink last accepted a record (-1: never)",
            f.last_accepted_age_seconds.clone(),
        );
        registry.register(
            "audit_forward_last_error",
            "The forwarder's last error (1 while it is the latest)",
            f.last_error.clone(),
        );
        Metrics {
            registry,
            auth_failures,
            forbidden,
            audit_records,
            audit_errors,
            forwarder,
            sandboxes,
            create_seconds,
            restore_seconds,
            exec_seconds,
            wake_seconds,
            hibernations,
            hibernated_freed_bytes,
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

    /// Copies the forwarder's health into the gauges.
    pub fn set_forwarder(&self, h: Option<&tartarus_audit::Health>) {
        let f = &self.forwarder;
        let Some(h) = h else {
            f.configured.set(0);
            return;
        };
        f.configured.set(1);
        f.connected.set(h.connected as i64);
        f.cursor.set(h.cursor as i64);
        f.log_seq.set(h.log_seq as i64);
        f.lag.set(h.lag as i64);
        f.backlog_bytes.set(h.backlog_bytes as i64);
        f.sent.set(h.sent as i64);
        f.failed.set(h.failed as i64);
        f.errors.set(h.errors as i64);
        f.reconnects.set(h.reconnects as i64);
        f.rate_limited.set(h.rate_limited as i64);
        let age = h
            .last_accepted_at
            .and_then(|t| t.elapsed().ok())
            .map(|d| d.as_secs_f64())
            .unwrap_or(-1.0);
        f.last_accepted_age_seconds.set(age);
        f.last_error.clear();
        if let Some(e) = &h.last_error {
            f.last_error
                .get_or_create(&ErrorLabel {
                    error: e.chars().take(200).collect(),
                })
                .set(1);
        }
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
