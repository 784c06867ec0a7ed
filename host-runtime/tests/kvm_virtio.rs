//! The built-in monitor's virtio devices on this machine's /dev/kvm, end to end: the virtio
//! test guest (`host-runtime/test-guest/virtio_guest.c`) drives the virtio-mmio devices through
//! real KVM MMIO exits, ioeventfds and irqfds: it talks to this test through the vsock device's
//! hybrid Unix socket, in both directions, and reads and writes virtio-blk disks backed by files
//! here. Never skipped: a host without a usable KVM fails it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use podvm_host_runtime::hypervisor::kvm::cpu::PAYLOAD_START;
use podvm_host_runtime::hypervisor::kvm::serial::CapturedOutput;
use podvm_host_runtime::hypervisor::kvm::{ExitReason, KvmVm, KvmVmError, test_guest};

const DEADLINE: Duration = Duration::from_secs(20);

fn vm(socket: &Path, out: &CapturedOutput) -> KvmVm {
    KvmVm::builder()
        .memory_mib(16)
        .payload(test_guest::VIRTIO_GUEST.to_vec(), PAYLOAD_START)
        .vsock(3, socket)
        // A second device next to the vsock one (slot 1, its own IRQ and queue).
        .disk(
            disk_image(socket.parent().unwrap(), "beside the vsock"),
            true,
        )
        .serial(Box::new(out.clone()))
        .build()
        .unwrap_or_else(|e| panic!("cannot create the KVM VM (this test needs /dev/kvm): {e}"))
}

fn port_socket(socket: &Path, port: u32) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// Connects through the hybrid socket, retrying until the guest listens (it first finishes its
/// own connection to the host).
fn connect_to_guest(socket: &Path, port: u32, until: Instant) -> (UnixStream, String) {
    loop {
        let mut s = UnixStream::connect(socket).expect("the vsock socket accepts connections");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        let mut line = String::new();
        let mut r = BufReader::new(s.try_clone().unwrap());
        if r.read_line(&mut line).is_ok() && line.starts_with("OK ") {
            return (s, line);
        }
        assert!(
            Instant::now() < until,
            "the guest never accepted CONNECT {port} (last answer {line:?})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn vsock_round_trips_through_the_hybrid_socket_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vsock.sock");
    let host_listener = UnixListener::bind(port_socket(&socket, test_guest::VSOCK_GUEST_HOST_PORT))
        .expect("listen on <socket>_1025");
    let out = CapturedOutput::default();
    let vm = vm(&socket, &out);
    assert!(socket.exists(), "build() binds the hybrid socket");
    let runner = std::thread::spawn(move || vm.run(DEADLINE));

    // Guest → host: the guest connects to port 1025, i.e. to <socket>_1025.
    let (mut from_guest, _) = host_listener
        .accept()
        .expect("the guest connects to port 1025");
    from_guest
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut ping = vec![0u8; test_guest::VSOCK_GUEST_PING.len()];
    from_guest
        .read_exact(&mut ping)
        .expect("the guest's ping arrives");
    assert_eq!(ping, test_guest::VSOCK_GUEST_PING);
    from_guest.write_all(b"pong from the host").unwrap();
    // The guest shuts the connection down after the answer: the stream ends.
    let mut rest = Vec::new();
    from_guest
        .read_to_end(&mut rest)
        .expect("the guest's shutdown closes the stream");
    assert!(rest.is_empty(), "unexpected bytes after the ping: {rest:?}");

    // Host → guest: CONNECT 1024, then an echo.
    let until = Instant::now() + Duration::from_secs(10);
    let (mut to_guest, ok) = connect_to_guest(&socket, test_guest::VSOCK_GUEST_LISTEN_PORT, until);
    let host_port: u32 = ok
        .trim()
        .strip_prefix("OK ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("answer {ok:?} is not `OK <port>`"));
    assert!(host_port >= 1 << 30, "host-side port {host_port}");
    for msg in ["hello guest", "a second message, longer than the first one"] {
        to_guest.write_all(msg.as_bytes()).unwrap();
        let mut echo = vec![0u8; msg.len()];
        to_guest.read_exact(&mut echo).expect("the guest echoes");
        assert_eq!(String::from_utf8_lossy(&echo), msg.to_ascii_uppercase());
    }
    // Half a MiB through the echo: many packets, more than either side's receive buffer (the
    // guest offers 64 KiB, the monitor 256 KiB per connection), so both directions run on
    // credit updates and the monitor's back-pressure.
    let bulk: Vec<u8> = (0..512 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let mut writer = to_guest.try_clone().unwrap();
    let sent = bulk.clone();
    let feeder = std::thread::spawn(move || writer.write_all(&sent));
    let mut echoed = vec![0u8; bulk.len()];
    to_guest
        .read_exact(&mut echoed)
        .expect("the whole bulk transfer comes back");
    feeder
        .join()
        .unwrap()
        .expect("the monitor takes the whole bulk transfer");
    assert!(
        echoed == bulk.to_ascii_uppercase(),
        "the bulk echo differs from the input upper-cased"
    );
    drop(to_guest); // EOF → SHUTDOWN to the guest → its RST → it finishes and resets

    let report = runner
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("the vsock guest failed: {e}\nconsole:\n{}", out.text()));
    assert_eq!(report.reason, ExitReason::Reset);
    let console = out.text();
    assert!(
        console.starts_with(test_guest::VSOCK_GUEST_HELLO),
        "{console}"
    );
    assert!(
        console.contains("podvm test guest: disk sector 0: beside the vsock\n"),
        "{console}"
    );
    assert!(
        console.contains("podvm test guest: vsock cid 3\n"),
        "the guest read its CID from the device's config space: {console}"
    );
    assert!(
        console.contains("podvm test guest: host said: pong from the host\n"),
        "{console}"
    );
    assert!(console.ends_with(test_guest::VSOCK_GUEST_DONE), "{console}");
    assert!(!socket.exists(), "the hybrid socket is removed with the VM");
}

#[test]
fn a_refused_guest_connection_is_reset_and_the_guest_reports_it() {
    // Nothing listens on <socket>_1025: the device answers the guest's REQUEST with RST, which the
    // test guest does not expect — it prints what it got and triple-faults: a clear error, not a
    // hang.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vsock.sock");
    let out = CapturedOutput::default();
    let err = vm(&socket, &out).run(DEADLINE).unwrap_err();
    assert!(matches!(err, KvmVmError::TripleFault { .. }), "{err}");
    let console = out.text();
    assert!(
        console.contains("podvm test guest: expected op 2podvm test guest: error: but got op 3\n"),
        "{console}"
    );
}

#[test]
fn a_busy_socket_path_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vsock.sock");
    let _taken = UnixListener::bind(&socket).unwrap();
    let err = KvmVm::builder()
        .memory_mib(16)
        .payload(test_guest::VIRTIO_GUEST.to_vec(), PAYLOAD_START)
        .vsock(3, &socket)
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "invalid VM configuration: cannot listen on the vsock socket {}: ",
            socket.display()
        )) && msg.ends_with("(remove a stale socket or pick another path)"),
        "{msg}"
    );
}

