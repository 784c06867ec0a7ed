//! The agent's side of a container process: it starts the helper (`<agent> __container-init
//! <fd> <container id>`, see [`super::helper`]) with the stdio pipes as its fds 0–2, the control
//! socket as `<fd>`, and, for a container's init, new namespaces unshared in `pre_exec`
//! (`CLONE_NEWPID` takes effect for the helper's child, which becomes the container's PID 1).
//!
//! The helper is started with `PR_SET_PDEATHSIG=SIGKILL` and its child with the same towards the
//! helper, so nothing outlives the agent. (The death signal follows the *thread* that spawned:
//! spawn from the runtime's own threads, never from `spawn_blocking`, whose threads come and go.)
//!
//! Exit statuses come from the helper over the control socket, not from `waitpid` in the agent:
//! as PID 1 the agent reaps every zombie (`init::reap_zombies`), and a container's status must
//! not depend on who reaps the helper first.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::unistd::pipe2;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::pipe;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;

use super::helper::{Command, HELPER_SUBCOMMAND, HelperConfig, Report};
use super::stdio::{OutputBuffer, Stdin, StdinError, StreamEnd};
use super::tty;

/// How long the helper may take to build the container (or start an exec) and report.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A status for a process whose helper vanished without reporting one (it was killed, and the
/// process with it).
const LOST_STATUS: i32 = 128 + libc::SIGKILL;

/// Why a process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("start the container helper {}: {source}", helper.display())]
    Spawn { helper: PathBuf, source: io::Error },
    /// One line from inside the setup, e.g. `exec "/bin/nope": No such file or directory`.
    #[error("{0}")]
    Setup(String),
    #[error("the container helper ended without reporting")]
    HelperGone,
    #[error("no answer from the container helper within {} s", .0.as_secs())]
    Timeout(Duration),
    #[error("the container helper's control socket: {0}")]
    Io(#[from] io::Error),
    #[error("the process was already started")]
    AlreadyStarted,
    #[error("allocate a terminal (/dev/ptmx): {0}")]
    Tty(io::Error),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum StartState {
    Pending,
    Started,
    Failed(String),
}

/// A process of a container, as the agent holds it.
pub struct Process {
    /// Its pid in the agent's PID namespace.
    pid: i32,
    pidfd: Option<OwnedFd>,
    stdin: Stdin,
    stdout: Arc<OutputBuffer>,
    stderr: Arc<OutputBuffer>,
    /// The master of its terminal, if it was started with one.
    tty: Option<OwnedFd>,
    /// The write half of the control socket, until `Start` was sent.
    control: tokio::sync::Mutex<Option<OwnedWriteHalf>>,
    started: watch::Receiver<StartState>,
    exit: watch::Receiver<Option<i32>>,
}

type Reports = Lines<BufReader<OwnedReadHalf>>;

async fn next_report(reports: &mut Reports) -> io::Result<Option<Report>> {
    match reports.next_line().await? {
        None => Ok(None),
        Some(line) => serde_json::from_str(&line)
            .map(Some)
            .map_err(io::Error::other),
    }
}

async fn send<T: Serialize>(w: &mut OwnedWriteHalf, message: &T) -> io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await
}

fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) with integer arguments; on success it returns a new descriptor that
    // nothing else owns.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: see above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// In the forked child, before exec: only async-signal-safe calls. `join_pidns`: a PID namespace
