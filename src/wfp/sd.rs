//! The self-relative security descriptor that conditions a WFP filter on ALE_USER_ID.
//!
//! BFE evaluates the condition by an access check of the flow's token against this descriptor
//! for FWP_ACTRL_MATCH_FILTER; granted means the condition is true. One ACCESS_ALLOWED ACE per
//! sandbox account makes the filter match any of them (the ACEs are ORed). The layout is built
//! by hand so it can be produced and checked on any platform; it is what
//! `BuildSecurityDescriptorW` produces for the same DACL (SDDL `D:(A;;CC;;;<SID>)...`), with no
//! owner, group or SACL.

use super::sid::{Sid, SidError};

/// The access right the filter engine checks (`FWP_ACTRL_MATCH_FILTER`).
pub const FWP_ACTRL_MATCH_FILTER: u32 = 0x0000_0001;

const SD_REVISION: u8 = 1;
const SE_DACL_PRESENT: u16 = 0x0004;
const SE_SELF_RELATIVE: u16 = 0x8000;
const ACL_REVISION: u8 = 2;
const ACCESS_ALLOWED_ACE_TYPE: u8 = 0;
const SD_HEADER_LEN: usize = 20;
const ACL_HEADER_LEN: usize = 8;
const ACE_HEADER_AND_MASK_LEN: usize = 8;

/// Why a descriptor was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SdError {
    /// No account was given: a descriptor that grants nobody would match no flow.
    #[error("a user condition needs at least one account")]
    NoAccounts,
    /// Too large for the ACL's 16-bit size.
    #[error("{0} accounts do not fit in one ACL")]
    TooMany(usize),
    /// A blob that is not a self-relative descriptor of the shape we build.
    #[error("not a userwall user-condition descriptor: {0}")]
    Malformed(String),
    /// A SID inside it is malformed.
    #[error(transparent)]
    Sid(#[from] SidError),
}

/// Builds the descriptor for these accounts, in the order given, duplicates dropped.
pub fn build(accounts: &[Sid]) -> Result<Vec<u8>, SdError> {
    let mut unique: Vec<&Sid> = Vec::new();
    for sid in accounts {
        if !unique.contains(&sid) {
            unique.push(sid);
        }
    }
    if unique.is_empty() {
        return Err(SdError::NoAccounts);
    }
    let acl_len: usize = ACL_HEADER_LEN
        + unique
            .iter()
            .map(|s| ACE_HEADER_AND_MASK_LEN + s.byte_len())
            .sum::<usize>();
    let acl_len_u16 = u16::try_from(acl_len).map_err(|_| SdError::TooMany(unique.len()))?;
    let mut out = Vec::with_capacity(SD_HEADER_LEN + acl_len);
    out.push(SD_REVISION);
    out.push(0);
    out.extend_from_slice(&(SE_SELF_RELATIVE | SE_DACL_PRESENT).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // owner: none
    out.extend_from_slice(&0u32.to_le_bytes()); // group: none
    out.extend_from_slice(&0u32.to_le_bytes()); // SACL: none
    out.extend_from_slice(&(SD_HEADER_LEN as u32).to_le_bytes()); // DACL right after the header
    out.push(ACL_REVISION);
    out.push(0);
    out.extend_from_slice(&acl_len_u16.to_le_bytes());
    out.extend_from_slice(&(unique.len() as u16).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    for sid in unique {
        // SIDs are 8 + 4n bytes, so every ACE is already 4-byte aligned.
        let ace_len = (ACE_HEADER_AND_MASK_LEN + sid.byte_len()) as u16;
        out.push(ACCESS_ALLOWED_ACE_TYPE);
        out.push(0);
        out.extend_from_slice(&ace_len.to_le_bytes());
        out.extend_from_slice(&FWP_ACTRL_MATCH_FILTER.to_le_bytes());
        out.extend_from_slice(&sid.to_bytes());
    }
    Ok(out)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ]))
}

