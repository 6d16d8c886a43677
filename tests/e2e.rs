//! End-to-end tests on the real kernel, each in network namespaces it creates and removes.
//! They need root, nft and ip: under CI=true a missing one fails the run, elsewhere they skip.

#![cfg(target_os = "linux")]

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;

fn rows(report: &Value) -> Vec<Value> {
    report["rows"].as_array().expect("probe rows").clone()
}

fn probe_as(lab: &Lab, uid: u32) -> Run {
    lab.userwall(&[
        "probe",
        "--json",
        "--account",
        &uid.to_string(),
        "--target",
        PEER_V4,
        "--target",
        PEER_V6,
    ])
}

fn setup(lab: &Lab, uids: &[u32], extra: &[&str]) -> Run {
    let mut args = vec!["setup".to_string(), "--no-probe".into()];
    for uid in uids {
        args.push("--account".into());
        args.push(uid.to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lab.userwall(&args)
}

#[test]
fn sandbox_uid_is_blocked_on_every_channel_and_nothing_reaches_the_peer() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    let peer = Peer::listen(&lab.peer);
    setup(&lab, &[SANDBOX_UID], &[]).expect_code(0);
    let echoes_before = lab.peer_echo_requests();

    let run = probe_as(&lab, SANDBOX_UID);
    run.expect_code(0);
    let report = run.json();
    let blocked: Vec<Value> = rows(&report)
        .into_iter()
        .filter(|r| r["channel"] != "control: tcp to probe's listener")
        .collect();
    // v4: icmp + 4 ports x udp/tcp x (v4, v6-mapped) = 17; v6: icmp + 8 = 9.
    assert_eq!(blocked.len(), 26);
    for row in &blocked {
        assert_eq!(row["result"], "blocked", "{row}");
        // Fails fast and recognisably: a syscall error our verdict produces, never a timeout.
        let evidence = row["evidence"].as_str().unwrap();
        assert!(
            ["EPERM", "ECONNREFUSED", "EACCES"]
                .iter()
                .any(|e| evidence.starts_with(e)),
            "{evidence}"
        );
        assert!(
            row["millis"].as_f64().unwrap() < 1000.0,
            "a blocked attempt waited: {row}"
        );
    }
    let mapped: Vec<&Value> = blocked
        .iter()
        .filter(|r| r["channel"].as_str().unwrap().ends_with("v6-mapped"))
        .collect();
    assert_eq!(
        mapped.len(),
        8,
        "an IPv6 socket to an IPv4-mapped address is probed on every port"
    );

    assert_eq!(
        peer.hits(),
        BTreeMap::new(),
        "sandbox traffic reached the peer"
    );
    assert_eq!(
        lab.peer_echo_requests(),
        echoes_before,
        "a sandbox echo request reached the peer"
    );
}

#[test]
fn control_uid_reaches_the_peer_on_every_channel() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    let peer = Peer::listen(&lab.peer);
    setup(&lab, &[SANDBOX_UID], &[]).expect_code(0);
    let echoes_before = lab.peer_echo_requests();

    let run = probe_as(&lab, CONTROL_UID);
    run.expect_code(0);
    for row in rows(&run.json()) {
        assert_eq!(row["expected"], "open", "{row}");
        assert_eq!(row["result"], "open", "{row}");
    }
    let hits = peer.hits();
    for port in PORTS {
        for proto in ["tcp", "udp"] {
            // One v4, one v6-mapped and one v6 attempt each.
            assert_eq!(
                hits.get(&format!("{proto}/{port}")),
                Some(&3),
                "{proto}/{port}: {hits:?}"
            );
        }
    }
    let (v4, v6) = lab.peer_echo_requests();
    assert!(
        v4 > echoes_before.0 && v6 > echoes_before.1,
        "control echo requests did not arrive"
    );
}

#[test]
fn several_accounts_share_one_policy() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    let peer = Peer::listen(&lab.peer);
    setup(&lab, &[SANDBOX_UID, SANDBOX_UID_2], &[]).expect_code(0);
    let run = lab.userwall(&["probe", "--json", "--target", PEER_V4]);
    run.expect_code(0);
    let report = run.json();
    let uids: std::collections::BTreeSet<u64> = rows(&report)
        .iter()
        .map(|r| r["uid"].as_u64().unwrap())
        .collect();
    assert_eq!(
        uids,
        [u64::from(SANDBOX_UID), u64::from(SANDBOX_UID_2)]
            .into_iter()
            .collect(),
        "probe defaults to the marker's accounts"
    );
    assert!(rows(&report).iter().all(|r| r["result"] == r["expected"]));
    assert_eq!(peer.hits(), BTreeMap::new());
}

