//! Throughput of full RCAR attestations (auth → emulated SNP evidence → attest → token) against
//! an in-process podvm KBS on 127.0.0.1, at several client concurrencies.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use podvm_attestation::emulated::{EmulatedPsp, ReportRequest};
use podvm_attestation::kbs_client::{
    AttesterSource, EmulatedSnpAttester, EvidenceSource, KbsClient, KbsClientConfig,
};
use podvm_measured_boot::refvals::ReferenceValues;

use crate::server::{Config, spawn};

/// The launch measurement the bench's emulated guest reports (and the KBS accepts).
pub const BENCH_MEASUREMENT: [u8; 48] = [0x5a; 48];

/// One concurrency level's result.
#[derive(Debug, Clone)]
pub struct BenchResult {
    pub clients: usize,
    pub attestations: u64,
    pub seconds: f64,
}

impl BenchResult {
    pub fn per_second(&self) -> f64 {
        self.attestations as f64 / self.seconds
    }
}

/// Reference values accepting `measurement` (SNP).
pub fn reference_values_for(measurement: &[u8]) -> ReferenceValues {
    let mut r = ReferenceValues::new("snp");
    r.measurements.snp_launch_measurement = Some(hex::encode(measurement));
    r
}

/// Run the bench with the emulated PSP in `dir/psp` and KBS state in `dir/kbs`.
pub async fn run(
    dir: &Path,
    levels: &[usize],
    duration: Duration,
) -> anyhow::Result<Vec<BenchResult>> {
    let psp = EmulatedPsp::open_or_create(&dir.join("psp")).context("emulated PSP")?;
    let mut cfg = Config::new(dir.join("kbs"));
    cfg.anchors = psp.trust_anchors();
    cfg.allow_emulated = true;
    cfg.reference_values = vec![reference_values_for(&BENCH_MEASUREMENT)];
    let server = spawn(cfg, SocketAddr::from(([127, 0, 0, 1], 0)), None).await?;
    let source: Arc<dyn EvidenceSource> = Arc::new(AttesterSource::new(EmulatedSnpAttester {
        psp,
        template: ReportRequest {
            measurement: BENCH_MEASUREMENT,
            ..Default::default()
        },
    }));
    let mut out = Vec::new();
    for &n in levels {
        let count = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let deadline = start + duration;
        let mut tasks = Vec::new();
        for _ in 0..n {
            let client = KbsClient::new(KbsClientConfig::new(server.url(false)), source.clone())?;
            let count = count.clone();
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    client.attest().await?;
                    count.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
        for t in tasks {
            t.await.context("bench client task")??;
        }
        out.push(BenchResult {
            clients: n,
            attestations: count.load(Ordering::Relaxed),
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    Ok(out)
}
