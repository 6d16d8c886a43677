//! Policy rows to the nftables table we own.
//!
//! Each rendered rule carries both its JSON expression list (what we send and what we compare
//! against the live table) and the equivalent `nft` text (for humans, plans and golden files).
//! The JSON is written in the form `nft -j list` prints it back, so a freshly applied table
//! compares equal to its rendering and a repeated setup writes nothing.
//!
//! # Verdicts
//! A plain drop makes a TCP connect retransmit its SYN until it times out, so the verdict is
//! chosen per protocol, each measured on Linux 6.18 with nft 1.0.6:
//! - TCP: `reject with tcp reset`, connect() fails at once with ECONNREFUSED on both families.
//! - Other port protocols (UDP, UDP-Lite, SCTP, DCCP): `drop`, send() fails at once with EPERM.
//! - ICMPv4: `drop`, sendto() fails at once with EPERM.
//! - ICMPv6: `reject with icmpv6 admin-prohibited`. A drop here is silent (sendto() reports
//!   success); the reject makes a connected ping socket fail with EACCES. The reject's reply is
//!   addressed to this host, so nothing reaches the wire either way.

use super::state::{Chain, NftRule, TableState, UidSet};
use crate::ids::{NFT_COMMENT_PREFIX, NFT_EGRESS_CHAIN, NFT_OUTPUT_CHAIN};
use crate::policy::{Family, Match, Policy};
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// How a rendered rule refuses traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// `drop`: the sender's syscall fails with EPERM.
    Drop,
    /// `reject with tcp reset`: connect() fails with ECONNREFUSED.
    RejectTcpReset,
    /// `reject with icmpv6 admin-prohibited`: a connected socket fails with EACCES.
    RejectIcmpv6AdminProhibited,
}

impl Verdict {
    /// The errno the sender sees when this verdict hits it.
    pub fn sender_errno(self) -> i32 {
        match self {
            Verdict::Drop => libc::EPERM,
            Verdict::RejectTcpReset => libc::ECONNREFUSED,
            Verdict::RejectIcmpv6AdminProhibited => libc::EACCES,
        }
    }

    fn expr(self) -> Value {
        match self {
            Verdict::Drop => json!({"drop": null}),
            Verdict::RejectTcpReset => json!({"reject": {"type": "tcp reset"}}),
            Verdict::RejectIcmpv6AdminProhibited => {
                json!({"reject": {"type": "icmpv6", "expr": "admin-prohibited"}})
            }
        }
    }

    fn text(self) -> &'static str {
        match self {
            Verdict::Drop => "drop",
            Verdict::RejectTcpReset => "reject with tcp reset",
            Verdict::RejectIcmpv6AdminProhibited => "reject with icmpv6 admin-prohibited",
        }
    }
}

/// Which transport protocols a rendered rule covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// ICMP (v4) or ICMPv6 (v6).
    Icmp,
    /// TCP only.
    Tcp,
    /// UDP, UDP-Lite, SCTP and DCCP: the port-carrying protocols other than TCP.
    PortProtocolsButTcp,
    /// Every protocol but TCP.
    AllButTcp,
}

/// The port-carrying transports other than TCP, in the order nft lists them (by number).
pub const PORT_PROTOCOLS_BUT_TCP: [&str; 4] = ["udp", "dccp", "sctp", "udplite"];

/// One rule of our table, with where it came from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RenderedRule {
    /// The policy row it renders.
    pub source: &'static str,
    /// The family it applies to.
    pub family: Family,
    /// Protocols covered.
    pub transport: Transport,
    /// The remote port, for port rules.
    pub port: Option<u16>,
    /// Whether loopback destinations are exempt.
    pub exempts_loopback: bool,
    /// The verdict.
    pub verdict: Verdict,
    /// The rule as it sits in the table.
    pub rule: NftRule,
}

impl RenderedRule {
    /// Whether this rule catches a packet of a sandbox-owned socket. `protocol` is the
    /// transport ("tcp", "udp", "icmp"), `port` its remote port, `loopback` whether the
    /// destination is on this host's loopback.
    pub fn catches(
        &self,
        family: Family,
        protocol: &str,
        port: Option<u16>,
        loopback: bool,
    ) -> bool {
        if family != self.family || (loopback && self.exempts_loopback) {
            return false;
        }
        let protocol_matches = match self.transport {
            Transport::Icmp => protocol == "icmp",
            Transport::Tcp => protocol == "tcp",
            Transport::PortProtocolsButTcp => PORT_PROTOCOLS_BUT_TCP.contains(&protocol),
            Transport::AllButTcp => protocol != "tcp",
        };
        protocol_matches && (self.port.is_none() || self.port == port)
    }
}

