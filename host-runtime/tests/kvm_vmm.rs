//! The built-in KVM microVM monitor on this machine's /dev/kvm. These tests never skip: a host
//! where KVM cannot create a VM fails them with the reason (CI runs on such machines on purpose).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use podvm_host_runtime::hypervisor::kvm::cpu::PAYLOAD_START;
use podvm_host_runtime::hypervisor::kvm::{ExitReason, KvmVm, KvmVmError, test_guest};

/// Generous: the payloads finish in milliseconds; this only turns a hang into a failure.
const DEADLINE: Duration = Duration::from_secs(10);

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn build(payload: &[u8], out: &Captured) -> KvmVm {
    KvmVm::builder()
        .memory_mib(64)
        .payload(payload.to_vec(), PAYLOAD_START)
        .serial(Box::new(out.clone()))
        .build()
        .unwrap_or_else(|e| {
            panic!("cannot create a KVM VM on this machine (this test needs /dev/kvm): {e}")
        })
}

#[test]
fn hello_payload_prints_and_resets() {
    let out = Captured::default();
    let report = build(&test_guest::HELLO, &out)
        .run(DEADLINE)
        .expect("the hello payload ends with a reset");
    assert_eq!(
        String::from_utf8_lossy(&out.0.lock().unwrap()),
        "podvm test guest: hello\n"
    );
    assert_eq!(report.reason, ExitReason::Reset);
    let first = report.first_output.expect("serial output was timed");
    assert!(first <= report.total);
    eprintln!(
        "VM creation → first serial byte: {first:?}; → end: {:?}",
        report.total
    );
}

#[test]
fn memory_split_around_the_mmio_hole_is_accepted_by_kvm() {
    // 3 GiB below the hole + 64 MiB at 4 GiB: two memory slots (pages are only touched on use).
    let out = Captured::default();
    let report = KvmVm::builder()
        .memory_mib(3 * 1024 + 64)
        .payload(test_guest::HELLO.to_vec(), PAYLOAD_START)
        .serial(Box::new(out.clone()))
        .build()
        .unwrap_or_else(|e| panic!("cannot create a KVM VM with high memory: {e}"))
        .run(DEADLINE)
        .expect("the hello payload ends with a reset");
    assert_eq!(report.reason, ExitReason::Reset);
    assert_eq!(out.0.lock().unwrap().as_slice(), test_guest::HELLO_MESSAGE);
}

#[test]
fn faulting_payload_reports_the_triple_fault() {
    let out = Captured::default();
    let err = build(&test_guest::TRIPLE_FAULT, &out)
        .run(DEADLINE)
        .expect_err("ud2 without an IDT cannot end cleanly");
    match err {
        KvmVmError::TripleFault { rip } => {
            assert_eq!(rip, PAYLOAD_START.0 + test_guest::TRIPLE_FAULT_UD2_OFFSET)
        }
        other => panic!("expected a triple fault, got: {other}"),
    }
    assert!(err_text(&test_guest::TRIPLE_FAULT).starts_with("the guest triple-faulted (RIP=0x"));
    assert!(out.0.lock().unwrap().is_empty());
}

#[test]
fn missing_kvm_device_is_a_clear_error() {
    let err = KvmVm::builder()
        .kvm_device("/nonexistent/kvm")
        .payload(test_guest::HELLO.to_vec(), PAYLOAD_START)
        .build()
        .expect_err("there is no KVM device at that path");
    assert!(matches!(err, KvmVmError::KvmUnavailable { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("KVM is not usable here: open /nonexistent/kvm: "),
        "{err}"
    );
}

#[test]
fn halting_payload_reports_the_halt() {
    let err = build(&test_guest::HALT, &Captured::default())
        .run(DEADLINE)
        .expect_err("hlt with nothing to wake the vCPU cannot end cleanly");
    assert!(matches!(err, KvmVmError::GuestHalted { .. }), "{err}");
    assert!(
        err.to_string().starts_with("the guest halted (RIP=0x"),
        "{err}"
    );
}

fn err_text(payload: &[u8]) -> String {
    build(payload, &Captured::default())
        .run(DEADLINE)
        .unwrap_err()
        .to_string()
}

#[test]
fn spinning_guest_is_stopped_at_its_deadline() {
    let deadline = Duration::from_millis(200);
    let started = Instant::now();
    let err = build(&test_guest::SPIN, &Captured::default())
        .run(deadline)
        .expect_err("a spinning guest cannot end by itself");
    assert!(
        matches!(err, KvmVmError::DeadlineExceeded { deadline: d } if d == deadline),
        "{err}"
    );
    assert!(err.to_string().contains("deadline of 200ms"), "{err}");
    // It returned at all (no hang) — the elapsed time is printed, not asserted.
    eprintln!("stopped after {:?}", started.elapsed());
}

#[test]
fn spinning_guest_is_stopped_by_its_stop_handle() {
    let vm = build(&test_guest::SPIN, &Captured::default());
    let stop = vm.stop_handle();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        stop.stop();
    });
    let report = vm.run(DEADLINE).expect("a stopped VM is a clean end");
    stopper.join().unwrap();
    assert_eq!(report.reason, ExitReason::Stopped);
    assert_eq!(report.first_output, None);
}
