//! The WFP backend's install, verify and uninstall, proven against the fake engine. This binary
//! also runs under valgrind in CI: the fake reads every structure through its raw pointers.

use userwall::ids::{self, Guid};
use userwall::policy::{Policy, Preset};
use userwall::wfp::fake::{Decision, FakeEngine, Flow, State, Value};
use userwall::wfp::logic::{self, Error};
use userwall::wfp::raw::codes;
use userwall::wfp::sid::Sid;
use userwall::wfp::spec::{self, LayerKey};

fn sid(s: &str) -> Sid {
    s.parse().unwrap()
}

fn alice() -> Sid {
    sid("S-1-5-21-1111-2222-3333-1001")
}

fn bob() -> Sid {
    sid("S-1-5-21-1111-2222-3333-1002")
}

fn carol() -> Sid {
    sid("S-1-5-21-1111-2222-3333-1003")
}

fn bypass() -> Policy {
    Policy::preset(Preset::BypassSurfaces)
}

fn assert_clean(engine: &FakeEngine) {
    assert_eq!(
        engine.leaks(),
        (0, 0, 0, 0),
        "sessions, enumerations, allocations, bad frees"
    );
}

#[test]
fn install_creates_exactly_the_documented_objects() {
    let engine = FakeEngine::new();
    let report = logic::install(&engine, &bypass(), &[alice()]).unwrap();
    assert_eq!(report.filters_added, 12);
    let state = engine.state();
    let provider = &state.providers[&ids::WFP_PROVIDER];
    assert_eq!(provider.flags, spec::OBJECT_FLAG_PERSISTENT);
    let sublayer = &state.sublayers[&ids::WFP_SUBLAYER];
    assert_eq!(
        (sublayer.weight, sublayer.flags, sublayer.provider),
        (0xFFFF, 1, Some(ids::WFP_PROVIDER))
    );
    assert_eq!(state.filters.len(), 12);
    for rule in &bypass().rules {
        let f = &state.filters[&rule.key.0];
        assert_eq!(f.name, format!("userwall {}", rule.name));
        assert_eq!(
            f.flags,
            spec::FILTER_FLAG_PERSISTENT | spec::FILTER_FLAG_CLEAR_ACTION_RIGHT
        );
        assert_eq!(
            (f.sublayer, f.provider, f.action),
            (ids::WFP_SUBLAYER, Some(ids::WFP_PROVIDER), 0x1001)
        );
        assert_eq!(f.conditions[0].field, spec::ALE_USER_ID.0);
        let Value::Sd(bytes) = &f.conditions[0].value else {
            panic!("user condition")
        };
        assert_eq!(
            userwall::wfp::sd::granted_accounts(bytes).unwrap(),
            vec![alice()]
        );
    }
    assert!(logic::verify(&engine, &bypass(), &[alice()])
        .unwrap()
        .in_sync());
    assert_clean(&engine);
}

#[test]
fn several_accounts_share_one_descriptor_and_each_is_blocked() {
    let engine = FakeEngine::new();
    logic::install(&engine, &bypass(), &[alice(), bob()]).unwrap();
    assert!(
        logic::verify(&engine, &bypass(), &[bob(), alice()])
            .unwrap()
            .in_sync(),
        "order of accounts does not matter"
    );
    let report = logic::verify(&engine, &bypass(), &[alice()]).unwrap();
    assert_eq!(
        report.different.len(),
        12,
        "a filter that also matches bob is not alice-only"
    );
    for who in [alice(), bob()] {
        let flow = Flow {
            sids: vec![who],
            layer: spec::ALE_AUTH_CONNECT_V4,
            protocol: 17,
            remote_port: 53,
            loopback: false,
        };
        assert_eq!(engine.classify(&flow), Decision::Block);
    }
    let carol_flow = Flow {
        sids: vec![carol()],
        layer: spec::ALE_AUTH_CONNECT_V4,
        protocol: 17,
        remote_port: 53,
        loopback: false,
    };
    assert_eq!(engine.classify(&carol_flow), Decision::Permit);
    assert_clean(&engine);
}

