//! The probe: proof, on the live kernel, that the policy does what it says.
//!
//! For each account it forks, becomes the account, and tries every channel of the policy
//! against each target, plus one control channel the policy allows (a TCP connect to a listener
//! the probe opens on 127.0.0.1). A row is `blocked` only on evidence that the block was ours:
//! the counter of the rule that covers the channel moved during the attempt. It is never
//! inferred from a timeout.

use crate::accounts::Account;
use crate::nft::render::Rendered;
use crate::nft::{self, Nft};
use crate::policy::{Family, Match};
use crate::sys::{self, RawOutcome};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    connect, getsockopt, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags,
    SockFlag, SockProtocol, SockType, SockaddrStorage,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

/// How long a TCP connect may take before the row is "could not test".
const CONNECT_WAIT: Duration = Duration::from_secs(3);
/// How long to wait for an echo reply once the request was sent.
const ECHO_REPLY_WAIT: Duration = Duration::from_secs(2);
/// How long a child may live.
const CHILD_LIMIT: Duration = Duration::from_secs(6);
/// A port outside every preset's list, for the `offline` catch-all rows.
const UNLISTED_PORT: u16 = 80;

/// The default targets: loopback only, so a probe sends nothing off the machine.
pub const DEFAULT_TARGETS: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::LOCALHOST),
    IpAddr::V6(Ipv6Addr::LOCALHOST),
];

/// A channel's transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// ICMP echo (ICMPv6 echo on v6).
    Icmp,
    /// TCP connect.
    Tcp,
    /// UDP send on a connected socket.
    Udp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Icmp => "icmp",
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One thing to try.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Channel {
    /// Human label, such as `tcp/53 v6-mapped`.
    pub label: String,
    /// Transport.
    pub proto: Proto,
    /// Destination.
    pub dest: SocketAddr,
    /// The family of the packets on the wire (v4 for a v4-mapped destination).
    pub wire_family: Family,
    /// The control channel: allowed by every policy.
    pub control: bool,
}

/// What a row found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Our rule stopped it.
    Blocked,
    /// It got through (or reached the target's own stack).
    Open,
    /// The attempt could not show either; the evidence says why.
    CouldNotTest,
}

impl Outcome {
    fn word(self) -> &'static str {
        match self {
            Outcome::Blocked => "blocked",
            Outcome::Open => "open",
            Outcome::CouldNotTest => "could-not-test",
        }
    }
}

/// One row of the matrix.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// The account label.
    pub account: String,
    /// Its uid.
    pub uid: u32,
    /// The channel label.
    pub channel: String,
    /// Where it went.
    pub target: String,
    /// What the policy says should happen.
    pub expected: Outcome,
    /// What happened.
    pub result: Outcome,
    /// Why we say so.
    pub evidence: String,
    /// How long the attempt took, in milliseconds.
    pub millis: f64,
}

/// The matrix.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Every row.
    pub rows: Vec<Row>,
    /// Notes on what was not probed and why.
    pub notes: Vec<String>,
    /// Counts over the rows.
    pub summary: Summary,
}

/// Counts over the rows.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// Rows.
    pub rows: usize,
    /// Rows blocked.
    pub blocked: usize,
    /// Rows open.
    pub open: usize,
    /// Rows that could not be tested.
    pub could_not_test: usize,
    /// Rows whose result differs from the expectation.
    pub not_as_expected: usize,
}

impl Summary {
    fn of(rows: &[Row]) -> Summary {
        let count = |o: Outcome| rows.iter().filter(|r| r.result == o).count();
        Summary {
            rows: rows.len(),
            blocked: count(Outcome::Blocked),
            open: count(Outcome::Open),
            could_not_test: count(Outcome::CouldNotTest),
            not_as_expected: rows.iter().filter(|r| r.result != r.expected).count(),
        }
    }
}

impl Report {
    /// Whether every row came out as the policy says.
    pub fn as_expected(&self) -> bool {
        self.rows.iter().all(|r| r.result == r.expected)
    }

