//! The operations behind the commands: setup, uninstall, status and plan.
//!
//! Each reads the live table first and decides from it; the marker in the state dir says which
//! accounts and preset the last setup installed, so status and plan know what to expect, but it
//! never stands in for the live state.

use crate::accounts::{self, Account, AccountError, ResolveOptions};
use crate::boot;
use crate::errors::ErrorCode;
use crate::journal;
use crate::lock::{self, LockError};
use crate::marker::{self, Marker, MarkerError, SETUP_VERSION};
pub use crate::metrics::MetricsSettings;
use crate::nft::diff::{diff, Difference};
use crate::nft::render::{render, Rendered};
use crate::nft::{self, BackendError, Nft};
use crate::policy::{Policy, Preset};
use nix::unistd::{Uid, User};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
    #[error("{0} must run as root: it changes the firewall; run it with sudo")]
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
    /// The marker could not be written after the filters were applied.
    #[error("the table is installed and verified, but the marker was not written ({0}); fix that and run setup again to record the install")]
    MarkerNotWritten(MarkerError),
    /// The state-dir lock.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The boot unit.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// A panic inside setup, turned into an error.
    #[error("internal error (a bug in userwall, please report it): {0}")]
    Internal(String),
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

/// Reads the marker when it can be trusted here; otherwise notes why it was ignored.
fn read_marker(ctx: &Context, warnings: &mut Vec<String>) -> Result<Option<Marker>, Error> {
    let (marker, ignored) = marker::read_trusted(&ctx.state_dir)?;
    warnings.extend(ignored);
    Ok(marker)
}

/// The uids that should be sandboxed here: the trusted marker's and the live set's.
pub fn sandboxed_uids(ctx: &Context) -> Result<BTreeSet<u32>, Error> {
    let mut uids: BTreeSet<u32> = read_marker(ctx, &mut Vec::new())?
        .map(|m| m.uids.into_iter().collect())
        .unwrap_or_default();
    if let Some(set) = nft::read_live(&ctx.nft)?.and_then(|l| l.state.uid_set) {
        uids.extend(set.uids);
    }
    Ok(uids)
}

const LOOK_ONLY: ResolveOptions = ResolveOptions {
    create_missing: false,
    read_only: true,
    allow_any: true,
};

/// Works out what read-only commands should expect: `--account` values, else the marker's
/// uids, else the uids in the live set, else the default account when it exists.
pub fn expectation(ctx: &Context, req: &Request) -> Result<Expectation, Error> {
    let mut warnings = Vec::new();
    let marker = read_marker(ctx, &mut warnings)?;
    let preset = req
        .preset
        .or_else(|| marker.as_ref().and_then(|m| m.preset.parse().ok()))
        .unwrap_or_default();
    let (accounts, source) = if !req.accounts.is_empty() {
        let r = accounts::resolve(&req.accounts, &LOOK_ONLY)?;
        (r.accounts, "--account")
    } else if let Some(m) = marker.as_ref().filter(|m| !m.uids.is_empty()) {
        (
            m.uids.iter().map(|&u| account_for_uid(u)).collect(),
            "marker",
        )
    } else if let Some(uids) = nft::read_live(&ctx.nft)?
        .and_then(|l| l.state.uid_set)
        .map(|s| s.uids)
        .filter(|u| !u.is_empty())
    {
        // No trusted record: whoever the live set names is who is sandboxed now. It cannot
        // show uids that went missing from the set, and says so.
        warnings.push("no trusted setup marker: expecting the uids in the live set, which cannot show uids removed from it".into());
        (uids.into_iter().map(account_for_uid).collect(), "live set")
    } else {
        match accounts::resolve(&[], &LOOK_ONLY) {
            Ok(r) => (r.accounts, "default"),
            Err(AccountError::Unknown(_)) => {
                return Err(Error::NoAccounts(ctx.state_dir.display().to_string()))
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
pub enum SyncState {
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
    pub state: SyncState,
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
    let exp = match expectation(ctx, req) {
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
    if let Some(foreign) = live.as_ref().map(|l| l.state.foreign_content()) {
        // Setup and uninstall refuse such a table, so "drifted, run setup" would be a lie.
        if !foreign.is_empty() {
            return Err(BackendError::ForeignTable(foreign).into());
        }
    }
    let differences = diff(&exp.rendered.table, live.as_ref().map(|l| &l.state));
    let marker = read_marker(ctx, &mut Vec::new())?;
    // The boot unit the last setup recorded must still re-apply this table at the next boot.
    let mut diff_lines: Vec<String> = differences.iter().map(ToString::to_string).collect();
    let boot_problem = marker.as_ref().and_then(Marker::unit_dir).and_then(|dir| {
        let unit = boot::BootUnit::system(&dir, &ctx.state_dir);
        (!unit.is_current(&exp.rendered.table.replace_batch_text())).then(|| {
            format!("~ boot unit {} or its batch is missing or differs: a reboot would not restore this table", unit.unit_path().display())
        })
    });
    diff_lines.extend(boot_problem.clone());
    // A missing table after a recorded setup is drift (someone deleted it), not a fresh machine.
    let state = match (&live, differences.is_empty() && boot_problem.is_none()) {
        (None, _) if marker.is_none() => SyncState::NotInstalled,
        (None, _) => SyncState::Drifted,
        (Some(_), true) => SyncState::InSync,
        (Some(_), false) => SyncState::Drifted,
    };
    Ok(StatusReport {
        state,
        preset: exp.policy.preset.name().into(),
        diff: diff_lines,
        differences,
        accounts: exp.accounts,
        accounts_from: exp.source.into(),
        marker,
        warnings: exp.warnings,
    })
}

/// How setup treats a failed filter step (apply, verify, persist for boot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Any failed step fails setup. The CLI's default.
    #[default]
    Strict,
    /// A failed filter step is logged and setup carries on, for an installer whose filters are
    /// one layer among several. Account, platform and marker failures still fail.
    BestEffort,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "strict" => Ok(Mode::Strict),
            "best-effort" => Ok(Mode::BestEffort),
            _ => Err(format!("unknown mode {s:?}; choose strict or best-effort")),
        }
    }
}

impl Mode {
    /// The name used on the command line and in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Strict => "strict",
            Mode::BestEffort => "best-effort",
        }
    }
}

