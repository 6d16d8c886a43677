//! Windows security identifiers, parsed from and printed to their `S-1-...` string form and
//! encoded in the binary layout a security descriptor carries. Pure Rust, so the security
//! descriptor for the ALE_USER_ID condition can be built and checked on any platform.

use std::fmt;
use std::str::FromStr;

/// The most sub-authorities a SID may have.
pub const MAX_SUB_AUTHORITIES: usize = 15;

/// A SID.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sid {
    /// The 48-bit identifier authority (5 for NT AUTHORITY).
    pub authority: u64,
    /// The sub-authorities, last one usually the relative id.
    pub sub_authorities: Vec<u32>,
}

/// Why a SID string or blob was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{input:?} is not a SID: {why}")]
pub struct SidError {
    /// What was given.
    pub input: String,
    /// What is wrong.
    pub why: &'static str,
}

impl Sid {
    /// The binary form: revision 1, the count, the authority big-endian in 6 bytes, then each
    /// sub-authority little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.byte_len());
        out.push(1);
        out.push(self.sub_authorities.len() as u8);
        out.extend_from_slice(&self.authority.to_be_bytes()[2..]);
        for sub in &self.sub_authorities {
            out.extend_from_slice(&sub.to_le_bytes());
        }
        out
    }

    /// Its length in bytes: 8 plus 4 per sub-authority.
    pub fn byte_len(&self) -> usize {
        8 + 4 * self.sub_authorities.len()
    }

    /// Reads a SID from the front of `bytes`; returns it and how many bytes it took.
    pub fn from_bytes(bytes: &[u8]) -> Result<(Sid, usize), SidError> {
        let err = |why| SidError {
            input: format!("{} bytes", bytes.len()),
            why,
        };
        if bytes.len() < 8 {
            return Err(err("shorter than a SID header"));
        }
        if bytes[0] != 1 {
            return Err(err("revision is not 1"));
        }
        let count = usize::from(bytes[1]);
        if count > MAX_SUB_AUTHORITIES {
            return Err(err("more than 15 sub-authorities"));
        }
        let len = 8 + 4 * count;
        if bytes.len() < len {
            return Err(err("truncated sub-authorities"));
        }
        let mut authority = [0u8; 8];
        authority[2..].copy_from_slice(&bytes[2..8]);
        let sub_authorities = bytes[8..len]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok((
            Sid {
                authority: u64::from_be_bytes(authority),
                sub_authorities,
            },
            len,
        ))
    }

    /// Whether the SID lies in the space of ordinary accounts: `S-1-5-21-<domain>-<rid>` with a
    /// relative id of 1000 or more, or an Entra ID user `S-1-12-1-...`. SYSTEM, LocalService, NetworkService, BUILTIN\Administrators,
    /// Users, Everyone, Authenticated Users, the built-in Administrator (-500) and Guest (-501)
    /// and the well-known domain groups (below 1000) all fall outside it. Necessary, not
    /// sufficient: a group an administrator created also gets a relative id of 1000 or more, so
    /// the Windows resolver must also require LookupAccountNameW's SidTypeUser.
    pub fn is_ordinary_user_account(&self) -> bool {
        let machine_or_domain = self.authority == 5
            && self.sub_authorities.first() == Some(&21)
            && self.sub_authorities.len() >= 5
            && self.sub_authorities.last().is_some_and(|&rid| rid >= 1000);
        // Microsoft Entra ID (Azure AD) users: S-1-12-1-<four sub-authorities>.
        let entra_user = self.authority == 12
            && self.sub_authorities.first() == Some(&1)
            && self.sub_authorities.len() == 5;
        machine_or_domain || entra_user
    }
}

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S-1-")?;
        if self.authority < (1 << 32) {
            write!(f, "{}", self.authority)?;
        } else {
            write!(f, "0x{:012X}", self.authority)?;
        }
        for sub in &self.sub_authorities {
            write!(f, "-{sub}")?;
        }
        Ok(())
    }
}