#[test]
fn a_second_install_is_idempotent() {
    let engine = FakeEngine::new();
    logic::install(&engine, &bypass(), &[alice()]).unwrap();
    let first = engine.state().shape();
    let report = logic::install(&engine, &bypass(), &[alice()]).unwrap();
    assert_eq!(
        (
            report.filters_added,
            report.stale_filters_removed,
            report.sublayer_replaced
        ),
        (12, 0, false)
    );
    assert_eq!(engine.state().shape(), first);
    assert!(logic::verify(&engine, &bypass(), &[alice()])
        .unwrap()
        .in_sync());
    assert_clean(&engine);
}

#[test]
fn a_policy_change_removes_filters_the_new_policy_does_not_have() {
    let engine = FakeEngine::new();
    logic::install(&engine, &Policy::preset(Preset::Offline), &[alice()]).unwrap();
    assert_eq!(engine.state().filters.len(), 16);
    let report = logic::install(&engine, &bypass(), &[alice()]).unwrap();
    assert_eq!(report.stale_filters_removed, 4);
    assert!(!engine.state().filters.contains_key(&ids::OFFLINE_V4.0));
    assert!(logic::verify(&engine, &bypass(), &[alice()])
        .unwrap()
        .in_sync());
}

#[test]
fn a_sublayer_with_the_wrong_weight_is_replaced() {
    let engine = FakeEngine::new();
    logic::install(&engine, &bypass(), &[alice()]).unwrap();
    engine.edit_state(|s| s.sublayers.get_mut(&ids::WFP_SUBLAYER).unwrap().weight = 0x1000);
    let report = logic::verify(&engine, &bypass(), &[alice()]).unwrap();
    assert_eq!(report.sublayer.len(), 1, "{report:?}");
    let report = logic::install(&engine, &bypass(), &[alice()]).unwrap();
    assert!(report.sublayer_replaced);
    assert_eq!(engine.state().sublayers[&ids::WFP_SUBLAYER].weight, 0xFFFF);
    assert!(logic::verify(&engine, &bypass(), &[alice()])
        .unwrap()
        .in_sync());
}

#[test]
fn verify_reports_missing_unexpected_and_different_filters() {
    let engine = FakeEngine::new();
    logic::install(&engine, &bypass(), &[alice()]).unwrap();
    engine.edit_state(|s| {
        s.filters.remove(&ids::DNS_V4.0);
        let mut extra = s.filters[&ids::SMB_V4.0].clone();
        extra.name = "userwall leftover".into();
        s.filters.insert(Guid(0x1234), extra);
        let dot = s.filters.get_mut(&ids::DNS_OVER_TLS_V6.0).unwrap();
        dot.conditions[1].value = Value::U16(8853);
        let icmp = s.filters.get_mut(&ids::ICMP_CONNECT_V4.0).unwrap();
        icmp.action = 0x1002;
        s.filters.get_mut(&ids::SMB_V6.0).unwrap().flags |= 0x20; // FWPM_FILTER_FLAG_DISABLED
    });
    let report = logic::verify(&engine, &bypass(), &[alice()]).unwrap();
    assert_eq!(report.missing.len(), 1, "{report:?}");
    assert!(report.missing[0].contains("dns_v4"));
    assert_eq!(report.unexpected.len(), 1);
    assert!(report.unexpected[0].contains("leftover"));
    assert_eq!(report.different.len(), 3, "{report:?}");
    assert!(report
        .different
        .iter()
        .any(|d| d.contains("smb_v6") && d.contains("disabled")));
    assert!(report
        .different
        .iter()
        .any(|d| d.contains("dns_over_tls_v6") && d.contains("8853")));
    assert!(report
        .different
        .iter()
        .any(|d| d.contains("icmp_connect_v4") && d.contains("action")));
    logic::install(&engine, &bypass(), &[alice()]).unwrap();
    assert!(logic::verify(&engine, &bypass(), &[alice()])
        .unwrap()
        .in_sync());
}

/// Runs `run` once without faults on an engine prepared by `setup`: its calls and end state.
fn clean_run(
    run: &impl Fn(&FakeEngine) -> Result<(), Error>,
    setup: &impl Fn(&FakeEngine),
) -> (Vec<&'static str>, State) {
    let engine = FakeEngine::new();
    setup(&engine);
    let before = engine.calls().len();
    run(&engine).unwrap();
    (engine.calls()[before..].to_vec(), engine.state())
}