/// The steps of setup, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepName {
    /// Root, the lock, nft, our table's ownership, the state dir.
    CheckPlatform,
    /// `--account` values to uids; creates accounts when asked.
    ResolveAccounts,
    /// One nft transaction that replaces our table.
    Apply,
    /// Read the table back and compare.
    Verify,
    /// The boot unit and the batch it re-applies.
    PersistForBoot,
    /// The marker, last: the commit point.
    WriteMarker,
}

impl StepName {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            StepName::CheckPlatform => "check_platform",
            StepName::ResolveAccounts => "resolve_accounts",
            StepName::Apply => "apply",
            StepName::Verify => "verify",
            StepName::PersistForBoot => "persist_for_boot",
            StepName::WriteMarker => "write_marker",
        }
    }

    fn is_filter_step(self) -> bool {
        matches!(
            self,
            StepName::Apply | StepName::Verify | StepName::PersistForBoot
        )
    }
}

/// How a step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    /// Done.
    Ok,
    /// Not needed.
    Skipped,
    /// Failed; see the error code.
    Failed,
}

/// One step of setup.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    /// Which step.
    pub step: StepName,
    /// How it ended.
    pub outcome: StepOutcome,
    /// When it ended, RFC 3339.
    pub at: String,
    /// How long it took, in milliseconds.
    pub millis: f64,
    /// Set when it failed.
    pub error_code: Option<ErrorCode>,
    /// What happened, or what went wrong and what to do.
    pub message: String,
}

impl StepReport {
    /// The step as one log line.
    pub fn log_line(&self) -> String {
        let mut details = vec![("millis".to_string(), format!("{:.1}", self.millis))];
        if let Some(code) = self.error_code {
            details.push(("error_code".into(), code.as_str().into()));
        }
        details.push(("message".into(), self.message.clone()));
        let outcome = match self.outcome {
            StepOutcome::Ok => "ok",
            StepOutcome::Skipped => "skipped",
            StepOutcome::Failed => "failed",
        };
        journal::format_line(&self.at, self.step.as_str(), outcome, &details)
    }
}

/// What setup does about boot persistence.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Boot {
    /// Neither installs nor removes a unit.
    #[default]
    Leave,
    /// Installs (or refreshes) the unit in this directory.
    Install(PathBuf),
    /// Removes a unit an earlier setup left in this directory (`--no-boot-unit`), so no stale
    /// batch is re-applied at the next boot.
    Remove(PathBuf),
}

