//! The versioned setup step: marker decisions, modes, lock, log, error report, boot unit and
//! metrics. Privileged like the end-to-end suite: each test builds its own namespaces.

#![cfg(target_os = "linux")]

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use userwall::setup::{
    self, Context, Decision, Mode, Request, SetupRequest, StepName, StepOutcome,
};

const UID: &str = "47001";

/// An nft stand-in that logs every call, runs nft inside the lab's client namespace, and can
/// be told to fail writes (`-f`).
fn nft_wrapper(lab: &Lab, fail_writes: bool) -> (PathBuf, PathBuf) {
    let dir = lab.state.path().join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("nft-calls.log");
    let script = dir.join(if fail_writes {
        "nft-failing"
    } else {
        "nft-logging"
    });
    let fail = if fail_writes {
        "case \"$*\" in *-f*) echo 'Error: injected write failure' >&2; exit 1;; esac\n"
    } else {
        ""
    };
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$*\" >> {log}\n{fail}exec ip netns exec {ns} nft \"$@\"\n",
            log = log.display(),
            ns = lab.client.name
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    (script, log)
}

fn writes(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("-f"))
        .count()
}

fn marker(lab: &Lab) -> Value {
    serde_json::from_str(&std::fs::read_to_string(lab.state.path().join("setup.json")).unwrap())
        .unwrap()
}

fn set_marker_field(lab: &Lab, key: &str, value: Value) {
    let mut m = marker(lab);
    m[key] = value;
    std::fs::write(
        lab.state.path().join("setup.json"),
        serde_json::to_string(&m).unwrap(),
    )
    .unwrap();
}

fn setup_json(lab: &Lab, env: &[(&str, &str)], extra: &[&str]) -> (Run, Value) {
    let mut args = vec!["setup", "--no-probe", "--json", "--account", UID];
    args.extend_from_slice(extra);
    let run = lab.userwall_env(&args, env);
    let json = run.json();
    (run, json)
}

#[test]
fn an_older_setup_version_makes_the_next_setup_reapply_and_a_repeat_writes_nothing() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    let (wrapper, log) = nft_wrapper(&lab, false);
    let env = [("USERWALL_NFT", wrapper.to_str().unwrap())];
    setup_json(&lab, &env, &[]).0.expect_code(0);
    assert_eq!(writes(&log), 1);
    let (_, again) = setup_json(&lab, &env, &[]);
    assert_eq!(again["setup"]["decision"], "up_to_date");
    assert_eq!(writes(&log), 1, "a repeated setup wrote");

    // An install by an older userwall: same table, older marker.
    set_marker_field(
        &lab,
        "setup_version",
        Value::from(userwall::marker::SETUP_VERSION - 1),
    );
    let (run, bumped) = setup_json(&lab, &env, &[]);
    run.expect_code(0);
    assert_eq!(bumped["setup"]["decision"], "applied");
    assert!(
        bumped["setup"]["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("setup version"),
        "{bumped}"
    );
    assert_eq!(writes(&log), 2, "the version bump did not re-apply");
    assert_eq!(
        marker(&lab)["setup_version"],
        userwall::marker::SETUP_VERSION
    );
    setup_json(&lab, &env, &[]);
    assert_eq!(writes(&log), 2);
}

