//! The operations behind the commands: setup, uninstall, status and plan.
//!
//! Each reads the live table first and decides from it; the marker in the state dir says which
//! accounts and preset the last setup installed, so status and plan know what to expect, but it
//! never stands in for the live state.

use crate::accounts::{self, Account, AccountError, ResolveOptions};
use crate::marker::{self, Marker, MarkerError, SETUP_VERSION};
use crate::nft::diff::{diff, Difference};
use crate::nft::render::{render, Rendered};
use crate::nft::{self, BackendError, Nft};
use crate::policy::{Policy, Preset};
use nix::unistd::{Uid, User};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The backend's name in markers and reports.
pub const BACKEND: &str = "nftables";

/// Where and how to act.
#[derive(Clone, Debug)]
pub struct Context {
    /// The nft program.
    pub nft: Nft,
    /// The state dir.
    pub state_dir: PathBuf,
}

/// What a command was asked for.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// `--account` values, as typed.
    pub accounts: Vec<String>,
    /// `--preset`, when given.
    pub preset: Option<Preset>,
    /// `--create-account`.
    pub create_account: bool,
}

/// Any failure of an operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Must be root.
    #[error("{0} must run as root: it changes the firewall (and may create an account); run it with sudo")]
    NotRoot(&'static str),
    /// A refused or unknown account.
    #[error(transparent)]
    Account(#[from] AccountError),
    /// nftables.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The marker.
    #[error(transparent)]
    Marker(#[from] MarkerError),
    /// Nothing says which accounts to expect.
    #[error("cannot tell which accounts to expect: there is no setup marker in {0} and the default account {def} does not exist; pass --account", def = accounts::DEFAULT_ACCOUNT)]
    NoAccounts(String),
}

impl Error {
    /// Whether the user's input was at fault (exit code 2), rather than the system (1).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, Error::Account(_) | Error::NoAccounts(_))
    }
}

/// What the policy expects, resolved.
#[derive(Clone, Debug)]
pub struct Expectation {
    /// The accounts.
    pub accounts: Vec<Account>,
    /// The policy.
    pub policy: Policy,
    /// Its rendering.
    pub rendered: Rendered,
    /// Warnings from resolving.
    pub warnings: Vec<String>,
    /// Where the accounts came from: `--account`, `marker` or `default`.
    pub source: &'static str,
}

fn account_for_uid(uid: u32) -> Account {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(u)) => Account {
            name: Some(u.name),
            uid,
            gid: u.gid.as_raw(),
        },
        _ => Account {
            name: None,
            uid,
            gid: uid,
        },
    }
}

fn uids(accounts: &[Account]) -> BTreeSet<u32> {
    accounts.iter().map(|a| a.uid).collect()
}

