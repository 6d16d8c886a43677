//! The policy: a table of rule rows that every backend renders.
//!
//! A row says *what* to block for the sandbox accounts, in platform-neutral terms: a family, the
//! WFP layer it belongs to, what it matches and its action. The nftables backend renders rows to
//! rules in our table; the WFP backend renders the same rows to filters, keyed by the row's key.
//! Nothing about a backend's syntax lives here.

use crate::ids::{self, RuleKey};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// The IP family a rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// IPv4, including IPv4 sent by an IPv6 socket to a `::ffff:a.b.c.d` address.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Both families, v4 first.
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    /// `v4` or `v6`, as used in rule names.
    pub fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }
}

/// Where a rule sits in the connection's life. These are WFP's two ALE layers we use; the
/// nftables backend sees every packet on the output hook and renders only `Connect` rows (a
/// `ResourceAssignment` row is covered by its `Connect` twin, see [`Rule::covered_by`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// Outbound connect / first packet to a destination (ALE_AUTH_CONNECT).
    Connect,
    /// Socket bind, explicit or implicit (ALE_RESOURCE_ASSIGNMENT).
    ResourceAssignment,
    /// An inbound connection, or the first packet from a new remote (ALE_AUTH_RECV_ACCEPT):
    /// a sandboxed process that listens could otherwise serve a remote peer.
    RecvAccept,
}

/// What a rule matches, beyond the sandbox account and the family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Match {
    /// ICMP for v4, ICMPv6 for v6: every type.
    Icmp,
    /// A remote port, over any transport protocol that has ports (TCP, UDP, UDP-Lite, SCTP,
    /// DCCP).
    RemotePort(u16),
    /// Everything whose destination is not this host's loopback.
    AllButLoopback,
}

/// What happens to matching traffic. Only blocking exists today; the type keeps the table
/// honest about it and leaves room for a permit row without changing every caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Refuse the traffic.
    Block,
}

/// One row of the policy table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// Stable snake_case name; nftables comments and WFP display names are built from it.
    pub name: &'static str,
    /// Stable key; the WFP filter key.
    #[serde(serialize_with = "serialize_key")]
    pub key: RuleKey,
    /// One line saying why the rule exists.
    pub purpose: &'static str,
    /// Address family.
    pub family: Family,
    /// WFP layer.
    pub layer: Layer,
    /// What it matches.
    pub matches: Match,
    /// What it does.
    pub action: Action,
}

fn serialize_key<S: serde::Serializer>(key: &RuleKey, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&key.to_string())
}

impl Rule {
    /// For a row that nftables renders through another row, the name of that row: the ICMP
    /// resource-assignment rows (nftables has no bind hook, and the connect rule already stops
    /// every ICMP packet such a socket could send) and the inbound offline rows.
    pub fn covered_by(&self) -> Option<&'static str> {
        match (self.layer, self.matches, self.family) {
            (Layer::ResourceAssignment, Match::Icmp, Family::V4) => Some("icmp_connect_v4"),
            (Layer::ResourceAssignment, Match::Icmp, Family::V6) => Some("icmp_connect_v6"),
            // The output hook drops every packet a sandbox socket sends off the host, replies
            // on an accepted connection included, so an inbound flow can carry nothing back.
            (Layer::RecvAccept, Match::AllButLoopback, Family::V4) => Some("offline_v4"),
            (Layer::RecvAccept, Match::AllButLoopback, Family::V6) => Some("offline_v6"),
            _ => None,
        }
    }
}

/// Ports of the classic bypass channels, named once.
pub mod ports {
    /// DNS.
    pub const DNS: u16 = 53;
    /// DNS over TLS.
    pub const DNS_OVER_TLS: u16 = 853;
    /// SMB over TCP (direct hosting).
    pub const SMB: u16 = 445;
    /// NetBIOS session service.
    pub const NETBIOS_SESSION: u16 = 139;
}

const fn row(
    name: &'static str,
    key: RuleKey,
    purpose: &'static str,
    family: Family,
    layer: Layer,
    matches: Match,
) -> Rule {
    Rule {
        name,
        key,
        purpose,
        family,
        layer,
        matches,
        action: Action::Block,
    }
}

use Family::{V4, V6};
use Layer::{Connect, RecvAccept, ResourceAssignment};