#[test]
fn corrupt_newer_and_changed_markers_each_lead_to_a_reapply_with_a_reason() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    let (wrapper, log) = nft_wrapper(&lab, false);
    let env = [("USERWALL_NFT", wrapper.to_str().unwrap())];
    setup_json(&lab, &env, &[]).0.expect_code(0);

    std::fs::write(lab.state.path().join("setup.json"), "{ torn").unwrap();
    let (run, report) = setup_json(&lab, &env, &[]);
    run.expect_code(0);
    assert!(
        run.stderr.contains("not a valid userwall marker"),
        "{}",
        run.stderr
    );
    assert_eq!(report["setup"]["reasons"][0], "no trusted setup marker");
    assert_eq!(writes(&log), 2);

    set_marker_field(
        &lab,
        "setup_version",
        Value::from(userwall::marker::SETUP_VERSION + 5),
    );
    let (run, _) = setup_json(&lab, &env, &[]);
    assert!(run.stderr.contains("newer userwall"), "{}", run.stderr);
    assert_eq!(writes(&log), 3);

    set_marker_field(
        &lab,
        "policy_fingerprint",
        Value::from("sha256:0000000000000000"),
    );
    let (_, report) = setup_json(&lab, &env, &[]);
    assert_eq!(report["setup"]["reasons"][0], "the policy changed");
    assert_eq!(writes(&log), 4);
    lab.userwall(&["status"]).expect_code(0);
}

#[test]
fn a_held_lock_makes_a_second_setup_wait_then_fail_clearly() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    let held = userwall::lock::acquire(lab.state.path(), Duration::ZERO).unwrap();
    let started = std::time::Instant::now();
    let (run, report) = setup_json(&lab, &[], &["--lock-wait", "0.5"]);
    run.expect_code(1);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "it did not wait"
    );
    assert_eq!(report["setup"]["failure"]["error_code"], "lock_timeout");
    assert!(
        run.stderr.contains("run again when it has finished"),
        "{}",
        run.stderr
    );
    assert!(!lab.client.has_our_table());
    drop(held);
    setup_json(&lab, &[], &[]).0.expect_code(0);
}

#[test]
fn not_root_fails_with_its_code_and_changes_nothing() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    // A copy of the binary that uid 47005 can execute wherever the checkout lives.
    let bin_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        bin_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let bin = bin_dir.path().join("userwall");
    std::fs::copy(env!("CARGO_BIN_EXE_userwall"), &bin).unwrap();
    let out = lab
        .client
        .cmd("setpriv")
        .args(["--reuid=47005", "--regid=47005", "--clear-groups"])
        .arg(&bin)
        .arg("--state-dir")
        .arg(lab.state.path().join("state"))
        .args(["setup", "--json", "--no-probe", "--account", UID])
        .output()
        .unwrap();
    let run = Run::from(out);
    run.expect_code(1);
    assert_eq!(run.json()["setup"]["failure"]["error_code"], "not_root");
    assert!(run.stderr.contains("must run as root"), "{}", run.stderr);
    assert!(!lab.client.has_our_table());
    assert!(
        !lab.state.path().join("state").exists(),
        "a state dir was created"
    );
}