/// Reads the marker, turning a corrupt one into a warning (it is then treated as absent).
fn read_marker(ctx: &Context, warnings: &mut Vec<String>) -> Result<Option<Marker>, Error> {
    match marker::read(&ctx.state_dir) {
        Ok(m) => Ok(m),
        Err(e @ MarkerError::Corrupt { .. }) => {
            warnings.push(e.to_string());
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Works out what read-only commands should expect: `--account` values, else the marker's
/// uids, else the default account when it exists.
pub fn expectation(ctx: &Context, req: &Request) -> Result<Expectation, Error> {
    let mut warnings = Vec::new();
    let marker = read_marker(ctx, &mut warnings)?;
    let preset = req
        .preset
        .or_else(|| marker.as_ref().and_then(|m| m.preset.parse().ok()))
        .unwrap_or_default();
    let (accounts, source) = if !req.accounts.is_empty() {
        let r = accounts::resolve(
            &req.accounts,
            &ResolveOptions {
                create_missing: false,
                read_only: true,
            },
        )?;
        warnings.extend(r.warnings);
        (r.accounts, "--account")
    } else if let Some(m) = marker.as_ref().filter(|m| !m.uids.is_empty()) {
        (
            m.uids.iter().map(|&u| account_for_uid(u)).collect(),
            "marker",
        )
    } else {
        match accounts::resolve(
            &[],
            &ResolveOptions {
                create_missing: false,
                read_only: true,
            },
        ) {
            Ok(r) => (r.accounts, "default"),
            Err(AccountError::Unknown(_)) => {
                // Last resort: whoever the live set names. Good enough to probe them and to
                // compare the rules; it cannot show uids that went missing from the set.
                let live_uids = nft::read_live(&ctx.nft)?
                    .and_then(|l| l.state.uid_set)
                    .map(|s| s.uids);
                match live_uids.filter(|u| !u.is_empty()) {
                    Some(uids) => (uids.into_iter().map(account_for_uid).collect(), "live set"),
                    None => return Err(Error::NoAccounts(ctx.state_dir.display().to_string())),
                }
            }
            Err(e) => return Err(e.into()),
        }
    };
    let policy = Policy::preset(preset);
    let rendered = render(&policy, &uids(&accounts));
    Ok(Expectation {
        accounts,
        policy,
        rendered,
        warnings,
        source,
    })
}

/// The state of the live table against the expectation.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sync {
    /// Live equals expected.
    InSync,
    /// Our table exists and differs.
    Drifted,
    /// Our table does not exist.
    NotInstalled,
}

/// What `status` and `plan` report.
#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    /// The verdict.
    pub state: Sync,
    /// The preset expected.
    pub preset: String,
    /// The accounts expected.
    pub accounts: Vec<Account>,
    /// Where they came from.
    pub accounts_from: String,
    /// How live differs from expected; empty when in sync.
    pub differences: Vec<Difference>,
    /// The same, as text lines.
    pub diff: Vec<String>,
    /// The marker, when there is one.
    pub marker: Option<Marker>,
    /// Notes for the user.
    pub warnings: Vec<String>,
}

/// Compares the live table with what is expected; changes nothing.
pub fn status(ctx: &Context, req: &Request) -> Result<StatusReport, Error> {
    let mut exp = match expectation(ctx, req) {
        Err(Error::NoAccounts(_)) if nft::read_live(&ctx.nft)?.is_none() => {
            // Nothing installed and nothing to expect: that is simply "not installed".
            let policy = Policy::preset(req.preset.unwrap_or_default());
            let rendered = render(&policy, &BTreeSet::new());
            Expectation {
                accounts: Vec::new(),
                policy,
                rendered,
                warnings: Vec::new(),
                source: "none",
            }
        }
        other => other?,
    };
    let live = nft::read_live(&ctx.nft)?;
    let differences = diff(&exp.rendered.table, live.as_ref().map(|l| &l.state));
    if let Some(live) = &live {
        let foreign = live.state.foreign_content();
        if !foreign.is_empty() {
            exp.warnings.push(format!(
                "table inet userwall holds objects userwall did not create: {}",
                foreign.join("; ")
            ));
        }
    }
    let marker = read_marker(ctx, &mut Vec::new())?;
    // A missing table after a recorded setup is drift (someone deleted it), not a fresh machine.
    let state = match (&live, differences.is_empty()) {
        (None, _) if marker.is_none() => Sync::NotInstalled,
        (None, _) => Sync::Drifted,
        (Some(_), true) => Sync::InSync,
        (Some(_), false) => Sync::Drifted,
    };
    Ok(StatusReport {
        state,
        preset: exp.policy.preset.name().into(),
        diff: differences.iter().map(ToString::to_string).collect(),
        differences,
        accounts: exp.accounts,
        accounts_from: exp.source.into(),
        marker,
        warnings: exp.warnings,
    })
}

/// One timed step of setup.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// Its name.
    pub step: &'static str,
    /// What happened.
    pub outcome: String,
    /// How long it took, in milliseconds.
    pub millis: f64,
}

