//! The command line on Windows: the same commands as on Linux, on the WFP backend.
//!
//! There is no marker on Windows: the filters are persistent engine objects, enumerable by
//! provider, and the accounts they apply to are read back from their user condition. `probe`
//! runs as the current account only (`probe --self`, from inside the sandbox account), since
//! probing as another account needs its credentials.

use super::logic;
use super::raw::WindowsFwpm;
use super::safe::{self, Engine};
use super::sid::Sid;
use super::spec::Condition;
use crate::policy::{Policy, Preset};
use clap::{Parser, Subcommand};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const EXIT_CODES: &str = "\
Exit codes:
  0  success; status: in sync; plan: nothing to change
  1  error (the filter engine failed, not elevated, ...)
  2  bad input (unknown option or preset, refused or unknown account)
  3  status: our filters differ from the policy; plan: setup would change something
  4  status: our filters are not installed
  5  probe: a channel did not behave as the policy says";

/// What a connect or send blocked by a WFP filter fails with.
use windows_sys::Win32::Networking::WinSock::WSAEACCES;

#[derive(Parser)]
#[command(name = "userwall", version, about = "Lock sandbox accounts' network egress with account-scoped WFP filters", after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the filters for the accounts (user name, DOMAIN\name or SID), in one transaction.
    Setup {
        /// A sandbox account; repeat for several.
        #[arg(long = "account", value_name = "A", required = true)]
        accounts: Vec<String>,
        /// bypass-surfaces or offline.
        #[arg(long, default_value = "bypass-surfaces")]
        preset: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove every object of ours, then check nothing is left.
    Uninstall,
    /// Compare the installed filters with the policy.
    Status {
        /// Expected accounts; default: the ones the installed filters name.
        #[arg(long = "account", value_name = "A")]
        accounts: Vec<String>,
        /// bypass-surfaces or offline.
        #[arg(long, default_value = "bypass-surfaces")]
        preset: String,
    },
    /// Show what setup would change, changing nothing.
    Plan {
        /// Sandbox accounts.
        #[arg(long = "account", value_name = "A", required = true)]
        accounts: Vec<String>,
        /// bypass-surfaces or offline.
        #[arg(long, default_value = "bypass-surfaces")]
        preset: String,
    },
    /// Try the policy's channels as the current account, against loopback.
    Probe {
        /// Required: on Windows the probe runs as the account it is started from.
        #[arg(long = "self", required = true)]
        as_self: bool,
    },
}

fn policy(preset: &str) -> Result<Policy, String> {
    preset.parse::<Preset>().map(Policy::preset)
}

fn accounts(values: &[String]) -> Result<Vec<Sid>, ExitCode> {
    super::accounts::resolve(values).map_err(|e| {
        eprintln!("userwall: error: {e}");
        ExitCode::from(2)
    })
}

/// The accounts the installed filters apply to, from their user condition.
fn installed_accounts() -> Result<Vec<Sid>, String> {
    let engine = Engine::open(&WindowsFwpm).map_err(|e| e.to_string())?;
    let filters = safe::our_filters(&engine).map_err(|e| e.to_string())?;
    let mut out: Vec<Sid> = Vec::new();
    for f in &filters {
        if let Some(Some(Condition::User(sd))) = f.conditions.first() {
            for sid in super::sd::granted_accounts(sd).unwrap_or_default() {
                if !out.contains(&sid) {
                    out.push(sid);
                }
            }
        }
    }
    Ok(out)
}

/// The preset's policy and the resolved accounts, or the exit code that says why not.
fn policy_and_accounts(preset: &str, values: &[String]) -> Result<(Policy, Vec<Sid>), ExitCode> {
    let policy = policy(preset).map_err(|e| {
        eprintln!("userwall: error: {e}");
        ExitCode::from(2)
    })?;
    Ok((policy, accounts(values)?))
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("userwall: error: {e}");
    ExitCode::from(1)
}

