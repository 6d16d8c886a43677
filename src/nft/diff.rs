//! Expected table against live table: the differences a plan shows and `status` reports.

use super::state::{NftRule, TableState};
use serde::Serialize;
use std::fmt;

/// One way the live table differs from what the policy renders.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Difference {
    /// Our table does not exist.
    TableMissing,
    /// The table has flags set (such as `dormant`, which switches all its chains off).
    TableFlags {
        /// What nft printed.
        flags: String,
    },
    /// The uid set is missing.
    UidSetMissing,
    /// The uid set has flags or non-uid elements (ranges, timeouts).
    UidSetShape {
        /// What is odd about it.
        detail: String,
    },
    /// The uid set has another element type.
    UidSetType {
        /// Expected type.
        expected: String,
        /// Live type.
        found: String,
    },
    /// Sandbox uids the policy names but the live set lacks.
    UidsMissing {
        /// The uids.
        uids: Vec<u32>,
    },
    /// Uids in the live set the policy does not name.
    UidsUnexpected {
        /// The uids.
        uids: Vec<u32>,
    },
    /// A chain is missing.
    ChainMissing {
        /// Its name.
        chain: String,
    },
    /// A chain exists with another hook, priority or policy.
    ChainChanged {
        /// Its name.
        chain: String,
    },
    /// A rule is missing.
    RuleMissing {
        /// Chain.
        chain: String,
        /// Comment naming the rule.
        rule: String,
    },
    /// A rule exists that the policy does not render.
    RuleUnexpected {
        /// Chain.
        chain: String,
        /// Its comment, or the empty string.
        rule: String,
    },
    /// A rule with our comment does something else than rendered.
    RuleChanged {
        /// Chain.
        chain: String,
        /// Comment naming the rule.
        rule: String,
    },
    /// All rules are present but in another order.
    RulesReordered {
        /// Chain.
        chain: String,
    },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::TableMissing => write!(
                f,
                "+ table {} {}",
                crate::ids::NFT_FAMILY,
                crate::ids::NFT_TABLE
            ),
            Difference::TableFlags { flags } => {
                write!(
                    f,
                    "~ table inet userwall has flags set ({flags}; dormant turns it off)"
                )
            }
            Difference::UidSetMissing => write!(f, "+ set {}", crate::ids::NFT_UID_SET),
            Difference::UidSetShape { detail } => {
                write!(f, "~ set {} {detail}", crate::ids::NFT_UID_SET)
            }
            Difference::UidSetType { expected, found } => {
                write!(
                    f,
                    "~ set {} type {found} -> {expected}",
                    crate::ids::NFT_UID_SET
                )
            }
            Difference::UidsMissing { uids } => write!(f, "+ sandbox uids {}", join(uids)),
            Difference::UidsUnexpected { uids } => write!(f, "- sandbox uids {}", join(uids)),
            Difference::ChainMissing { chain } => write!(f, "+ chain {chain}"),
            Difference::ChainChanged { chain } => {
                write!(f, "~ chain {chain} (hook, priority or policy)")
            }
            Difference::RuleMissing { chain, rule } => write!(f, "+ rule {chain}: {rule}"),
            Difference::RuleUnexpected { chain, rule } => write!(f, "- rule {chain}: {rule}"),
            Difference::RuleChanged { chain, rule } => write!(f, "~ rule {chain}: {rule}"),
            Difference::RulesReordered { chain } => write!(f, "~ rule order in chain {chain}"),
        }
    }
}

