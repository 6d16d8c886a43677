//! Policy rows to the WFP objects that carry them: one persistent provider, one persistent
//! sublayer, and one persistent block filter per row, each conditioned on ALE_USER_ID.
//!
//! Everything here is data and platform-neutral, so the exact objects can be reviewed and
//! tested on Linux; the Windows call layer only translates them into `FWPM_*0` structures.

use super::sd;
use super::sid::Sid;
use crate::ids::{Guid, RuleKey};
use crate::policy::{Family, Layer, Match, Policy, Rule};

/// A WFP filtering layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LayerKey(pub Guid);

/// A WFP condition field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FieldKey(pub Guid);

/// FWPM_LAYER_ALE_AUTH_CONNECT_V4.
pub const ALE_AUTH_CONNECT_V4: LayerKey = LayerKey(Guid(0xc38d57d1_05a7_4c33_904f_7fbceee60e82));
/// FWPM_LAYER_ALE_AUTH_CONNECT_V6.
pub const ALE_AUTH_CONNECT_V6: LayerKey = LayerKey(Guid(0x4a72393b_319f_44bc_84c3_ba54dcb3b6b4));
/// FWPM_LAYER_ALE_RESOURCE_ASSIGNMENT_V4.
pub const ALE_RESOURCE_ASSIGNMENT_V4: LayerKey =
    LayerKey(Guid(0x1247d66d_0b60_4a15_8d44_7155d0f53a0c));
/// FWPM_LAYER_ALE_RESOURCE_ASSIGNMENT_V6.
pub const ALE_RESOURCE_ASSIGNMENT_V6: LayerKey =
    LayerKey(Guid(0x55a650e1_5f0a_4eca_a653_88f53b26aa8c));

/// FWPM_LAYER_ALE_AUTH_RECV_ACCEPT_V4.
pub const ALE_AUTH_RECV_ACCEPT_V4: LayerKey =
    LayerKey(Guid(0xe1cd9fe7_f4b5_4273_96c0_592e487b8650));
/// FWPM_LAYER_ALE_AUTH_RECV_ACCEPT_V6.
pub const ALE_AUTH_RECV_ACCEPT_V6: LayerKey =
    LayerKey(Guid(0xa3b42c97_9f04_4672_b87e_cee9c483257f));

/// FWPM_CONDITION_ALE_USER_ID.
pub const ALE_USER_ID: FieldKey = FieldKey(Guid(0xaf043a0a_b34d_4f86_979c_c90371af6e66));
/// FWPM_CONDITION_IP_PROTOCOL.
pub const IP_PROTOCOL: FieldKey = FieldKey(Guid(0x3971ef2b_623e_4f9a_8cb1_6e79b806b9a7));
/// FWPM_CONDITION_IP_REMOTE_PORT.
pub const IP_REMOTE_PORT: FieldKey = FieldKey(Guid(0xc35a604d_d22b_4e1a_91b4_68f674ee674b));
/// FWPM_CONDITION_FLAGS.
pub const FLAGS: FieldKey = FieldKey(Guid(0x632ce23b_5167_435c_86d7_e903684aa80c));

/// FWP_CONDITION_FLAG_IS_LOOPBACK.
pub const FLAG_IS_LOOPBACK: u32 = 0x0000_0001;
/// IPPROTO_ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IPPROTO_ICMPV6.
pub const IPPROTO_ICMPV6: u8 = 58;

/// FWPM_FILTER_FLAG_PERSISTENT.
pub const FILTER_FLAG_PERSISTENT: u32 = 0x1;
/// FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT.
pub const FILTER_FLAG_CLEAR_ACTION_RIGHT: u32 = 0x8;
/// FWPM_SUBLAYER_FLAG_PERSISTENT / FWPM_PROVIDER_FLAG_PERSISTENT.
pub const OBJECT_FLAG_PERSISTENT: u32 = 0x1;