/// What setup did.
#[derive(Clone, Debug, Serialize)]
pub struct SetupReport {
    /// Whether nftables was written.
    pub wrote_firewall: bool,
    /// Whether the marker was (re)written.
    pub wrote_marker: bool,
    /// How the live table differed before, empty when it was already in sync.
    pub changes: Vec<String>,
    /// The accounts.
    pub accounts: Vec<Account>,
    /// The preset.
    pub preset: String,
    /// Accounts this setup created.
    pub created_accounts: Vec<String>,
    /// Notes for the user.
    pub warnings: Vec<String>,
    /// The steps, timed.
    pub steps: Vec<Step>,
    /// The rendering, for the probe that follows.
    #[serde(skip)]
    pub rendered: Option<Rendered>,
    /// The policy.
    #[serde(skip)]
    pub policy: Option<Policy>,
}

fn timed<T>(
    steps: &mut Vec<Step>,
    step: &'static str,
    f: impl FnOnce() -> Result<(T, String), Error>,
) -> Result<T, Error> {
    let start = Instant::now();
    let result = f();
    let millis = duration_ms(start.elapsed());
    match result {
        Ok((value, outcome)) => {
            steps.push(Step {
                step,
                outcome,
                millis,
            });
            Ok(value)
        }
        Err(e) => {
            steps.push(Step {
                step,
                outcome: format!("failed: {e}"),
                millis,
            });
            Err(e)
        }
    }
}

fn duration_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Makes the live table match the policy for the requested accounts. Writes nothing to nftables
/// when it already matches; rewrites the marker only when its record changes.
pub fn setup(ctx: &Context, req: &Request) -> Result<SetupReport, Error> {
    if !crate::sys::is_root() {
        return Err(Error::NotRoot("setup"));
    }
    let mut steps = Vec::new();
    let mut warnings = Vec::new();
    // Everything that can fail without changing anything runs first, so a missing nft, a
    // foreign table or an unusable state dir stops setup before an account is created or a
    // rule is written.
    let live = timed(&mut steps, "check_platform", || {
        let live = nft::read_live(&ctx.nft)?;
        if let Some(foreign) = live.as_ref().map(|l| l.state.foreign_content()) {
            if !foreign.is_empty() {
                return Err(BackendError::ForeignTable(foreign).into());
            }
        }
        marker::check_writable(&ctx.state_dir)?;
        let found = if live.is_some() {
            "our table present"
        } else {
            "our table absent"
        };
        Ok((live, format!("nft answers, {found}, state dir writable")))
    })?;
    let resolved = timed(&mut steps, "resolve_accounts", || {
        let r = accounts::resolve(
            &req.accounts,
            &ResolveOptions {
                create_missing: req.create_account,
                read_only: false,
            },
        )?;
        let labels: Vec<String> = r.accounts.iter().map(Account::label).collect();
        Ok((r, labels.join(", ")))
    })?;
    warnings.extend(resolved.warnings.clone());
    let marker_before = read_marker(ctx, &mut warnings)?;
    let preset = req.preset.unwrap_or_default();
    let policy = Policy::preset(preset);
    let rendered = render(&policy, &uids(&resolved.accounts));
    let differences = diff(&rendered.table, live.as_ref().map(|l| &l.state));
    let wrote_firewall = !differences.is_empty();
    if wrote_firewall {
        timed(&mut steps, "apply", || {
            nft::replace(&ctx.nft, &rendered.table, live.as_ref())?;
            Ok((
                (),
                format!(
                    "replaced table inet userwall ({} rules) and read it back in sync",
                    rendered.table.rules.len()
                ),
            ))
        })?;
    } else {
        steps.push(Step {
            step: "apply",
            outcome: "skipped: live table already matches".into(),
            millis: 0.0,
        });
    }
    let marker = Marker {
        setup_version: SETUP_VERSION,
        backend: BACKEND.into(),
        preset: preset.name().into(),
        uids: uids(&resolved.accounts).into_iter().collect(),
        policy_fingerprint: policy.fingerprint(),
        written_at: marker::now_rfc3339(),
    };
    let wrote_marker = !marker_before
        .as_ref()
        .is_some_and(|m| m.same_install(&marker));
    if wrote_marker {
        timed(&mut steps, "write_marker", || {
            marker::write(&ctx.state_dir, &marker)?;
            Ok((
                (),
                marker::marker_path(&ctx.state_dir).display().to_string(),
            ))
        })?;
    }
    Ok(SetupReport {
        wrote_firewall,
        wrote_marker,
        changes: differences.iter().map(ToString::to_string).collect(),
        accounts: resolved.accounts,
        preset: preset.name().into(),
        created_accounts: resolved.created,
        warnings,
        steps,
        rendered: Some(rendered),
        policy: Some(policy),
    })
}