/// The whole desired table for a policy and a set of sandbox uids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// Every rule of the egress chain, in order.
    pub egress: Vec<RenderedRule>,
    /// The table as it must be live.
    pub table: TableState,
}

fn matches(op: &str, left: Value, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

fn counter() -> Value {
    json!({"counter": {"packets": 0, "bytes": 0}})
}

fn nfproto(family: Family) -> (Value, String) {
    let name = match family {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    };
    (
        matches("==", meta("nfproto"), json!(name)),
        format!("meta nfproto {name}"),
    )
}

fn comment(source: &str, detail: &str) -> String {
    if detail.is_empty() {
        format!("{NFT_COMMENT_PREFIX}{source}")
    } else {
        format!("{NFT_COMMENT_PREFIX}{source} {detail}")
    }
}

/// The comment of the dispatch rule in the output chain.
pub fn dispatch_comment() -> String {
    format!("{NFT_COMMENT_PREFIX}dispatch sandbox uids to {NFT_EGRESS_CHAIN}")
}

struct Builder {
    source: &'static str,
    family: Family,
    exprs: Vec<Value>,
    words: Vec<String>,
}

impl Builder {
    fn new(source: &'static str, family: Family) -> Self {
        Builder {
            source,
            family,
            exprs: Vec::new(),
            words: Vec::new(),
        }
    }

    fn with(mut self, expr: Value, text: impl Into<String>) -> Self {
        self.exprs.push(expr);
        self.words.push(text.into());
        self
    }

    fn finish(
        mut self,
        transport: Transport,
        port: Option<u16>,
        exempts_loopback: bool,
        verdict: Verdict,
        detail: &str,
    ) -> RenderedRule {
        self.exprs.push(counter());
        self.words.push("counter".into());
        self.exprs.push(verdict.expr());
        self.words.push(verdict.text().into());
        let comment = comment(self.source, detail);
        self.words.push(format!("comment \"{comment}\""));
        RenderedRule {
            source: self.source,
            family: self.family,
            transport,
            port,
            exempts_loopback,
            verdict,
            rule: NftRule {
                chain: NFT_EGRESS_CHAIN.to_string(),
                comment: Some(comment),
                expr: self.exprs,
                text: Some(self.words.join(" ")),
                handle: None,
            },
        }
    }
}

/// `(also covers a, b: why)` for the rows nftables renders through `rule`, or nothing.
fn covered_note(policy: &Policy, rule: &crate::policy::Rule, why: &str) -> Option<String> {
    let covered: Vec<&str> = policy
        .rules
        .iter()
        .filter(|r| r.covered_by() == Some(rule.name))
        .map(|r| r.name)
        .collect();
    (!covered.is_empty()).then(|| format!("(also covers {}: {why})", covered.join(", ")))
}

fn render_row(rule: &crate::policy::Rule, policy: &Policy) -> Vec<RenderedRule> {
    if rule.covered_by().is_some() {
        return Vec::new();
    }
    let family = rule.family;
    let new = || Builder::new(rule.name, family);
    let (proto_match, proto_text) = nfproto(family);
    match rule.matches {
        Match::Icmp => {
            // `meta l4proto icmp` implies IPv4 (and ipv6-icmp IPv6), so nft drops the nfproto
            // match when it lists the rule; we render the listed form.
            let (l4, verdict) = match family {
                Family::V4 => ("icmp", Verdict::Drop),
                Family::V6 => ("ipv6-icmp", Verdict::RejectIcmpv6AdminProhibited),
            };
            let b = new().with(
                matches("==", meta("l4proto"), json!(l4)),
                format!("meta l4proto {l4}"),
            );
            let detail =
                covered_note(policy, rule, "nftables has no bind hook").unwrap_or_default();
            vec![b.finish(Transport::Icmp, None, false, verdict, &detail)]
        }
        Match::RemotePort(port) => {
            let tcp = new()
                .with(proto_match.clone(), proto_text.clone())
                .with(
                    matches("==", payload("tcp", "dport"), json!(port)),
                    format!("tcp dport {port}"),
                )
                .finish(
                    Transport::Tcp,
                    Some(port),
                    false,
                    Verdict::RejectTcpReset,
                    "tcp",
                );
            let others = PORT_PROTOCOLS_BUT_TCP.join(", ");
            let other = new()
                .with(proto_match, proto_text)
                .with(
                    matches(
                        "==",
                        meta("l4proto"),
                        json!({"set": PORT_PROTOCOLS_BUT_TCP}),
                    ),
                    format!("meta l4proto {{ {others} }}"),
                )
                .with(
                    matches("==", payload("th", "dport"), json!(port)),
                    format!("th dport {port}"),
                )
                .finish(
                    Transport::PortProtocolsButTcp,
                    Some(port),
                    false,
                    Verdict::Drop,
                    &PORT_PROTOCOLS_BUT_TCP.join(","),
                );
            vec![tcp, other]
        }
        Match::AllButLoopback => {
            let also = covered_note(policy, rule, "replies cannot leave")
                .map(|note| format!(" {note}"))
                .unwrap_or_default();
            // Traffic to any of this host's own addresses is routed over `lo`, which is what
            // "loopback" means to WFP's IS_LOOPBACK flag as well.
            let not_lo = (
                matches("!=", meta("oifname"), json!("lo")),
                "oifname != \"lo\"",
            );
            let tcp = new()
                .with(proto_match.clone(), proto_text.clone())
                .with(not_lo.0.clone(), not_lo.1)
                .with(
                    matches("==", meta("l4proto"), json!("tcp")),
                    "meta l4proto tcp",
                )
                .finish(
                    Transport::Tcp,
                    None,
                    true,
                    Verdict::RejectTcpReset,
                    &format!("tcp{also}"),
                );
            let other = new()
                .with(proto_match, proto_text)
                .with(not_lo.0, not_lo.1)
                .finish(
                    Transport::AllButTcp,
                    None,
                    true,
                    Verdict::Drop,
                    &format!("other protocols{also}"),
                );
            vec![tcp, other]
        }
    }
}

/// Renders the policy for these uids. `uids` must not be empty (an empty set would install a
/// table that blocks nobody, which is never what a caller meant); callers check that first.
pub fn render(policy: &Policy, uids: &BTreeSet<u32>) -> Rendered {
    let egress: Vec<RenderedRule> = policy
        .rules
        .iter()
        .flat_map(|r| render_row(r, policy))
        .collect();
    let dispatch = NftRule {
        chain: NFT_OUTPUT_CHAIN.to_string(),
        comment: Some(dispatch_comment()),
        expr: vec![
            matches(
                "==",
                meta("skuid"),
                json!(format!("@{}", crate::ids::NFT_UID_SET)),
            ),
            json!({"jump": {"target": NFT_EGRESS_CHAIN}}),
        ],
        text: Some(format!(
            "meta skuid @{} jump {NFT_EGRESS_CHAIN} comment \"{}\"",
            crate::ids::NFT_UID_SET,
            dispatch_comment()
        )),
        handle: None,
    };
    let mut rules = vec![dispatch];
    rules.extend(egress.iter().map(|r| r.rule.clone()));
    let table = TableState {
        table_flags: None,
        uid_set: Some(UidSet {
            type_name: "uid".into(),
            uids: uids.clone(),
            flags: Vec::new(),
            odd_elements: Vec::new(),
        }),
        chains: vec![
            Chain {
                name: NFT_OUTPUT_CHAIN.into(),
                hook: Some(super::state::BaseHook::output()),
            },
            Chain {
                name: NFT_EGRESS_CHAIN.into(),
                hook: None,
            },
        ],
        rules,
        foreign_objects: Vec::new(),
    };
    Rendered { egress, table }
}

/// The same table as `nft` text, in the layout `nft -s list table` prints. The
/// golden files keep this beside the JSON so a reviewer can read what is installed.
pub fn to_nft_text(table: &TableState) -> String {
    let mut out = format!(
        "table {} {} {{\n",
        crate::ids::NFT_FAMILY,
        crate::ids::NFT_TABLE
    );
    if let Some(set) = &table.uid_set {
        let elems: Vec<String> = set.uids.iter().map(u32::to_string).collect();
        out += &format!(
            "\tset {} {{\n\t\ttype {}\n",
            crate::ids::NFT_UID_SET,
            set.type_name
        );
        if !elems.is_empty() {
            out += &format!("\t\telements = {{ {} }}\n", elems.join(", "));
        }
        out += "\t}\n";
    }
    for chain in &table.chains {
        out += &format!("\n\tchain {} {{\n", chain.name);
        if let Some(hook) = &chain.hook {
            out += &format!(
                "\t\ttype {} hook {} priority {}; policy {};\n",
                hook.chain_type,
                hook.hook,
                if hook.priority == 0 {
                    "filter".to_string()
                } else {
                    hook.priority.to_string()
                },
                hook.policy
            );
        }
        for rule in table.rules.iter().filter(|r| r.chain == chain.name) {
            let text = rule
                .text
                .clone()
                .unwrap_or_else(|| serde_json::to_string(&rule.expr).unwrap());
            out += &format!("\t\t{text}\n");
        }
        out += "\t}\n";
    }
    out += "}\n";
    out
}
