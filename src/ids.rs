//! Every fixed identifier userwall owns, in one place.
//!
//! The rule keys are GUIDs because the Windows backend uses them as WFP filter keys: it deletes
//! and re-adds each filter by key, and uninstall finds our filters by them. **Changing a key
//! orphans the object an older install created under the old key.** When a key must change,
//! keep the old one in a retired list so uninstall and upgrades can still find it.
//!
//! The nftables names live here too, for the same reason: they are how userwall recognises its
//! own table and never touches anyone else's.

use std::fmt;

/// A 128-bit GUID, written as a hex literal in the same field order Windows prints.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Guid(pub u128);

impl Guid {
    /// The registry form, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lower case.
    pub fn to_registry_string(self) -> String {
        let v = self.0;
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            (v >> 96) as u32,
            (v >> 80) as u16,
            (v >> 64) as u16,
            (v >> 48) as u16,
            v & 0xffff_ffff_ffff
        )
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_registry_string())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

/// The stable key of one policy rule (a WFP filter key on Windows).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct RuleKey(pub Guid);

impl fmt::Display for RuleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

const fn rule_key(v: u128) -> RuleKey {
    RuleKey(Guid(v))
}

/// ICMP echo and every other outbound ICMPv4 at connect.
pub const ICMP_CONNECT_V4: RuleKey = rule_key(0x3b146d2e_d593_4505_a053_657963bdff01);
/// ICMPv6 at connect.
pub const ICMP_CONNECT_V6: RuleKey = rule_key(0x1bb141d8_0eed_4e6d_a426_57aeb3a5e51b);
/// ICMPv4 socket bind (WFP resource assignment).
pub const ICMP_RESOURCE_ASSIGNMENT_V4: RuleKey = rule_key(0xe6249709_2ec0_419c_8888_d90d2220b718);
/// ICMPv6 socket bind (WFP resource assignment).
pub const ICMP_RESOURCE_ASSIGNMENT_V6: RuleKey = rule_key(0x4d730439_a73a_444c_9cb2_445119ae52c4);
/// Remote port 53 over IPv4.
pub const DNS_V4: RuleKey = rule_key(0xa8447219_38c2_4f03_a159_f88bc6478446);
/// Remote port 53 over IPv6.
pub const DNS_V6: RuleKey = rule_key(0x5dea632b_ced1_4ca9_9c0f_81c3cb987990);
/// Remote port 853 over IPv4.
pub const DNS_OVER_TLS_V4: RuleKey = rule_key(0x012fc4df_28ed_4c0a_b27d_fe11d40618b7);
/// Remote port 853 over IPv6.
pub const DNS_OVER_TLS_V6: RuleKey = rule_key(0xaa8bac1c_953e_4f09_9698_50b3b54ad86f);
/// Remote port 445 over IPv4.
pub const SMB_V4: RuleKey = rule_key(0x94175d13_985f_4b49_953e_8ef34cfca377);
/// Remote port 445 over IPv6.
pub const SMB_V6: RuleKey = rule_key(0x95fbc98f_ac06_43d8_a763_916e0b810d01);
/// Remote port 139 over IPv4.
pub const NETBIOS_SESSION_V4: RuleKey = rule_key(0xbf159cb0_9ac7_48bd_b8cf_a211eed484b0);
/// Remote port 139 over IPv6.
pub const NETBIOS_SESSION_V6: RuleKey = rule_key(0x56b1ea86_e7b3_45fc_a0bc_f9a325f17843);
/// Everything but loopback over IPv4 (the `offline` preset).
pub const OFFLINE_V4: RuleKey = rule_key(0x19f2af71_5c2b_4aec_944c_13620fff3a9c);
/// Everything but loopback over IPv6 (the `offline` preset).
pub const OFFLINE_V6: RuleKey = rule_key(0x2cc2246a_b988_4bab_b537_dd5058c3ae6e);
/// Inbound connections from off the host over IPv4 (the `offline` preset).
pub const OFFLINE_RECV_ACCEPT_V4: RuleKey = rule_key(0x354389f7_8b3f_4298_b287_2cc52971b3e4);
/// Inbound connections from off the host over IPv6 (the `offline` preset).
pub const OFFLINE_RECV_ACCEPT_V6: RuleKey = rule_key(0xf6186e4e_4357_4926_8554_97fadaa84cd7);

/// The persistent WFP provider every object of ours names.
pub const WFP_PROVIDER: Guid = Guid(0x0c4b6bec_075d_4f36_b1a7_fb378225c233);
/// The persistent WFP sublayer that holds our filters.
pub const WFP_SUBLAYER: Guid = Guid(0x8cc6b9b7_05ed_4d31_9529_01af75c073f2);

/// Keys that earlier setup versions installed and the current policy no longer uses.
/// Empty so far: nothing has been retired.
pub const RETIRED_RULE_KEYS: &[RuleKey] = &[];

/// The nftables table userwall owns, in the `inet` family so one rule set covers IPv4, IPv6 and
/// IPv4-mapped IPv6 sockets.
pub const NFT_TABLE: &str = "userwall";
/// The family of [`NFT_TABLE`].
pub const NFT_FAMILY: &str = "inet";
/// The named set holding the sandbox uids.
pub const NFT_UID_SET: &str = "sandbox_uids";
/// The base chain on the output hook; it only dispatches sandbox-owned packets.
pub const NFT_OUTPUT_CHAIN: &str = "output";
/// The regular chain that holds the rules rendered from the policy.
pub const NFT_EGRESS_CHAIN: &str = "sandbox_egress";
/// Every rule comment we write starts with this, so a rule of ours is recognisable on sight.
pub const NFT_COMMENT_PREFIX: &str = "userwall:";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_and_sublayer_are_frozen_and_distinct_from_rule_keys() {
        assert_eq!(
            WFP_PROVIDER.to_string(),
            "0c4b6bec-075d-4f36-b1a7-fb378225c233"
        );
        assert_eq!(
            WFP_SUBLAYER.to_string(),
            "8cc6b9b7-05ed-4d31-9529-01af75c073f2"
        );
        let rows = crate::policy::BYPASS_SURFACES
            .iter()
            .chain(crate::policy::OFFLINE_EXTRA);
        assert!(rows
            .map(|r| r.key.0)
            .all(|k| k != WFP_PROVIDER && k != WFP_SUBLAYER));
    }

    #[test]
    fn registry_form_keeps_field_order() {
        assert_eq!(
            ICMP_CONNECT_V4.to_string(),
            "3b146d2e-d593-4505-a053-657963bdff01"
        );
    }
}