/// The `bypass-surfaces` rows: the classic channels out of a sandbox, for both families.
#[rustfmt::skip]
pub const BYPASS_SURFACES: &[Rule] = &[
    row("icmp_connect_v4", ids::ICMP_CONNECT_V4, "outbound ICMP (ping, ICMP tunnels)", V4, Connect, Match::Icmp),
    row("icmp_connect_v6", ids::ICMP_CONNECT_V6, "outbound ICMPv6 (ping, ICMP tunnels)", V6, Connect, Match::Icmp),
    row("icmp_resource_assignment_v4", ids::ICMP_RESOURCE_ASSIGNMENT_V4, "ICMP socket bind", V4, ResourceAssignment, Match::Icmp),
    row("icmp_resource_assignment_v6", ids::ICMP_RESOURCE_ASSIGNMENT_V6, "ICMPv6 socket bind", V6, ResourceAssignment, Match::Icmp),
    row("dns_v4", ids::DNS_V4, "direct DNS queries, bypassing the system resolver policy", V4, Connect, Match::RemotePort(ports::DNS)),
    row("dns_v6", ids::DNS_V6, "direct DNS queries, bypassing the system resolver policy", V6, Connect, Match::RemotePort(ports::DNS)),
    row("dns_over_tls_v4", ids::DNS_OVER_TLS_V4, "DNS over TLS to any resolver", V4, Connect, Match::RemotePort(ports::DNS_OVER_TLS)),
    row("dns_over_tls_v6", ids::DNS_OVER_TLS_V6, "DNS over TLS to any resolver", V6, Connect, Match::RemotePort(ports::DNS_OVER_TLS)),
    row("smb_v4", ids::SMB_V4, "SMB file shares", V4, Connect, Match::RemotePort(ports::SMB)),
    row("smb_v6", ids::SMB_V6, "SMB file shares", V6, Connect, Match::RemotePort(ports::SMB)),
    row("netbios_session_v4", ids::NETBIOS_SESSION_V4, "NetBIOS session service", V4, Connect, Match::RemotePort(ports::NETBIOS_SESSION)),
    row("netbios_session_v6", ids::NETBIOS_SESSION_V6, "NetBIOS session service", V6, Connect, Match::RemotePort(ports::NETBIOS_SESSION)),
];

/// The rows only `offline` adds: everything but loopback.
#[rustfmt::skip]
pub const OFFLINE_EXTRA: &[Rule] = &[
    row("offline_v4", ids::OFFLINE_V4, "all IPv4 traffic that leaves the host", V4, Connect, Match::AllButLoopback),
    row("offline_v6", ids::OFFLINE_V6, "all IPv6 traffic that leaves the host", V6, Connect, Match::AllButLoopback),
    row("offline_recv_accept_v4", ids::OFFLINE_RECV_ACCEPT_V4, "IPv4 connections from off the host", V4, RecvAccept, Match::AllButLoopback),
    row("offline_recv_accept_v6", ids::OFFLINE_RECV_ACCEPT_V6, "IPv6 connections from off the host", V6, RecvAccept, Match::AllButLoopback),
];

/// A built-in policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// ICMP, DNS, DNS over TLS, SMB and NetBIOS session, on both families.
    #[default]
    BypassSurfaces,
    /// Everything but loopback; the bypass-surface rules still apply on loopback, so a local
    /// resolver stub does not become a DNS path out.
    Offline,
}

impl Preset {
    /// Every preset, for help texts and tests.
    pub const ALL: [Preset; 2] = [Preset::BypassSurfaces, Preset::Offline];

    /// The name used on the command line and in the marker.
    pub fn name(self) -> &'static str {
        match self {
            Preset::BypassSurfaces => "bypass-surfaces",
            Preset::Offline => "offline",
        }
    }

    /// The preset's rows, in the order backends render them: specific rows first, so each
    /// channel is counted by the rule that names it, and the catch-all last.
    pub fn rules(self) -> Vec<Rule> {
        match self {
            Preset::BypassSurfaces => BYPASS_SURFACES.to_vec(),
            Preset::Offline => BYPASS_SURFACES
                .iter()
                .chain(OFFLINE_EXTRA)
                .copied()
                .collect(),
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Preset::ALL.iter().map(|p| p.name()).collect();
                format!("unknown preset {s:?}; choose one of: {}", names.join(", "))
            })
    }
}

/// A policy: a preset's rows. Kept as its own type so a host app can later pass its own rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Which preset the rows came from.
    pub preset: Preset,
    /// The rows.
    pub rules: Vec<Rule>,
}

impl Policy {
    /// The policy of a built-in preset.
    pub fn preset(preset: Preset) -> Self {
        Policy {
            preset,
            rules: preset.rules(),
        }
    }

    /// A short, stable digest of the rows (not of the accounts), recorded in the setup marker so
    /// a policy change is visible without reading the live state. `sha256:` and 16 hex digits.
    pub fn fingerprint(&self) -> String {
        let canonical = serde_json::to_vec(&self.rules).expect("policy rows serialize");
        let digest = Sha256::digest(&canonical);
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }

    /// The row with this name.
    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn bypass_surfaces_has_exactly_twelve_block_rows() {
        let rules = Preset::BypassSurfaces.rules();
        assert_eq!(rules.len(), 12);
        assert!(rules.iter().all(|r| r.action == Action::Block));
    }

