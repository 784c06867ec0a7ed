//! Prometheus text exposition: counters incremented where the event happens, a latency
//! histogram of attestations.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Histogram bucket upper bounds (seconds).
pub const LATENCY_BUCKETS: [f64; 10] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

#[derive(Debug, Default)]
pub struct Metrics {
    auth: AtomicU64,
    attest_ok: AtomicU64,
    resources_released: AtomicU64,
    admin_writes: AtomicU64,
    /// failures by (endpoint, reason)
    failures: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl Metrics {
    pub fn auth(&self) {
        self.auth.fetch_add(1, Ordering::Relaxed);
    }
    pub fn resource_released(&self) {
        self.resources_released.fetch_add(1, Ordering::Relaxed);
    }
    pub fn admin_write(&self) {
        self.admin_writes.fetch_add(1, Ordering::Relaxed);
    }
    pub fn failure(&self, endpoint: &'static str, reason: &'static str) {
        if let Ok(mut m) = self.failures.lock() {
            *m.entry((endpoint, reason)).or_default() += 1;
        }
    }
    /// A successful attestation and its latency.
    pub fn attested(&self, took: Duration) {
        self.attest_ok.fetch_add(1, Ordering::Relaxed);
        self.observe(took);
    }
    fn observe(&self, took: Duration) {
        let s = took.as_secs_f64();
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            if s <= *le {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn attestations_ok(&self) -> u64 {
        self.attest_ok.load(Ordering::Relaxed)
    }

    /// Render in the Prometheus text format (0.0.4).
    pub fn render(&self) -> String {
        let mut o = String::new();
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            o,
            "# HELP kbs_auth_requests_total Challenges issued (POST /kbs/v0/auth)."
        );
        let _ = writeln!(o, "# TYPE kbs_auth_requests_total counter");
        let _ = writeln!(o, "kbs_auth_requests_total {}", ld(&self.auth));
        let _ = writeln!(o, "# HELP kbs_attestations_total Successful attestations.");
        let _ = writeln!(o, "# TYPE kbs_attestations_total counter");
        let _ = writeln!(o, "kbs_attestations_total {}", ld(&self.attest_ok));
        let _ = writeln!(
            o,
            "# HELP kbs_failures_total Rejected requests by endpoint and reason."
        );
        let _ = writeln!(o, "# TYPE kbs_failures_total counter");
        if let Ok(m) = self.failures.lock() {
            for ((ep, reason), n) in m.iter() {
                let _ = writeln!(
                    o,
                    "kbs_failures_total{{endpoint=\"{ep}\",reason=\"{reason}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            o,
            "# HELP kbs_resources_released_total Resources sent (JWE)."
        );
        let _ = writeln!(o, "# TYPE kbs_resources_released_total counter");
        let _ = writeln!(
            o,
            "kbs_resources_released_total {}",
            ld(&self.resources_released)
        );
        let _ = writeln!(o, "# HELP kbs_admin_writes_total Accepted admin writes.");
        let _ = writeln!(o, "# TYPE kbs_admin_writes_total counter");
        let _ = writeln!(o, "kbs_admin_writes_total {}", ld(&self.admin_writes));
        let _ = writeln!(
            o,
            "# HELP kbs_attestation_duration_seconds Successful attestation latency (POST /kbs/v0/attest)."
        );
        let _ = writeln!(o, "# TYPE kbs_attestation_duration_seconds histogram");
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                o,
                "kbs_attestation_duration_seconds_bucket{{le=\"{le}\"}} {}",
                ld(&self.buckets[i])
            );
        }
        let count = ld(&self.latency_count);
        let _ = writeln!(
            o,
            "kbs_attestation_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            o,
            "kbs_attestation_duration_seconds_sum {}",
            ld(&self.latency_sum_us) as f64 / 1e6
        );
        let _ = writeln!(o, "kbs_attestation_duration_seconds_count {count}");
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.auth();
        m.attested(Duration::from_millis(3));
        m.attested(Duration::from_millis(30));
        m.failure("attest", "replay");
        let t = m.render();
        assert!(t.contains("kbs_auth_requests_total 1\n"));
        assert!(t.contains("kbs_attestations_total 2\n"));
        assert!(t.contains("kbs_failures_total{endpoint=\"attest\",reason=\"replay\"} 1\n"));
        assert!(t.contains("kbs_attestation_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(t.contains("kbs_attestation_duration_seconds_bucket{le=\"0.05\"} 2\n"));
        assert!(t.contains("kbs_attestation_duration_seconds_count 2\n"));
    }
}