#[test]
fn offline_blocks_everything_but_loopback_and_keeps_the_port_rules_on_loopback() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    let peer = Peer::listen(&lab.peer);
    setup(&lab, &[SANDBOX_UID], &["--preset", "offline"]).expect_code(0);
    let run = lab.userwall(&[
        "probe",
        "--json",
        "--account",
        &SANDBOX_UID.to_string(),
        "--target",
        PEER_V4,
        "--target",
        PEER_V6,
        "--target",
        "127.0.0.1",
    ]);
    run.expect_code(0);
    let report = run.json();
    for row in rows(&report) {
        let target = row["target"].as_str().unwrap();
        let channel = row["channel"].as_str().unwrap();
        let loopback_allowed = target.starts_with("127.0.0.1:80")
            || target.starts_with("[::ffff:127.0.0.1]:80")
            || channel.starts_with("control");
        let want = if loopback_allowed { "open" } else { "blocked" };
        assert_eq!(row["result"], want, "{row}");
    }
    assert_eq!(peer.hits(), BTreeMap::new());
}

#[test]
fn a_foreign_table_is_byte_identical_after_install_and_after_uninstall() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    lab.client.nft_script(
        "table ip someone_else {\n\tchain out {\n\t\ttype filter hook output priority -10; policy accept;\n\t\taccept\n\t}\n}\n\
         table inet other_tool {\n\tset s { type ipv4_addr; elements = { 10.9.9.9 } }\n\tchain out {\n\t\ttype filter hook output priority 10; policy accept;\n\t\tip daddr @s accept comment \"not ours\"\n\t}\n}\n",
    );
    let foreign = |ns: &Netns| {
        (
            ns.nft(&["-a", "list", "table", "ip", "someone_else"]),
            ns.nft(&["-a", "list", "table", "inet", "other_tool"]),
        )
    };
    let before = foreign(&lab.client);
    setup(&lab, &[SANDBOX_UID], &[]).expect_code(0);
    assert_eq!(
        foreign(&lab.client),
        before,
        "setup changed a foreign table"
    );
    // Our drop wins over their accept: the accept only ends their own chain.
    let run = probe_as(&lab, SANDBOX_UID);
    run.expect_code(0);
    lab.userwall(&["uninstall"]).expect_code(0);
    assert_eq!(
        foreign(&lab.client),
        before,
        "uninstall changed a foreign table"
    );
    assert!(!lab.client.has_our_table());
    let tables = lab.client.nft(&["list", "tables"]);
    assert_eq!(tables.lines().count(), 2, "{tables}");
}

#[test]
fn a_second_setup_performs_no_write() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    let log = lab.state.path().join("nft-calls.log");
    let wrapper = lab.state.path().join("nft-logging");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$*\" >> {}\nexec nft \"$@\"\n",
            log.display()
        ),
    )
    .unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&wrapper).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let env = [("USERWALL_NFT", wrapper.to_str().unwrap())];
    let writes = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("-f"))
            .count()
    };

    let first = lab.userwall_env(
        &["setup", "--no-probe", "--account", &SANDBOX_UID.to_string()],
        &env,
    );
    first.expect_code(0);
    assert_eq!(writes(), 1, "first setup writes once");
    let second = lab.userwall_env(
        &["setup", "--no-probe", "--account", &SANDBOX_UID.to_string()],
        &env,
    );
    second.expect_code(0);
    assert_eq!(writes(), 1, "second setup wrote: {}", second.stdout);
    assert!(second.stdout.contains("up to date"), "{}", second.stdout);
    let plan = lab.userwall_env(&["plan", "--account", &SANDBOX_UID.to_string()], &env);
    plan.expect_code(0);
    assert!(plan.stdout.contains("no changes"));
    assert_eq!(writes(), 1);
}