impl FromStr for Sid {
    type Err = SidError;

    fn from_str(s: &str) -> Result<Sid, SidError> {
        let err = |why| SidError {
            input: s.to_string(),
            why,
        };
        let mut parts = s.split('-');
        if !parts.next().is_some_and(|p| p.eq_ignore_ascii_case("S")) {
            return Err(err("it does not start with S-"));
        }
        if parts.next() != Some("1") {
            return Err(err("only revision 1 exists"));
        }
        let authority_text = parts.next().ok_or_else(|| err("no identifier authority"))?;
        let authority = match authority_text
            .strip_prefix("0x")
            .or_else(|| authority_text.strip_prefix("0X"))
        {
            Some(hex) => u64::from_str_radix(hex, 16).map_err(|_| err("bad hex authority"))?,
            None => authority_text
                .parse::<u64>()
                .map_err(|_| err("bad authority"))?,
        };
        if authority >= 1 << 48 {
            return Err(err("the authority is wider than 48 bits"));
        }
        let sub_authorities = parts
            .map(|p| {
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err("a sub-authority is not a decimal number"));
                }
                p.parse::<u32>()
                    .map_err(|_| err("a sub-authority exceeds 32 bits"))
            })
            .collect::<Result<Vec<u32>, SidError>>()?;
        if sub_authorities.len() > MAX_SUB_AUTHORITIES {
            return Err(err("more than 15 sub-authorities"));
        }
        Ok(Sid {
            authority,
            sub_authorities,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_bytes_round_trip() {
        for text in [
            "S-1-5-18",
            "S-1-5-21-1004336348-1177238915-682003330-1001",
            "S-1-1-0",
            "S-1-0x123456789ABC-7",
        ] {
            let sid: Sid = text.parse().unwrap();
            assert_eq!(sid.to_string(), text);
            let bytes = sid.to_bytes();
            assert_eq!(bytes.len(), sid.byte_len());
            assert_eq!(Sid::from_bytes(&bytes).unwrap(), (sid, bytes.len()));
        }
    }

    #[test]
    fn the_binary_layout_is_the_documented_one() {
        let sid: Sid = "S-1-5-32-544".parse().unwrap();
        assert_eq!(
            sid.to_bytes(),
            [1, 2, 0, 0, 0, 0, 0, 5, 32, 0, 0, 0, 0x20, 2, 0, 0]
        );
    }

    #[test]
    fn malformed_strings_are_refused() {
        for bad in [
            "",
            "S-1",
            "S-2-5-18",
            "X-1-5-18",
            "S-1-5--18",
            "S-1-5-18-",
            "S-1-5-+18",
            "S-1-5-4294967296",
            "S-1-281474976710656-1",
            &format!("S-1-5{}", "-1".repeat(16)),
        ] {
            assert!(bad.parse::<Sid>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn only_ordinary_user_accounts_qualify() {
        let user = |s: &str| s.parse::<Sid>().unwrap().is_ordinary_user_account();
        assert!(user("S-1-5-21-1004336348-1177238915-682003330-1001"));
        assert!(
            user("S-1-12-1-1234567890-1234567890-1234567890-1234567890"),
            "an Entra ID user"
        );
        for principal in [
            "S-1-5-18",                                     // SYSTEM
            "S-1-5-19",                                     // LocalService
            "S-1-5-20",                                     // NetworkService
            "S-1-5-32-544",                                 // Administrators
            "S-1-5-32-545",                                 // Users
            "S-1-1-0",                                      // Everyone
            "S-1-5-11",                                     // Authenticated Users
            "S-1-5-21-1004336348-1177238915-682003330-500", // Administrator
            "S-1-5-21-1004336348-1177238915-682003330-513", // Domain Users
        ] {
            assert!(!user(principal), "{principal} was taken for a user account");
        }
    }
}