    /// The matrix as text, one row per line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let widths = [
            self.rows
                .iter()
                .map(|r| r.channel.len())
                .max()
                .unwrap_or(7)
                .max(7),
            self.rows
                .iter()
                .map(|r| r.target.len())
                .max()
                .unwrap_or(6)
                .max(6),
        ];
        let mut account = None;
        for row in &self.rows {
            if account != Some(&row.account) {
                account = Some(&row.account);
                out += &format!("\nprobe as {}\n", row.account);
                out += &format!(
                    "  {:w0$}  {:w1$}  {:8}  {:14}  evidence\n",
                    "channel",
                    "target",
                    "expected",
                    "result",
                    w0 = widths[0],
                    w1 = widths[1]
                );
            }
            let mark = if row.result == row.expected {
                ""
            } else {
                "  <-- NOT AS EXPECTED"
            };
            out += &format!(
                "  {:w0$}  {:w1$}  {:8}  {:14}  {} ({:.1} ms){mark}\n",
                row.channel,
                row.target,
                row.expected.word(),
                row.result.word(),
                row.evidence,
                row.millis,
                w0 = widths[0],
                w1 = widths[1]
            );
        }
        out += "\n";
        for note in &self.notes {
            out += &format!("note: {note}\n");
        }
        let Summary {
            rows,
            blocked,
            open,
            could_not_test,
            not_as_expected,
        } = Summary::of(&self.rows);
        out += &format!(
            "{rows} rows: {blocked} blocked, {open} open, {could_not_test} could not be tested; {} as expected, {not_as_expected} not\n",
            rows - not_as_expected
        );
        out
    }
}

