//! Outbound connections from a guest without a network device: the agent listens on the guest's
//! loopback at the port of each host-loopback service it needs (the KBS, a registry), and relays
//! each connection over vsock to the host's egress relay ([`EGRESS_PORT`]), which connects to
//! the same address on the host. So `http://127.0.0.1:8080` means the same KBS in the guest as on
//! the host, and image references do not change. The host relays only to addresses it was told
//! the pod may reach; TLS, where used, stays end to end. Other hosts need pod networking.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use podvm_protocols::{EGRESS_MAX_LINE, EGRESS_PORT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio_vsock::{VMADDR_CID_HOST, VsockAddr, VsockStream};

/// Why a destination cannot be reached from the guest.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error(
        "{host}:{port} is not on the host's loopback; the guest has no network device yet, so only services on the host's 127.0.0.1 are reachable (through the vsock egress relay)"
    )]
    NotLoopback { host: String, port: u16 },
    #[error("listen on the guest's 127.0.0.1:{port} for the egress relay: {source}")]
    Listen { port: u16, source: io::Error },
    #[error("bring the guest's loopback interface up: {0}")]
    Loopback(io::Error),
}

/// The relays this agent runs, by port.
#[derive(Default)]
pub struct Egress {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    loopback_up: bool,
    ports: HashSet<u16>,
}

/// The host part of a URL or image reference names the host's loopback.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Egress {
    /// Makes `host:port` reachable from the guest (idempotent).
    pub async fn ensure(&self, host: &str, port: u16) -> Result<(), EgressError> {
        if !is_loopback(host) {
            return Err(EgressError::NotLoopback {
                host: host.to_string(),
                port,
            });
        }
        let mut state = self.state.lock().await;
        if !state.loopback_up {
            set_loopback_up().map_err(EgressError::Loopback)?;
            state.loopback_up = true;
        }
        if state.ports.contains(&port) {
            return Ok(());
        }
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .await
            .map_err(|source| EgressError::Listen { port, source })?;
        tokio::spawn(accept_loop(listener, port));
        state.ports.insert(port);
        tracing::info!(port, "egress relay to the host's 127.0.0.1:{port}");
        Ok(())
    }
}

async fn accept_loop(listener: TcpListener, port: u16) {
    loop {
        let Ok((mut tcp, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            if let Err(e) = relay(&mut tcp, port).await {
                tracing::warn!(port, "egress relay: {e}");
            }
        });
    }
}

async fn relay(tcp: &mut tokio::net::TcpStream, port: u16) -> io::Result<()> {
    let mut host = VsockStream::connect(VsockAddr::new(VMADDR_CID_HOST, EGRESS_PORT)).await?;
    host.write_all(format!("CONNECT 127.0.0.1:{port}\n").as_bytes())
        .await?;
    // Read the answer line byte by byte: nothing after it may be consumed here.
    let mut line = Vec::new();
    loop {
        let b = host.read_u8().await?;
        if b == b'\n' {
            break;
        }
        line.push(b);
        if line.len() > EGRESS_MAX_LINE {
            return Err(io::Error::other("egress relay answer too long"));
        }
    }
    let line = String::from_utf8_lossy(&line);
    if line != "OK" {
        return Err(io::Error::other(format!(
            "the host refused: {}",
            line.trim_start_matches("ERR ")
        )));
    }
    tokio::io::copy_bidirectional(tcp, &mut host).await?;
    Ok(())
}

/// `ip link set lo up`, by ioctl.
fn set_loopback_up() -> io::Result<()> {
    // SAFETY: plain socket and ioctl calls on a zeroed ifreq with a NUL-terminated name.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let mut result = Ok(());
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) < 0 {
            result = Err(io::Error::last_os_error());
        } else {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) < 0 {
                result = Err(io::Error::last_os_error());
            }
        }
        libc::close(fd);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_destinations_are_relayed() {
        for h in ["127.0.0.1", "localhost", "[::1]", "127.1.2.3"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["10.0.0.1", "registry.example", "quay.io"] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