#[test]
fn a_deleted_table_is_drift_and_setup_repairs_it() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    setup(&lab, &[SANDBOX_UID], &[]).expect_code(0);
    lab.userwall(&["status"]).expect_code(0);

    lab.client.nft(&["delete", "table", "inet", "userwall"]);
    let status = lab.userwall(&["status", "--json"]);
    status.expect_code(3);
    assert_eq!(status.json()["state"], "drifted");
    assert!(status.json()["diff"][0]
        .as_str()
        .unwrap()
        .contains("table inet userwall"));

    setup(&lab, &[SANDBOX_UID], &[]).expect_code(0);
    lab.userwall(&["status"]).expect_code(0);
    probe_as(&lab, SANDBOX_UID).expect_code(0);
}

#[test]
fn an_edited_table_is_drift_with_the_difference_named() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    setup(&lab, &[SANDBOX_UID], &[]).expect_code(0);
    let listing = lab
        .client
        .nft(&["-a", "list", "chain", "inet", "userwall", "sandbox_egress"]);
    let handle = listing
        .lines()
        .find(|l| l.contains("userwall:smb_v6 tcp"))
        .and_then(|l| l.rsplit("# handle ").next())
        .unwrap()
        .trim()
        .to_string();
    lab.client.nft(&[
        "delete",
        "rule",
        "inet",
        "userwall",
        "sandbox_egress",
        "handle",
        &handle,
    ]);
    lab.client.nft(&[
        "add",
        "element",
        "inet",
        "userwall",
        "sandbox_uids",
        "{ 47077 }",
    ]);
    let status = lab.userwall(&["status"]);
    status.expect_code(3);
    assert!(
        status
            .stdout
            .contains("+ rule sandbox_egress: userwall:smb_v6 tcp"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("- sandbox uids 47077"),
        "{}",
        status.stdout
    );
    let plan = lab.userwall(&["plan", "--account", &SANDBOX_UID.to_string()]);
    plan.expect_code(3);
    assert!(plan.stdout.contains("smb_v6 tcp"));
    setup(&lab, &[SANDBOX_UID], &[]).expect_code(0);
    lab.userwall(&["status"]).expect_code(0);
}

#[test]
fn root_and_the_invoking_user_are_refused_and_nothing_is_installed() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    for account in ["0", "root"] {
        let run = lab.userwall(&["setup", "--account", account]);
        run.expect_code(2);
        assert!(run.stderr.contains("root"), "{}", run.stderr);
    }
    let run = lab.userwall_env(&["setup", "--account", "47010"], &[("SUDO_UID", "47010")]);
    run.expect_code(2);
    assert!(run.stderr.contains("invoked userwall"), "{}", run.stderr);
    // A refused account among good ones refuses the whole request.
    let run = lab.userwall(&[
        "setup",
        "--account",
        &SANDBOX_UID.to_string(),
        "--account",
        "0",
    ]);
    run.expect_code(2);
    assert!(
        !lab.client.has_our_table(),
        "a refused setup installed something"
    );
    assert!(!lab.state.path().join("setup.json").exists());
}

#[test]
fn a_table_named_like_ours_with_foreign_content_is_refused() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    lab.client.nft_script("table inet userwall {\n\tchain theirs {\n\t\ttype filter hook output priority 0; policy accept;\n\t\tcounter\n\t}\n}\n");
    let before = lab.client.ruleset();
    let run = setup(&lab, &[SANDBOX_UID], &[]);
    run.expect_code(1);
    assert!(run.stderr.contains("not ours"), "{}", run.stderr);
    lab.userwall(&["uninstall"]).expect_code(1);
    assert_eq!(lab.client.ruleset(), before);
}

#[test]
fn a_missing_nft_is_a_clear_error() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    let run = lab.userwall_env(
        &["setup", "--no-probe", "--account", &SANDBOX_UID.to_string()],
        &[("USERWALL_NFT", "/nonexistent/nft")],
    );
    run.expect_code(1);
    assert!(
        run.stderr.contains("/nonexistent/nft was not found"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("apt-get install nftables"),
        "{}",
        run.stderr
    );
    assert!(!lab.state.path().join("setup.json").exists());
}

#[test]
fn uninstall_removes_everything_and_is_idempotent() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    let empty = lab.client.ruleset();
    setup(&lab, &[SANDBOX_UID], &[]).expect_code(0);
    assert!(lab.state.path().join("setup.json").exists());
    let run = lab.userwall(&["uninstall"]);
    run.expect_code(0);
    assert!(run.stdout.contains("removed table inet userwall"));
    assert_eq!(lab.client.ruleset(), empty);
    assert!(!lab.state.path().join("setup.json").exists());
    lab.userwall(&["uninstall"]).expect_code(0);
    let status = lab.userwall(&["status", "--account", &SANDBOX_UID.to_string()]);
    status.expect_code(4);
}

