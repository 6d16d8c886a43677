//! Install, verify and uninstall, written against [`super::raw::Fwpm`] through the safe
//! wrappers. No unsafe code here.
//!
//! Install and uninstall each run in one engine session and one transaction: any failure drops
//! the transaction, which aborts it, so the engine is left exactly as it was.

use super::raw::{codes, Fwpm};
use super::safe::{
    self, check, Engine, InstalledFilter, Lifetime, ObjectKind, OwnedFilter, OwnedProvider,
    OwnedSublayer, WfpError,
};
use super::sd;
use super::sid::Sid;
use super::spec::{self, Condition, FilterSpec, SpecError};
use crate::policy::Policy;
use std::collections::BTreeSet;

/// Why install, verify or uninstall failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The policy or accounts cannot be expressed as filters.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A call failed.
    #[error(transparent)]
    Call(#[from] WfpError),
    /// Uninstall finished but objects of ours are still listed.
    #[error("after uninstall, objects of ours remain: {}", .0.join("; "))]
    Remaining(Vec<String>),
}

/// What install did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallReport {
    /// Filters added (every filter of the policy: each is deleted and re-added by key).
    pub filters_added: usize,
    /// Filters of ours that the policy no longer has, removed.
    pub stale_filters_removed: usize,
    /// Whether the sublayer was replaced because its weight or flags differed.
    pub sublayer_replaced: bool,
}

fn describe(spec: &FilterSpec) -> String {
    format!("filter {} {{{}}}", spec.name, spec.key)
}

/// Ensures the provider and sublayer, then deletes and re-adds every filter of the policy by
/// key, removes filters of ours the policy no longer has, and commits.
pub fn install(api: &dyn Fwpm, policy: &Policy, accounts: &[Sid]) -> Result<InstallReport, Error> {
    let engine = Engine::open(api)?;
    install_in(&engine, policy, accounts, Lifetime::Persistent)
}

/// [`install`] in an open session, with objects of the given lifetime. A dynamic install lasts
/// as long as `engine`; the live Windows test uses it.
pub fn install_in(
    engine: &Engine<'_>,
    policy: &Policy,
    accounts: &[Sid],
    lifetime: Lifetime,
) -> Result<InstallReport, Error> {
    let mut specs = spec::filters(policy, accounts)?;
    if lifetime == Lifetime::Dynamic {
        for s in &mut specs {
            s.flags &= !spec::FILTER_FLAG_PERSISTENT;
        }
    }
    let txn = engine.transaction()?;

    let code = safe::provider_add(engine, &OwnedProvider::ours_with(lifetime));
    check(
        code,
        "adding provider",
        "userwall",
        &[codes::FWP_E_ALREADY_EXISTS],
    )?;

    let sublayer = OwnedSublayer::ours_with(lifetime);
    let existing = safe::our_sublayers(engine)?;
    let installed = safe::our_filters(engine)?;
    let wanted_keys: BTreeSet<_> = specs.iter().map(|s| s.key).collect();
    let mut report = InstallReport {
        filters_added: 0,
        stale_filters_removed: 0,
        sublayer_replaced: false,
    };
    let ours = existing.iter().find(|s| s.key == crate::ids::WFP_SUBLAYER);
    let stale_sublayer = ours.is_some_and(|s| {
        s.weight != spec::SUBLAYER_WEIGHT || s.flags & spec::OBJECT_FLAG_PERSISTENT == 0
    });
    // Filters go before the sublayer that holds them can be replaced, and before any filter of
    // ours the policy dropped; everything happens inside the one transaction, so nothing is
    // ever visible half-done.
    for filter in &installed {
        if stale_sublayer || !wanted_keys.contains(&filter.key) {
            delete_filter(engine, filter.key.0, &filter.name)?;
            if !wanted_keys.contains(&filter.key) {
                report.stale_filters_removed += 1;
            }
        }
    }
    if stale_sublayer {
        let code = safe::delete_by_key(engine, ObjectKind::Sublayer, crate::ids::WFP_SUBLAYER);
        check(
            code,
            "deleting sublayer",
            "userwall (weight or flags differ)",
            &[],
        )?;
        report.sublayer_replaced = true;
    }
    let code = safe::sublayer_add(engine, &sublayer);
    check(
        code,
        "adding sublayer",
        "userwall",
        &[codes::FWP_E_ALREADY_EXISTS],
    )?;

    for spec in &specs {
        delete_filter(engine, spec.key.0, &spec.name)?;
        let owned = OwnedFilter::new(spec);
        let code = safe::filter_add(engine, &owned);
        check(code, "adding", describe(spec), &[])?;
        report.filters_added += 1;
    }
    txn.commit()?;
    Ok(report)
}

fn delete_filter(engine: &Engine<'_>, key: crate::ids::Guid, name: &str) -> Result<(), WfpError> {
    let code = safe::delete_by_key(engine, ObjectKind::Filter, key);
    check(
        code,
        "deleting",
        format!("filter {name} {{{key}}}"),
        &[codes::FWP_E_FILTER_NOT_FOUND, codes::FWP_E_NOT_FOUND],
    )
    .map(drop)
}

/// How the installed objects differ from the policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Filters the policy has and the engine does not.
    pub missing: Vec<String>,
    /// Filters of ours the policy does not have.
    pub unexpected: Vec<String>,
    /// Filters present with another layer, conditions, action, flags, accounts or sublayer.
    pub different: Vec<String>,
    /// Problems with the sublayer.
    pub sublayer: Vec<String>,
}

