//! The command line on Linux: the nftables backend and the versioned setup step.

use clap::{Args, Parser, Subcommand};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use userwall::boot::DEFAULT_UNIT_DIR;
use userwall::errors::ErrorCode;
use userwall::marker::DEFAULT_STATE_DIR;
use userwall::nft::Nft;
use userwall::policy::Preset;
use userwall::probe;
use userwall::setup::{
    self, Boot, Context, Decision, MetricsSettings, Mode, Request, SetupReport, SetupRequest,
    StepOutcome, SyncState,
};

/// Exit codes, documented once here and printed by `--help`.
mod exit {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const BAD_INPUT: u8 = 2;
    pub const DRIFTED: u8 = 3;
    pub const NOT_INSTALLED: u8 = 4;
    pub const PROBE_MISMATCH: u8 = 5;
}

const EXIT_CODES: &str = "\
Exit codes:
  0  success; status: in sync; plan: nothing to change
  1  error (nft failed, not root, state dir unusable, ...)
  2  bad input (unknown option, refused or unknown account)
  3  status: our table differs from the policy; plan: setup would change something
  4  status: our table is not installed
  5  probe (also the probe that ends setup): a channel did not behave as the policy says";

#[derive(Parser)]
#[command(name = "userwall", version, about = "Lock sandbox accounts' network egress with account-scoped nftables rules", after_help = EXIT_CODES)]
struct Cli {
    /// Where the setup marker lives.
    #[arg(long, global = true, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Where setup installs the boot unit and uninstall removes it [default:
    /// /etc/systemd/system, and only in the host's network namespace].
    #[arg(long, global = true, value_name = "DIR")]
    unit_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone)]
struct ModeArg(Mode);

impl std::str::FromStr for ModeArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse().map(ModeArg)
    }
}

#[derive(Args, Clone)]
struct Accounts {
    /// A sandbox account: user name or numeric uid. Repeat for several.
    #[arg(long = "account", value_name = "A")]
    accounts: Vec<String>,
    /// The policy preset: bypass-surfaces or offline.
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(PresetArg))]
    preset: Option<PresetArg>,
}

#[derive(Clone)]
struct PresetArg(Preset);