fn join(uids: &[u32]) -> String {
    uids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn label(rule: &NftRule) -> String {
    rule.comment.clone().unwrap_or_default()
}

/// Lists how `live` differs from `expected`. Empty means in sync. `None` for `live` means the
/// table does not exist.
pub fn diff(expected: &TableState, live: Option<&TableState>) -> Vec<Difference> {
    let Some(live) = live else {
        return vec![Difference::TableMissing];
    };
    let mut out = Vec::new();
    if live.table_flags != expected.table_flags {
        out.push(Difference::TableFlags {
            flags: live.table_flags.clone().unwrap_or_default(),
        });
    }
    match (&expected.uid_set, &live.uid_set) {
        (Some(_), None) => out.push(Difference::UidSetMissing),
        (Some(want), Some(have)) => {
            if want.flags != have.flags || want.odd_elements != have.odd_elements {
                let mut detail = Vec::new();
                if !have.flags.is_empty() {
                    detail.push(format!("has flags {}", have.flags.join(",")));
                }
                if !have.odd_elements.is_empty() {
                    detail.push(format!(
                        "holds non-uid elements {}",
                        have.odd_elements.join(" ")
                    ));
                }
                out.push(Difference::UidSetShape {
                    detail: detail.join(" and "),
                });
            }
            if want.type_name != have.type_name {
                out.push(Difference::UidSetType {
                    expected: want.type_name.clone(),
                    found: have.type_name.clone(),
                });
            }
            let missing: Vec<u32> = want.uids.difference(&have.uids).copied().collect();
            let extra: Vec<u32> = have.uids.difference(&want.uids).copied().collect();
            if !missing.is_empty() {
                out.push(Difference::UidsMissing { uids: missing });
            }
            if !extra.is_empty() {
                out.push(Difference::UidsUnexpected { uids: extra });
            }
        }
        (None, _) => {}
    }
    for chain in &expected.chains {
        match live.chains.iter().find(|c| c.name == chain.name) {
            None => out.push(Difference::ChainMissing {
                chain: chain.name.clone(),
            }),
            Some(found) if found != chain => out.push(Difference::ChainChanged {
                chain: chain.name.clone(),
            }),
            Some(_) => {}
        }
    }
    for chain in &expected.chains {
        let want: Vec<&NftRule> = expected
            .rules
            .iter()
            .filter(|r| r.chain == chain.name)
            .collect();
        let have: Vec<&NftRule> = live
            .rules
            .iter()
            .filter(|r| r.chain == chain.name)
            .collect();
        for rule in &want {
            match have.iter().find(|h| h.comment == rule.comment) {
                None => out.push(Difference::RuleMissing {
                    chain: chain.name.clone(),
                    rule: label(rule),
                }),
                Some(h) if h.expr != rule.expr => out.push(Difference::RuleChanged {
                    chain: chain.name.clone(),
                    rule: label(rule),
                }),
                Some(_) => {}
            }
        }
        for rule in &have {
            let known = want.iter().any(|w| w.comment == rule.comment);
            let duplicate = have.iter().filter(|h| h.comment == rule.comment).count() > 1;
            if !known || duplicate {
                out.push(Difference::RuleUnexpected {
                    chain: chain.name.clone(),
                    rule: label(rule),
                });
            }
        }
        let same_members =
            want.len() == have.len() && want.iter().all(|w| have.iter().any(|h| h == w));
        if same_members && want.iter().zip(&have).any(|(w, h)| w != h) {
            out.push(Difference::RulesReordered {
                chain: chain.name.clone(),
            });
        }
    }
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::render::render;
    use crate::policy::{Policy, Preset};
    use std::collections::BTreeSet;

    fn expected(uids: &[u32]) -> TableState {
        render(
            &Policy::preset(Preset::BypassSurfaces),
            &uids.iter().copied().collect::<BTreeSet<_>>(),
        )
        .table
    }

    #[test]
    fn identical_tables_have_no_difference() {
        let want = expected(&[1000]);
        assert_eq!(diff(&want, Some(&want.clone())), vec![]);
    }

    #[test]
    fn absent_table_is_one_difference() {
        assert_eq!(
            diff(&expected(&[1000]), None),
            vec![Difference::TableMissing]
        );
    }

    #[test]
    fn changed_uids_show_both_directions() {
        let live = expected(&[1000, 1001]);
        let d = diff(&expected(&[1000, 1002]), Some(&live));
        assert_eq!(
            d,
            vec![
                Difference::UidsMissing { uids: vec![1002] },
                Difference::UidsUnexpected { uids: vec![1001] }
            ]
        );
    }

    #[test]
    fn a_deleted_rule_and_an_edited_rule_are_named() {
        let want = expected(&[1000]);
        let mut live = want.clone();
        let removed = live.rules.remove(3);
        live.rules[1].expr.pop();
        live.rules[1].expr.push(serde_json::json!({"accept": null}));
        let d = diff(&want, Some(&live));
        assert!(d.contains(&Difference::RuleMissing {
            chain: removed.chain.clone(),
            rule: removed.comment.clone().unwrap()
        }));
        assert!(d.contains(&Difference::RuleChanged {
            chain: live.rules[1].chain.clone(),
            rule: live.rules[1].comment.clone().unwrap()
        }));
        assert_eq!(d.len(), 2, "{d:?}");
    }

    #[test]
    fn an_added_rule_and_a_swapped_order_are_named() {
        let want = expected(&[1000]);
        let mut live = want.clone();
        live.rules.swap(1, 2);
        assert_eq!(
            diff(&want, Some(&live)),
            vec![Difference::RulesReordered {
                chain: "sandbox_egress".into()
            }]
        );
        let mut live = want.clone();
        let mut extra = live.rules[1].clone();
        extra.comment = Some("userwall:someone else's".into());
        live.rules.push(extra);
        assert_eq!(
            diff(&want, Some(&live)),
            vec![Difference::RuleUnexpected {
                chain: "sandbox_egress".into(),
                rule: "userwall:someone else's".into()
            }]
        );
    }

    #[test]
    fn a_duplicated_rule_is_unexpected() {
        let want = expected(&[1000]);
        let mut live = want.clone();
        live.rules.push(live.rules[2].clone());
        let d = diff(&want, Some(&live));
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(matches!(d[0], Difference::RuleUnexpected { .. }));
    }

    #[test]
    fn a_changed_hook_is_named() {
        let want = expected(&[1000]);
        let mut live = want.clone();
        live.chains[0].hook.as_mut().unwrap().policy = "drop".into();
        assert_eq!(
            diff(&want, Some(&live)),
            vec![Difference::ChainChanged {
                chain: "output".into()
            }]
        );
    }
}
