//! Sandbox accounts on Windows: names or SID strings to SIDs, and the refusals.
//!
//! Only user accounts may be sandboxed. Well-known and group principals (SYSTEM, LocalService,
//! NetworkService, Administrators, Users, Everyone, Authenticated Users and the like) are
//! refused: a filter conditioned on a group blocks every member, and one on a service account
//! blocks the system itself. So is the account running userwall. The decision ([`check`]) is
//! pure and tested everywhere; the lookups ([`lookup`], [`invoking_user`]) call Windows and are
//! type-checked on Linux under `--cfg userwall_wfp_check`.

use super::sid::Sid;

/// `SidTypeUser` from SID_NAME_USE: the only kind of account userwall sandboxes.
pub const SID_TYPE_USER: i32 = 1;

/// Why an account was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccountError {
    /// Not a user account (a group, alias, well-known principal, computer, ...).
    #[error("refusing to sandbox {account} ({sid}): it is not a user account but a {kind}; name a dedicated local or domain user")]
    NotAUser {
        /// What was typed.
        account: String,
        /// Its SID.
        sid: String,
        /// What it is instead.
        kind: &'static str,
    },
    /// A built-in or service principal, whatever Windows calls its type.
    #[error("refusing to sandbox {account} ({sid}): it is a built-in or service principal; name a dedicated user account")]
    WellKnown {
        /// What was typed.
        account: String,
        /// Its SID.
        sid: String,
    },
    /// The account running userwall.
    #[error("refusing to sandbox {account} ({sid}): it is the account running userwall; choose a dedicated sandbox account")]
    InvokingUser {
        /// What was typed.
        account: String,
        /// Its SID.
        sid: String,
    },
    /// The name did not resolve.
    #[error("no account named {account:?} ({detail}); check the spelling, and write domain accounts as DOMAIN\\\\name")]
    Unknown {
        /// What was typed.
        account: String,
        /// Windows' error.
        detail: String,
    },
}

/// The name of a SID_NAME_USE value, for messages.
pub fn sid_type_name(kind: i32) -> &'static str {
    match kind {
        1 => "user",
        2 => "group",
        3 => "domain",
        4 => "alias (local group)",
        5 => "well-known group",
        6 => "deleted account",
        7 => "invalid account",
        8 => "unknown account",
        9 => "computer",
        10 => "mandatory label",
        _ => "non-user principal",
    }
}

/// Decides whether a resolved account may be sandboxed.
pub fn check(
    account: &str,
    sid: &Sid,
    kind: i32,
    invoking: Option<&Sid>,
) -> Result<(), AccountError> {
    let sid_text = sid.to_string();
    if kind != SID_TYPE_USER {
        return Err(AccountError::NotAUser {
            account: account.into(),
            sid: sid_text,
            kind: sid_type_name(kind),
        });
    }
    if !sid.is_ordinary_user_account() {
        return Err(AccountError::WellKnown {
            account: account.into(),
            sid: sid_text,
        });
    }
    if invoking == Some(sid) {
        return Err(AccountError::InvokingUser {
            account: account.into(),
            sid: sid_text,
        });
    }
    Ok(())
}

#[cfg(any(windows, userwall_wfp_check))]
pub use windows_lookup::{invoking_user, lookup, resolve};

#[cfg(any(windows, userwall_wfp_check))]
mod windows_lookup {
    use super::*;
    use crate::wfp::safe::wide;
    use windows_sys::Win32::Foundation::{CloseHandle, GetLastError, HANDLE};
    use windows_sys::Win32::Security::{
        GetLengthSid, GetTokenInformation, LookupAccountNameW, LookupAccountSidW, TokenUser,
        TOKEN_QUERY, TOKEN_USER,
    };
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

    fn last_error() -> String {
        // SAFETY: GetLastError only reads the calling thread's last-error value.
        let code = unsafe { GetLastError() };
        format!("Windows error {code}")
    }

