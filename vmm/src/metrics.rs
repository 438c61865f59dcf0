//! Metrics: counters gathered from the VMM and its devices, written as one JSON line per flush
//! to the file named by `PUT /metrics` (on `FlushMetrics` and every 60 seconds).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::microvm::MicroVm;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("Cannot open metrics file {0}")]
    Open(String, #[source] std::io::Error),
    #[error("Cannot write metrics to {0}")]
    Write(String, #[source] std::io::Error),
}

/// Seconds between automatic flushes.
pub const FLUSH_INTERVAL_SECS: u64 = 60;

/// Counters kept by the VMM thread itself.
#[derive(Debug, Default, Clone)]
pub struct VmmCounters {
    pub api_requests: u64,
    pub api_failures: u64,
    pub instance_starts: u64,
    pub instance_start_failures: u64,
    pub ctrl_alt_del: u64,
    pub flushes: u64,
}

pub struct MetricsSink {
    path: String,
    file: File,
}

impl MetricsSink {
    pub fn open(path: &str) -> Result<Self, MetricsError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| MetricsError::Open(path.to_string(), e))?;
        Ok(MetricsSink {
            path: path.to_string(),
            file,
        })
    }

    pub fn write(&mut self, value: &Value) -> Result<(), MetricsError> {
        let mut line = value.to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| MetricsError::Write(self.path.clone(), e))
    }
}

/// One metrics record.
pub fn render(counters: &VmmCounters, vm: Option<&MicroVm>) -> Value {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut v = json!({
        "utc_timestamp_ms": ts,
        "api_server": {
            "requests": counters.api_requests,
            "failures": counters.api_failures,
        },
        "vmm": {
            "instance_starts": counters.instance_starts,
            "instance_start_failures": counters.instance_start_failures,
            "ctrl_alt_del": counters.ctrl_alt_del,
            "metrics_flushes": counters.flushes,
        },
    });
    if let Some(vm) = vm {
        let r = Ordering::Relaxed;
        let c = &vm.vcpu_counters;
        v["vcpu"] = json!({
            "exits_io_in": c.exits_io_in.load(r),
            "exits_io_out": c.exits_io_out.load(r),
            "exits_mmio_read": c.exits_mmio_read.load(r),
            "exits_mmio_write": c.exits_mmio_write.load(r),
            "unhandled_accesses": c.unhandled_accesses.load(r),
            "failures": c.failures.load(r),
        });
        let s = devices::bus::lock(&vm.serial).counters();
        v["uart"] = json!({
            "bytes_out": s.bytes_out.load(r),
            "bytes_lost": s.bytes_lost.load(r),
            "reads": s.reads.load(r),
            "bytes_in": s.bytes_in.load(r),
        });
        let mut block = serde_json::Map::new();
        for d in &vm.devices.drives {
            let m = devices::bus::lock(&d.device).metrics();
            // Every counter the device keeps, from its own list (devices::counters!).
            block.insert(d.id.clone(), json!(&*m));
        }
        v["block"] = Value::Object(block);
        v["net"] = crate::virtio::net::metrics(&vm.devices.nets);
        if let Some(vs) = &vm.devices.vsock {
            v["vsock"] =
                crate::virtio::vsock::metrics_json(&devices::bus::lock(&vs.device).metrics());
        }
        let k = devices::bus::lock(&vm.i8042).counters();
        v["i8042"] = json!({
            "reset_requests": k.reset_requests.load(r),
            "missed_bytes": k.missed_bytes.load(r),
            "interrupt_errors": k.interrupt_errors.load(r),
        });
    }
    v
}