impl std::str::FromStr for PresetArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse().map(PresetArg)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Make the live firewall match the policy, then prove it with the probe matrix.
    ///
    /// Without --account the account is userwall-offline, created when missing; without
    /// --preset the preset is bypass-surfaces.
    #[command(after_help = EXIT_CODES)]
    Setup {
        #[command(flatten)]
        which: Accounts,
        /// Create a named account that does not exist yet (locked system account).
        #[arg(long)]
        create_account: bool,
        /// Skip the probe matrix at the end.
        #[arg(long)]
        no_probe: bool,
        /// Install no boot unit (the table is then gone after a reboot until setup runs again).
        #[arg(long)]
        no_boot_unit: bool,
        /// strict: any failed step fails setup. best-effort: a failed filter step (apply,
        /// verify, persist for boot) is reported and setup carries on, exiting 0.
        #[arg(long, value_name = "MODE", default_value = "strict", value_parser = clap::value_parser!(ModeArg))]
        mode: ModeArg,
        /// Send the outcome as an OTLP/HTTP metric (needs an endpoint: --otlp-endpoint or
        /// OTEL_EXPORTER_OTLP_METRICS_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT).
        #[arg(long)]
        analytics: bool,
        /// The full OTLP/HTTP metrics URL, such as http://127.0.0.1:4318/v1/metrics.
        #[arg(long, value_name = "URL")]
        otlp_endpoint: Option<String>,
        /// Seconds to wait for another setup or uninstall to finish.
        #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
        lock_wait: f64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove everything of ours, then check nothing is left.
    #[command(after_help = EXIT_CODES)]
    Uninstall {
        /// Seconds to wait for a setup to finish.
        #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
        lock_wait: f64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compare the live firewall with the policy.
    ///
    /// Without --account: the accounts of the last setup (its marker), else userwall-offline,
    /// else the uids in the live table. Without --preset: the last setup's, else
    /// bypass-surfaces.
    #[command(after_help = EXIT_CODES)]
    Status {
        #[command(flatten)]
        which: Accounts,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what setup would change, changing nothing.
    ///
    /// Takes the same defaults as setup: userwall-offline and bypass-surfaces.
    #[command(after_help = EXIT_CODES)]
    Plan {
        #[command(flatten)]
        which: Accounts,
        /// Count a named account that does not exist as one setup would create.
        #[arg(long)]
        create_account: bool,
        /// Plan as `setup --no-boot-unit` would run.
        #[arg(long)]
        no_boot_unit: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Try every channel of the policy as each sandbox account and show what happened.
    ///
    /// Accounts and preset default as for status. Each attempt runs in a child that has
    /// switched to the account's uid and gid.
    #[command(after_help = EXIT_CODES)]
    Probe {
        #[command(flatten)]
        which: Accounts,
        /// Where to aim the attempts; repeat for several. Default: 127.0.0.1 and ::1.
        #[arg(long = "target", value_name = "ADDR")]
        targets: Vec<IpAddr>,
        /// Print the matrix as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds from 0 to 86400")),
    }
}

fn request(which: &Accounts, create_account: bool) -> Request {
    Request {
        accounts: which.accounts.clone(),
        preset: which.preset.clone().map(|p| p.0),
        create_account,
    }
}

fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("reports serialize")
    );
}

fn warn_all(warnings: &[String]) {
    for w in warnings {
        eprintln!("userwall: warning: {w}");
    }
}

fn fail(e: setup::Error) -> u8 {
    eprintln!("userwall: error: {e}");
    if e.is_bad_input() {
        exit::BAD_INPUT
    } else {
        exit::ERROR
    }
}

/// The unit dir to use: the one given, else the system's, but only in the host's network
/// namespace. A unit written from another namespace would load our table into the host's at
/// the next boot, where nobody asked for it.
fn unit_dir(given: &Option<PathBuf>, warn: bool) -> Option<PathBuf> {
    if given.is_some() {
        return given.clone();
    }
    if userwall::marker::in_host_netns() {
        return Some(PathBuf::from(DEFAULT_UNIT_DIR));
    }
    if warn {
        eprintln!(
            "userwall: warning: not in the host's network namespace: no boot unit installed (pass --unit-dir to choose one anyway)"
        );
    }
    None
}

/// Setup's and plan's boot-unit action from `--no-boot-unit` and `--unit-dir`.
fn boot_choice(no_boot_unit: bool, given: &Option<PathBuf>, warn: bool) -> Boot {
    match (no_boot_unit, unit_dir(given, warn)) {
        (_, None) => Boot::Leave,
        (false, Some(dir)) => Boot::Install(dir),
        (true, Some(dir)) => Boot::Remove(dir),
    }
}

fn exit_for(code: ErrorCode) -> u8 {
    match code {
        ErrorCode::AccountRefused
        | ErrorCode::AccountUnknown
        | ErrorCode::AccountInvalid
        | ErrorCode::NoAccounts => exit::BAD_INPUT,
        _ => exit::ERROR,
    }
}

fn print_setup(report: &SetupReport) {
    let accounts: Vec<String> = report.accounts.iter().map(|a| a.label()).collect();
    if let Some(f) = &report.failure {
        let carried_on = if report.failed_for_mode() {
            ""
        } else {
            "; best-effort mode carried on"
        };
        println!(
            "setup FAILED at {} [{}]{carried_on}:",
            f.step.as_str(),
            f.error_code
        );
    }
    match report.decision {
        _ if report.failure.is_some() => {}
        Decision::Applied if report.wrote_firewall => {
            println!(
                "applied preset {} for {} ({}):",
                report.preset,
                accounts.join(", "),
                report.reasons.join("; ")
            );
            for change in &report.changes {
                println!("  {change}");
            }
            if report.changes.is_empty() {
                println!("  (the live table already matched; rewritten for the reasons above)");
            }
        }
        Decision::Applied => {
            println!(
                "preset {} for {}: table inet userwall already in place, not rewritten ({})",
                report.preset,
                accounts.join(", "),
                report.reasons.join("; ")
            );
        }
        Decision::UpToDate => println!(
            "up to date: table inet userwall already matches preset {} for {}; nothing written",
            report.preset,
            accounts.join(", ")
        ),
        Decision::Undecided => println!("setup stopped before it could decide:"),
    }
    for step in &report.steps {
        let outcome = match step.outcome {
            StepOutcome::Ok => "ok",
            StepOutcome::Skipped => "skipped",
            StepOutcome::Failed => "FAILED",
        };
        let code = step
            .error_code
            .map(|c| format!(" [{c}]"))
            .unwrap_or_default();
        println!(
            "  {:17} {:8} {:7.1} ms{code}  {}",
            step.step.as_str(),
            outcome,
            step.millis,
            step.message
        );
    }
    println!(
        "setup took {:.1} ms; metrics: {}",
        report.total_millis(),
        report.metrics
    );
}

fn run_probe(
    ctx: &Context,
    exp: &setup::Expectation,
    sandboxed: &std::collections::BTreeSet<u32>,
    targets: &[IpAddr],
    notes: &[String],
    json: bool,
) -> u8 {
    match probe::probe(
        &ctx.nft,
        &exp.policy,
        &exp.rendered,
        &exp.accounts,
        sandboxed,
        targets,
    ) {
        Ok(mut report) => {
            report.notes.extend(notes.iter().cloned());
            if json {
                print_json(&report);
            } else {
                print!("{}", report.to_text());
            }
            if report.as_expected() {
                exit::OK
            } else {
                exit::PROBE_MISMATCH
            }
        }
        Err(e) => {
            eprintln!("userwall: error: {e}");
            exit::ERROR
        }
    }
}

/// Runs the Linux command line.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let ctx = Context {
        nft: Nft::from_env(),
        state_dir: cli.state_dir.clone(),
    };
    let code = match &cli.command {
        Command::Setup {
            which,
            create_account,
            no_probe,
            no_boot_unit,
            mode,
            analytics,
            otlp_endpoint,
            lock_wait,
            json,
        } => {
            let req = SetupRequest {
                request: request(which, *create_account),
                mode: mode.0,
                boot: boot_choice(*no_boot_unit, &cli.unit_dir, !no_boot_unit),
                lock_wait: Duration::from_secs_f64(*lock_wait),
                log: None,
                metrics: MetricsSettings {
                    enabled: *analytics,
                    endpoint: otlp_endpoint.clone(),
                },
            };
            let report = setup::run_setup(&ctx, &req);
            warn_all(&report.warnings);
            let probe = match (no_probe, report.success, &report.rendered, &report.policy) {
                (false, true, Some(rendered), Some(policy)) => {
                    let (targets, note) = probe::default_targets();
                    Some(
                        probe::probe(
                            &ctx.nft,
                            policy,
                            rendered,
                            &report.accounts,
                            &report.accounts.iter().map(|a| a.uid).collect(),
                            &targets,
                        )
                        .map(|mut p| {
                            p.notes.extend(note);
                            p
                        }),
                    )
                }
                _ => None,
            };
            let probe_skipped = match (no_probe, report.success) {
                (true, _) => None,
                (false, true) => None,
                (false, false) => Some("probe not run: setup did not complete"),
            };
            if *json {
                let probe_json = match (&probe, probe_skipped) {
                    (Some(Ok(p)), _) => serde_json::to_value(p).expect("serializes"),
                    (Some(Err(e)), _) => serde_json::json!({"error": e.to_string()}),
                    (None, Some(why)) => serde_json::json!({"skipped": why}),
                    (None, None) => serde_json::Value::Null,
                };
                print_json(&serde_json::json!({"setup": report, "probe": probe_json}));
            } else {
                print_setup(&report);
                if let Some(Ok(p)) = &probe {
                    print!("{}", p.to_text());
                }
                if let Some(why) = probe_skipped {
                    println!("{why}");
                }
            }
            if let Some(Err(e)) = &probe {
                eprintln!("userwall: error: {e}");
            }
            if let Some(f) = report.failure.as_ref().filter(|_| report.failed_for_mode()) {
                eprintln!("userwall: error: {}", f.message);
            }
            match (&report.failure, &probe) {
                (Some(f), _) if report.failed_for_mode() => exit_for(f.error_code),
                (_, Some(Err(_))) => exit::ERROR,
                (_, Some(Ok(p))) if !p.as_expected() => exit::PROBE_MISMATCH,
                _ => exit::OK,
            }
        }
        Command::Uninstall { lock_wait, json } => {
            match setup::uninstall(
                &ctx,
                unit_dir(&cli.unit_dir, false).as_deref(),
                Duration::from_secs_f64(*lock_wait),
            ) {
                Err(e) => fail(e),
                Ok(report) => {
                    if *json {
                        print_json(&report);
                    } else {
                        let said = |done: bool, yes: &'static str, no: &'static str| {
                            if done {
                                yes
                            } else {
                                no
                            }
                        };
                        println!(
                            "{}; {}; {}; accounts are left in place",
                            said(
                                report.removed_boot_unit,
                                "removed the boot unit",
                                "no boot unit to remove"
                            ),
                            said(
                                report.removed_table,
                                "removed table inet userwall",
                                "table inet userwall was not installed"
                            ),
                            said(
                                report.removed_marker,
                                "removed the setup marker",
                                "no setup marker to remove"
                            ),
                        );
                    }
                    exit::OK
                }
            }
        }
        Command::Status { which, json } => match setup::status(&ctx, &request(which, false)) {
            Err(e) => fail(e),
            Ok(report) => {
                warn_all(&report.warnings);
                let accounts: Vec<String> = report.accounts.iter().map(|a| a.label()).collect();
                if *json {
                    print_json(&report);
                } else {
                    match report.state {
                        SyncState::InSync => println!("in sync: table inet userwall matches preset {} for {}", report.preset, accounts.join(", ")),
                        SyncState::NotInstalled if accounts.is_empty() => println!("not installed: table inet userwall does not exist, and no setup is recorded in {}", cli.state_dir.display()),
                        SyncState::NotInstalled => println!("not installed: table inet userwall does not exist (expected preset {} for {})", report.preset, accounts.join(", ")),
                        SyncState::Drifted => {
                            println!("drifted: table inet userwall differs from preset {} for {}:", report.preset, accounts.join(", "));
                            for line in &report.diff {
                                println!("  {line}");
                            }
                            let accounts: Vec<String> = report
                                .accounts
                                .iter()
                                .map(|a| format!("--account {}", a.name.clone().unwrap_or_else(|| a.uid.to_string())))
                                .collect();
                            let mut dirs = String::new();
                            if cli.state_dir != std::path::Path::new(DEFAULT_STATE_DIR) {
                                dirs += &format!(" --state-dir {}", cli.state_dir.display());
                            }
                            if let Some(dir) = &cli.unit_dir {
                                dirs += &format!(" --unit-dir {}", dir.display());
                            }
                            println!(
                                "run `userwall{dirs} setup {} --preset {}` to repair",
                                accounts.join(" "),
                                report.preset
                            );
                        }
                    }
                }
                match report.state {
                    SyncState::InSync => exit::OK,
                    SyncState::Drifted => exit::DRIFTED,
                    SyncState::NotInstalled => exit::NOT_INSTALLED,
                }
            }
        },
        Command::Plan {
            which,
            create_account,
            no_boot_unit,
            json,
        } => match setup::plan(
            &ctx,
            &request(which, *create_account),
            &boot_choice(*no_boot_unit, &cli.unit_dir, false),
        ) {
            Err(e) => fail(e),
            Ok(report) => {
                if *json {
                    print_json(&report);
                } else if report.changes.is_empty() {
                    println!("no changes: setup would write nothing");
                } else {
                    println!("setup would change:");
                    for line in &report.changes {
                        println!("  {line}");
                    }
                }
                if report.changes.is_empty() {
                    exit::OK
                } else {
                    exit::DRIFTED
                }
            }
        },
        Command::Probe {
            which,
            targets,
            json,
        } => {
            let req = request(which, false);
            match setup::expectation(&ctx, &req)
                .and_then(|exp| Ok((setup::sandboxed_uids(&ctx)?, exp)))
            {
                Err(e) => fail(e),
                Ok((sandboxed, exp)) => {
                    warn_all(&exp.warnings);
                    let (targets, notes) = if targets.is_empty() {
                        let (targets, note) = probe::default_targets();
                        (targets, note.into_iter().collect::<Vec<_>>())
                    } else {
                        (targets.clone(), Vec::new())
                    };
                    run_probe(&ctx, &exp, &sandboxed, &targets, &notes, *json)
                }
            }
        }
    };
    ExitCode::from(code)
}