    #[test]
    fn names_and_keys_are_unique_across_every_preset() {
        let all: Vec<Rule> = BYPASS_SURFACES
            .iter()
            .chain(OFFLINE_EXTRA)
            .copied()
            .collect();
        let names: BTreeSet<_> = all.iter().map(|r| r.name).collect();
        let keys: BTreeSet<_> = all.iter().map(|r| r.key).collect();
        assert_eq!(names.len(), all.len(), "duplicate rule name");
        assert_eq!(keys.len(), all.len(), "duplicate rule key");
        for retired in ids::RETIRED_RULE_KEYS {
            assert!(
                !keys.contains(retired),
                "retired key {retired} is back in use"
            );
        }
    }

    #[test]
    fn every_rule_exists_for_both_families() {
        for preset in Preset::ALL {
            let rules = preset.rules();
            for rule in &rules {
                let stem = rule
                    .name
                    .strip_suffix(rule.family.suffix())
                    .expect("name ends in family");
                for family in Family::BOTH {
                    let twin = format!("{stem}{}", family.suffix());
                    let found = rules.iter().find(|r| r.name == twin);
                    let found = found.unwrap_or_else(|| panic!("{preset}: {twin} missing"));
                    assert_eq!(found.family, family);
                    assert_eq!((found.layer, found.matches), (rule.layer, rule.matches));
                }
            }
        }
    }

    /// The keys are frozen: an installed Windows filter is found by its key, so a changed key
    /// orphans it. Changing this list is a deliberate act that needs a retired-key entry.
    #[test]
    fn keys_are_frozen() {
        let golden = [
            ("icmp_connect_v4", "3b146d2e-d593-4505-a053-657963bdff01"),
            ("icmp_connect_v6", "1bb141d8-0eed-4e6d-a426-57aeb3a5e51b"),
            (
                "icmp_resource_assignment_v4",
                "e6249709-2ec0-419c-8888-d90d2220b718",
            ),
            (
                "icmp_resource_assignment_v6",
                "4d730439-a73a-444c-9cb2-445119ae52c4",
            ),
            ("dns_v4", "a8447219-38c2-4f03-a159-f88bc6478446"),
            ("dns_v6", "5dea632b-ced1-4ca9-9c0f-81c3cb987990"),
            ("dns_over_tls_v4", "012fc4df-28ed-4c0a-b27d-fe11d40618b7"),
            ("dns_over_tls_v6", "aa8bac1c-953e-4f09-9698-50b3b54ad86f"),
            ("smb_v4", "94175d13-985f-4b49-953e-8ef34cfca377"),
            ("smb_v6", "95fbc98f-ac06-43d8-a763-916e0b810d01"),
            ("netbios_session_v4", "bf159cb0-9ac7-48bd-b8cf-a211eed484b0"),
            ("netbios_session_v6", "56b1ea86-e7b3-45fc-a0bc-f9a325f17843"),
            ("offline_v4", "19f2af71-5c2b-4aec-944c-13620fff3a9c"),
            ("offline_v6", "2cc2246a-b988-4bab-b537-dd5058c3ae6e"),
            (
                "offline_recv_accept_v4",
                "354389f7-8b3f-4298-b287-2cc52971b3e4",
            ),
            (
                "offline_recv_accept_v6",
                "f6186e4e-4357-4926-8554-97fadaa84cd7",
            ),
        ];
        let all: Vec<(&str, String)> = BYPASS_SURFACES
            .iter()
            .chain(OFFLINE_EXTRA)
            .map(|r| (r.name, r.key.to_string()))
            .collect();
        let golden: Vec<(&str, String)> = golden.iter().map(|(n, k)| (*n, k.to_string())).collect();
        pretty_assertions::assert_eq!(all, golden);
    }

    #[test]
    fn offline_keeps_every_bypass_rule_and_adds_the_catch_all_last() {
        let offline = Preset::Offline.rules();
        assert_eq!(&offline[..12], BYPASS_SURFACES);
        assert!(offline[12..]
            .iter()
            .all(|r| r.matches == Match::AllButLoopback));
    }

    #[test]
    fn fingerprint_differs_between_presets_and_is_stable() {
        let a = Policy::preset(Preset::BypassSurfaces).fingerprint();
        let b = Policy::preset(Preset::Offline).fingerprint();
        assert_ne!(a, b);
        assert_eq!(a, Policy::preset(Preset::BypassSurfaces).fingerprint());
        assert!(a.starts_with("sha256:") && a.len() == 23);
    }

    #[test]
    fn preset_names_parse_and_unknown_names_list_the_choices() {
        assert_eq!("offline".parse::<Preset>().unwrap(), Preset::Offline);
        let err = "strict".parse::<Preset>().unwrap_err();
        assert!(
            err.contains("bypass-surfaces") && err.contains("offline"),
            "{err}"
        );
    }
}
