//! The host side of the agent channel: Firecracker-style **hybrid vsock** over Unix sockets.
//!
//! The vsock device's backend (vhost-device-vsock for QEMU; the built-in VMM later) exposes one
//! Unix socket, `<uds>`:
//! - host → guest: connect to `<uds>`, send `CONNECT <port>\n`, read `OK <host port>\n`; the
//!   stream then reaches the guest's listener on vsock port `<port>`;
//! - guest → host: a guest connecting to CID 2 port `P` reaches the host's listener on `<uds>_P`.
//!
//! Every hypervisor backend exposes this same transport, so nothing above it cares which one runs.

use std::io;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// The longest `OK` reply accepted, in bytes.
const MAX_REPLY: usize = 64;

/// Errors of the hybrid vsock transport.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("cannot connect to the vsock backend socket {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("vsock CONNECT {port} via {path} failed: {source}")]
    Handshake {
        path: PathBuf,
        port: u32,
        source: io::Error,
    },
    #[error(
        "vsock CONNECT {port} via {path} was refused: the backend answered {reply:?} (is the guest listening on port {port}?)"
    )]
    Refused {
        path: PathBuf,
        port: u32,
        reply: String,
    },
    #[error("cannot listen for guest connections on {path}: {source}")]
    Listen { path: PathBuf, source: io::Error },
}

/// The host side of one VM's hybrid vsock device.
#[derive(Debug, Clone)]
pub struct HybridVsock {
    uds: PathBuf,
}

impl HybridVsock {
    pub fn new(uds: impl Into<PathBuf>) -> Self {
        HybridVsock { uds: uds.into() }
    }

    /// The backend's socket, `<uds>`.
    pub fn uds_path(&self) -> &Path {
        &self.uds
    }

    /// Where guest connections to host port `port` arrive: `<uds>_<port>`.
    pub fn listener_path(&self, port: u32) -> PathBuf {
        let mut path = self.uds.clone().into_os_string();
        path.push(format!("_{port}"));
        PathBuf::from(path)
    }

    /// Listens for guest-initiated connections to host port `port`. Must be called before the
    /// guest dials (before the VM starts).
    pub fn listen(&self, port: u32) -> Result<UnixListener, VsockError> {
        let path = self.listener_path(port);
        UnixListener::bind(&path).map_err(|source| VsockError::Listen { path, source })
    }

    /// Connects to the guest's vsock port `port`.
    pub async fn connect(&self, port: u32) -> Result<UnixStream, VsockError> {
        let stream =
            UnixStream::connect(&self.uds)
                .await
                .map_err(|source| VsockError::Connect {
                    path: self.uds.clone(),
                    source,
                })?;
        let handshake_err = |source| VsockError::Handshake {
            path: self.uds.clone(),
            port,
            source,
        };
        let mut stream = BufReader::new(stream);
        stream
            .get_mut()
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .await
            .map_err(handshake_err)?;
        // Read the reply byte by byte up to '\n', so nothing of the guest's stream is consumed.
        let mut reply = Vec::new();
        let mut limited = (&mut stream).take(MAX_REPLY as u64);
        limited
            .read_until(b'\n', &mut reply)
            .await
            .map_err(handshake_err)?;
        if !stream.buffer().is_empty() {
            // The guest spoke first and its bytes were buffered: unsupported by this protocol.
            return Err(handshake_err(io::Error::new(
                io::ErrorKind::InvalidData,
                "data after the OK line",
            )));
        }
        let reply = String::from_utf8_lossy(&reply).into_owned();
        if !reply.starts_with("OK ") || !reply.ends_with('\n') {
            return Err(VsockError::Refused {
                path: self.uds.clone(),
                port,
                reply,
            });
        }
        Ok(stream.into_inner())
    }
}

use tokio::io::AsyncReadExt as _;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A fake backend that answers one CONNECT with `reply`, then echoes.
    async fn fake_backend(listener: UnixListener, reply: &'static str) {
        let (stream, _) = listener.accept().await.unwrap();
        let mut stream = BufReader::new(stream);
        let mut line = String::new();
        stream.read_line(&mut line).await.unwrap();
        assert_eq!(line, "CONNECT 1024\n");
        stream.get_mut().write_all(reply.as_bytes()).await.unwrap();
        let mut buf = [0u8; 5];
        if stream.read_exact(&mut buf).await.is_ok() {
            stream.get_mut().write_all(&buf).await.unwrap();
        }
    }

    #[tokio::test]
    async fn connect_performs_the_handshake_and_hands_over_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let vsock = HybridVsock::new(dir.path().join("vsock.sock"));
        let backend = UnixListener::bind(vsock.uds_path()).unwrap();
        let server = tokio::spawn(fake_backend(backend, "OK 1073741824\n"));
        let mut stream = vsock.connect(1024).await.unwrap();
        stream.write_all(b"hello").await.unwrap();
        let mut echo = [0u8; 5];
        stream.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"hello");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_refusal_names_the_port_and_the_reply() {
        let dir = tempfile::tempdir().unwrap();
        let vsock = HybridVsock::new(dir.path().join("vsock.sock"));
        let backend = UnixListener::bind(vsock.uds_path()).unwrap();
        let server = tokio::spawn(fake_backend(backend, "ERR no listener\n"));
        let err = vsock.connect(1024).await.unwrap_err().to_string();
        assert!(
            err.contains("CONNECT 1024") && err.contains("ERR no listener"),
            "{err}"
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_backend_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let vsock = HybridVsock::new(dir.path().join("absent.sock"));
        let err = vsock.connect(1024).await.unwrap_err();
        assert!(matches!(err, VsockError::Connect { .. }), "{err}");
    }

    #[test]
    fn guest_connections_arrive_on_the_port_suffixed_path() {
        let vsock = HybridVsock::new("/run/podvm/x/vsock.sock");
        assert_eq!(
            vsock.listener_path(1024),
            PathBuf::from("/run/podvm/x/vsock.sock_1024")
        );
    }
}