/// A callback that sees every step as it ends.
pub type LogSink = Arc<dyn Fn(&StepReport) + Send + Sync>;

/// Everything a host app passes to [`run_setup`].
#[derive(Clone, Default)]
pub struct SetupRequest {
    /// Accounts, preset, create-account.
    pub request: Request,
    /// Strict or best-effort.
    pub mode: Mode,
    /// What to do about the boot unit.
    pub boot: Boot,
    /// How long to wait for another setup or uninstall to finish.
    pub lock_wait: Duration,
    /// Called for every step as it ends.
    pub log: Option<LogSink>,
    /// Whether and where to send metrics.
    pub metrics: MetricsSettings,
}

impl std::fmt::Debug for SetupRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetupRequest")
            .field("request", &self.request)
            .field("mode", &self.mode)
            .field("boot", &self.boot)
            .field("lock_wait", &self.lock_wait)
            .field("log", &self.log.as_ref().map(|_| "<sink>"))
            .field("metrics", &self.metrics)
            .finish()
    }
}

/// Whether setup wrote, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Marker and live table agree with the request: nothing written.
    UpToDate,
    /// Setup re-applied the table.
    Applied,
    /// Setup stopped before deciding.
    Undecided,
}

/// The first failure.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    /// Where.
    pub step: StepName,
    /// The stable code.
    pub error_code: ErrorCode,
    /// What went wrong and what to do.
    pub message: String,
}

/// What setup did.
#[derive(Clone, Debug, Serialize)]
pub struct SetupReport {
    /// No step failed.
    pub success: bool,
    /// The mode it ran in.
    pub mode: Mode,
    /// Whether it wrote.
    pub decision: Decision,
    /// Why it wrote (empty when up to date).
    pub reasons: Vec<String>,
    /// Whether nftables was written.
    pub wrote_firewall: bool,
    /// Whether the boot unit or its batch was (re)written.
    pub wrote_boot_unit: bool,
    /// Whether the marker was written.
    pub wrote_marker: bool,
    /// How the live table differed before.
    pub changes: Vec<String>,
    /// The accounts.
    pub accounts: Vec<Account>,
    /// The preset.
    pub preset: String,
    /// Rules in our table (dispatch rule included).
    pub rule_count: usize,
    /// Accounts this setup created.
    pub created_accounts: Vec<String>,
    /// Notes for the user.
    pub warnings: Vec<String>,
    /// Every step that ran.
    pub steps: Vec<StepReport>,
    /// The first failure.
    pub failure: Option<Failure>,
    /// What happened to the metrics: `off`, `sent`, or `failed: ...`.
    pub metrics: String,
    /// The rendering, for the probe that follows.
    #[serde(skip)]
    pub rendered: Option<Rendered>,
    /// The policy.
    #[serde(skip)]
    pub policy: Option<Policy>,
}

impl SetupReport {
    /// Whether the caller should treat setup as failed: in strict mode any failure, in
    /// best-effort mode only a failure outside the filter steps.
    pub fn failed_for_mode(&self) -> bool {
        match self.mode {
            Mode::Strict => !self.success,
            Mode::BestEffort => self
                .steps
                .iter()
                .any(|s| s.outcome == StepOutcome::Failed && !s.step.is_filter_step()),
        }
    }

    /// Milliseconds across all steps.
    pub fn total_millis(&self) -> f64 {
        self.steps.iter().map(|s| s.millis).sum()
    }
}

/// The stable code of an error.
pub fn error_code(e: &Error) -> ErrorCode {
    use crate::nft::NftError;
    match e {
        Error::NotRoot(_) => ErrorCode::NotRoot,
        Error::Account(a) => match a {
            AccountError::Root(_) | AccountError::InvokingUser { .. } => ErrorCode::AccountRefused,
            AccountError::Unknown(_) => ErrorCode::AccountUnknown,
            AccountError::Invalid { .. } => ErrorCode::AccountInvalid,
            AccountError::Lookup { .. } => ErrorCode::AccountLookupFailed,
            AccountError::Create { .. } => ErrorCode::AccountCreateFailed,
        },
        Error::Backend(b) => match b {
            BackendError::Nft(NftError::NotFound { .. }) => ErrorCode::NftMissing,
            BackendError::Nft(NftError::BadOutput { .. }) | BackendError::Listing(_) => {
                ErrorCode::NftOutputUnreadable
            }
            BackendError::Nft(_) => ErrorCode::NftFailed,
            BackendError::ForeignTable(_) => ErrorCode::ForeignTable,
            BackendError::NotSettled { .. } => ErrorCode::VerifyFailed,
        },
        Error::Marker(_) | Error::MarkerNotWritten(_) => ErrorCode::StateDirUnusable,
        Error::NoAccounts(_) => ErrorCode::NoAccounts,
        Error::Lock(LockError::Timeout { .. }) => ErrorCode::LockTimeout,
        Error::Lock(LockError::Io { .. }) => ErrorCode::StateDirUnusable,
        Error::Boot(_) => ErrorCode::PersistFailed,
        Error::Internal(_) => ErrorCode::Internal,
    }
}

