//! The built-in monitor's virtio-vsock device on this machine's /dev/kvm, end to end: the vsock
//! test guest (`host-runtime/test-guest/vsock_guest.c`) drives the virtio-mmio device through
//! real KVM MMIO exits, ioeventfds and an irqfd, and talks to this test through the hybrid
//! Unix socket, in both directions. Never skipped: a host without a usable KVM fails it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use podvm_host_runtime::hypervisor::kvm::cpu::PAYLOAD_START;
use podvm_host_runtime::hypervisor::kvm::{ExitReason, KvmVm, KvmVmError, test_guest};

const DEADLINE: Duration = Duration::from_secs(20);

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

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn vm(socket: &Path, out: &Captured) -> KvmVm {
    KvmVm::builder()
        .memory_mib(16)
        .payload(test_guest::VSOCK_GUEST.to_vec(), PAYLOAD_START)
        .vsock(3, socket)
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
    let out = Captured::default();
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
    let out = Captured::default();
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
        .payload(test_guest::VSOCK_GUEST.to_vec(), PAYLOAD_START)
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