/// Our sublayer's weight: the highest there is.
///
/// WFP evaluates every sublayer, heaviest first, and a block in any of them wins over a permit
/// in another, except that a *hard* permit (one whose filter cleared the action right) in a
/// heavier sublayer is final and no later sublayer can block it. Sitting at the top means no
/// other product's sublayer is heavier than ours. A product that also claims 0xFFFF ties with
/// us, and WFP leaves the order of equal weights undefined: that is a limit, not a guarantee.
pub const SUBLAYER_WEIGHT: u16 = 0xFFFF;

/// Our filters' weight inside our sublayer, as an FWP_UINT8 range index (the top 4 bits of the
/// effective weight; BFE fills the rest from the conditions). Our sublayer holds only blocks, so
/// their order among themselves decides nothing; the top range says so plainly.
pub const FILTER_WEIGHT_RANGE: u8 = 15;

/// The filter flags: persistent (survives reboot, which is how Windows gets boot persistence),
/// and an explicit hard block. A block is hard by default; clearing the action right says so
/// in the object itself, so no callout or later filter may soften it.
pub const FILTER_FLAGS: u32 = FILTER_FLAG_PERSISTENT | FILTER_FLAG_CLEAR_ACTION_RIGHT;

/// One condition of a filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// ALE_USER_ID, FWP_MATCH_EQUAL, FWP_SECURITY_DESCRIPTOR_TYPE: the flow's token is granted
    /// FWP_ACTRL_MATCH_FILTER by this self-relative descriptor.
    User(Vec<u8>),
    /// IP_PROTOCOL, FWP_MATCH_EQUAL, FWP_UINT8.
    Protocol(u8),
    /// IP_REMOTE_PORT, FWP_MATCH_EQUAL, FWP_UINT16. Without a protocol condition it matches
    /// every transport with ports (and ICMP whose code equals the port, which the ICMP filters
    /// block anyway).
    RemotePort(u16),
    /// FLAGS, FWP_MATCH_FLAGS_NONE_SET, FWP_UINT32 FWP_CONDITION_FLAG_IS_LOOPBACK: the flow does
    /// not stay on this host.
    NotLoopback,
}

/// FWP_MATCH_TYPE values we use.
pub mod match_type {
    /// FWP_MATCH_EQUAL.
    pub const EQUAL: i32 = 0;
    /// FWP_MATCH_FLAGS_NONE_SET.
    pub const FLAGS_NONE_SET: i32 = 8;
}

/// FWP_DATA_TYPE values we use.
pub mod data_type {
    /// FWP_UINT8.
    pub const UINT8: i32 = 1;
    /// FWP_UINT16.
    pub const UINT16: i32 = 2;
    /// FWP_UINT32.
    pub const UINT32: i32 = 3;
    /// FWP_SECURITY_DESCRIPTOR_TYPE.
    pub const SECURITY_DESCRIPTOR: i32 = 14;
}

impl Condition {
    /// The field it tests.
    pub fn field(&self) -> FieldKey {
        match self {
            Condition::User(_) => ALE_USER_ID,
            Condition::Protocol(_) => IP_PROTOCOL,
            Condition::RemotePort(_) => IP_REMOTE_PORT,
            Condition::NotLoopback => FLAGS,
        }
    }

    /// Its FWP_MATCH_TYPE.
    pub fn match_type(&self) -> i32 {
        match self {
            Condition::NotLoopback => match_type::FLAGS_NONE_SET,
            _ => match_type::EQUAL,
        }
    }

    /// The FWP_DATA_TYPE of its value.
    pub fn data_type(&self) -> i32 {
        match self {
            Condition::User(_) => data_type::SECURITY_DESCRIPTOR,
            Condition::Protocol(_) => data_type::UINT8,
            Condition::RemotePort(_) => data_type::UINT16,
            Condition::NotLoopback => data_type::UINT32,
        }
    }
}