struct Runner<'a> {
    req: &'a SetupRequest,
    steps: Vec<StepReport>,
    current: Option<StepName>,
    stop: bool,
}

impl Runner<'_> {
    fn record(
        &mut self,
        step: StepName,
        outcome: StepOutcome,
        millis: f64,
        error: Option<&Error>,
        message: String,
    ) {
        let report = StepReport {
            step,
            outcome,
            at: marker::now_rfc3339(),
            millis,
            error_code: error.map(error_code),
            message,
        };
        if let Some(log) = &self.req.log {
            log(&report);
        }
        self.steps.push(report);
    }

    /// Runs a step unless an earlier failure stopped setup. Returns `None` when it failed or
    /// did not run.
    fn step<T>(
        &mut self,
        step: StepName,
        f: impl FnOnce() -> Result<(T, String), Error>,
    ) -> Option<T> {
        if self.stop {
            return None;
        }
        self.current = Some(step);
        let start = Instant::now();
        let result = f();
        let millis = duration_ms(start.elapsed());
        // `current` stays set while the sink runs, so a panic there is charged to this step.
        let value = match result {
            Ok((value, message)) => {
                self.record(step, StepOutcome::Ok, millis, None, message);
                Some(value)
            }
            Err(e) => {
                self.record(step, StepOutcome::Failed, millis, Some(&e), e.to_string());
                if self.req.mode == Mode::Strict || !step.is_filter_step() {
                    self.stop = true;
                }
                None
            }
        };
        self.current = None;
        value
    }

    fn skip(&mut self, step: StepName, why: &str) {
        if !self.stop {
            self.record(step, StepOutcome::Skipped, 0.0, None, why.into());
        }
    }
}

fn duration_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs setup as a host app's installer would: never panics, always returns a report with
/// every step's outcome and duration, appends the steps to the state dir's log, writes or clears
/// the error report, and emits metrics when asked.
///
/// ```no_run
/// use std::time::Duration;
/// use userwall::setup::{self, Context, Mode, Request, SetupRequest};
///
/// let ctx = Context { nft: userwall::nft::Nft::from_env(), state_dir: "/var/lib/userwall".into() };
/// let request = SetupRequest {
///     request: Request { accounts: vec!["ci-sandbox".into()], ..Default::default() },
///     mode: Mode::BestEffort,
///     boot: setup::Boot::Install("/etc/systemd/system".into()),
///     lock_wait: Duration::from_secs(30),
///     log: Some(std::sync::Arc::new(|step: &setup::StepReport| eprintln!("{}", step.log_line()))),
///     metrics: setup::MetricsSettings { enabled: true, endpoint: None },
/// };
/// let report = setup::run_setup(&ctx, &request);
/// if report.failed_for_mode() {
///     let failure = report.failure.expect("a failed report names its failure");
///     eprintln!("{} failed: {} ({})", failure.step.as_str(), failure.message, failure.error_code);
/// }
/// ```
pub fn run_setup(ctx: &Context, req: &SetupRequest) -> SetupReport {
    let mut report = SetupReport {
        success: false,
        mode: req.mode,
        decision: Decision::Undecided,
        reasons: Vec::new(),
        wrote_firewall: false,
        wrote_boot_unit: false,
        wrote_marker: false,
        changes: Vec::new(),
        accounts: Vec::new(),
        preset: req.request.preset.unwrap_or_default().name().into(),
        rule_count: 0,
        created_accounts: Vec::new(),
        warnings: Vec::new(),
        steps: Vec::new(),
        failure: None,
        metrics: "off".into(),
        rendered: None,
        policy: None,
    };
    let mut runner = Runner {
        req,
        steps: Vec::new(),
        current: None,
        stop: false,
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_steps(ctx, req, &mut runner, &mut report)
    }));
    if let Err(panic) = outcome {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        let step = runner.current.unwrap_or(StepName::WriteMarker);
        let e = Error::Internal(what);
        // The sink may be what panicked; record the step without calling it again.
        runner.steps.push(StepReport {
            step,
            outcome: StepOutcome::Failed,
            at: marker::now_rfc3339(),
            millis: 0.0,
            error_code: Some(ErrorCode::Internal),
            message: e.to_string(),
        });
    }
    report.steps = runner.steps;
    report.failure = report
        .steps
        .iter()
        .find(|s| s.outcome == StepOutcome::Failed)
        .map(|s| Failure {
            step: s.step,
            error_code: s.error_code.unwrap_or(ErrorCode::Internal),
            message: s.message.clone(),
        });
    report.success = report.failure.is_none();
    finish(ctx, req, &mut report);
    report
}