fn disk_image(dir: &Path, first_line: &str) -> PathBuf {
    let path = dir.join("disk.img");
    let mut bytes = vec![0u8; 8 * 512];
    bytes[..first_line.len()].copy_from_slice(first_line.as_bytes());
    bytes[first_line.len()] = b'\n';
    std::fs::write(&path, bytes).unwrap();
    path
}

fn run_disk_guest(disk: &Path, read_only: bool) -> (String, Vec<u8>) {
    let out = CapturedOutput::default();
    let report = KvmVm::builder()
        .memory_mib(16)
        .payload(test_guest::VIRTIO_GUEST.to_vec(), PAYLOAD_START)
        .disk(disk, read_only)
        .serial(Box::new(out.clone()))
        .build()
        .unwrap_or_else(|e| panic!("cannot create the KVM VM (this test needs /dev/kvm): {e}"))
        .run(DEADLINE)
        .unwrap_or_else(|e| panic!("the disk guest failed: {e}\nconsole:\n{}", out.text()));
    assert_eq!(report.reason, ExitReason::Reset);
    (out.text(), std::fs::read(disk).unwrap())
}

#[test]
fn a_read_write_disk_is_read_and_written_by_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_image(dir.path(), "podvm disk: sector zero");
    let (console, after) = run_disk_guest(&disk, false);
    let expected = "podvm test guest: hello\n\
        podvm test guest: disk of 8 sectors, read-write\n\
        podvm test guest: disk sector 0: podvm disk: sector zero\n\
        podvm test guest: disk write status 0\n\
        podvm test guest: read past the end status 1\n\
        podvm test guest: disk id disk.img\n\
        podvm test guest: done\n";
    assert_eq!(console, expected);
    let note = b"written by the guest";
    assert_eq!(
        &after[512..512 + note.len()],
        note,
        "sector 1 holds the guest's write"
    );
    assert!(after[512 + note.len()..1024].iter().all(|&b| b == 0));
    assert_eq!(after.len(), 8 * 512);
}

#[test]
fn a_read_only_disk_refuses_the_guests_write_and_stays_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_image(dir.path(), "initdata");
    let before = std::fs::read(&disk).unwrap();
    let (console, after) = run_disk_guest(&disk, true);
    assert!(
        console.contains("podvm test guest: disk of 8 sectors, read-only\n"),
        "{console}"
    );
    assert!(
        console.contains("podvm test guest: disk sector 0: initdata\n"),
        "{console}"
    );
    assert!(
        console.contains("podvm test guest: disk write status 1\n"),
        "the write is refused with VIRTIO_BLK_S_IOERR: {console}"
    );
    assert_eq!(after, before, "a read-only disk is never written");
}

#[test]
fn a_missing_disk_image_is_a_clear_error() {
    let err = KvmVm::builder()
        .memory_mib(16)
        .payload(test_guest::VIRTIO_GUEST.to_vec(), PAYLOAD_START)
        .disk("/nonexistent/disk.img", true)
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid VM configuration: cannot open the disk image /nonexistent/disk.img: No such file \
         or directory (os error 2) (check the path and its permissions)"
    );
}
