//! How the host reaches the agent API.
//!
//! In a VM the agent serves on two vsock paths at once:
//! - it **dials the host** (CID 2) on the agent port as soon as it is ready, and serves the API on
//!   that connection. The host listens before the VM starts, so readiness is pushed by the guest
//!   and never depends on the host polling a booting guest (host-initiated `CONNECT`s polled during
//!   boot wedge the hybrid vsock channel in a few percent of boots). When that connection closes
//!   the agent dials again, with backoff.
//! - it **listens** on the agent port, for hosts that connect later (`CONNECT <port>`).
//!
//! Outside a VM (tests, development) it serves on a Unix socket instead.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tokio_vsock::{VMADDR_CID_ANY, VMADDR_CID_HOST, VsockAddr, VsockListener, VsockStream};

/// Connections accepted on the agent's vsock port.
pub fn vsock_incoming(port: u32) -> io::Result<impl Stream<Item = io::Result<VsockStream>>> {
    Ok(VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port))?.incoming())
}

/// Connections to the host's agent port: one at a time, the next dialled when the previous one
/// has closed.
pub fn dial_host(port: u32) -> impl Stream<Item = io::Result<Tracked<VsockStream>>> {
    futures::stream::unfold(None::<oneshot::Receiver<()>>, move |previous| async move {
        if let Some(closed) = previous {
            // Resolves (with an error) when the previous connection is dropped.
            let _ = closed.await;
        }
        let stream =
            connect_with_backoff(|| VsockStream::connect(VsockAddr::new(VMADDR_CID_HOST, port)))
                .await;
        let (closed_tx, closed_rx) = oneshot::channel();
        Some((
            Ok(Tracked {
                inner: stream,
                _closed: closed_tx,
            }),
            Some(closed_rx),
        ))
    })
}

/// Connections accepted on a Unix socket (test and development mode). An existing socket file at
/// `path` is replaced.
pub fn unix_incoming(
    path: &Path,
) -> io::Result<impl Stream<Item = io::Result<tokio::net::UnixStream>> + use<>> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    Ok(futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    }))
}

const FIRST_RETRY: Duration = Duration::from_millis(10);
const MAX_RETRY: Duration = Duration::from_secs(1);

/// Calls `connect` until it succeeds, backing off from 10 ms to 1 s between tries.
async fn connect_with_backoff<S, F, Fut>(mut connect: F) -> S
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = io::Result<S>>,
{
    let mut delay = FIRST_RETRY;
    let mut failures = 0u32;
    loop {
        match connect().await {
            Ok(stream) => return stream,
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!("cannot reach the host on vsock yet ({e}); retrying");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY);
            }
        }
    }
}

/// A stream that tells [`dial_host`] when it has been dropped.
pub struct Tracked<S> {
    inner: S,
    _closed: oneshot::Sender<()>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn connect_retries_until_the_peer_answers() {
        let tries = AtomicU32::new(0);
        let got = connect_with_backoff(|| {
            let n = tries.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 3 {
                    Err(io::Error::from(io::ErrorKind::ConnectionRefused))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(got, 3);
    }

    #[tokio::test]
    async fn unix_incoming_replaces_a_stale_socket_and_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        std::fs::write(&path, b"stale").unwrap();
        let mut incoming = Box::pin(unix_incoming(&path).unwrap());
        let client = tokio::net::UnixStream::connect(&path).await.unwrap();
        let server = incoming.next().await.unwrap().unwrap();
        assert_eq!(
            server.peer_addr().unwrap().as_pathname(),
            client.local_addr().unwrap().as_pathname()
        );
    }
}
