//! The Linux FFI layer: the only module with `unsafe`.
//!
//! It runs one probe attempt in a forked child that has switched to a sandbox account. The
//! socket must be created after the switch: nftables' `meta skuid` matches the uid that created
//! the socket, not the uid that uses it.

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{pipe, read, setgroups, setresgid, setresuid, write, ForkResult, Gid, Uid};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

/// What a child reports, as three numbers so it crosses the pipe without allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawOutcome {
    /// Attempt-defined result code.
    pub code: u32,
    /// The errno, or 0.
    pub errno: i32,
    /// Attempt-defined detail (which socket kind was used, say).
    pub detail: u32,
}

/// Result code a child uses when it could not become the account.
pub const CODE_PRIVILEGE_DROP_FAILED: u32 = 0xdead;
/// Result code for a child that panicked.
pub const CODE_PANICKED: u32 = 0xbad;

const CAP_NET_RAW: u32 = 13;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Leaves only CAP_NET_RAW in the permitted and effective sets, nothing inheritable.
fn keep_only_net_raw() -> Result<(), Errno> {
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let bit = 1u32 << CAP_NET_RAW;
    let data = [
        CapData {
            effective: bit,
            permitted: bit,
            inheritable: 0,
        },
        CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
    ];
    // SAFETY: capset(2) reads one header and, for version 3, two data structs; both live on this
    // stack frame for the duration of the call and have the kernel's layout (#[repr(C)], u32s).
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::last())
    }
}

fn become_account(uid: u32, gid: u32, keep_net_raw: bool) -> Result<(), Errno> {
    setgroups(&[])?;
    if keep_net_raw {
        nix::sys::prctl::set_keepcaps(true)?;
    }
    setresgid(Gid::from_raw(gid), Gid::from_raw(gid), Gid::from_raw(gid))?;
    setresuid(Uid::from_raw(uid), Uid::from_raw(uid), Uid::from_raw(uid))?;
    if keep_net_raw {
        keep_only_net_raw()?;
    }
    Ok(())
}

fn encode(o: RawOutcome) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&o.code.to_ne_bytes());
    b[4..8].copy_from_slice(&o.errno.to_ne_bytes());
    b[8..].copy_from_slice(&o.detail.to_ne_bytes());
    b
}

fn decode(b: &[u8; 12]) -> RawOutcome {
    let word = |i: usize| [b[i], b[i + 1], b[i + 2], b[i + 3]];
    RawOutcome {
        code: u32::from_ne_bytes(word(0)),
        errno: i32::from_ne_bytes(word(4)),
        detail: u32::from_ne_bytes(word(8)),
    }
}

fn child(
    write_end: OwnedFd,
    uid: u32,
    gid: u32,
    keep_net_raw: bool,
    attempt: &dyn Fn() -> RawOutcome,
) -> ! {
    let outcome = match become_account(uid, gid, keep_net_raw) {
        Err(e) => RawOutcome {
            code: CODE_PRIVILEGE_DROP_FAILED,
            errno: e as i32,
            detail: 0,
        },
        Ok(()) => {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(attempt)).unwrap_or(RawOutcome {
                code: CODE_PANICKED,
                errno: 0,
                detail: 0,
            })
        }
    };
    let _ = write(write_end.as_fd(), &encode(outcome));
    // SAFETY: _exit ends the forked child without running the parent's atexit handlers or
    // flushing stdio buffers it inherited, which would print the parent's output twice.
    unsafe { libc::_exit(0) }
}

/// Runs `attempt` in a forked child as `uid`/`gid` with no supplementary groups, keeping only
/// CAP_NET_RAW when asked (for a raw ICMP socket where ping sockets are not allowed). Kills the
/// child after `timeout`; returns `None` then.
pub fn run_as(
    uid: u32,
    gid: u32,
    keep_net_raw: bool,
    timeout: Duration,
    attempt: &dyn Fn() -> RawOutcome,
) -> std::io::Result<Option<RawOutcome>> {
    // setres[ug]id treat -1 as "leave unchanged", so these would run the attempt as root.
    if uid == u32::MAX || gid == u32::MAX || uid == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("refusing to probe as uid {uid} gid {gid}: not a sandbox account"),
        ));
    }
    let (read_end, write_end) = pipe()?;
    // SAFETY: the child only makes system calls (setgroups, setres[ug]id, capset, socket calls,
    // poll, write) and leaves through _exit, never returning into the parent's code; the callers
    // (the userwall binary and its tests) hold no lock another thread could leave taken.
    let fork = unsafe { nix::unistd::fork() }?;
    let pid = match fork {
        ForkResult::Child => {
            drop(read_end);
            child(write_end, uid, gid, keep_net_raw, attempt)
        }
        ForkResult::Parent { child } => child,
    };
    drop(write_end);
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 12];
    let mut got = 0;
    let mut timed_out = false;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(read_end.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) => {
                timed_out = true;
                break;
            }
            Ok(_) => match read(std::os::fd::AsRawFd::as_raw_fd(&read_end), &mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            },
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if timed_out {
        let _ = kill(pid, Signal::SIGKILL);
    }
    waitpid(pid, None)?;
    if got < buf.len() {
        return Ok(None);
    }
    Ok(Some(decode(&buf)))
}

/// Makes a child started from `cmd` receive SIGKILL when this process dies, so an nft run that
/// outlives a killed setup cannot apply a stale batch after the lock is gone.
pub fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
    // is async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// Whether this process runs with uid 0.
pub fn is_root() -> bool {
    Uid::effective().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_round_trips_through_bytes() {
        let o = RawOutcome {
            code: 7,
            errno: -3,
            detail: 0xffff_ffff,
        };
        assert_eq!(decode(&encode(o)), o);
    }
}
