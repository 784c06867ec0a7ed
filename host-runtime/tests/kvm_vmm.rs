//! The built-in KVM microVM monitor on this machine's /dev/kvm. These tests never skip: a host
//! where KVM cannot create a VM fails them with the reason (CI runs on such machines on purpose).

use std::time::{Duration, Instant};

use podvm_host_runtime::hypervisor::kvm::cpu::PAYLOAD_START;
use podvm_host_runtime::hypervisor::kvm::serial::CapturedOutput;
use podvm_host_runtime::hypervisor::kvm::{ExitReason, KvmVm, KvmVmError, test_guest};

/// Generous: the payloads finish in milliseconds; this only turns a hang into a failure.
const DEADLINE: Duration = Duration::from_secs(10);

fn build(payload: &[u8], out: &CapturedOutput) -> KvmVm {
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
    let out = CapturedOutput::default();
    let report = build(&test_guest::HELLO, &out)
        .run(DEADLINE)
        .expect("the hello payload ends with a reset");
    assert_eq!(
        String::from_utf8_lossy(&out.bytes()),
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
    let out = CapturedOutput::default();
    let report = KvmVm::builder()
        .memory_mib(3 * 1024 + 64)
        .payload(test_guest::HELLO.to_vec(), PAYLOAD_START)
        .serial(Box::new(out.clone()))
        .build()
        .unwrap_or_else(|e| panic!("cannot create a KVM VM with high memory: {e}"))
        .run(DEADLINE)
        .expect("the hello payload ends with a reset");
    assert_eq!(report.reason, ExitReason::Reset);
    assert_eq!(out.bytes().as_slice(), test_guest::HELLO_MESSAGE);
}

#[test]
fn faulting_payload_reports_the_triple_fault() {
    let out = CapturedOutput::default();
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
    assert!(out.bytes().is_empty());
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
    let err = build(&test_guest::HALT, &CapturedOutput::default())
        .run(DEADLINE)
        .expect_err("hlt with nothing to wake the vCPU cannot end cleanly");
    assert!(matches!(err, KvmVmError::GuestHalted { .. }), "{err}");
    assert!(
        err.to_string().starts_with("the guest halted (RIP=0x"),
        "{err}"
    );
}

fn err_text(payload: &[u8]) -> String {
    build(payload, &CapturedOutput::default())
        .run(DEADLINE)
        .unwrap_err()
        .to_string()
}

#[test]
fn spinning_guest_is_stopped_at_its_deadline() {
    let deadline = Duration::from_millis(200);
    let started = Instant::now();
    let err = build(&test_guest::SPIN, &CapturedOutput::default())
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
    let vm = build(&test_guest::SPIN, &CapturedOutput::default());
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

fn build_smp(payload: &[u8], vcpus: u8, out: &CapturedOutput) -> KvmVm {
    KvmVm::builder()
        .memory_mib(64)
        .vcpus(vcpus)
        .payload(payload.to_vec(), PAYLOAD_START)
        .serial(Box::new(out.clone()))
        .build()
        .unwrap_or_else(|e| panic!("cannot create a {vcpus}-vCPU KVM VM on this machine: {e}"))
}

#[test]
fn several_vcpus_run_with_the_bsp_at_the_entry_and_all_threads_end() {
    // vCPU 0 runs the payload; the others wait for SIPI in their in-kernel LAPIC (blocked in
    // KVM_RUN) and are kicked out when vCPU 0's reset ends the VM — `run` returns only once
    // every vCPU thread has ended.
    for vcpus in [2, 4] {
        let out = CapturedOutput::default();
        let report = build_smp(&test_guest::HELLO, vcpus, &out)
            .run(DEADLINE)
            .unwrap_or_else(|e| panic!("{vcpus} vCPUs: {e}"));
        assert_eq!(report.reason, ExitReason::Reset, "{vcpus} vCPUs");
        assert_eq!(out.bytes().as_slice(), test_guest::HELLO_MESSAGE);
    }
}

#[test]
fn a_fault_on_the_bsp_of_a_multi_vcpu_vm_is_reported_as_such() {
    let err = build_smp(&test_guest::TRIPLE_FAULT, 3, &CapturedOutput::default())
        .run(DEADLINE)
        .expect_err("ud2 without an IDT cannot end cleanly");
    assert!(matches!(err, KvmVmError::TripleFault { .. }), "{err}");
}

#[test]
fn a_spinning_multi_vcpu_vm_is_stopped_at_its_deadline_and_by_its_handle() {
    let deadline = Duration::from_millis(200);
    let err = build_smp(&test_guest::SPIN, 4, &CapturedOutput::default())
        .run(deadline)
        .expect_err("a spinning guest cannot end by itself");
    assert!(
        matches!(err, KvmVmError::DeadlineExceeded { deadline: d } if d == deadline),
        "{err}"
    );
    let vm = build_smp(&test_guest::SPIN, 2, &CapturedOutput::default());
    let stop = vm.stop_handle();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        stop.stop();
    });
    let report = vm.run(DEADLINE).expect("a stopped VM is a clean end");
    stopper.join().unwrap();
    assert_eq!(report.reason, ExitReason::Stopped);
}

#[test]
fn a_vcpu_count_out_of_range_is_a_clear_error() {
    for vcpus in [0, 65] {
        let err = KvmVm::builder()
            .vcpus(vcpus)
            .payload(test_guest::HELLO.to_vec(), PAYLOAD_START)
            .build()
            .expect_err("out of range");
        assert_eq!(
            err.to_string(),
            format!("invalid VM configuration: {vcpus} vCPUs requested; use 1..=64")
        );
    }
}