/// the helper's children join (the pod's shared one) instead of a new one.
fn pre_exec(control: RawFd, unshare: CloneFlags, join_pidns: Option<RawFd>) -> io::Result<()> {
    // SAFETY: fcntl/prctl/setsid/unshare/setns on this process, no memory involved.
    unsafe {
        if libc::fcntl(control, libc::F_SETFD, 0) < 0
            || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0
            || libc::setsid() < 0
            || (!unshare.is_empty() && libc::unshare(unshare.bits()) < 0)
            || join_pidns.is_some_and(|fd| libc::setns(fd, libc::CLONE_NEWPID) < 0)
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The agent's ends of a process's stdio.
enum AgentEnds {
    Pipes {
        stdin_w: OwnedFd,
        stdout_r: OwnedFd,
        stderr_r: OwnedFd,
    },
    /// The master of the process's terminal.
    Terminal(OwnedFd),
}

/// Starts the helper for `config` and waits until the process is ready: built and waiting for
/// [`Process::start`] (a container's init) or running (an exec).
pub async fn spawn(
    helper: &Path,
    container_id: &str,
    unshare: CloneFlags,
    join_pidns: Option<RawFd>,
    config: HelperConfig,
) -> Result<Arc<Process>, RunnerError> {
    let is_init = matches!(config, HelperConfig::Init(_));
    let process = match &config {
        HelperConfig::Init(c) => &c.process,
        HelperConfig::Exec(c) => &c.process,
    };
    // The helper's fds 0–2 (the process's stdio) and the agent's ends.
    let (child_stdio, agent_ends) = if process.terminal {
        let pty = tty::open(process.console_size).map_err(RunnerError::Tty)?;
        let slave = || pty.slave.try_clone().map_err(RunnerError::Tty);
        (
            [slave()?, slave()?, slave()?],
            AgentEnds::Terminal(pty.master),
        )
    } else {
        let pipe = || pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from);
        let (stdin_r, stdin_w) = pipe()?;
        let (stdout_r, stdout_w) = pipe()?;
        let (stderr_r, stderr_w) = pipe()?;
        (
            [stdin_r, stdout_w, stderr_w],
            AgentEnds::Pipes {
                stdin_w,
                stdout_r,
                stderr_r,
            },
        )
    };
    let [stdin_r, stdout_w, stderr_w] = child_stdio;
    let (ctl_agent, ctl_helper) = std::os::unix::net::UnixStream::pair()?;
    let control_fd = ctl_helper.as_raw_fd();

    let mut cmd = tokio::process::Command::new(helper);
    cmd.arg(HELPER_SUBCOMMAND)
        .arg(control_fd.to_string())
        .arg(container_id)
        .env_clear()
        .stdin(Stdio::from(stdin_r))
        .stdout(Stdio::from(stdout_w))
        .stderr(Stdio::from(stderr_w));
    // SAFETY: `pre_exec` makes only async-signal-safe calls.
    unsafe {
        cmd.pre_exec(move || pre_exec(control_fd, unshare, join_pidns));
    }
    let mut child = cmd.spawn().map_err(|source| RunnerError::Spawn {
        helper: helper.to_path_buf(),
        source,
    })?;
    // The child's ends of the pipes and of the socket: only the helper holds them now.
    drop(cmd);
    drop(ctl_helper);
    let helper_pid = child.id();
    // Outside PID 1 the agent reaps its helpers itself (as PID 1, `reap_zombies` may be first).
    tokio::spawn(async move {
        let _ = child.wait().await;
    });

    ctl_agent.set_nonblocking(true)?;
    let (reader, mut writer) = tokio::net::UnixStream::from_std(ctl_agent)?.into_split();
    let mut reports = BufReader::new(reader).lines();
    let handshake = async {
        send(&mut writer, &config).await?;
        let pid = match next_report(&mut reports).await? {
            Some(Report::Pid(pid)) => pid,
            Some(Report::Error(m)) => return Err(RunnerError::Setup(m)),
            _ => return Err(RunnerError::HelperGone),
        };
        // A pidfd, so a signal never reaches a recycled pid.
        let pidfd = pidfd_open(pid).ok();
        match next_report(&mut reports).await? {
            Some(Report::Ready { rootfs }) if is_init => {
                tracing::debug!(container = container_id, pid, rootfs, "container built");
            }
            Some(Report::Started) if !is_init => {}
            Some(Report::Error(m)) => return Err(RunnerError::Setup(m)),
            _ => return Err(RunnerError::HelperGone),
        }
        Ok((pid, pidfd))
    };
    let (pid, pidfd) = match tokio::time::timeout(SETUP_TIMEOUT, handshake).await {
        Ok(result) => result?,
        Err(_) => {
            if let Some(p) = helper_pid {
                // SAFETY: kill(2) of our own child, which the reaper task has not reaped (it
                // is alive: it did not answer).
                unsafe { libc::kill(p as i32, libc::SIGKILL) };
            }
            return Err(RunnerError::Timeout(SETUP_TIMEOUT));
        }
    };

    let (started_tx, started) = watch::channel(if is_init {
        StartState::Pending
    } else {
        StartState::Started
    });
    let (exit_tx, exit) = watch::channel(None);
    let id = container_id.to_string();
    tokio::spawn(async move {
        loop {
            match next_report(&mut reports).await {
                Ok(Some(Report::Started)) => {
                    started_tx.send_replace(StartState::Started);
                }
                Ok(Some(Report::Error(m))) => {
                    started_tx.send_replace(StartState::Failed(m));
                }
                Ok(Some(Report::Exited(status))) => {
                    tracing::debug!(container = id, pid, status, "process exited");
                    exit_tx.send_replace(Some(status));
                    break;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    tracing::warn!(
                        container = id,
                        pid,
                        "the container helper ended without a status"
                    );
                    exit_tx.send_replace(Some(LOST_STATUS));
                    break;
                }
            }
        }
        started_tx.send_if_modified(|s| {
            if *s == StartState::Pending {
                *s = StartState::Failed("the process ended before it was started".into());
                true
            } else {
                false
            }
        });
    });

    let (stdin, stdout, stderr, tty) = match agent_ends {
        AgentEnds::Pipes {
            stdin_w,
            stdout_r,
            stderr_r,
        } => (
            Stdin::new(pipe::Sender::from_owned_fd(stdin_w)?),
            OutputBuffer::spawn(pipe::Receiver::from_owned_fd(stdout_r)?),
            OutputBuffer::spawn(pipe::Receiver::from_owned_fd(stderr_r)?),
            None,
        ),
        AgentEnds::Terminal(master) => {
            // A pty master polls like a pipe; reads fail with EIO once every slave is closed,
            // which the output buffer takes as the end of the stream.
            // Non-blocking, as the `_unchecked` constructors require (the dups share it).
            tty::set_nonblocking(&master).map_err(RunnerError::Tty)?;
            let dup = || master.try_clone().map_err(RunnerError::Tty);
            let writer = Stdin::terminal(dup()?).map_err(RunnerError::Tty)?;
            let reader =
                pipe::Receiver::from_owned_fd_unchecked(dup()?).map_err(RunnerError::Tty)?;
            (
                writer,
                OutputBuffer::spawn(reader),
                OutputBuffer::ended(),
                Some(master),
            )
        }
    };
    Ok(Arc::new(Process {
        pid,
        pidfd,
        stdin,
        stdout,
        stderr,
        tty,
        control: tokio::sync::Mutex::new(is_init.then_some(writer)),
        started,
        exit,
    }))
}

impl Process {
    /// Its pid in the agent's PID namespace.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Execs the user's command (a container's init, built and waiting).
    pub async fn start(&self) -> Result<(), RunnerError> {
        let mut control = self.control.lock().await;
        let writer = control.as_mut().ok_or(RunnerError::AlreadyStarted)?;
        send(writer, &Command::Start).await?;
        let mut started = self.started.clone();
        let state = tokio::time::timeout(
            SETUP_TIMEOUT,
            started.wait_for(|s| *s != StartState::Pending),
        )
        .await
        .map_err(|_| RunnerError::Timeout(SETUP_TIMEOUT))?
        .map_err(|_| RunnerError::HelperGone)?
        .clone();
        control.take();
        match state {
            StartState::Failed(m) => Err(RunnerError::Setup(m)),
            _ => Ok(()),
        }
    }

    /// Whether `Start` was sent (or this is an exec, started at once).
    pub async fn was_started(&self) -> bool {
        self.control.lock().await.is_none()
    }

    /// Ends a process that was never started: the helper kills it and reports.
    pub async fn abandon(&self) {
        self.control.lock().await.take();
    }

    /// Sends `signal` (nothing if the process has ended).
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        if self.exit.borrow().is_some() {
            return Ok(());
        }
        // SAFETY: pidfd_send_signal(2) / kill(2) with integer arguments and a null siginfo.
        let rc = unsafe {
            match &self.pidfd {
                Some(fd) => libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    signal,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                ) as i32,
                None => libc::kill(self.pid, signal),
            }
        };
        match rc {
            0 => Ok(()),
            _ => match io::Error::last_os_error() {
                e if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
                e => Err(e),
            },
        }
    }

    /// The exit status, once known.
    pub fn exit_status(&self) -> Option<i32> {
        *self.exit.borrow()
    }

    /// Waits for the exit status (`128 + n` for signal n).
    pub async fn wait(&self) -> i32 {
        let mut exit = self.exit.clone();
        let status = exit.wait_for(Option::is_some).await.ok().and_then(|s| *s);
        status.unwrap_or(LOST_STATUS)
    }

    /// Writes to stdin. A terminal's master (unlike a pipe, which fails with EPIPE) takes
    /// input after the process is gone until its buffer is full, then blocks for ever: there
    /// the write ends with the process, as [`StdinError::Exited`].
    pub async fn write_stdin(&self, data: &[u8]) -> Result<usize, StdinError> {
        if self.tty.is_none() {
            return self.stdin.write(data).await;
        }
        if self.exit_status().is_some() {
            if self.stdin.is_closed().await {
                return Err(StdinError::Closed);
            }
            return Err(StdinError::Exited);
        }
        tokio::select! {
            biased;
            written = self.stdin.write(data) => written,
            _ = self.wait() => Err(StdinError::Exited),
        }
    }

    /// Closes stdin: the pipe, or on a terminal writes its end-of-file character (unless the
    /// process is gone) and refuses later writes.
    pub async fn close_stdin(&self) {
        if self.tty.is_some() && self.exit_status().is_none() {
            tokio::select! {
                biased;
                () = self.stdin.close() => return,
                _ = self.wait() => {}
            }
        }
        self.stdin.discard().await
    }

    pub async fn read_stdout(&self, max: usize) -> Result<Vec<u8>, StreamEnd> {
        self.stdout.read(max).await
    }

    pub async fn read_stderr(&self, max: usize) -> Result<Vec<u8>, StreamEnd> {
        self.stderr.read(max).await
    }

    /// The master of its terminal, if it has one.
    pub fn terminal(&self) -> Option<&OwnedFd> {
        self.tty.as_ref()
    }

    /// Exited, and its output was read to the end.
    pub fn is_finished(&self) -> bool {
        self.exit_status().is_some() && self.stdout.is_drained() && self.stderr.is_drained()
    }
}
