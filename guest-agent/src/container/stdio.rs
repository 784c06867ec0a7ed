//! A container process's stdio: pipes created by the agent, the other ends the process's fds 0–2.
//!
//! Output is read into a bounded buffer ([`OUTPUT_BUFFER_BYTES`] per stream) by a task of the
//! agent; while the buffer is full the task stops reading, so the pipe fills and the process
//! blocks on write (back-pressure) instead of the agent's memory growing. `ReadStdout` /
//! `ReadStderr` take up to `len` bytes, waiting until there are some; once the process's end is
//! closed and the buffer is empty they fail with [`StreamEnd`] (as Kata's agent does: the
//! host's copy loop ends on that error).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::pin;
use std::sync::{Arc, Mutex};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::Notify;

/// Bytes buffered per output stream before the agent stops reading the pipe.
pub const OUTPUT_BUFFER_BYTES: usize = 1 << 20;

/// What one read from the pipe asks for.
const CHUNK: usize = 64 << 10;

/// The stream has ended and everything was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamEnd;

#[derive(Default)]
struct State {
    data: VecDeque<u8>,
    eof: bool,
}

/// The buffered output of one stream.
#[derive(Default)]
pub struct OutputBuffer {
    state: Mutex<State>,
    changed: Notify,
}

impl OutputBuffer {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A buffer filled from `pipe` by a task of the current runtime.
    pub fn spawn(pipe: pipe::Receiver) -> Arc<Self> {
        let buffer = Arc::new(OutputBuffer::default());
        tokio::spawn(buffer.clone().pump(pipe));
        buffer
    }

    async fn pump(self: Arc<Self>, mut pipe: pipe::Receiver) {
        let mut chunk = vec![0u8; CHUNK];
        loop {
            let room = loop {
                let mut changed = pin!(self.changed.notified());
                changed.as_mut().enable();
                let room = OUTPUT_BUFFER_BYTES - self.lock().data.len();
                if room > 0 {
                    break room;
                }
                changed.await;
            };
            let n = loop {
                match pipe.read(&mut chunk[..room.min(CHUNK)]).await {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break 0,
                    Ok(n) => break n,
                }
            };
            let mut state = self.lock();
            if n == 0 {
                state.eof = true;
            } else {
                state.data.extend(&chunk[..n]);
            }
            drop(state);
            self.changed.notify_waiters();
            if n == 0 {
                return;
            }
        }
    }

    /// A stream that has already ended (the stderr of a process with a terminal).
    pub fn ended() -> Arc<Self> {
        let buffer = OutputBuffer::default();
        buffer.lock().eof = true;
        Arc::new(buffer)
    }

    /// Up to `max` bytes (at least one), waiting for them; [`StreamEnd`] once all was read.
    pub async fn read(&self, max: usize) -> Result<Vec<u8>, StreamEnd> {
        let max = if max == 0 { CHUNK } else { max };
        loop {
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            {
                let mut state = self.lock();
                if !state.data.is_empty() {
                    let n = max.min(state.data.len());
                    let out: Vec<u8> = state.data.drain(..n).collect();
                    drop(state);
                    self.changed.notify_waiters();
                    return Ok(out);
                }
                if state.eof {
                    return Err(StreamEnd);
                }
            }
            changed.await;
        }
    }

    /// The stream ended and was read to the end.
    pub fn is_drained(&self) -> bool {
        let state = self.lock();
        state.eof && state.data.is_empty()
    }
}

/// The write end of a process's stdin: a pipe, or the master of its terminal.
pub struct Stdin {
    pipe: tokio::sync::Mutex<Option<Writer>>,
}

enum Writer {
    Pipe(pipe::Sender),
    /// The master of a terminal (non-blocking): [`Stdin::close`] writes its end-of-file
    /// character.
    Terminal(AsyncFd<OwnedFd>),
}

