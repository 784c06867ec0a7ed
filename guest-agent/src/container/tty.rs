//! Pseudo-terminals for processes started with `Process.Terminal` (as Kata's agent does).
//!
//! The agent opens the pair in its own devpts (`/dev/ptmx`, the slave through `TIOCGPTPEER`, so
//! no `/dev/pts` path is looked up), keeps the master and hands the slave *descriptor* to the
//! container helper as its fds 0–2: it stays valid after the container's `pivot_root`. The
//! process makes it its controlling terminal (`setsid` + `TIOCSCTTY`, [`super::helper`]).
//!
//! The streams: `ReadStdout` reads the master (the terminal merges stdout and stderr),
//! `ReadStderr` is at EOF at once, `WriteStdin` writes the master, `CloseStdin` writes the
//! terminal's EOF character (`VEOF`, ^D unless the process changed it) and refuses later writes,
//! keeping the master open (closing it would hang the terminal up and lose the output not yet
//! read). Once the process side is gone (every slave closed) the master would take a write and
//! then block for ever: `WriteStdin` fails with "the process has exited" instead (and does not
//! wait past the process's exit). `TtyWinResize` is `TIOCSWINSZ` on the master.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// A pseudo-terminal pair.
#[derive(Debug)]
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A new pair (both ends close-on-exec, neither a controlling terminal of the agent), with
/// the window size `(rows, columns)` if given.
pub fn open(size: Option<(u16, u16)>) -> io::Result<Pty> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: open(2) of a constant NUL-terminated path.
    let fd = check(unsafe { libc::open(c"/dev/ptmx".as_ptr(), flags) })?;
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: unlockpt(3) / ioctl(2) on the master we own; TIOCGPTPEER takes open flags.
    check(unsafe { libc::unlockpt(master.as_raw_fd()) })?;
    let peer = check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) })?;
    // SAFETY: TIOCGPTPEER returned a new descriptor owned by nothing else.
    let slave = unsafe { OwnedFd::from_raw_fd(peer) };
    if let Some((rows, columns)) = size {
        set_window_size(&master, rows, columns)?;
    }
    Ok(Pty { master, slave })
}

/// Sets `O_NONBLOCK` on the open file (every descriptor dup'ed from it shares it).
pub fn set_nonblocking(tty: &impl AsFd) -> io::Result<()> {
    let fd = tty.as_fd().as_raw_fd();
    // SAFETY: fcntl(2) F_GETFL / F_SETFL with integer arguments.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: see above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// `TIOCSWINSZ`: the terminal's window size (the process gets `SIGWINCH`).
pub fn set_window_size(tty: &impl AsFd, rows: u16, columns: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: columns,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a `winsize` that lives across the call.
    check(unsafe { libc::ioctl(tty.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &size) })?;
    Ok(())
}

/// `TIOCGWINSZ`: `(rows, columns)`.
pub fn window_size(tty: &impl AsFd) -> io::Result<(u16, u16)> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a `winsize` that lives across the call.
    check(unsafe { libc::ioctl(tty.as_fd().as_raw_fd(), libc::TIOCGWINSZ, &mut size) })?;
    Ok((size.ws_row, size.ws_col))
}

/// The ^D of a terminal.
pub const DEFAULT_EOF: u8 = 0x04;

/// The terminal's end-of-file character (`VEOF`), read now: ^D unless someone changed it.
pub fn eof_char(tty: &impl AsFd) -> u8 {
    match termios(tty) {
        Some(t) if t.c_cc[libc::VEOF] != 0 => t.c_cc[libc::VEOF],
        _ => DEFAULT_EOF,
    }
}

fn termios(tty: &impl AsFd) -> Option<libc::termios> {
    // SAFETY: termios is plain data; tcgetattr fills it and is checked.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: see above; the descriptor is borrowed for the call.
    (unsafe { libc::tcgetattr(tty.as_fd().as_raw_fd(), &mut t) } == 0).then_some(t)
}

/// In the forked child, before exec: a new session whose controlling terminal is fd 0.
pub fn make_controlling_terminal() -> Result<(), nix::errno::Errno> {
    nix::unistd::setsid()?;
    // SAFETY: TIOCSCTTY with an integer argument (0: do not steal) on fd 0.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_pair_passes_bytes_and_keeps_its_size() {
        let pty = open(Some((40, 100))).unwrap();
        assert_eq!(window_size(&pty.slave).unwrap(), (40, 100));
        set_window_size(&pty.master, 24, 80).unwrap();
        assert_eq!(window_size(&pty.slave).unwrap(), (24, 80));
        assert_eq!(eof_char(&pty.master), DEFAULT_EOF);
        // SAFETY: isatty on a descriptor we own.
        assert_eq!(unsafe { libc::isatty(pty.slave.as_raw_fd()) }, 1);
        // Both ends are close-on-exec.
        for fd in [&pty.master, &pty.slave] {
            // SAFETY: fcntl F_GETFD on a descriptor we own.
            let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
            assert_ne!(flags & libc::FD_CLOEXEC, 0);
        }

        let mut slave = std::fs::File::from(pty.slave);
        let mut master = std::fs::File::from(pty.master);
        slave.write_all(b"out\n").unwrap();
        let mut buf = [0u8; 16];
        let n = master.read(&mut buf).unwrap();
        // ONLCR: the terminal turns \n into \r\n.
        assert_eq!(&buf[..n], b"out\r\n");
        // Once the slave is closed the master reads EIO: the stream's end.
        drop(slave);
        let e = master.read(&mut buf).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
    }
}