/// Why the probe could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Not root.
    #[error("probe must run as root: it switches to each sandbox account's uid and reads our rule counters")]
    NotRoot,
    /// nftables failed.
    #[error(transparent)]
    Backend(#[from] nft::BackendError),
    /// An OS call in the parent failed.
    #[error("probe failed while {action}: {source}")]
    Io {
        /// What it was doing.
        action: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn v4_mapped(v4: Ipv4Addr) -> IpAddr {
    IpAddr::V6(v4.to_ipv6_mapped())
}

/// The channels a policy implies for these targets, control channel last.
pub fn channels(
    rendered: &Rendered,
    policy: &crate::policy::Policy,
    targets: &[IpAddr],
    control: SocketAddr,
) -> Vec<Channel> {
    let mut ports: Vec<u16> = Vec::new();
    for rule in &policy.rules {
        if let Match::RemotePort(p) = rule.matches {
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
    }
    let catch_all = rendered.egress.iter().any(|r| r.exempts_loopback);
    if catch_all {
        ports.push(UNLISTED_PORT);
    }
    let mut out = Vec::new();
    for &target in targets {
        let (family, fam) = match target {
            IpAddr::V4(_) => (Family::V4, "v4"),
            IpAddr::V6(_) => (Family::V6, "v6"),
        };
        out.push(Channel {
            label: format!("icmp echo {fam}"),
            proto: Proto::Icmp,
            dest: SocketAddr::new(target, 0),
            wire_family: family,
            control: false,
        });
        for &port in &ports {
            for proto in [Proto::Udp, Proto::Tcp] {
                out.push(Channel {
                    label: format!("{}/{port} {fam}", proto.name()),
                    proto,
                    dest: SocketAddr::new(target, port),
                    wire_family: family,
                    control: false,
                });
                if let IpAddr::V4(v4) = target {
                    out.push(Channel {
                        label: format!("{}/{port} v6-mapped", proto.name()),
                        proto,
                        dest: SocketAddr::new(v4_mapped(v4), port),
                        wire_family: Family::V4,
                        control: false,
                    });
                }
            }
        }
    }
    out.push(Channel {
        label: "control: tcp to probe's listener".into(),
        proto: Proto::Tcp,
        dest: control,
        wire_family: Family::V4,
        control: true,
    });
    out
}

/// Whether traffic to `dest` leaves through `lo`, as our loopback exemption sees it: the
/// loopback ranges, the unspecified address (which means this host), and every address of
/// this namespace's own interfaces (the kernel routes those over `lo` too).
fn is_loopback_dest(dest: &SocketAddr) -> bool {
    is_loopback_ip(dest.ip(), &local_addresses())
}

fn is_loopback_ip(ip: IpAddr, local: &BTreeSet<IpAddr>) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    ip.is_loopback() || ip.is_unspecified() || local.contains(&ip)
}

/// The addresses of this network namespace's interfaces.
pub fn local_addresses() -> BTreeSet<IpAddr> {
    let mut out = BTreeSet::new();
    for ifaddr in nix::ifaddrs::getifaddrs().into_iter().flatten() {
        let Some(addr) = ifaddr.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            out.insert(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            out.insert(IpAddr::V6(v6.ip()));
        }
    }
    out
}

/// The default targets usable here: 127.0.0.1, and ::1 unless IPv6 is off in this namespace
/// (then ::1 is not assigned and every IPv6 attempt could only fail with EADDRNOTAVAIL).
pub fn default_targets() -> (Vec<IpAddr>, Option<String>) {
    if local_addresses().contains(&DEFAULT_TARGETS[1]) {
        (DEFAULT_TARGETS.to_vec(), None)
    } else {
        (
            vec![DEFAULT_TARGETS[0]],
            Some("::1 is not assigned here (IPv6 is off in this network namespace): IPv6 channels not probed".into()),
        )
    }
}

/// Result codes of an attempt.
mod code {
    pub const CONNECTED_OR_SENT: u32 = 1;
    pub const SOCKET_FAILED: u32 = 2;
    pub const SEND_FAILED: u32 = 3;
    pub const TIMED_OUT: u32 = 4;
    pub const ECHO_REPLY: u32 = 5;
    pub const NO_ECHO_REPLY: u32 = 6;
    pub const SETSOCKOPT_FAILED: u32 = 7;
    pub const PING_SOCKET: u32 = 1;
    pub const RAW_SOCKET: u32 = 2;
}

fn raw(code: u32, errno: Errno, detail: u32) -> RawOutcome {
    RawOutcome {
        code,
        errno: errno as i32,
        detail,
    }
}

fn ok(code: u32, detail: u32) -> RawOutcome {
    RawOutcome {
        code,
        errno: 0,
        detail,
    }
}

fn family_of(dest: &SocketAddr) -> AddressFamily {
    match dest {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn wait_for(fd: &OwnedFd, flags: PollFlags, wait: Duration) -> Result<bool, Errno> {
    let mut fds = [PollFd::new(fd.as_fd(), flags)];
    let millis = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
    poll(&mut fds, PollTimeout::from(millis)).map(|n| n > 0)
}

fn allow_v4_mapped(fd: &OwnedFd, dest: &SocketAddr) -> Result<(), Errno> {
    if let SocketAddr::V6(v6) = dest {
        if v6.ip().to_ipv4_mapped().is_some() {
            setsockopt(fd, sockopt::Ipv6V6Only, &false)?;
        }
    }
    Ok(())
}

fn attempt_tcp(dest: SocketAddr) -> RawOutcome {
    let fd = match socket(
        family_of(&dest),
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK,
        None,
    ) {
        Ok(fd) => fd,
        Err(e) => return raw(code::SOCKET_FAILED, e, 0),
    };
    if let Err(e) = allow_v4_mapped(&fd, &dest) {
        return raw(code::SETSOCKOPT_FAILED, e, 0);
    }
    match connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(dest),
    ) {
        Ok(()) => return ok(code::CONNECTED_OR_SENT, 0),
        Err(Errno::EINPROGRESS) => {}
        Err(e) => return raw(code::SEND_FAILED, e, 0),
    }
    match wait_for(&fd, PollFlags::POLLOUT, CONNECT_WAIT) {
        Ok(false) => return ok(code::TIMED_OUT, 0),
        Err(e) => return raw(code::SEND_FAILED, e, 0),
        Ok(true) => {}
    }
    match getsockopt(&fd, sockopt::SocketError) {
        Ok(0) => ok(code::CONNECTED_OR_SENT, 0),
        Ok(errno) => RawOutcome {
            code: code::SEND_FAILED,
            errno,
            detail: 0,
        },
        Err(e) => raw(code::SEND_FAILED, e, 0),
    }
}

fn attempt_udp(dest: SocketAddr) -> RawOutcome {
    let fd = match socket(
        family_of(&dest),
        SockType::Datagram,
        SockFlag::empty(),
        None,
    ) {
        Ok(fd) => fd,
        Err(e) => return raw(code::SOCKET_FAILED, e, 0),
    };
    if let Err(e) = allow_v4_mapped(&fd, &dest) {
        return raw(code::SETSOCKOPT_FAILED, e, 0);
    }
    if let Err(e) = connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(dest),
    ) {
        return raw(code::SEND_FAILED, e, 0);
    }
    match send(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        b"userwall probe",
        MsgFlags::empty(),
    ) {
        Ok(_) => ok(code::CONNECTED_OR_SENT, 0),
        Err(e) => raw(code::SEND_FAILED, e, 0),
    }
}

fn icmp_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn attempt_icmp(dest: SocketAddr) -> RawOutcome {
    let (family, protocol, echo_type) = match dest {
        SocketAddr::V4(_) => (AddressFamily::Inet, SockProtocol::Icmp, 8u8),
        SocketAddr::V6(_) => (AddressFamily::Inet6, SockProtocol::IcmpV6, 128u8),
    };
    // A ping socket first, as an unprivileged program would use; a raw socket (with the one
    // capability the probe kept) when net.ipv4.ping_group_range leaves this gid out.
    let (fd, kind) = match socket(family, SockType::Datagram, SockFlag::empty(), protocol) {
        Ok(fd) => (fd, code::PING_SOCKET),
        Err(Errno::EACCES) | Err(Errno::EPERM) => {
            match socket(family, SockType::Raw, SockFlag::empty(), protocol) {
                Ok(fd) => (fd, code::RAW_SOCKET),
                Err(e) => return raw(code::SOCKET_FAILED, e, code::RAW_SOCKET),
            }
        }
        Err(e) => return raw(code::SOCKET_FAILED, e, code::PING_SOCKET),
    };
    let mut packet = [echo_type, 0, 0, 0, 0x75, 0x77, 0, 1, b'u', b'w', b'p', b'r'];
    let sum = icmp_checksum(&packet).to_be_bytes();
    packet[2] = sum[0];
    packet[3] = sum[1];
    let raw_fd = std::os::fd::AsRawFd::as_raw_fd(&fd);
    if let Err(e) = connect(raw_fd, &SockaddrStorage::from(dest)) {
        return raw(code::SEND_FAILED, e, kind);
    }
    if let Err(e) = send(raw_fd, &packet, MsgFlags::empty()) {
        return raw(code::SEND_FAILED, e, kind);
    }
    let deadline = Instant::now() + ECHO_REPLY_WAIT;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match wait_for(&fd, PollFlags::POLLIN, left) {
            Ok(false) => return ok(code::NO_ECHO_REPLY, kind),
            Err(e) => return raw(code::SEND_FAILED, e, kind),
            Ok(true) => {}
        }
        match recv(raw_fd, &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(n) => {
                // A raw IPv4 socket hands over the IP header too; a raw socket also sees our
                // own request on loopback. Only an echo reply counts.
                let icmp = if kind == code::RAW_SOCKET && family == AddressFamily::Inet {
                    let ihl = usize::from(buf[0] & 0x0f) * 4;
                    &buf[ihl.min(n)..n]
                } else {
                    &buf[..n]
                };
                let reply_type = if family == AddressFamily::Inet {
                    0
                } else {
                    129
                };
                if icmp.first() == Some(&reply_type) {
                    return ok(code::ECHO_REPLY, kind);
                }
            }
            Err(Errno::EAGAIN) => {}
            Err(e) => return raw(code::SEND_FAILED, e, kind),
        }
    }
}

/// A rule comment without our prefix and without its parenthesised note.
fn short_rule_name(comment: &str) -> &str {
    let name = comment
        .strip_prefix(crate::ids::NFT_COMMENT_PREFIX)
        .unwrap_or(comment);
    name.split(" (").next().unwrap_or(name)
}

fn errno_name(errno: i32) -> String {
    format!("{:?}", Errno::from_raw(errno))
}

struct Judged {
    result: Outcome,
    evidence: String,
}

fn judge(
    channel: &Channel,
    outcome: Option<RawOutcome>,
    counted: u64,
    counter_name: Option<&str>,
) -> Judged {
    let Some(o) = outcome else {
        return Judged {
            result: Outcome::CouldNotTest,
            evidence: "the probe child did not report in time".into(),
        };
    };
    let socket_kind = match (channel.proto, o.detail) {
        (Proto::Icmp, code::RAW_SOCKET) => ", raw socket: ping_group_range excludes this gid",
        (Proto::Icmp, _) => ", ping socket",
        _ => "",
    };
    let ours = match counter_name {
        Some(name) if counted > 0 => {
            Some(format!("rule {} counted {counted}", short_rule_name(name)))
        }
        _ => None,
    };
    let err = || errno_name(o.errno);
    let (result, evidence) = match (o.code, ours) {
        (sys::CODE_PRIVILEGE_DROP_FAILED, _) => (
            Outcome::CouldNotTest,
            format!("could not switch to the account: {}", err()),
        ),
        (sys::CODE_PANICKED, _) => (
            Outcome::CouldNotTest,
            "the probe child panicked".to_string(),
        ),
        (code::SOCKET_FAILED, _) | (code::SETSOCKOPT_FAILED, _) => (
            Outcome::CouldNotTest,
            format!("could not create the socket: {}", err()),
        ),
        (code::CONNECTED_OR_SENT, None) => (
            Outcome::Open,
            match channel.proto {
                Proto::Tcp => "connected".to_string(),
                _ => "sent".to_string(),
            },
        ),
        (code::ECHO_REPLY, None) => (Outcome::Open, "echo reply received".to_string()),
        (code::SEND_FAILED, Some(ours)) => (Outcome::Blocked, format!("{}, {ours}", err())),
        (code::NO_ECHO_REPLY, Some(ours)) => (Outcome::Blocked, format!("no reply, {ours}")),
        (code::CONNECTED_OR_SENT, Some(ours)) | (code::ECHO_REPLY, Some(ours)) => (
            Outcome::Open,
            format!("got through although {ours}: that rule does not block (run `userwall status`)"),
        ),
        (code::TIMED_OUT, Some(ours)) => (
            Outcome::CouldNotTest,
            format!("no answer within 3 s and {ours}, but our verdict fails at once: the rule may have been changed (run `userwall status`)"),
        ),
        (other, Some(ours)) => (Outcome::CouldNotTest, format!("unknown result code {other}, {ours}")),
        (code::SEND_FAILED, None) if o.errno == libc::ECONNREFUSED => (
            Outcome::Open,
            "ECONNREFUSED from the target; no rule of ours counted it".to_string(),
        ),
        (code::SEND_FAILED, None) => (
            Outcome::CouldNotTest,
            format!("failed with {} and no rule of ours counted it", err()),
        ),
        (code::NO_ECHO_REPLY, None) => (
            Outcome::CouldNotTest,
            "sent, no echo reply within 2 s, no rule of ours counted it".to_string(),
        ),
        (code::TIMED_OUT, None) => (
            Outcome::CouldNotTest,
            "no answer within 3 s and no rule of ours counted it".to_string(),
        ),
        (other, None) => (
            Outcome::CouldNotTest,
            format!("unknown result code {other}"),
        ),
    };
    Judged {
        result,
        evidence: format!("{evidence}{socket_kind}"),
    }
}

/// Our rules' packet counts, with one nft call (the probe reads them twice per row). A table
/// that is not there has no counters, which is what a failed listing means here; whether nft
/// works at all was established before the first row.
fn counters(nft: &Nft) -> BTreeMap<String, u64> {
    nft.list_table(crate::ids::NFT_FAMILY, crate::ids::NFT_TABLE)
        .map(|listing| nft::state::rule_counters(&listing))
        .unwrap_or_default()
}

/// Runs the matrix for every account. `rendered` is the policy's rendering (for which rule
/// covers which channel). An account whose uid is in `sandboxed_uids` is expected blocked on
/// every channel a rule covers, whether or not our table is live, so a deleted table shows up
/// as rows that are not as expected; any other account is expected open everywhere.
pub fn probe(
    nft: &Nft,
    policy: &crate::policy::Policy,
    rendered: &Rendered,
    accounts: &[Account],
    sandboxed_uids: &BTreeSet<u32>,
    targets: &[IpAddr],
) -> Result<Report, ProbeError> {
    if !sys::is_root() {
        return Err(ProbeError::NotRoot);
    }
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|source| ProbeError::Io {
            action: "opening the control listener on 127.0.0.1",
            source,
        })?;
    let control = listener.local_addr().map_err(|source| ProbeError::Io {
        action: "reading the control listener's address",
        source,
    })?;
    // Fails here, before any row, when nft is missing or not permitted. A counter is evidence
    // only for a rule that is exactly as rendered: a rule someone turned into `accept` under
    // the same comment counts packets it lets through.
    let live = nft::read_live(nft)?;
    let intact: BTreeSet<String> = rendered
        .egress
        .iter()
        .filter(|r| {
            live.as_ref()
                .is_some_and(|l| l.state.rules.contains(&r.rule))
        })
        .filter_map(|r| r.rule.comment.clone())
        .collect();
    let channels = channels(rendered, policy, targets, control);
    let mut rows = Vec::new();
    for account in accounts {
        let sandboxed = sandboxed_uids.contains(&account.uid);
        for channel in &channels {
            let loopback = is_loopback_dest(&channel.dest);
            let rule = if channel.control {
                None
            } else {
                rendered.egress.iter().find(|r| {
                    r.catches(
                        channel.wire_family,
                        channel.proto.name(),
                        Some(channel.dest.port()),
                        loopback,
                    )
                })
            };
            let expected = if sandboxed && rule.is_some() {
                Outcome::Blocked
            } else {
                Outcome::Open
            };
            let counter_name = rule.and_then(|r| r.rule.comment.clone());
            let before = counters(nft);
            let dest = channel.dest;
            let started = Instant::now();
            let attempt: Box<dyn Fn() -> RawOutcome> = match channel.proto {
                Proto::Tcp => Box::new(move || attempt_tcp(dest)),
                Proto::Udp => Box::new(move || attempt_udp(dest)),
                Proto::Icmp => Box::new(move || attempt_icmp(dest)),
            };
            let outcome = sys::run_as(
                account.uid,
                account.gid,
                channel.proto == Proto::Icmp,
                CHILD_LIMIT,
                &*attempt,
            )
            .map_err(|source| ProbeError::Io {
                action: "running a probe child",
                source,
            })?;
            let millis = started.elapsed().as_secs_f64() * 1000.0;
            let after = counters(nft);
            // The covering rule's counter is the evidence; with no covering rule (a control
            // channel), any of our counters moving is reported, since nothing of ours should.
            let moved = |name: &str| {
                after
                    .get(name)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(before.get(name).copied().unwrap_or(0))
            };
            let (counted, name) = match &counter_name {
                Some(name) if intact.contains(name) => (moved(name), Some(name.clone())),
                Some(_) => (0, None),
                None => after
                    .keys()
                    .map(|k| (moved(k), Some(k.clone())))
                    .find(|(n, _)| *n > 0)
                    .unwrap_or((0, None)),
            };
            let mut judged = judge(channel, outcome, counted, name.as_deref());
            if let Some(changed) = counter_name.as_deref().filter(|n| !intact.contains(*n)) {
                judged.evidence += &format!(
                    "; rule {} is not as userwall installed it, so its counter is no evidence (run `userwall status`)",
                    short_rule_name(changed)
                );
            }
            rows.push(Row {
                account: account.label(),
                uid: account.uid,
                channel: channel.label.clone(),
                target: channel.dest.to_string(),
                expected,
                result: judged.result,
                evidence: judged.evidence,
                millis,
            });
        }
    }
    drop(listener);
    let summary = Summary::of(&rows);
    Ok(Report {
        rows,
        notes: Vec::new(),
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::render::render;
    use crate::policy::{Policy, Preset};

    fn chans(preset: Preset, targets: &[IpAddr]) -> Vec<Channel> {
        let policy = Policy::preset(preset);
        let rendered = render(&policy, &[1000].into_iter().collect());
        channels(&rendered, &policy, targets, "127.0.0.1:9".parse().unwrap())
    }

    #[test]
    fn default_targets_cover_every_channel_of_bypass_surfaces() {
        let c = chans(Preset::BypassSurfaces, &DEFAULT_TARGETS);
        // v4: icmp + 4 ports x (udp, tcp) x (v4, mapped); v6: icmp + 4 x 2; control.
        assert_eq!(c.len(), 1 + 16 + 1 + 8 + 1);
        assert!(
            c.iter().all(|ch| is_loopback_dest(&ch.dest)),
            "default probe left the machine"
        );
        assert_eq!(c.iter().filter(|ch| ch.control).count(), 1);
    }

    #[test]
    fn every_non_control_channel_is_covered_by_a_rule() {
        let policy = Policy::preset(Preset::BypassSurfaces);
        let rendered = render(&policy, &[1000].into_iter().collect());
        for ch in chans(Preset::BypassSurfaces, &DEFAULT_TARGETS) {
            let loopback = is_loopback_dest(&ch.dest);
            let covered = rendered.egress.iter().any(|r| {
                r.catches(
                    ch.wire_family,
                    ch.proto.name(),
                    Some(ch.dest.port()),
                    loopback,
                )
            });
            assert_eq!(covered, !ch.control, "{}", ch.label);
        }
    }

    #[test]
    fn offline_adds_an_unlisted_port_that_loopback_may_use() {
        let policy = Policy::preset(Preset::Offline);
        let rendered = render(&policy, &[1000].into_iter().collect());
        let remote: IpAddr = "192.0.2.1".parse().unwrap();
        let find = |label: &str, target: IpAddr| {
            let ch = chans(Preset::Offline, &[target])
                .into_iter()
                .find(|c| c.label == label)
                .unwrap();
            let lo = is_loopback_dest(&ch.dest);
            rendered
                .egress
                .iter()
                .any(|r| r.catches(ch.wire_family, ch.proto.name(), Some(ch.dest.port()), lo))
        };
        assert!(find("tcp/80 v4", remote));
        assert!(!find("tcp/80 v4", DEFAULT_TARGETS[0]));
        assert!(
            find("udp/53 v4", DEFAULT_TARGETS[0]),
            "the bypass rules still apply on loopback"
        );
    }

    #[test]
    fn blocked_needs_our_counter_not_just_an_errno() {
        let ch = &chans(Preset::BypassSurfaces, &DEFAULT_TARGETS)[2];
        let refused = Some(RawOutcome {
            code: code::SEND_FAILED,
            errno: libc::ECONNREFUSED,
            detail: 0,
        });
        assert_eq!(judge(ch, refused, 0, Some("r")).result, Outcome::Open);
        assert_eq!(judge(ch, refused, 1, Some("r")).result, Outcome::Blocked);
        let timeout = Some(RawOutcome {
            code: code::TIMED_OUT,
            errno: 0,
            detail: 0,
        });
        assert_eq!(
            judge(ch, timeout, 0, Some("r")).result,
            Outcome::CouldNotTest
        );
        assert_eq!(judge(ch, None, 0, None).result, Outcome::CouldNotTest);
    }

    #[test]
    fn checksum_of_an_echo_request_verifies_to_zero() {
        let mut p = [8u8, 0, 0, 0, 0x12, 0x34, 0, 1, 1, 2, 3];
        let s = icmp_checksum(&p).to_be_bytes();
        p[2] = s[0];
        p[3] = s[1];
        assert_eq!(icmp_checksum(&p), 0);
    }
}