/// The fields a layer offers, of those we use (Microsoft's table of conditions per layer):
/// every ALE layer we use knows the user, the protocol and the flags; connect and receive-accept
/// know the remote port, resource assignment does not.
pub fn layer_has_field(layer: LayerKey, field: FieldKey) -> bool {
    let connect = [
        ALE_AUTH_CONNECT_V4,
        ALE_AUTH_CONNECT_V6,
        ALE_AUTH_RECV_ACCEPT_V4,
        ALE_AUTH_RECV_ACCEPT_V6,
    ]
    .contains(&layer);
    let assignment = layer == ALE_RESOURCE_ASSIGNMENT_V4 || layer == ALE_RESOURCE_ASSIGNMENT_V6;
    match field {
        f if f == IP_REMOTE_PORT => connect,
        f if f == ALE_USER_ID || f == IP_PROTOCOL || f == FLAGS => connect || assignment,
        _ => false,
    }
}

/// One filter as installed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterSpec {
    /// The filter key: the policy row's key.
    pub key: RuleKey,
    /// The display name, `userwall <row name>`.
    pub name: String,
    /// The display description: the row's purpose.
    pub description: String,
    /// The layer.
    pub layer: LayerKey,
    /// ANDed conditions, user first.
    pub conditions: Vec<Condition>,
    /// [`FILTER_FLAGS`].
    pub flags: u32,
    /// [`FILTER_WEIGHT_RANGE`].
    pub weight_range: u8,
}

/// The layer of a row.
pub fn layer_of(rule: &Rule) -> LayerKey {
    match (rule.layer, rule.family) {
        (Layer::Connect, Family::V4) => ALE_AUTH_CONNECT_V4,
        (Layer::Connect, Family::V6) => ALE_AUTH_CONNECT_V6,
        (Layer::ResourceAssignment, Family::V4) => ALE_RESOURCE_ASSIGNMENT_V4,
        (Layer::ResourceAssignment, Family::V6) => ALE_RESOURCE_ASSIGNMENT_V6,
        (Layer::RecvAccept, Family::V4) => ALE_AUTH_RECV_ACCEPT_V4,
        (Layer::RecvAccept, Family::V6) => ALE_AUTH_RECV_ACCEPT_V6,
    }
}

/// Why the policy cannot be expressed as WFP filters.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// The user condition could not be built.
    #[error(transparent)]
    Descriptor(#[from] sd::SdError),
    /// A row asks a layer for a field it does not have.
    #[error("rule {rule}: its layer has no {field} field")]
    FieldNotAtLayer {
        /// The row.
        rule: &'static str,
        /// The field's name.
        field: &'static str,
    },
}

fn field_name(field: FieldKey) -> &'static str {
    match field {
        f if f == ALE_USER_ID => "ALE_USER_ID",
        f if f == IP_PROTOCOL => "IP_PROTOCOL",
        f if f == IP_REMOTE_PORT => "IP_REMOTE_PORT",
        f if f == FLAGS => "FLAGS",
        _ => "unknown",
    }
}