/// Fails each call of `run` in turn, on a fresh engine prepared by `setup`, and checks the
/// operation reports it. A failure up to the commit must leave the engine exactly as before;
/// one after the commit (uninstall's final re-enumeration) finds the committed state.
fn every_failure_rolls_back(
    run: impl Fn(&FakeEngine) -> Result<(), Error>,
    setup: impl Fn(&FakeEngine),
) {
    let (calls, committed) = clean_run(&run, &setup);
    assert!(calls.len() >= 5, "{} calls", calls.len());
    let commit_at = calls.iter().position(|c| *c == "transaction_commit");
    const INJECTED: u32 = 0x8032_0035; // FWP_E_INVALID_PARAMETER: tolerated nowhere
    for (index, name) in calls.iter().enumerate() {
        let engine = FakeEngine::new();
        setup(&engine);
        let before = engine.state();
        engine.fail_call(index, INJECTED);
        let result = run(&engine);
        if *name == "engine_close" {
            // A close that fails after the work is done leaves a session open, nothing more.
            assert!(result.is_ok());
            continue;
        }
        let err = result.expect_err(&format!(
            "call {index} ({name}) failed but the operation succeeded"
        ));
        assert!(err.to_string().contains("0x80320035"), "{name}: {err}");
        let expected = if commit_at.is_some_and(|c| index > c) {
            &committed
        } else {
            &before
        };
        assert_eq!(
            &engine.state().shape(),
            &expected.shape(),
            "call {index} ({name}) failed and the state is wrong"
        );
        assert_clean(&engine);
    }
}

#[test]
fn install_rolls_back_after_a_failure_at_every_call() {
    let install = |e: &FakeEngine| logic::install(e, &bypass(), &[alice(), bob()]).map(drop);
    every_failure_rolls_back(install, |_| {});
    // And when replacing an earlier install with another policy and another sublayer weight.
    every_failure_rolls_back(install, |e| {
        logic::install(e, &Policy::preset(Preset::Offline), &[alice()]).unwrap();
        e.edit_state(|s| s.sublayers.get_mut(&ids::WFP_SUBLAYER).unwrap().weight = 7);
    });
}

#[test]
fn uninstall_rolls_back_after_a_failure_at_every_call() {
    every_failure_rolls_back(
        |e| logic::uninstall(e).map(drop),
        |e| {
            logic::install(e, &bypass(), &[alice()]).unwrap();
        },
    );
}

#[test]
fn verify_fails_cleanly_at_every_call() {
    every_failure_rolls_back(
        |e| logic::verify(e, &bypass(), &[alice()]).map(drop),
        |e| {
            logic::install(e, &bypass(), &[alice()]).unwrap();
        },
    );
}

#[test]
fn uninstall_removes_everything_of_ours_and_nothing_else() {
    let engine = FakeEngine::new();
    engine.add_foreign_permit(
        Guid(0xf0),
        100,
        Guid(0xf1),
        spec::ALE_AUTH_CONNECT_V4,
        false,
    );
    logic::install(&engine, &Policy::preset(Preset::Offline), &[alice()]).unwrap();
    let report = logic::uninstall(&engine).unwrap();
    assert_eq!(report.filters_removed, 16);
    let state = engine.state();
    assert!(state.providers.is_empty());
    assert_eq!(
        state.sublayers.keys().copied().collect::<Vec<_>>(),
        vec![Guid(0xf0)]
    );
    assert_eq!(
        state.filters.keys().copied().collect::<Vec<_>>(),
        vec![Guid(0xf1)]
    );
    assert_eq!(
        logic::uninstall(&engine).unwrap().filters_removed,
        0,
        "a second uninstall finds nothing"
    );
    assert_clean(&engine);
}

#[test]
fn an_unavailable_or_unelevated_engine_is_a_clear_error() {
    let engine = FakeEngine::new();
    engine.set_open_error(Some(codes::EPT_S_NOT_REGISTERED));
    let err = logic::install(&engine, &bypass(), &[alice()]).unwrap_err();
    assert!(err.to_string().contains("Base Filtering Engine"), "{err}");
    engine.set_open_error(None);
    engine.set_access_denied(true);
    let err = logic::install(&engine, &bypass(), &[alice()]).unwrap_err();
    assert!(
        err.to_string().contains("ERROR_ACCESS_DENIED") && err.to_string().contains("elevated"),
        "{err}"
    );
    assert_eq!(engine.state(), State::default());
    assert_clean(&engine);
}