#[test]
fn strict_fails_and_best_effort_carries_on_when_the_filters_cannot_be_written() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    let (failing, _) = nft_wrapper(&lab, true);
    let env = [("USERWALL_NFT", failing.to_str().unwrap())];

    let (run, report) = setup_json(&lab, &env, &[]);
    run.expect_code(1);
    assert_eq!(report["setup"]["failure"]["step"], "apply");
    assert_eq!(report["setup"]["failure"]["error_code"], "nft_failed");
    assert!(
        run.stderr.contains("injected write failure"),
        "nft's stderr is carried: {}",
        run.stderr
    );
    let steps: Vec<&str> = report["setup"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        ["check_platform", "resolve_accounts", "apply"],
        "strict stops at the failed step"
    );

    let (run, report) = setup_json(&lab, &env, &["--mode", "best-effort"]);
    run.expect_code(0);
    assert_eq!(report["setup"]["success"], false);
    let outcome = |name: &str| {
        report["setup"]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == name)
            .map(|s| s["outcome"].clone())
    };
    assert_eq!(outcome("apply"), Some(Value::from("failed")));
    assert_eq!(
        outcome("verify"),
        Some(Value::from("skipped")),
        "every step is reported"
    );
    assert_eq!(
        outcome("persist_for_boot"),
        Some(Value::from("skipped")),
        "no boot batch may run ahead of the live table"
    );
    let with_probe = lab.userwall_env(
        &["setup", "--json", "--mode", "best-effort", "--account", UID],
        &env,
    );
    with_probe.expect_code(0);
    assert_eq!(
        with_probe.json()["probe"]["skipped"],
        "probe not run: setup did not complete",
        "a skipped probe says so"
    );
    assert_eq!(
        outcome("write_marker"),
        Some(Value::from("skipped")),
        "the marker never claims missing filters"
    );
    assert!(!lab.state.path().join("setup.json").exists());
    let error: Value = serde_json::from_str(
        &std::fs::read_to_string(lab.state.path().join("last-error.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(error["error_code"], "nft_failed");
    assert_eq!(error["step"], "apply");

    // A working nft completes the job and clears the error report.
    setup_json(&lab, &[], &[]).0.expect_code(0);
    assert!(!lab.state.path().join("last-error.json").exists());
    let log = std::fs::read_to_string(lab.state.path().join("setup.log")).unwrap();
    let last: Vec<&str> = log.lines().rev().take(6).collect();
    assert!(
        last.iter()
            .all(|l| l.contains(" step=") && l.contains(" outcome=") && l.contains(" millis=")),
        "{log}"
    );
    assert!(log.lines().any(|l| l.contains("step=apply outcome=failed") && l.contains("error_code=nft_failed")), "{log}");
    let time = log.lines().next().unwrap().split(' ').next().unwrap();
    assert!(
        humantime::parse_rfc3339(time).is_ok(),
        "not RFC 3339: {time}"
    );
}

#[test]
fn a_failure_between_apply_and_the_marker_is_completed_by_the_next_setup() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    let (wrapper, _) = nft_wrapper(&lab, false);
    let ctx = Context {
        nft: userwall::nft::Nft::with_program(&wrapper),
        state_dir: lab.state.path().to_path_buf(),
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink_seen = seen.clone();
    let req = SetupRequest {
        request: Request {
            accounts: vec![UID.into()],
            ..Default::default()
        },
        mode: Mode::Strict,
        boot: setup::Boot::Leave,
        lock_wait: Duration::from_secs(5),
        // The fault: the process "dies" right after the table was verified, before the marker.
        log: Some(Arc::new(move |step: &setup::StepReport| {
            sink_seen.lock().unwrap().push(step.step);
            if step.step == StepName::Verify && step.outcome == StepOutcome::Ok {
                panic!("injected crash after verify");
            }
        })),
        metrics: Default::default(),
    };
    let report = setup::run_setup(&ctx, &req);
    assert!(!report.success);
    let failure = report.failure.as_ref().unwrap();
    assert_eq!(
        (failure.step, failure.error_code.as_str()),
        (StepName::Verify, "internal")
    );
    assert!(
        failure.message.contains("injected crash"),
        "{}",
        failure.message
    );
    assert_eq!(report.decision, Decision::Applied);
    assert!(
        lab.client.has_our_table(),
        "the table was applied before the crash"
    );
    assert!(
        !lab.state.path().join("setup.json").exists(),
        "the marker was written after the crash"
    );

    let (run, next) = setup_json(&lab, &[], &[]);
    run.expect_code(0);
    assert_eq!(next["setup"]["reasons"][0], "no trusted setup marker");
    assert!(lab.state.path().join("setup.json").exists());
    lab.userwall(&["status"]).expect_code(0);
}

#[test]
fn the_boot_unit_verifies_and_a_simulated_boot_restores_the_table() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    lab.client.nft_script("table ip someone_else {\n\tchain out {\n\t\ttype filter hook output priority 0; policy accept;\n\t}\n}\n");
    setup_json(&lab, &[], &[]).0.expect_code(0);
    let unit = lab.unit_dir().join("userwall.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(
        std::fs::read_link(lab.unit_dir().join("sysinit.target.wants/userwall.service")).is_ok()
    );
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output();
    match verify {
        Ok(out) => assert!(
            out.status.success(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true and systemd-analyze is missing: {e}")
        }
        Err(e) => eprintln!("skipping the unit check: systemd-analyze: {e}"),
    }
    let command = |key: &str| -> Vec<String> {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in\n{text}"));
        line.trim_start_matches('-')
            .split(' ')
            .map(str::to_string)
            .collect()
    };

    // A boot: the namespace's ruleset is empty (the kernel keeps nothing), then the unit starts.
    lab.client.nft(&["flush", "ruleset"]);
    lab.userwall(&["status"]).expect_code(3);
    let start = command("ExecStart=");
    let out = lab
        .client
        .cmd(&start[0])
        .args(&start[1..])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        start,
        String::from_utf8_lossy(&out.stderr)
    );
    lab.userwall(&["status"]).expect_code(0);
    probe_ok(&lab);

    // Stopping the unit removes our table and nothing else.
    lab.client.nft_script("table ip someone_else {\n\tchain out {\n\t\ttype filter hook output priority 0; policy accept;\n\t}\n}\n");
    let before = lab.client.nft(&["list", "table", "ip", "someone_else"]);
    let stop = command("ExecStop=");
    assert!(lab
        .client
        .cmd(&stop[0])
        .args(&stop[1..])
        .status()
        .unwrap()
        .success());
    assert!(!lab.client.has_our_table());
    assert_eq!(
        lab.client.nft(&["list", "table", "ip", "someone_else"]),
        before
    );

    // Uninstall removes the unit, its link and the batch.
    lab.userwall(&["uninstall"]).expect_code(0);
    assert!(!unit.exists());
    assert!(!lab
        .unit_dir()
        .join("sysinit.target.wants/userwall.service")
        .exists());
    assert!(!lab.state.path().join("table.json").exists());
}

fn probe_ok(lab: &Lab) {
    lab.userwall(&["probe", "--account", UID]).expect_code(0);
}

#[test]
fn metrics_reach_an_otlp_receiver_without_account_names() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    let receiver = OtlpReceiver::start(&lab.client);
    let (run, report) = setup_json(
        &lab,
        &[],
        &["--analytics", "--otlp-endpoint", &receiver.url],
    );
    run.expect_code(0);
    assert_eq!(report["setup"]["metrics"], "sent");
    let points = receiver.points();
    eprintln!("decoded OTLP export: {points:?}");
    assert_eq!(points.len(), 1, "{points:?}");
    let (name, attrs, value) = &points[0];
    assert_eq!(name, "userwall.setup.success");
    assert_eq!(*value, 1);
    assert_eq!(attrs.get("backend").map(String::as_str), Some("nftables"));
    assert_eq!(attrs.get("rule_count").map(String::as_str), Some("19"));
    assert_eq!(attrs.get("mode").map(String::as_str), Some("strict"));
    assert_eq!(attrs.len(), 3, "{attrs:?}");

    // A failure, with the endpoint from the standard variable; the uid must not leak.
    let base = format!("http://127.0.0.1:{}", receiver.port);
    let run = lab.userwall_env(
        &["setup", "--no-probe", "--analytics", "--account", "0"],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &base)],
    );
    run.expect_code(2);
    let points = receiver.points();
    assert_eq!(points.len(), 2, "{points:?}");
    let (name, attrs, _) = &points[1];
    assert_eq!(name, "userwall.setup.failure");
    assert_eq!(
        attrs.get("error_code").map(String::as_str),
        Some("account_refused")
    );
    for (_, attrs, _) in &points {
        for value in attrs.values() {
            assert!(
                !value.contains(UID) && !value.contains("root"),
                "an account leaked: {attrs:?}"
            );
        }
    }

    // Analytics off: nothing is sent even with an endpoint configured.
    let before = receiver.requests();
    lab.userwall_env(
        &["setup", "--no-probe", "--account", UID],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &base)],
    )
    .expect_code(0);
    assert_eq!(receiver.requests(), before);
}