/// Log, error report, metrics: after the steps, and never able to change the outcome.
fn finish(ctx: &Context, req: &SetupRequest, report: &mut SetupReport) {
    // Without root, the lock or a usable state dir, the state dir's files are not ours to write
    // (another setup may hold them); the report carries the failure instead.
    let journal_allowed = !report.failure.as_ref().is_some_and(|f| {
        f.step == StepName::CheckPlatform
            && matches!(
                f.error_code,
                ErrorCode::NotRoot | ErrorCode::LockTimeout | ErrorCode::StateDirUnusable
            )
    });
    if journal_allowed && ctx.state_dir.is_dir() {
        let lines: Vec<String> = report.steps.iter().map(StepReport::log_line).collect();
        if let Err(e) = journal::append(&ctx.state_dir, &lines) {
            report.warnings.push(format!(
                "could not append to {}: {e}",
                ctx.state_dir.join(journal::LOG_FILE).display()
            ));
        }
        let result = match &report.failure {
            None => journal::clear_error_report(&ctx.state_dir),
            Some(f) => journal::write_error_report(
                &ctx.state_dir,
                &journal::error_report(
                    marker::now_rfc3339(),
                    f.step.as_str(),
                    f.error_code,
                    &f.message,
                ),
            ),
        };
        if let Err(e) = result {
            report.warnings.push(format!(
                "could not update {}: {e}",
                ctx.state_dir.join(journal::ERROR_REPORT_FILE).display()
            ));
        }
    }
    report.metrics = crate::metrics::emit(&req.metrics, report);
    if report.metrics.starts_with("failed") {
        report.warnings.push(format!("metrics {}", report.metrics));
    }
}

