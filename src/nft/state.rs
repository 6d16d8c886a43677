//! Our table as data: what the policy renders and what `nft -j list` reads back share this
//! shape, so comparing the two is comparing values.

use crate::ids::{NFT_EGRESS_CHAIN, NFT_FAMILY, NFT_OUTPUT_CHAIN, NFT_TABLE, NFT_UID_SET};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// The named set of sandbox uids.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UidSet {
    /// The set's element type as nft names it (`uid`).
    pub type_name: String,
    /// The uids.
    pub uids: BTreeSet<u32>,
    /// Set flags (`interval`, `timeout`, ...); ours has none.
    pub flags: Vec<String>,
    /// Elements that are not single uids (ranges, timeouts), as nft printed them; ours has none.
    pub odd_elements: Vec<String>,
}

/// The hook of a base chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BaseHook {
    /// `filter`.
    pub chain_type: String,
    /// `output`.
    pub hook: String,
    /// Priority; 0 is `filter`, after `dstnat` (-100), so a port rewritten by an output DNAT
    /// rule is matched by the port it really goes to.
    pub priority: i64,
    /// `accept`: the chain only blocks sandbox traffic and must not change anyone else's.
    pub policy: String,
}

impl BaseHook {
    /// Our output hook.
    pub fn output() -> Self {
        BaseHook {
            chain_type: "filter".into(),
            hook: "output".into(),
            priority: 0,
            policy: "accept".into(),
        }
    }
}

/// A chain of our table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Chain {
    /// Its name.
    pub name: String,
    /// Set for a base chain.
    pub hook: Option<BaseHook>,
}

/// A rule of our table.
#[derive(Clone, Debug, Serialize)]
pub struct NftRule {
    /// The chain it sits in.
    pub chain: String,
    /// Its comment; ours always start with [`crate::ids::NFT_COMMENT_PREFIX`].
    pub comment: Option<String>,
    /// The expression list, counters zeroed.
    pub expr: Vec<Value>,
    /// The `nft` text, when we rendered the rule ourselves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The kernel's handle, for rules read back (not part of the comparison).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handle: Option<u64>,
}

/// Rules compare by what they do, not by how they were written down.
impl PartialEq for NftRule {
    fn eq(&self, other: &Self) -> bool {
        self.chain == other.chain && self.comment == other.comment && self.expr == other.expr
    }
}

impl Eq for NftRule {}

/// The state of our table.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize)]
pub struct TableState {
    /// The uid set, when present.
    pub uid_set: Option<UidSet>,
    /// Chains in listing order.
    pub chains: Vec<Chain>,
    /// Rules in listing order, across chains.
    pub rules: Vec<NftRule>,
    /// The table's flags as nft printed them, when any are set (`dormant` switches every chain
    /// of the table off). Ours has none.
    pub table_flags: Option<String>,
    /// Objects in the table that userwall never creates (`set other`, `map x`, `chain y`, ...).
    /// Their presence means the table is not ours to replace.
    pub foreign_objects: Vec<String>,
}

/// What `nft -j list table` said that we could not read as our table.
#[derive(Debug, thiserror::Error)]
#[error("unexpected nft JSON listing: {0}")]
pub struct ListingError(pub String);

fn zero_counters(expr: &mut Value) {
    if let Some(obj) = expr.as_object_mut() {
        if let Some(counter) = obj.get_mut("counter") {
            if counter.is_object() {
                *counter = json!({"packets": 0, "bytes": 0});
            }
        }
    }
}