#[test]
fn golden_json_applies_and_lists_as_the_golden_text() {
    if !prerequisites() {
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    for preset in ["bypass-surfaces", "offline"] {
        let ns = Netns::new("g");
        let json = std::fs::read_to_string(dir.join(format!("{preset}.json"))).unwrap();
        let text = std::fs::read_to_string(dir.join(format!("{preset}.nft"))).unwrap();
        let mut child = ns
            .cmd("nft")
            .args(["-j", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), json.as_bytes()).unwrap();
        assert!(
            child.wait().unwrap().success(),
            "{preset}.json did not apply"
        );
        pretty_assertions::assert_eq!(
            ns.nft(&["-s", "list", "table", "inet", "userwall"]),
            text,
            "{preset}"
        );
    }
}

#[test]
fn setup_ends_with_the_probe_matrix() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    let run = lab.userwall(&["setup", "--account", &SANDBOX_UID.to_string()]);
    run.expect_code(0);
    assert!(
        run.stdout
            .contains("applied preset bypass-surfaces for uid 47001"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("probe as uid 47001"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("27 rows: 26 blocked, 1 open, 0 could not be tested; 27 as expected, 0 not"),
        "{}",
        run.stdout
    );
}

#[test]
fn create_account_makes_a_locked_system_account_and_refuses_without_the_flag() {
    if !prerequisites() {
        return;
    }
    let _lock = account_lock();
    let lab = Lab::new();
    let name = format!("uwt-acct-{}", std::process::id());
    let run = lab.userwall(&["setup", "--no-probe", "--account", &name]);
    run.expect_code(2);
    assert!(run.stderr.contains("--create-account"), "{}", run.stderr);
    let _guard = AccountGuard(name.clone());
    lab.userwall(&[
        "setup",
        "--no-probe",
        "--create-account",
        "--account",
        &name,
    ])
    .expect_code(0);
    let user = nix::unistd::User::from_name(&name)
        .unwrap()
        .expect("account created");
    assert_eq!(user.shell.to_str(), Some("/usr/sbin/nologin"));
    assert!(!user.dir.exists(), "a home directory was created");
    let shadow = std::fs::read_to_string("/etc/shadow").unwrap();
    let hash = shadow
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap();
    assert!(
        hash.starts_with('!') || hash.starts_with('*'),
        "password not locked: {hash}"
    );
    let status = lab.userwall(&["status", "--json"]);
    status.expect_code(0);
    assert_eq!(status.json()["accounts"][0]["uid"], user.uid.as_raw());
}

#[test]
fn the_default_account_is_created_when_missing() {
    if !prerequisites() {
        return;
    }
    let _lock = account_lock();
    let existed = nix::unistd::User::from_name("userwall-offline")
        .unwrap()
        .is_some();
    let _guard = (!existed).then(|| AccountGuard("userwall-offline".into()));
    let lab = Lab::new();
    let run = lab.userwall(&["setup"]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("probe as userwall-offline"),
        "{}",
        run.stdout
    );
    if !existed {
        assert!(
            run.stderr
                .contains("created locked system account userwall-offline"),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn an_unusable_state_dir_stops_setup_before_any_change() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    let file = lab.state.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let bad = file.join("state");
    let mut cmd = lab.client.cmd(env!("CARGO_BIN_EXE_userwall"));
    cmd.arg("--state-dir")
        .arg(&bad)
        .arg("--unit-dir")
        .arg(lab.unit_dir())
        .args(["setup", "--no-probe", "--account", &SANDBOX_UID.to_string()]);
    let run = Run::from(cmd.output().unwrap());
    run.expect_code(1);
    assert!(run.stderr.contains(bad.to_str().unwrap()), "{}", run.stderr);
    assert!(
        run.stderr.contains("--state-dir"),
        "says what to do: {}",
        run.stderr
    );
    assert!(
        !lab.client.has_our_table(),
        "setup wrote the firewall before finding the state dir unusable"
    );
}

#[test]
fn a_deleted_table_makes_the_probe_fail_not_pass() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    setup(&lab, &[SANDBOX_UID], &[]).expect_code(0);
    lab.client.nft(&["delete", "table", "inet", "userwall"]);
    let run = lab.userwall(&["probe", "--json"]);
    run.expect_code(5);
    let report = run.json();
    let off: Vec<Value> = rows(&report)
        .into_iter()
        .filter(|r| r["result"] != r["expected"])
        .collect();
    assert_eq!(
        off.len(),
        26,
        "every covered channel is open although the marker says blocked"
    );
}

#[test]
fn a_rule_turned_into_accept_is_reported_open_not_blocked() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    let peer = Peer::listen(&lab.peer);
    setup(&lab, &[SANDBOX_UID], &[]).expect_code(0);
    let listing = lab
        .client
        .nft(&["-a", "list", "chain", "inet", "userwall", "sandbox_egress"]);
    for (name, matcher) in [
        ("userwall:dns_v4 tcp", "meta nfproto ipv4 tcp dport 53"),
        (
            "userwall:dns_v4 udp,dccp,sctp,udplite",
            "meta nfproto ipv4 meta l4proto { udp, dccp, sctp, udplite } th dport 53",
        ),
    ] {
        let handle = listing
            .lines()
            .find(|l| l.contains(&format!("\"{name}\"")))
            .and_then(|l| l.rsplit("# handle ").next())
            .unwrap()
            .trim()
            .to_string();
        // Same comment, same counter, but the verdict lets traffic through.
        let rule = format!("{matcher} counter accept comment \"{name}\"");
        lab.client.nft_script(&format!(
            "replace rule inet userwall sandbox_egress handle {handle} {rule}\n"
        ));
    }
    let run = lab.userwall(&[
        "probe",
        "--json",
        "--account",
        &SANDBOX_UID.to_string(),
        "--target",
        PEER_V4,
    ]);
    run.expect_code(5);
    let report = run.json();
    for channel in ["udp/53 v4", "tcp/53 v4"] {
        let row = rows(&report)
            .into_iter()
            .find(|r| r["channel"] == channel)
            .unwrap();
        assert_eq!(row["result"], "open", "{row}");
        assert!(
            row["evidence"]
                .as_str()
                .unwrap()
                .contains("is not as userwall installed it"),
            "{row}"
        );
    }
    // With nothing listening (loopback), the kernel's own reset looks like our reject; the
    // changed rule's counter must still not make that "blocked".
    let run = lab.userwall(&[
        "probe",
        "--json",
        "--account",
        &SANDBOX_UID.to_string(),
        "--target",
        "127.0.0.1",
    ]);
    run.expect_code(5);
    let row = rows(&run.json())
        .into_iter()
        .find(|r| r["channel"] == "tcp/53 v4")
        .unwrap();
    assert_eq!(row["result"], "open", "{row}");
    assert!(
        peer.hits().contains_key("tcp/53"),
        "the tampered rule let the connect through"
    );
    lab.userwall(&["status"]).expect_code(3);
}

#[test]
fn status_refuses_a_table_with_foreign_rules_instead_of_promising_a_repair() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    setup(&lab, &[SANDBOX_UID], &[]).expect_code(0);
    lab.client.nft(&[
        "add",
        "rule",
        "inet",
        "userwall",
        "sandbox_egress",
        "tcp",
        "dport",
        "8080",
        "drop",
    ]);
    for cmd in [&["status"][..], &["plan", "--account", "47001"][..]] {
        let run = lab.userwall(cmd);
        run.expect_code(1);
        assert!(run.stderr.contains("not ours"), "{cmd:?}: {}", run.stderr);
        assert!(
            run.stderr.contains("handle"),
            "names the rule to delete: {}",
            run.stderr
        );
    }
}

#[test]
fn a_marker_from_another_namespace_is_ignored_and_kept() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    setup(&lab, &[SANDBOX_UID], &[]).expect_code(0);
    // The peer namespace shares the state dir but has no table of ours.
    let mut cmd = lab.peer.cmd(env!("CARGO_BIN_EXE_userwall"));
    cmd.arg("--state-dir")
        .arg(lab.state.path())
        .arg("--unit-dir")
        .arg(lab.unit_dir());
    let status = Run::from(
        cmd.arg("status")
            .arg("--account")
            .arg("47001")
            .output()
            .unwrap(),
    );
    status.expect_code(4);
    assert!(
        status.stderr.contains("another network namespace"),
        "{}",
        status.stderr
    );
    let mut cmd = lab.peer.cmd(env!("CARGO_BIN_EXE_userwall"));
    cmd.arg("--state-dir")
        .arg(lab.state.path())
        .arg("--unit-dir")
        .arg(lab.unit_dir());
    Run::from(cmd.arg("uninstall").output().unwrap()).expect_code(0);
    assert!(
        lab.state.path().join("setup.json").exists(),
        "uninstall elsewhere removed this namespace's marker"
    );
    lab.userwall(&["status"]).expect_code(0);
}