impl VerifyReport {
    /// The differences as diff lines: `+` missing, `-` unexpected, `~` different.
    pub fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self.missing.iter().map(|m| format!("+ {m}")).collect();
        out.extend(self.unexpected.iter().map(|u| format!("- {u}")));
        out.extend(
            self.different
                .iter()
                .chain(&self.sublayer)
                .map(|d| format!("~ {d}")),
        );
        out
    }

    /// Whether everything matches.
    pub fn in_sync(&self) -> bool {
        self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.different.is_empty()
            && self.sublayer.is_empty()
    }
}

fn compare(spec: &FilterSpec, found: &InstalledFilter) -> Vec<String> {
    let mut out = Vec::new();
    if found.layer != spec.layer {
        out.push("layer".to_string());
    }
    if found.action != safe::ACTION_BLOCK {
        out.push(format!("action 0x{:X}", found.action));
    }
    if found.flags & spec.flags != spec.flags {
        out.push(format!("flags 0x{:X}", found.flags));
    }
    if found.flags & safe::FILTER_FLAG_DISABLED != 0 {
        out.push("disabled".to_string());
    }
    if found.sublayer != crate::ids::WFP_SUBLAYER {
        out.push(format!("sublayer {}", found.sublayer));
    }
    if found.conditions.len() != spec.conditions.len() {
        out.push(format!("{} conditions", found.conditions.len()));
        return out;
    }
    for (want, have) in spec.conditions.iter().zip(&found.conditions) {
        match (want, have) {
            (Condition::User(a), Some(Condition::User(b))) => {
                let want: BTreeSet<Sid> = sd::granted_accounts(a)
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                match sd::granted_accounts(b) {
                    Ok(sids) if sids.iter().cloned().collect::<BTreeSet<_>>() == want => {}
                    Ok(sids) => out.push(format!(
                        "accounts {}",
                        sids.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(",")
                    )),
                    Err(e) => out.push(format!("user condition ({e})")),
                }
            }
            (want, Some(have)) if want == have => {}
            (_, have) => out.push(format!("condition {have:?}")),
        }
    }
    out
}

/// Compares the engine's objects of our provider with what the policy renders.
pub fn verify(api: &dyn Fwpm, policy: &Policy, accounts: &[Sid]) -> Result<VerifyReport, Error> {
    let specs = spec::filters(policy, accounts)?;
    let engine = Engine::open(api)?;
    let (filters, sublayers) = {
        // One read-only transaction: both enumerations see the same moment.
        let snapshot = engine.read_transaction()?;
        let found = (safe::our_filters(&engine)?, safe::our_sublayers(&engine)?);
        snapshot.commit()?;
        found
    };
    let mut report = VerifyReport::default();
    match sublayers.iter().find(|s| s.key == crate::ids::WFP_SUBLAYER) {
        None => report.sublayer.push("sublayer userwall is missing".into()),
        Some(s) => {
            if s.weight != spec::SUBLAYER_WEIGHT {
                report.sublayer.push(format!(
                    "sublayer weight is 0x{:04X}, not 0x{:04X}",
                    s.weight,
                    spec::SUBLAYER_WEIGHT
                ));
            }
            if s.flags & spec::OBJECT_FLAG_PERSISTENT == 0 {
                report.sublayer.push("sublayer is not persistent".into());
            }
        }
    }
    for spec in &specs {
        match filters.iter().find(|f| f.key == spec.key) {
            None => report.missing.push(describe(spec)),
            Some(found) => {
                let diffs = compare(spec, found);
                if !diffs.is_empty() {
                    report
                        .different
                        .push(format!("{}: {}", describe(spec), diffs.join(", ")));
                }
            }
        }
    }
    for found in &filters {
        if !specs.iter().any(|s| s.key == found.key) {
            report
                .unexpected
                .push(format!("filter {} {{{}}}", found.name, found.key));
        }
    }
    Ok(report)
}

/// What uninstall removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UninstallReport {
    /// Filters deleted.
    pub filters_removed: usize,
}

/// Deletes our filters, then our sublayer, then our provider, in one transaction, tolerating
/// not-found; then enumerates again and fails if anything of ours is left.
pub fn uninstall(api: &dyn Fwpm) -> Result<UninstallReport, Error> {
    let engine = Engine::open(api)?;
    let filters_removed = {
        let txn = engine.transaction()?;
        // Keys first, deletes after: the enumeration is finished before anything is removed.
        let filters = safe::our_filters(&engine)?;
        for filter in &filters {
            delete_filter(&engine, filter.key.0, &filter.name)?;
        }
        let code = safe::delete_by_key(&engine, ObjectKind::Sublayer, crate::ids::WFP_SUBLAYER);
        check(
            code,
            "deleting sublayer",
            "userwall",
            &[codes::FWP_E_SUBLAYER_NOT_FOUND, codes::FWP_E_NOT_FOUND],
        )?;
        let code = safe::delete_by_key(&engine, ObjectKind::Provider, crate::ids::WFP_PROVIDER);
        check(
            code,
            "deleting provider",
            "userwall",
            &[codes::FWP_E_PROVIDER_NOT_FOUND, codes::FWP_E_NOT_FOUND],
        )?;
        txn.commit()?;
        filters.len()
    };
    let mut remaining: Vec<String> = safe::our_filters(&engine)?
        .iter()
        .map(|f| format!("filter {} {{{}}}", f.name, f.key))
        .collect();
    remaining.extend(
        safe::our_sublayers(&engine)?
            .iter()
            .map(|s| format!("sublayer {{{}}}", s.key)),
    );
    if !remaining.is_empty() {
        return Err(Error::Remaining(remaining));
    }
    Ok(UninstallReport { filters_removed })
}