fn run_steps(ctx: &Context, req: &SetupRequest, runner: &mut Runner<'_>, report: &mut SetupReport) {
    // Everything that can fail without changing anything runs first, so a missing nft, a
    // foreign table or an unusable state dir stops setup before an account is created or a
    // rule is written.
    let Some((_lock, live, nft_path)) = runner.step(StepName::CheckPlatform, || {
        if !crate::sys::is_root() {
            return Err(Error::NotRoot("setup"));
        }
        marker::check_writable(&ctx.state_dir)?;
        if let Boot::Install(dir) = &req.boot {
            boot::check_paths(&ctx.state_dir, dir)?;
            if let Some(why) = crate::files::unsafe_dir_reason(dir).filter(|_| dir.exists()) {
                return Err(Error::Boot(boot::BootError {
                    action: "refusing the unit dir",
                    path: dir.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        format!("it {why}"),
                    ),
                }));
            }
        }
        let lock = lock::acquire(&ctx.state_dir, req.lock_wait)?;
        let live = nft::read_live(&ctx.nft)?;
        if let Some(foreign) = live.as_ref().map(|l| l.state.foreign_content()) {
            if !foreign.is_empty() {
                return Err(BackendError::ForeignTable(foreign).into());
            }
        }
        // The unit runs the system's nft, never a USERWALL_NFT stand-in.
        let nft_path = boot::absolute_nft(Path::new("nft"));
        let found = if live.is_some() { "present" } else { "absent" };
        Ok((
            (lock, live, nft_path),
            format!(
                "root, lock held, nft answers, table inet userwall {found}, state dir writable"
            ),
        ))
    }) else {
        return;
    };
    let Some(resolved) = runner.step(StepName::ResolveAccounts, || {
        let r = accounts::resolve(
            &req.request.accounts,
            &ResolveOptions {
                create_missing: req.request.create_account,
                read_only: false,
                allow_any: false,
            },
        )?;
        let labels: Vec<String> = r.accounts.iter().map(Account::label).collect();
        Ok((r, labels.join(", ")))
    }) else {
        return;
    };
    report.warnings.extend(resolved.warnings.clone());
    report.accounts = resolved.accounts.clone();
    report.created_accounts = resolved.created.clone();

    let (marker_before, ignored) = match marker::read_trusted(&ctx.state_dir) {
        Ok(pair) => pair,
        Err(e) => (None, Some(e.to_string())),
    };
    report.warnings.extend(ignored);
    let mut previously: BTreeSet<u32> = live
        .as_ref()
        .and_then(|l| l.state.uid_set.as_ref())
        .map(|s| s.uids.clone())
        .unwrap_or_default();
    previously.extend(marker_before.iter().flat_map(|m| m.uids.iter().copied()));
    for uid in previously.difference(&uids(&resolved.accounts)) {
        report.warnings.push(format!("uid {uid} was sandboxed and no longer is: this setup does not name it (pass every account with --account)"));
    }
    let preset = req.request.preset.unwrap_or_default();
    let policy = Policy::preset(preset);
    let rendered = render(&policy, &uids(&resolved.accounts));
    let differences = diff(&rendered.table, live.as_ref().map(|l| &l.state));
    report.changes = differences.iter().map(ToString::to_string).collect();
    report.rule_count = rendered.table.rules.len();
    let uid_list: Vec<u32> = uids(&resolved.accounts).into_iter().collect();
    report.reasons = match &marker_before {
        None => vec!["no trusted setup marker".to_string()],
        Some(m) if m.setup_version < SETUP_VERSION => {
            vec![format!(
                "setup version {} -> {SETUP_VERSION}",
                m.setup_version
            )]
        }
        Some(m) if m.uids != uid_list => vec!["the accounts changed".to_string()],
        Some(m) if m.policy_fingerprint != policy.fingerprint() || m.preset != preset.name() => {
            vec!["the policy changed".to_string()]
        }
        Some(_) => Vec::new(),
    };
    if !differences.is_empty() {
        report.reasons.push(format!(
            "the live table differs ({} difference(s))",
            differences.len()
        ));
    }
    let batch = rendered.table.replace_batch_text();
    let unit_at = |dir: &PathBuf| boot::BootUnit::system(dir, &ctx.state_dir);
    let boot_current = match &req.boot {
        Boot::Leave => true,
        Boot::Install(dir) => unit_at(dir).is_current(&batch),
        Boot::Remove(dir) => !unit_at(dir).is_present(),
    };
    report.rendered = Some(rendered.clone());
    report.policy = Some(policy.clone());

    let firewall_current = report.reasons.is_empty();
    if !boot_current {
        report.reasons.push(match req.boot {
            Boot::Remove(_) => "a boot unit of an earlier setup is still installed".into(),
            _ => "the boot unit or its batch is missing or out of date".into(),
        });
    }
    if firewall_current && boot_current {
        report.decision = Decision::UpToDate;
        for step in [
            StepName::Apply,
            StepName::Verify,
            StepName::PersistForBoot,
            StepName::WriteMarker,
        ] {
            runner.skip(step, "up to date: marker and live table match the request");
        }
        return;
    }
    report.decision = Decision::Applied;
    let mut filters_ok = true;
    if firewall_current {
        runner.skip(StepName::Apply, "live table already matches");
        runner.skip(StepName::Verify, "nothing written");
    } else {
        let applied = runner.step(StepName::Apply, || {
            nft::apply(&ctx.nft, &rendered.table, live.as_ref())?;
            Ok((
                (),
                format!(
                    "replaced table inet userwall: {} rules for uids {uid_list:?}",
                    rendered.table.rules.len()
                ),
            ))
        });
        report.wrote_firewall = applied.is_some();
        if applied.is_some() {
            filters_ok &= runner
                .step(StepName::Verify, || {
                    nft::verify(&ctx.nft, &rendered.table)?;
                    Ok(((), "read back in sync".to_string()))
                })
                .is_some();
        } else {
            filters_ok = false;
            runner.skip(StepName::Verify, "not run: apply failed");
        }
    }
    let mut boot_installed = None;
    match &req.boot {
        Boot::Leave => runner.skip(StepName::PersistForBoot, "no boot unit requested"),
        // A batch for boot must never run ahead of the live table: with the filters not in
        // place (best-effort mode), the unit keeps what it had.
        Boot::Install(_) if !filters_ok => runner.skip(
            StepName::PersistForBoot,
            "not run: the filters are not in place",
        ),
        Boot::Install(dir) => {
            let unit = unit_at(dir);
            let wrote = runner.step(StepName::PersistForBoot, || {
                if nft_path.is_none() {
                    return Err(Error::Boot(boot::BootError {
                        action: "finding nft for",
                        path: unit.unit_path(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            "no nft in PATH, /usr/sbin or /sbin",
                        ),
                    }));
                }
                let changed = unit.install(&batch)?;
                let what = if changed { "wrote" } else { "already current:" };
                Ok((
                    changed,
                    format!(
                        "{what} {} and {}",
                        unit.unit_path().display(),
                        unit.table_path().display()
                    ),
                ))
            });
            report.wrote_boot_unit = wrote.unwrap_or(false);
            if wrote.is_some() {
                boot_installed = Some(unit);
            }
        }
        Boot::Remove(dir) => {
            let unit = unit_at(dir);
            let removed = runner.step(StepName::PersistForBoot, || {
                let removed = unit.remove()?;
                let what = if removed {
                    "removed the boot unit an earlier setup left in"
                } else {
                    "no boot unit in"
                };
                Ok((
                    removed,
                    format!("{what} {} (--no-boot-unit)", dir.display()),
                ))
            });
            report.wrote_boot_unit = removed.unwrap_or(false);
        }
    }
    if !filters_ok {
        // The marker is the commit point: it must never claim filters that are not in place.
        runner.skip(
            StepName::WriteMarker,
            "not written: the filters are not in place",
        );
        return;
    }
    let mut objects = vec![format!(
        "nft table {} {}",
        crate::ids::NFT_FAMILY,
        crate::ids::NFT_TABLE
    )];
    if let Some(unit) = &boot_installed {
        for path in [unit.unit_path(), unit.wants_link(), unit.table_path()] {
            objects.push(format!("file {}", path.display()));
        }
    }
    let mut created = marker_before
        .as_ref()
        .map(|m| m.created_accounts.clone())
        .unwrap_or_default();
    created.extend(resolved.created.iter().cloned());
    created.sort();
    created.dedup();
    let marker = Marker {
        setup_version: SETUP_VERSION,
        backend: BACKEND.into(),
        preset: preset.name().into(),
        uids: uid_list.clone(),
        policy_fingerprint: policy.fingerprint(),
        objects,
        created_accounts: created,
        netns: marker::current_netns(),
        written_at: marker::now_rfc3339(),
    };
    report.wrote_marker = runner
        .step(StepName::WriteMarker, || {
            marker::write(&ctx.state_dir, &marker).map_err(Error::MarkerNotWritten)?;
            Ok((
                (),
                marker::marker_path(&ctx.state_dir).display().to_string(),
            ))
        })
        .is_some();
}