fn flow(who: Sid, layer: LayerKey, protocol: u8, port: u16, loopback: bool) -> Flow {
    Flow {
        sids: vec![who],
        layer,
        protocol,
        remote_port: port,
        loopback,
    }
}

#[test]
fn the_installed_set_blocks_every_channel_for_the_account_and_nothing_for_others() {
    let engine = FakeEngine::new();
    logic::install(&engine, &bypass(), &[alice()]).unwrap();
    use spec::{
        ALE_AUTH_CONNECT_V4 as C4, ALE_AUTH_CONNECT_V6 as C6, ALE_RESOURCE_ASSIGNMENT_V4 as R4,
        ALE_RESOURCE_ASSIGNMENT_V6 as R6,
    };
    let mut channels = vec![(C4, 1, 0), (R4, 1, 0), (C6, 58, 0), (R6, 58, 0)];
    for port in [53, 853, 445, 139] {
        for layer in [C4, C6] {
            for proto in [6, 17, 132] {
                channels.push((layer, proto, port));
            }
        }
    }
    for (layer, proto, port) in &channels {
        for loopback in [false, true] {
            let mine = flow(alice(), *layer, *proto, *port, loopback);
            assert_eq!(engine.classify(&mine), Decision::Block, "{mine:?}");
            let other = flow(carol(), *layer, *proto, *port, loopback);
            assert_eq!(engine.classify(&other), Decision::Permit, "{other:?}");
        }
    }
    // A group SID in the token is not the account.
    let group = Flow {
        sids: vec![sid("S-1-5-32-545")],
        layer: C4,
        protocol: 17,
        remote_port: 53,
        loopback: false,
    };
    assert_eq!(engine.classify(&group), Decision::Permit);
    // Everything else stays open for the account.
    assert_eq!(
        engine.classify(&flow(alice(), C4, 6, 443, false)),
        Decision::Permit
    );
    assert_eq!(
        engine.classify(&flow(alice(), R4, 17, 0, false)),
        Decision::Permit
    );
}

#[test]
fn offline_blocks_all_but_loopback_and_keeps_the_port_blocks_on_loopback() {
    let engine = FakeEngine::new();
    logic::install(&engine, &Policy::preset(Preset::Offline), &[alice()]).unwrap();
    let c4 = spec::ALE_AUTH_CONNECT_V4;
    assert_eq!(
        engine.classify(&flow(alice(), c4, 6, 443, false)),
        Decision::Block
    );
    assert_eq!(
        engine.classify(&flow(alice(), spec::ALE_AUTH_CONNECT_V6, 17, 9999, false)),
        Decision::Block
    );
    assert_eq!(
        engine.classify(&flow(alice(), c4, 6, 8080, true)),
        Decision::Permit,
        "loopback stays open"
    );
    assert_eq!(
        engine.classify(&flow(alice(), c4, 17, 53, true)),
        Decision::Block,
        "a local resolver stub is no way out"
    );
    assert_eq!(
        engine.classify(&flow(carol(), c4, 6, 443, false)),
        Decision::Permit
    );
}

#[test]
fn arbitration_lets_only_a_hard_permit_in_a_heavier_sublayer_win() {
    let c4 = spec::ALE_AUTH_CONNECT_V4;
    let dns = flow(alice(), c4, 17, 53, false);
    // A soft permit anywhere, or a hard permit in a lighter sublayer, loses to our block.
    for (weight, hard) in [(0xFFFE, false), (0xFFFE, true), (0x10, true)] {
        let engine = FakeEngine::new();
        logic::install(&engine, &bypass(), &[alice()]).unwrap();
        engine.add_foreign_permit(Guid(0xaa), weight, Guid(0xab), c4, hard);
        assert_eq!(
            engine.classify(&dns),
            Decision::Block,
            "weight {weight:#x} hard {hard}"
        );
    }
    // Were our sublayer lighter, a foreign hard permit above it would defeat every block: the
    // reason our sublayer sits at 0xFFFF.
    let engine = FakeEngine::new();
    logic::install(&engine, &bypass(), &[alice()]).unwrap();
    engine.edit_state(|s| s.sublayers.get_mut(&ids::WFP_SUBLAYER).unwrap().weight = 0x8000);
    engine.add_foreign_permit(Guid(0xaa), 0xFFFF, Guid(0xab), c4, true);
    assert_eq!(engine.classify(&dns), Decision::Permit);
}