    /// Looks an account up by name (`name`, `DOMAIN\name`, names with spaces or non-ASCII
    /// letters) or by SID string, returning its SID and SID_NAME_USE.
    pub fn lookup(account: &str) -> Result<(Sid, i32), AccountError> {
        let unknown = |detail: String| AccountError::Unknown {
            account: account.into(),
            detail,
        };
        if let Ok(sid) = account.parse::<Sid>() {
            let mut bytes = sid.to_bytes();
            let (mut name_len, mut domain_len, mut kind) = (0u32, 0u32, 0i32);
            // SAFETY: the SID buffer is a valid SID; null output buffers with zero lengths ask
            // only for the sizes, which are written to the u32s on this frame.
            unsafe {
                LookupAccountSidW(
                    std::ptr::null(),
                    bytes.as_mut_ptr().cast(),
                    std::ptr::null_mut(),
                    &mut name_len,
                    std::ptr::null_mut(),
                    &mut domain_len,
                    &mut kind,
                )
            };
            let mut name = vec![0u16; name_len.max(1) as usize];
            let mut domain = vec![0u16; domain_len.max(1) as usize];
            // SAFETY: the buffers have the lengths passed with them.
            let ok = unsafe {
                LookupAccountSidW(
                    std::ptr::null(),
                    bytes.as_mut_ptr().cast(),
                    name.as_mut_ptr(),
                    &mut name_len,
                    domain.as_mut_ptr(),
                    &mut domain_len,
                    &mut kind,
                )
            };
            if ok == 0 {
                return Err(unknown(last_error()));
            }
            return Ok((sid, kind));
        }
        let name = wide(account);
        let (mut sid_len, mut domain_len, mut kind) = (0u32, 0u32, 0i32);
        // SAFETY: `name` is terminated; null buffers with zero lengths ask only for the sizes.
        unsafe {
            LookupAccountNameW(
                std::ptr::null(),
                name.as_ptr(),
                std::ptr::null_mut(),
                &mut sid_len,
                std::ptr::null_mut(),
                &mut domain_len,
                &mut kind,
            )
        };
        if sid_len == 0 {
            return Err(unknown(last_error()));
        }
        let mut sid = vec![0u8; sid_len as usize];
        let mut domain = vec![0u16; domain_len.max(1) as usize];
        // SAFETY: the buffers have the lengths passed with them.
        let ok = unsafe {
            LookupAccountNameW(
                std::ptr::null(),
                name.as_ptr(),
                sid.as_mut_ptr().cast(),
                &mut sid_len,
                domain.as_mut_ptr(),
                &mut domain_len,
                &mut kind,
            )
        };
        if ok == 0 {
            return Err(unknown(last_error()));
        }
        let (parsed, _) = Sid::from_bytes(&sid).map_err(|e| unknown(e.to_string()))?;
        Ok((parsed, kind))
    }

    /// The SID of the account this process runs as.
    pub fn invoking_user() -> Option<Sid> {
        let mut token: HANDLE = std::ptr::null_mut();
        // SAFETY: the pseudo handle of the current process needs no closing; `token` is
        // writable.
        if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
            return None;
        }
        let mut len = 0u32;
        // SAFETY: a null buffer of length 0 asks for the size only.
        unsafe { GetTokenInformation(token, TokenUser, std::ptr::null_mut(), 0, &mut len) };
        // u64 elements keep the TOKEN_USER at the alignment its pointer field needs.
        let mut buf = vec![0u64; (len as usize).div_ceil(8).max(1)];
        // SAFETY: the buffer holds at least `len` bytes.
        let ok = unsafe {
            GetTokenInformation(token, TokenUser, buf.as_mut_ptr().cast(), len, &mut len)
        };
        // SAFETY: `token` was opened above and is closed once.
        unsafe { CloseHandle(token) };
        if ok == 0 {
            return None;
        }
        // SAFETY: on success the buffer starts with a TOKEN_USER whose SID points into it.
        let user = unsafe { &*(buf.as_ptr() as *const TOKEN_USER) };
        // SAFETY: the SID pointer is valid while `buf` lives.
        let sid_len = unsafe { GetLengthSid(user.User.Sid) } as usize;
        // SAFETY: GetLengthSid says how many bytes the SID occupies.
        let bytes = unsafe { std::slice::from_raw_parts(user.User.Sid as *const u8, sid_len) };
        Sid::from_bytes(bytes).ok().map(|(sid, _)| sid)
    }

    /// Looks up every account and applies [`check`]: the SIDs to put in the user condition.
    pub fn resolve(accounts: &[String]) -> Result<Vec<Sid>, AccountError> {
        // Without the invoker's SID the "not yourself" rule could not hold: refuse instead.
        let me = invoking_user().ok_or_else(|| AccountError::Unknown {
            account: "(the account running userwall)".into(),
            detail: format!(
                "its SID could not be read from the process token: {}",
                last_error()
            ),
        })?;
        let me = Some(me);
        let mut out: Vec<Sid> = Vec::new();
        for account in accounts {
            let (sid, kind) = lookup(account)?;
            check(account, &sid, kind, me.as_ref())?;
            if !out.contains(&sid) {
                out.push(sid);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(s: &str) -> Sid {
        s.parse().unwrap()
    }

    #[test]
    fn only_user_accounts_that_are_not_the_invoker_pass() {
        let user = sid("S-1-5-21-1-2-3-1001");
        assert_eq!(check("sandbox", &user, SID_TYPE_USER, None), Ok(()));
        assert!(matches!(
            check("sandbox", &user, SID_TYPE_USER, Some(&user)),
            Err(AccountError::InvokingUser { .. })
        ));
        // A group an administrator created has a user-like SID: its type decides.
        assert!(matches!(
            check("Developers", &sid("S-1-5-21-1-2-3-1005"), 4, None),
            Err(AccountError::NotAUser {
                kind: "alias (local group)",
                ..
            })
        ));
        for (name, text, kind) in [
            ("SYSTEM", "S-1-5-18", 5),
            ("LocalService", "S-1-5-19", 5),
            ("NetworkService", "S-1-5-20", 5),
            ("Administrators", "S-1-5-32-544", 4),
            ("Users", "S-1-5-32-545", 4),
            ("Everyone", "S-1-1-0", 5),
            ("Authenticated Users", "S-1-5-11", 5),
            // Even were a lookup to call one of these a user, its SID gives it away.
            ("SYSTEM", "S-1-5-18", SID_TYPE_USER),
            ("Administrator", "S-1-5-21-1-2-3-500", SID_TYPE_USER),
        ] {
            let err = check(name, &sid(text), kind, None).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}