/// What uninstall did.
#[derive(Clone, Debug, Serialize)]
pub struct UninstallReport {
    /// Whether our table was there and is now gone.
    pub removed_table: bool,
    /// Whether the boot unit was there and is now gone.
    pub removed_boot_unit: bool,
    /// Whether a marker was removed.
    pub removed_marker: bool,
}

/// Removes the boot unit, our table and the marker, then checks nothing of ours is left.
/// Accounts stay. `unit_dir` is where setup put the unit.
pub fn uninstall(
    ctx: &Context,
    unit_dir: Option<&Path>,
    lock_wait: Duration,
) -> Result<UninstallReport, Error> {
    if !crate::sys::is_root() {
        return Err(Error::NotRoot("uninstall"));
    }
    let _lock = lock::acquire(&ctx.state_dir, lock_wait)?;
    // Refuse before touching anything: a table we would not delete must not lose its unit.
    if let Some(live) = nft::read_live(&ctx.nft)? {
        let foreign = live.state.foreign_content();
        if !foreign.is_empty() {
            return Err(BackendError::ForeignTable(foreign).into());
        }
    }
    // A marker of another namespace's setup (same state dir) means the unit and its batch are
    // that setup's, not ours.
    let ours = marker::belongs_here(&ctx.state_dir);
    // The unit goes first: were the table removed first and the unit left, a reboot in between
    // would bring the table back.
    let mut unit_dirs: Vec<PathBuf> = unit_dir.map(Path::to_path_buf).into_iter().collect();
    if let Ok((Some(m), _)) = marker::read_trusted(&ctx.state_dir) {
        unit_dirs.extend(m.unit_dir());
    }
    unit_dirs.dedup();
    let mut removed_boot_unit = false;
    for dir in unit_dirs.into_iter().filter(|_| ours) {
        removed_boot_unit |= boot::BootUnit::system(&dir, &ctx.state_dir).remove()?;
    }
    let removed_table = nft::remove(&ctx.nft)?;
    // A marker of another namespace's setup (same state dir) is that setup's record, not ours.
    let removed_marker = ours && marker::remove(&ctx.state_dir)?;
    let _ = journal::clear_error_report(&ctx.state_dir);
    Ok(UninstallReport {
        removed_table,
        removed_boot_unit,
        removed_marker,
    })
}