#[test]
fn a_dormant_table_or_a_reshaped_uid_set_is_drift_that_setup_repairs() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    setup(&lab, &[SANDBOX_UID], &["--preset", "offline"]).expect_code(0);
    // Dormant switches every chain of the table off while leaving it in place.
    lab.client
        .nft(&["add", "table", "inet", "userwall", "{ flags dormant; }"]);
    let status = lab.userwall(&["status"]);
    status.expect_code(3);
    assert!(status.stdout.contains("flags"), "{}", status.stdout);
    assert!(
        status
            .stdout
            .contains(" setup --account 47001 --preset offline` to repair"),
        "the repair hint must keep the accounts and preset: {}",
        status.stdout
    );
    setup(&lab, &[SANDBOX_UID], &["--preset", "offline"]).expect_code(0);
    lab.userwall(&["status"]).expect_code(0);
    probe_as(&lab, SANDBOX_UID).expect_code(0);

    // A uid set turned into an interval set covering a range.
    lab.client.nft_script(
        "delete table inet userwall\ntable inet userwall {\n\tset sandbox_uids {\n\t\ttype uid\n\t\tflags interval\n\t\telements = { 47000-47005 }\n\t}\n}\n",
    );
    let status = lab.userwall(&["status"]);
    status.expect_code(3);
    assert!(
        status.stdout.contains("non-uid elements"),
        "{}",
        status.stdout
    );
    setup(&lab, &[SANDBOX_UID], &["--preset", "offline"]).expect_code(0);
    lab.userwall(&["status"]).expect_code(0);
}