/// Writes all of `data` to a terminal's master. Once every slave is closed the master polls
/// hung up yet its writes fail with EAGAIN (not EPIPE) for ever: that is
/// [`StdinError::Exited`], not a reason to wait.
async fn write_terminal(master: &AsyncFd<OwnedFd>, mut data: &[u8]) -> Result<(), StdinError> {
    while !data.is_empty() {
        let mut guard = master.writable().await?;
        let written = guard.try_io(|fd| {
            // SAFETY: write(2) from a live slice to a descriptor we own.
            let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match written {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Err(StdinError::Exited),
            Ok(Err(e)) => return Err(e.into()),
            Err(_would_block) if slave_closed(master.get_ref()) => {
                return Err(StdinError::Exited);
            }
            Err(_would_block) => {}
        }
    }
    Ok(())
}

/// Whether the master polls hung up: every slave descriptor is closed.
fn slave_closed(master: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: master.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: poll(2) of one `pollfd` that lives across the call, without waiting.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & libc::POLLHUP != 0
}

impl Writer {
    async fn write_all(&mut self, data: &[u8]) -> Result<(), StdinError> {
        match self {
            Writer::Pipe(pipe) => Ok(pipe.write_all(data).await?),
            Writer::Terminal(master) => write_terminal(master, data).await,
        }
    }
}

/// Writing to a stdin that was closed.
#[derive(Debug, thiserror::Error)]
pub enum StdinError {
    #[error("stdin is closed")]
    Closed,
    #[error("the process has exited (its terminal is closed)")]
    Exited,
    #[error("write to stdin: {0}")]
    Io(#[from] io::Error),
}

impl Stdin {
    pub fn new(pipe: pipe::Sender) -> Self {
        Stdin {
            pipe: tokio::sync::Mutex::new(Some(Writer::Pipe(pipe))),
        }
    }

    /// The master of a terminal, set non-blocking (registered with the current runtime).
    pub fn terminal(master: OwnedFd) -> io::Result<Self> {
        // SAFETY: an `OwnedFd` is a valid descriptor that stays open, and refers to the same
        // file, for as long as the `AsyncFd` owning it exists.
        let master =
            unsafe { AsyncFd::register_with_interest(master, tokio::io::Interest::WRITABLE) }
                .map_err(io::Error::from)?;
        Ok(Stdin {
            pipe: tokio::sync::Mutex::new(Some(Writer::Terminal(master))),
        })
    }

    /// Writes all of `data` (waiting while the pipe is full); returns its length.
    pub async fn write(&self, data: &[u8]) -> Result<usize, StdinError> {
        let mut pipe = self.pipe.lock().await;
        let pipe = pipe.as_mut().ok_or(StdinError::Closed)?;
        pipe.write_all(data).await?;
        Ok(data.len())
    }

    /// Closes the pipe: the process reads end of file. On a terminal, writes its end-of-file
    /// character instead (a read at the start of a line returns end of file; after a partial
    /// line it ends that line first) and refuses later writes; the terminal stays open.
    /// (The character is the terminal's `VEOF` at this moment, ^D unless the process changed
    /// it; in raw mode it is just a byte.)
    pub async fn close(&self) {
        let mut pipe = self.pipe.lock().await;
        if let Some(Writer::Terminal(master)) = pipe.as_mut() {
            let eof = super::tty::eof_char(master.get_ref());
            if let Err(e) = write_terminal(master, &[eof]).await {
                tracing::debug!(error = %e, "write the terminal's end-of-file character");
            }
        }
        pipe.take();
    }

    /// Whether it was closed.
    pub async fn is_closed(&self) -> bool {
        self.pipe.lock().await.is_none()
    }

    /// Closes without writing anything (the process is gone).
    pub async fn discard(&self) {
        self.pipe.lock().await.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_is_bounded_and_ends_with_stream_end() {
        let (tx, rx) = pipe::pipe().unwrap();
        let buffer = OutputBuffer::spawn(rx);
        let writer = tokio::spawn(async move {
            let mut tx = tx;
            let block = vec![7u8; 256 << 10];
            for _ in 0..8 {
                tx.write_all(&block).await.unwrap();
            }
        });
        // The writer blocks once the buffer (1 MiB) and the pipe are full.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!writer.is_finished());
        assert!(buffer.lock().data.len() <= OUTPUT_BUFFER_BYTES);
        let mut total = 0;
        while let Ok(chunk) = buffer.read(100_000).await {
            assert!(!chunk.is_empty() && chunk.len() <= 100_000);
            total += chunk.len();
        }
        assert_eq!(total, 8 * (256 << 10));
        assert!(buffer.is_drained());
        assert_eq!(buffer.read(10).await, Err(StreamEnd));
    }
}