/// What `plan` reports.
#[derive(Clone, Debug, Serialize)]
pub struct PlanReport {
    /// Accounts setup would create.
    pub would_create_accounts: Vec<String>,
    /// The accounts that exist already.
    pub accounts: Vec<Account>,
    /// The preset.
    pub preset: String,
    /// How the live table differs from the rendering for the existing accounts.
    pub differences: Vec<Difference>,
    /// Every change, as text lines: accounts first, then the table.
    pub changes: Vec<String>,
}

/// What setup would change with the same arguments, changing nothing. Like setup, and unlike
/// status, it does not fall back to the marker: no `--account` means the default account and
/// no `--preset` means the default preset. It refuses what setup would refuse.
pub fn plan(ctx: &Context, req: &Request, boot_unit: &Boot) -> Result<PlanReport, Error> {
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
        let opts = ResolveOptions {
            create_missing: false,
            read_only: true,
            allow_any: false,
        };
        match accounts::resolve(one, &opts) {
            Ok(r) => existing.extend(r.accounts),
            Err(AccountError::Unknown(name)) if defaulted || req.create_account => {
                would_create.push(name)
            }
            Err(e) => return Err(e.into()),
        }
    }
    let live = nft::read_live(&ctx.nft)?;
    if let Some(foreign) = live.as_ref().map(|l| l.state.foreign_content()) {
        if !foreign.is_empty() {
            return Err(BackendError::ForeignTable(foreign).into());
        }
    }
    let policy = Policy::preset(req.preset.unwrap_or_default());
    let rendered = render(&policy, &uids(&existing));
    let differences = diff(&rendered.table, live.as_ref().map(|l| &l.state));
    let mut changes: Vec<String> = would_create
        .iter()
        .map(|n| format!("+ account {n} (locked system account, created by setup)"))
        .collect();
    changes.extend(differences.iter().map(ToString::to_string));
    if !would_create.is_empty() {
        changes.push("+ sandbox uids of the accounts created above".into());
    }
    let batch = rendered.table.replace_batch_text();
    let unit_at = |dir: &PathBuf| boot::BootUnit::system(dir, &ctx.state_dir);
    match boot_unit {
        Boot::Leave => {}
        Boot::Install(dir) => {
            let unit = unit_at(dir);
            if !would_create.is_empty() || !unit.is_current(&batch) {
                let sign = if unit.is_present() { "~" } else { "+" };
                changes.push(format!(
                    "{sign} boot unit {} and its batch {}",
                    unit.unit_path().display(),
                    unit.table_path().display()
                ));
            }
        }
        Boot::Remove(dir) => {
            let unit = unit_at(dir);
            if unit.is_present() {
                changes.push(format!(
                    "- boot unit {} (--no-boot-unit)",
                    unit.unit_path().display()
                ));
            }
        }
    }
    let (marker, _) = marker::read_trusted(&ctx.state_dir)?;
    if changes.is_empty() && marker.is_none() {
        changes.push("+ setup marker (setup rewrites the table to record it)".into());
    }
    Ok(PlanReport {
        would_create_accounts: would_create,
        accounts: existing,
        preset: policy.preset.name().into(),
        differences,
        changes,
    })
}
