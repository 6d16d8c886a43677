//! Golden renderings of each preset: the JSON batch we send to nft and, beside it, the same
//! table as `nft -s list table` prints it. `UPDATE_GOLDEN=1 cargo test --test golden` rewrites
//! them; review the diff before committing. The end-to-end suite applies each JSON file on a real
//! kernel and checks nft lists exactly the text file.

#![cfg(target_os = "linux")]

use pretty_assertions::assert_eq;
use std::path::PathBuf;
use userwall::nft::render::{render, to_nft_text};
use userwall::policy::{Policy, Preset};

/// The uids every golden file is rendered for.
pub const GOLDEN_UIDS: [u32; 2] = [47101, 47102];

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn check(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    assert_eq!(expected, actual, "{name} differs from its golden file");
}

#[test]
fn every_preset_matches_its_golden_files() {
    for preset in Preset::ALL {
        let rendered = render(&Policy::preset(preset), &GOLDEN_UIDS.into_iter().collect());
        let json = serde_json::to_string_pretty(&rendered.table.replace_batch()).unwrap() + "\n";
        check(&format!("{}.json", preset.name()), &json);
        check(
            &format!("{}.nft", preset.name()),
            &to_nft_text(&rendered.table),
        );
    }
}

#[test]
fn bypass_surfaces_renders_eighteen_egress_rules_and_no_bind_rules() {
    let rendered = render(
        &Policy::preset(Preset::BypassSurfaces),
        &GOLDEN_UIDS.into_iter().collect(),
    );
    // 2 ICMP rules (the resource-assignment rows are covered by them) + 8 port rows x 2.
    assert_eq!(rendered.egress.len(), 18);
    assert!(rendered
        .egress
        .iter()
        .all(|r| !r.source.contains("resource_assignment")));
    let icmp = rendered
        .egress
        .iter()
        .find(|r| r.source == "icmp_connect_v4")
        .unwrap();
    let comment = icmp.rule.comment.as_deref().unwrap();
    assert!(comment.contains("icmp_resource_assignment_v4"), "{comment}");
    assert!(rendered
        .egress
        .iter()
        .all(|r| r.rule.comment.as_deref().unwrap().len() <= 128));
}