impl TableState {
    /// Parses `nft -j list table inet userwall` output. Counters are zeroed so they do not
    /// count as drift; use [`rule_counters`] to read them.
    pub fn from_listing(listing: &Value) -> Result<TableState, ListingError> {
        let items = listing
            .get("nftables")
            .and_then(Value::as_array)
            .ok_or_else(|| ListingError("no top-level \"nftables\" array".into()))?;
        let mut state = TableState::default();
        for item in items {
            let Some((kind, body)) = item.as_object().and_then(|o| o.iter().next()) else {
                continue;
            };
            let name = body.get("name").and_then(Value::as_str).unwrap_or_default();
            match kind.as_str() {
                "metainfo" => {}
                "table" => {
                    // nft 1.0.6 prints a garbled value for table flags (the family or the
                    // release name instead of "dormant"), so only the key's presence counts.
                    if let Some(flags) = body.get("flags") {
                        state.table_flags = Some(flags.to_string());
                    }
                }
                "set" if name == NFT_UID_SET => {
                    let type_name = match body.get("type") {
                        Some(Value::String(s)) => s.clone(),
                        other => other.map(Value::to_string).unwrap_or_default(),
                    };
                    let flags = match body.get("flags") {
                        Some(Value::Array(a)) => a
                            .iter()
                            .map(|f| {
                                f.as_str()
                                    .map(str::to_string)
                                    .unwrap_or_else(|| f.to_string())
                            })
                            .collect(),
                        Some(other) => vec![other.to_string()],
                        None => Vec::new(),
                    };
                    let mut uids = BTreeSet::new();
                    let mut odd_elements = Vec::new();
                    for elem in body
                        .get("elem")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        match elem.as_u64().and_then(|u| u32::try_from(u).ok()) {
                            Some(uid) => {
                                uids.insert(uid);
                            }
                            None => odd_elements.push(elem.to_string()),
                        }
                    }
                    state.uid_set = Some(UidSet {
                        type_name,
                        uids,
                        flags,
                        odd_elements,
                    });
                }
                "chain" if name == NFT_OUTPUT_CHAIN || name == NFT_EGRESS_CHAIN => {
                    let hook = body
                        .get("hook")
                        .and_then(Value::as_str)
                        .map(|hook| BaseHook {
                            chain_type: str_field(body, "type"),
                            hook: hook.to_string(),
                            priority: body.get("prio").and_then(Value::as_i64).unwrap_or_default(),
                            policy: str_field(body, "policy"),
                        });
                    state.chains.push(Chain {
                        name: name.to_string(),
                        hook,
                    });
                }
                "rule" => {
                    let chain = str_field(body, "chain");
                    let comment = body
                        .get("comment")
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    let mut expr: Vec<Value> = body
                        .get("expr")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    expr.iter_mut().for_each(zero_counters);
                    let handle = body.get("handle").and_then(Value::as_u64);
                    state.rules.push(NftRule {
                        chain,
                        comment,
                        expr,
                        text: None,
                        handle,
                    });
                }
                _ => state.foreign_objects.push(format!("{kind} {name}")),
            }
        }
        Ok(state)
    }

    /// Whether anything in the table could be someone else's: an object of a kind or name we
    /// never create, or a rule without our comment prefix.
    pub fn foreign_content(&self) -> Vec<String> {
        let mut found = self.foreign_objects.clone();
        for rule in &self.rules {
            let ours = rule
                .comment
                .as_deref()
                .is_some_and(|c| c.starts_with(crate::ids::NFT_COMMENT_PREFIX));
            if !ours {
                let handle = rule
                    .handle
                    .map(|h| format!(" handle {h}"))
                    .unwrap_or_default();
                let comment = match &rule.comment {
                    Some(c) => format!("comment {c:?}"),
                    None => "no comment".into(),
                };
                found.push(format!("rule in chain {}{handle} ({comment})", rule.chain));
            }
        }
        found
    }

    /// The nft JSON batch that replaces our table with this state in one transaction. The
    /// add-delete-add idiom works whether or not the table exists, and deleting a table removes
    /// everything in it, so no stale rule of ours survives.
    pub fn replace_batch(&self) -> Value {
        let table = json!({"family": NFT_FAMILY, "name": NFT_TABLE});
        let mut cmds = vec![
            json!({"add": {"table": table}}),
            json!({"delete": {"table": table}}),
            json!({"add": {"table": table}}),
        ];
        if let Some(set) = &self.uid_set {
            let mut body = json!({
                "family": NFT_FAMILY, "table": NFT_TABLE, "name": NFT_UID_SET,
                "type": set.type_name,
            });
            if !set.uids.is_empty() {
                body["elem"] = json!(set.uids.iter().collect::<Vec<_>>());
            }
            cmds.push(json!({"add": {"set": body}}));
        }
        for chain in &self.chains {
            let mut body = json!({"family": NFT_FAMILY, "table": NFT_TABLE, "name": chain.name});
            if let Some(hook) = &chain.hook {
                body["type"] = json!(hook.chain_type);
                body["hook"] = json!(hook.hook);
                body["prio"] = json!(hook.priority);
                body["policy"] = json!(hook.policy);
            }
            cmds.push(json!({"add": {"chain": body}}));
        }
        for rule in &self.rules {
            let mut body = json!({
                "family": NFT_FAMILY, "table": NFT_TABLE, "chain": rule.chain, "expr": rule.expr,
            });
            if let Some(comment) = &rule.comment {
                body["comment"] = json!(comment);
            }
            cmds.push(json!({"add": {"rule": body}}));
        }
        json!({"nftables": cmds})
    }
}

impl TableState {
    /// [`TableState::replace_batch`] as the text the boot unit's batch file holds.
    pub fn replace_batch_text(&self) -> String {
        serde_json::to_string_pretty(&self.replace_batch()).expect("a JSON value serializes") + "\n"
    }
}

/// The batch that deletes our table. It fails if the table is gone, so callers check first.
pub fn delete_batch() -> Value {
    json!({"nftables": [{"delete": {"table": {"family": NFT_FAMILY, "name": NFT_TABLE}}}]})
}

/// Packet counts per rule comment, from a listing.
pub fn rule_counters(listing: &Value) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let items = listing
        .get("nftables")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for rule in items.filter_map(|i| i.get("rule")) {
        let Some(comment) = rule.get("comment").and_then(Value::as_str) else {
            continue;
        };
        let packets = rule
            .get("expr")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| e.get("counter")?.get("packets")?.as_u64())
            .sum();
        out.insert(comment.to_string(), packets);
    }
    out
}

fn str_field(body: &Value, key: &str) -> String {
    body.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}