#[test]
fn a_metrics_failure_never_changes_the_outcome() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    // Nothing listens on this port in the client namespace.
    let (run, report) = setup_json(
        &lab,
        &[],
        &[
            "--analytics",
            "--otlp-endpoint",
            "http://127.0.0.1:9/v1/metrics",
        ],
    );
    run.expect_code(0);
    assert!(
        report["setup"]["metrics"]
            .as_str()
            .unwrap()
            .starts_with("failed"),
        "{report}"
    );
    assert_eq!(report["setup"]["success"], true);
    assert!(run.stderr.contains("metrics failed"), "{}", run.stderr);
    let (_, report) = setup_json(&lab, &[], &["--analytics"]);
    assert!(
        report["setup"]["metrics"]
            .as_str()
            .unwrap()
            .starts_with("off: analytics on but no endpoint"),
        "{report}"
    );
}

#[test]
fn best_effort_records_a_failed_boot_unit_and_still_commits_verified_filters() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    // A unit dir that is a file: the boot unit cannot be written.
    let not_a_dir = lab.state.path().join("units-file");
    std::fs::write(&not_a_dir, "").unwrap();
    let mut cmd = lab.client.cmd(env!("CARGO_BIN_EXE_userwall"));
    cmd.arg("--state-dir")
        .arg(lab.state.path())
        .arg("--unit-dir")
        .arg(&not_a_dir);
    cmd.args([
        "setup",
        "--json",
        "--no-probe",
        "--mode",
        "best-effort",
        "--account",
        UID,
    ]);
    let run = Run::from(cmd.output().unwrap());
    run.expect_code(0);
    let report = run.json();
    assert_eq!(report["setup"]["failure"]["step"], "persist_for_boot");
    assert_eq!(report["setup"]["failure"]["error_code"], "persist_failed");
    let objects = marker(&lab)["objects"].clone();
    assert_eq!(
        objects,
        serde_json::json!(["nft table inet userwall"]),
        "the marker lists only what exists"
    );
    lab.userwall(&["status"]).expect_code(0);
}