#[test]
fn offline_counts_this_hosts_own_addresses_as_loopback() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    setup(&lab, &[SANDBOX_UID], &["--preset", "offline"]).expect_code(0);
    let run = lab.userwall(&[
        "probe",
        "--json",
        "--account",
        &SANDBOX_UID.to_string(),
        "--target",
        CLIENT_V4,
        "--target",
        CLIENT_V6,
    ]);
    run.expect_code(0);
    let report = run.json();
    let row = rows(&report)
        .into_iter()
        .find(|r| r["channel"] == "udp/80 v4")
        .unwrap();
    assert_eq!(
        (row["expected"].as_str(), row["result"].as_str()),
        (Some("open"), Some("open")),
        "{row}"
    );
}

#[test]
fn with_ipv6_off_the_setup_probe_leaves_out_ipv6_and_passes() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    lab.client.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
    lab.client.sysctl("net.ipv6.conf.lo.disable_ipv6", "1");
    let run = lab.userwall(&["setup", "--account", &SANDBOX_UID.to_string()]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("IPv6 channels not probed"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("18 rows: 17 blocked, 1 open, 0 could not be tested"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_marker_naming_root_or_a_state_dir_others_can_write_is_not_trusted() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::new();
    setup(&lab, &[SANDBOX_UID], &[]).expect_code(0);
    let path = lab.state.path().join("setup.json");
    let mut marker: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    marker["uids"] = serde_json::json!([0]);
    std::fs::write(&path, marker.to_string()).unwrap();
    let run = lab.userwall(&["probe"]);
    assert!(run.stderr.contains("uid 0"), "{}", run.stderr);
    assert!(!run.stdout.contains("probe as root"), "{}", run.stdout);

    let open_dir = lab.state.path().join("open");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(
        &open_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    lab.userwall(&["uninstall"]).expect_code(0);
    let mut cmd = lab.client.cmd(env!("CARGO_BIN_EXE_userwall"));
    cmd.arg("--state-dir")
        .arg(&open_dir)
        .arg("--unit-dir")
        .arg(lab.unit_dir());
    let run = Run::from(
        cmd.args(["setup", "--no-probe", "--account", "47001"])
            .output()
            .unwrap(),
    );
    run.expect_code(1);
    assert!(
        run.stderr.contains("writable by group or others"),
        "{}",
        run.stderr
    );
    assert!(
        !lab.client.has_our_table(),
        "setup wrote the firewall with an unsafe state dir"
    );
}