/// Runs the Windows command line.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup {
            accounts: values,
            preset,
            json,
        } => {
            let (policy, sids) = match policy_and_accounts(&preset, &values) {
                Ok(both) => both,
                Err(code) => return code,
            };
            let started = Instant::now();
            let installed = match logic::install(&WindowsFwpm, &policy, &sids) {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            let verified = match logic::verify(&WindowsFwpm, &policy, &sids) {
                Ok(v) => v,
                Err(e) => return fail(e),
            };
            let millis = started.elapsed().as_secs_f64() * 1000.0;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "filters_added": installed.filters_added,
                        "stale_filters_removed": installed.stale_filters_removed,
                        "sublayer_replaced": installed.sublayer_replaced,
                        "in_sync": verified.in_sync(),
                        "millis": millis,
                    })
                );
            } else {
                println!(
                    "installed preset {} for {}: {} filters, {} stale removed, read back {} ({millis:.1} ms)",
                    policy.preset,
                    sids.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                    installed.filters_added,
                    installed.stale_filters_removed,
                    if verified.in_sync() { "in sync" } else { "NOT in sync" }
                );
            }
            ExitCode::from(if verified.in_sync() { 0 } else { 1 })
        }
        Command::Uninstall => {
            match logic::uninstall(&WindowsFwpm) {
                Ok(r) => {
                    println!("removed {} filters, our sublayer and our provider; nothing of ours is left", r.filters_removed);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Status {
            accounts: values,
            preset,
        } => {
            let policy = match policy(&preset) {
                Ok(p) => p,
                Err(e) => return fail(e),
            };
            let sids = if values.is_empty() {
                match installed_accounts() {
                    Ok(s) if s.is_empty() => {
                        println!("not installed: no filter of ours is present");
                        return ExitCode::from(4);
                    }
                    Ok(s) => s,
                    Err(e) => return fail(e),
                }
            } else {
                match accounts(&values) {
                    Ok(s) => s,
                    Err(code) => return code,
                }
            };
            match logic::verify(&WindowsFwpm, &policy, &sids) {
                Ok(v) if v.in_sync() => {
                    println!("in sync: our filters match preset {}", policy.preset);
                    ExitCode::SUCCESS
                }
                Ok(v) => {
                    println!("drifted from preset {}:", policy.preset);
                    for line in v.lines() {
                        println!("  {line}");
                    }
                    ExitCode::from(3)
                }
                Err(e) => fail(e),
            }
        }
        Command::Plan {
            accounts: values,
            preset,
        } => {
            let (policy, sids) = match policy_and_accounts(&preset, &values) {
                Ok(both) => both,
                Err(code) => return code,
            };
            match logic::verify(&WindowsFwpm, &policy, &sids) {
                Ok(v) if v.in_sync() => {
                    println!("no changes: setup would re-add the same filters");
                    ExitCode::SUCCESS
                }
                Ok(v) => {
                    println!("setup would change:");
                    for line in v.lines() {
                        println!("  {line}");
                    }
                    ExitCode::from(3)
                }
                Err(e) => fail(e),
            }
        }
        Command::Probe { as_self: _ } => probe_self(),
    }
}

/// Tries TCP and UDP to each blocked port on loopback, as the current account. A row is
/// blocked only on WSAEACCES, the error a WFP block produces. ICMP goes through IcmpSendEcho,
/// where only a reply is conclusive (open).
fn probe_self() -> ExitCode {
    let ports: Vec<u16> = Policy::preset(Preset::BypassSurfaces)
        .rules
        .iter()
        .filter_map(|r| match r.matches {
            crate::policy::Match::RemotePort(p) => Some(p),
            _ => None,
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut all_blocked = true;
    for ip in [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ] {
        for port in &ports {
            let dest = SocketAddr::new(ip, *port);
            let tcp = TcpStream::connect_timeout(&dest, Duration::from_secs(3));
            let bind: SocketAddr = if ip.is_ipv4() {
                "0.0.0.0:0".parse().expect("literal")
            } else {
                "[::]:0".parse().expect("literal")
            };
            let udp = UdpSocket::bind(bind).and_then(|s| s.send_to(b"userwall probe", dest));
            for (proto, result) in [("tcp", tcp.map(drop)), ("udp", udp.map(drop))] {
                let blocked = matches!(&result, Err(e) if e.raw_os_error() == Some(WSAEACCES));
                all_blocked &= blocked;
                let what = match &result {
                    Ok(()) => "open (connected or sent)".to_string(),
                    Err(e) if blocked => format!("blocked ({e})"),
                    Err(e) => format!("not blocked by a filter ({e})"),
                };
                println!("  {proto}/{port} {dest:<16} {what}");
            }
        }
    }
    let icmp = echo_loopback();
    println!("  icmp echo v4 127.0.0.1   {icmp}");
    ExitCode::from(if all_blocked { 0 } else { 5 })
}

/// An ICMP echo to 127.0.0.1 through IcmpSendEcho, the path ping.exe takes without admin
/// rights. A reply means open. A failure is reported as could-not-test: whether the filter
/// engine classifies this path under the caller's token, and with which error it refuses it,
/// is not documented.
fn echo_loopback() -> String {
    use windows_sys::Win32::Foundation::{GetLastError, INVALID_HANDLE_VALUE};
    use windows_sys::Win32::NetworkManagement::IpHelper::{
        IcmpCloseHandle, IcmpCreateFile, IcmpSendEcho, ICMP_ECHO_REPLY,
    };
    // SAFETY: IcmpCreateFile takes no arguments and returns a handle or INVALID_HANDLE_VALUE.
    let handle = unsafe { IcmpCreateFile() };
    if handle == INVALID_HANDLE_VALUE {
        // SAFETY: reads this thread's last-error value, set by IcmpCreateFile.
        let error = unsafe { GetLastError() };
        return format!("could not test (IcmpCreateFile failed: Windows error {error})");
    }
    let payload = *b"userwall";
    // Room for one reply, its payload and the 8 bytes an ICMP error would add.
    let mut reply =
        vec![0u64; (std::mem::size_of::<ICMP_ECHO_REPLY>() + payload.len() + 8).div_ceil(8) + 1];
    let loopback = u32::from_ne_bytes([127, 0, 0, 1]);
    // SAFETY: the handle is open; the payload and reply buffers live across the call and the
    // sizes passed are theirs.
    let replies = unsafe {
        IcmpSendEcho(
            handle,
            loopback,
            payload.as_ptr().cast(),
            payload.len() as u16,
            std::ptr::null(),
            reply.as_mut_ptr().cast(),
            (reply.len() * 8) as u32,
            2000,
        )
    };
    // SAFETY: reads this thread's last-error value, set by IcmpSendEcho on failure.
    let error = unsafe { GetLastError() };
    // SAFETY: the handle was opened above and is closed once.
    unsafe { IcmpCloseHandle(handle) };
    if replies > 0 {
        "open (echo reply received)".to_string()
    } else {
        format!("could not test (no reply, Windows error {error}; no documented error proves a WFP block on this path)")
    }
}