#[test]
fn no_boot_unit_removes_the_unit_an_earlier_setup_left_and_status_checks_the_unit() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    setup_json(&lab, &[], &[]).0.expect_code(0);
    let unit = lab.unit_dir().join("userwall.service");
    assert!(unit.exists());
    // A tampered batch: a reboot would not restore this table.
    std::fs::write(lab.state.path().join("table.json"), "{\"nftables\": []}\n").unwrap();
    let status = lab.userwall(&["status"]);
    status.expect_code(3);
    assert!(status.stdout.contains("boot unit"), "{}", status.stdout);
    setup_json(&lab, &[], &[]).0.expect_code(0);
    lab.userwall(&["status"]).expect_code(0);

    let (run, report) = setup_json(&lab, &[], &["--no-boot-unit"]);
    run.expect_code(0);
    assert_eq!(report["setup"]["wrote_boot_unit"], true, "{report}");
    assert!(
        !unit.exists()
            && !lab
                .unit_dir()
                .join("sysinit.target.wants/userwall.service")
                .exists()
    );
    assert!(!lab.state.path().join("table.json").exists());
    lab.userwall(&["status"]).expect_code(0);
}

#[test]
fn uninstall_finds_the_unit_where_setup_recorded_it() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    setup_json(&lab, &[], &[]).0.expect_code(0);
    let other = tempfile::tempdir().unwrap();
    let mut cmd = lab.client.cmd(env!("CARGO_BIN_EXE_userwall"));
    cmd.arg("--state-dir")
        .arg(lab.state.path())
        .arg("--unit-dir")
        .arg(other.path())
        .arg("uninstall");
    Run::from(cmd.output().unwrap()).expect_code(0);
    assert!(
        !lab.unit_dir().join("userwall.service").exists(),
        "the recorded unit stayed enabled"
    );
    assert!(!lab
        .unit_dir()
        .join("sysinit.target.wants/userwall.service")
        .exists());
}