/// What uninstall did.
#[derive(Clone, Debug, Serialize)]
pub struct UninstallReport {
    /// Whether our table was there and is now gone.
    pub removed_table: bool,
    /// Whether a marker was removed.
    pub removed_marker: bool,
}

/// Removes our table and the marker, then checks nothing of ours is left. Accounts stay.
pub fn uninstall(ctx: &Context) -> Result<UninstallReport, Error> {
    if !crate::sys::is_root() {
        return Err(Error::NotRoot("uninstall"));
    }
    let removed_table = nft::remove(&ctx.nft)?;
    let removed_marker = marker::remove(&ctx.state_dir)?;
    Ok(UninstallReport {
        removed_table,
        removed_marker,
    })
}

/// What `plan` reports.
#[derive(Clone, Debug, Serialize)]
pub struct PlanReport {
    /// Accounts setup would create.
    pub would_create_accounts: Vec<String>,
    /// The table comparison, for the accounts that exist.
    pub status: Option<StatusReport>,
    /// Every change, as text lines: accounts first, then the table.
    pub changes: Vec<String>,
}

/// What setup would change with the same arguments, changing nothing. Like setup, and unlike
/// status, it does not fall back to the marker: no `--account` means the default account and
/// no `--preset` means the default preset.
pub fn plan(ctx: &Context, req: &Request) -> Result<PlanReport, Error> {
    let defaulted = req.accounts.is_empty();
    let candidates: Vec<String> = if defaulted {
        vec![accounts::DEFAULT_ACCOUNT.to_string()]
    } else {
        req.accounts.clone()
    };
    let mut would_create = Vec::new();
    let mut existing = Vec::new();
    for value in &candidates {
        let one = std::slice::from_ref(value);
        match accounts::resolve(
            one,
            &ResolveOptions {
                create_missing: false,
                read_only: true,
            },
        ) {
            Ok(_) => existing.push(value.clone()),
            Err(AccountError::Unknown(name)) if defaulted || req.create_account => {
                would_create.push(name)
            }
            Err(e) => return Err(e.into()),
        }
    }
    let mut changes: Vec<String> = would_create
        .iter()
        .map(|n| format!("+ account {n} (locked system account, created by setup)"))
        .collect();
    let preset = Some(req.preset.unwrap_or_default());
    let status = if existing.is_empty() {
        let live = nft::read_live(&ctx.nft)?;
        changes.push(if live.is_some() {
            "~ table inet userwall (replaced for the new account's uid)".to_string()
        } else {
            "+ table inet userwall".to_string()
        });
        None
    } else {
        let s = status(
            ctx,
            &Request {
                accounts: existing,
                preset,
                create_account: false,
            },
        )?;
        changes.extend(s.diff.iter().cloned());
        if !would_create.is_empty() {
            changes.push("+ sandbox uids of the accounts created above".into());
        }
        Some(s)
    };
    Ok(PlanReport {
        would_create_accounts: would_create,
        status,
        changes,
    })
}