/// The filters for a policy and its accounts.
pub fn filters(policy: &Policy, accounts: &[Sid]) -> Result<Vec<FilterSpec>, SpecError> {
    let descriptor = sd::build(accounts)?;
    policy
        .rules
        .iter()
        .map(|rule| {
            let layer = layer_of(rule);
            let mut conditions = vec![Condition::User(descriptor.clone())];
            conditions.push(match (rule.matches, rule.family) {
                (Match::Icmp, Family::V4) => Condition::Protocol(IPPROTO_ICMP),
                (Match::Icmp, Family::V6) => Condition::Protocol(IPPROTO_ICMPV6),
                (Match::RemotePort(port), _) => Condition::RemotePort(port),
                (Match::AllButLoopback, _) => Condition::NotLoopback,
            });
            if let Some(c) = conditions
                .iter()
                .find(|c| !layer_has_field(layer, c.field()))
            {
                return Err(SpecError::FieldNotAtLayer {
                    rule: rule.name,
                    field: field_name(c.field()),
                });
            }
            Ok(FilterSpec {
                key: rule.key,
                name: format!("userwall {}", rule.name),
                description: rule.purpose.to_string(),
                layer,
                conditions,
                flags: FILTER_FLAGS,
                weight_range: FILTER_WEIGHT_RANGE,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Preset;

    fn account() -> Vec<Sid> {
        vec!["S-1-5-21-1-2-3-1001".parse().unwrap()]
    }

    #[test]
    fn bypass_surfaces_is_twelve_filters_at_the_documented_layers() {
        let f = filters(&Policy::preset(Preset::BypassSurfaces), &account()).unwrap();
        assert_eq!(f.len(), 12);
        let at = |name: &str| {
            f.iter()
                .find(|s| s.name == format!("userwall {name}"))
                .unwrap()
        };
        assert_eq!(at("icmp_connect_v4").layer, ALE_AUTH_CONNECT_V4);
        assert_eq!(at("icmp_connect_v4").conditions[1], Condition::Protocol(1));
        assert_eq!(
            at("icmp_resource_assignment_v4").layer,
            ALE_RESOURCE_ASSIGNMENT_V4
        );
        assert_eq!(
            at("icmp_resource_assignment_v6").layer,
            ALE_RESOURCE_ASSIGNMENT_V6
        );
        assert_eq!(
            at("icmp_resource_assignment_v6").conditions[1],
            Condition::Protocol(58)
        );
        for (name, port) in [
            ("dns", 53),
            ("dns_over_tls", 853),
            ("smb", 445),
            ("netbios_session", 139),
        ] {
            for (fam, layer) in [("v4", ALE_AUTH_CONNECT_V4), ("v6", ALE_AUTH_CONNECT_V6)] {
                let spec = at(&format!("{name}_{fam}"));
                assert_eq!(
                    (spec.layer, &spec.conditions[1]),
                    (layer, &Condition::RemotePort(port))
                );
            }
        }
    }

    #[test]
    fn every_filter_is_a_persistent_hard_block_on_the_users_descriptor() {
        for preset in Preset::ALL {
            let policy = Policy::preset(preset);
            for (spec, rule) in filters(&policy, &account())
                .unwrap()
                .iter()
                .zip(&policy.rules)
            {
                assert_eq!(spec.key, rule.key, "the filter key is the row key");
                assert_eq!(
                    spec.flags,
                    FILTER_FLAG_PERSISTENT | FILTER_FLAG_CLEAR_ACTION_RIGHT
                );
                let Condition::User(blob) = &spec.conditions[0] else {
                    panic!("user condition first")
                };
                assert_eq!(sd::granted_accounts(blob).unwrap(), account());
                assert_eq!(
                    spec.conditions[0].data_type(),
                    data_type::SECURITY_DESCRIPTOR
                );
                assert!(spec
                    .conditions
                    .iter()
                    .all(|c| layer_has_field(spec.layer, c.field())));
            }
        }
    }

    #[test]
    fn offline_blocks_everything_not_loopback_without_any_permit() {
        let f = filters(&Policy::preset(Preset::Offline), &account()).unwrap();
        assert_eq!(f.len(), 16);
        let catch_all: Vec<&FilterSpec> = f
            .iter()
            .filter(|s| s.conditions.contains(&Condition::NotLoopback))
            .collect();
        assert_eq!(catch_all.len(), 4);
        assert!(catch_all
            .iter()
            .all(|s| s.conditions[1].match_type() == match_type::FLAGS_NONE_SET));
        for layer in [ALE_AUTH_RECV_ACCEPT_V4, ALE_AUTH_RECV_ACCEPT_V6] {
            assert!(
                catch_all.iter().any(|s| s.layer == layer),
                "inbound connections are covered"
            );
        }
    }

    #[test]
    fn a_port_at_resource_assignment_is_refused() {
        let mut policy = Policy::preset(Preset::BypassSurfaces);
        policy.rules[4].layer = Layer::ResourceAssignment;
        let err = filters(&policy, &account()).unwrap_err();
        assert_eq!(
            err,
            SpecError::FieldNotAtLayer {
                rule: "dns_v4",
                field: "IP_REMOTE_PORT"
            }
        );
    }

    #[test]
    fn no_account_is_refused() {
        assert!(filters(&Policy::preset(Preset::BypassSurfaces), &[]).is_err());
    }
}
