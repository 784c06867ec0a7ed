//! Choosing the CPU accelerator: KVM only when it is proven to boot a guest, TCG otherwise.
//!
//! `/dev/kvm` existing is not enough (a nested PVM host has one that cannot boot Linux), so the
//! first time a given QEMU and kernel are used, podvm boots the kernel once under KVM with the
//! marker init and remembers the outcome in `<cache>/accel-probe.json`. `--accel` or
//! `PODVM_ACCEL` override the choice.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::guest_image::validate::KernelFormat;
use crate::hypervisor::qemu::QemuBackend;
use crate::hypervisor::{Accel, Machine, VmSpec};

/// How long the probe waits for the guest under KVM.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(20);
/// The line the marker init prints.
pub const MARKER: &str = "podvm-marker-init: reached userspace";

/// The accelerator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    /// KVM if the probe proved it boots a guest, TCG otherwise.
    Auto,
    Kvm,
    Tcg,
}

/// The remembered outcome of a probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeRecord {
    /// What was probed: QEMU and kernel identity (path, size, mtime) and /dev/kvm.
    pub key: String,
    pub accel: Accel,
    pub reason: String,
    pub probed_at_unix: u64,
}

fn identity(path: &Path) -> String {
    let meta = std::fs::metadata(path).ok();
    let size = meta.as_ref().map(|m| m.len()).unwrap_or(0);
    let mtime = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{}:{size}:{mtime}", path.display())
}

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Resolves `choice` to an accelerator, probing at most once per QEMU and kernel.
pub fn resolve(
    choice: AccelChoice,
    qemu: &QemuBackend,
    kernel: &Path,
    kernel_format: KernelFormat,
    marker_initrd: &Path,
    cache: &Path,
) -> (Accel, String) {
    match choice {
        AccelChoice::Kvm => return (Accel::Kvm, "asked for".into()),
        AccelChoice::Tcg => return (Accel::Tcg, "asked for".into()),
        AccelChoice::Auto => {}
    }
    if !kvm_usable() {
        return (Accel::Tcg, "no usable /dev/kvm".into());
    }
    let record_path = cache.join("accel-probe.json");
    let key = format!(
        "qemu={} kernel={} initrd={}",
        identity(&qemu.qemu),
        identity(kernel),
        identity(marker_initrd)
    );
    if let Ok(bytes) = std::fs::read(&record_path)
        && let Ok(record) = serde_json::from_slice::<ProbeRecord>(&bytes)
        && record.key == key
    {
        return (
            record.accel,
            format!(
                "{} (probed earlier, {})",
                record.reason,
                record_path.display()
            ),
        );
    }
    if !marker_initrd.is_file() {
        return (
            Accel::Tcg,
            format!("cannot probe KVM without {}", marker_initrd.display()),
        );
    }
    tracing::info!(
        "probing once whether KVM boots a guest here (up to {}s)",
        PROBE_TIMEOUT.as_secs()
    );
    let (accel, reason) = probe(qemu, kernel, kernel_format, marker_initrd);
    let record = ProbeRecord {
        key,
        accel,
        reason: reason.clone(),
        probed_at_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    if std::fs::create_dir_all(cache).is_ok() {
        let tmp = record_path.with_extension("json.tmp");
        let written = std::fs::write(&tmp, serde_json::to_vec_pretty(&record).expect("serialise"))
            .and_then(|()| std::fs::rename(&tmp, &record_path));
        if let Err(e) = written {
            tracing::warn!(
                "could not remember the KVM probe in {}: {e}",
                record_path.display()
            );
        }
    }
    (accel, reason)
}

fn probe(
    qemu: &QemuBackend,
    kernel: &Path,
    kernel_format: KernelFormat,
    marker_initrd: &Path,
) -> (Accel, String) {
    let spec = VmSpec {
        vcpus: 1,
        memory_mib: 256,
        kernel: PathBuf::from(kernel),
        kernel_format,
        initrd: marker_initrd.to_path_buf(),
        cmdline: QemuBackend::kernel_cmdline(Machine::Microvm, Accel::Kvm, ""),
        machine: Machine::Microvm,
        accel: Accel::Kvm,
        initdata_disk: None,
    };
    match qemu.bare_boot(&spec, MARKER, PROBE_TIMEOUT) {
        Ok(Some(t)) => (
            Accel::Kvm,
            format!("KVM booted the guest in {} ms", t.as_millis()),
        ),
        Ok(None) => (
            Accel::Tcg,
            format!(
                "KVM did not boot the guest within {}s",
                PROBE_TIMEOUT.as_secs()
            ),
        ),
        Err(e) => (Accel::Tcg, format!("KVM probe failed: {e}")),
    }
}