/// Reads back the accounts a descriptor grants FWP_ACTRL_MATCH_FILTER to, refusing anything
/// else: an owner, group or SACL, a deny ACE, another mask or trailing bytes. Verify uses it to
/// compare an installed filter's accounts with the expected ones.
pub fn granted_accounts(blob: &[u8]) -> Result<Vec<Sid>, SdError> {
    let bad = |why: &str| SdError::Malformed(why.to_string());
    if blob.len() < SD_HEADER_LEN || blob[0] != SD_REVISION {
        return Err(bad("no revision-1 header"));
    }
    let control = u16_at(blob, 2).ok_or_else(|| bad("short header"))?;
    if control != SE_SELF_RELATIVE | SE_DACL_PRESENT {
        return Err(bad("control flags are not self-relative with a DACL"));
    }
    let (owner, group, sacl, dacl) = (
        u32_at(blob, 4),
        u32_at(blob, 8),
        u32_at(blob, 12),
        u32_at(blob, 16),
    );
    if owner != Some(0) || group != Some(0) || sacl != Some(0) {
        return Err(bad("it has an owner, a group or a SACL"));
    }
    let dacl = dacl.ok_or_else(|| bad("short header"))? as usize;
    if blob.get(dacl) != Some(&ACL_REVISION) {
        return Err(bad("the DACL is missing or not revision 2"));
    }
    let acl_len = usize::from(u16_at(blob, dacl + 2).ok_or_else(|| bad("short ACL"))?);
    let count = usize::from(u16_at(blob, dacl + 4).ok_or_else(|| bad("short ACL"))?);
    if dacl + acl_len != blob.len() {
        return Err(bad("the ACL size does not match the blob"));
    }
    let mut at = dacl + ACL_HEADER_LEN;
    let mut sids = Vec::with_capacity(count);
    for _ in 0..count {
        let ace_type = *blob.get(at).ok_or_else(|| bad("truncated ACE"))?;
        let ace_len = usize::from(u16_at(blob, at + 2).ok_or_else(|| bad("truncated ACE"))?);
        if ace_type != ACCESS_ALLOWED_ACE_TYPE {
            return Err(bad("an ACE that does not allow"));
        }
        if u32_at(blob, at + 4) != Some(FWP_ACTRL_MATCH_FILTER) {
            return Err(bad("an ACE with another access mask"));
        }
        let end = at
            .checked_add(ace_len)
            .filter(|&e| e <= blob.len() && ace_len >= ACE_HEADER_AND_MASK_LEN)
            .ok_or_else(|| bad("an ACE runs past the ACL"))?;
        let (sid, used) = Sid::from_bytes(&blob[at + ACE_HEADER_AND_MASK_LEN..end])?;
        if ACE_HEADER_AND_MASK_LEN + used != ace_len {
            return Err(bad("an ACE's size does not match its SID"));
        }
        sids.push(sid);
        at = end;
    }
    if at != blob.len() {
        return Err(bad("bytes after the last ACE"));
    }
    Ok(sids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(s: &str) -> Sid {
        s.parse().unwrap()
    }

    #[test]
    fn one_account_matches_the_documented_layout() {
        let blob = build(&[sid("S-1-5-21-1-2-3-1001")]).unwrap();
        #[rustfmt::skip]
        let expected: Vec<u8> = vec![
            1, 0, 0x04, 0x80,          // revision, sbz1, control SE_DACL_PRESENT | SE_SELF_RELATIVE
            0, 0, 0, 0,  0, 0, 0, 0,   // owner, group
            0, 0, 0, 0,  20, 0, 0, 0,  // SACL, DACL at 20
            2, 0, 44, 0, 1, 0, 0, 0,   // ACL revision 2, size 44, one ACE
            0, 0, 36, 0, 1, 0, 0, 0,   // ACCESS_ALLOWED, size 36, mask FWP_ACTRL_MATCH_FILTER
            1, 5, 0, 0, 0, 0, 0, 5,    // SID revision 1, 5 sub-authorities, authority 5
            21, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0xE9, 3, 0, 0,
        ];
        assert_eq!(blob, expected);
    }

    #[test]
    fn several_accounts_give_one_ace_each_and_read_back() {
        let accounts = [
            sid("S-1-5-21-1-2-3-1001"),
            sid("S-1-5-21-1-2-3-1002"),
            sid("S-1-5-21-1-2-3-1001"),
        ];
        let blob = build(&accounts).unwrap();
        assert_eq!(granted_accounts(&blob).unwrap(), accounts[..2].to_vec());
    }

    #[test]
    fn no_account_is_refused() {
        assert_eq!(build(&[]), Err(SdError::NoAccounts));
    }

    #[test]
    fn foreign_shapes_are_refused_on_read() {
        let blob = build(&[sid("S-1-5-21-1-2-3-1001")]).unwrap();
        let mut deny = blob.clone();
        deny[28] = 1; // ACCESS_DENIED
        assert!(granted_accounts(&deny).is_err());
        let mut mask = blob.clone();
        mask[32] = 2;
        assert!(granted_accounts(&mask).is_err());
        let mut trailing = blob.clone();
        trailing.push(0);
        assert!(granted_accounts(&trailing).is_err());
        for cut in 0..blob.len() {
            assert!(
                granted_accounts(&blob[..cut]).is_err(),
                "a {cut}-byte prefix was accepted"
            );
        }
    }
}
