//! Sandbox accounts: resolving what the user typed to uids, refusing what must never be
//! sandboxed, and creating the default account.

use nix::unistd::{Uid, User};
use serde::Serialize;
use std::process::Command;

/// The account used when none is given; created when missing.
pub const DEFAULT_ACCOUNT: &str = "userwall-offline";

/// A resolved sandbox account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Account {
    /// The user name, when the system user database knows the uid.
    pub name: Option<String>,
    /// The uid nftables matches on.
    pub uid: u32,
    /// The primary gid; the uid itself for a uid without a passwd entry.
    pub gid: u32,
}

impl Account {
    /// `name (uid N)` or `uid N`.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => format!("{name} (uid {})", self.uid),
            None => format!("uid {}", self.uid),
        }
    }
}

/// Why an account was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// uid 0.
    #[error("refusing to sandbox {0}: it is root (uid 0), and blocking root's egress would cut off the system itself; create a dedicated account instead")]
    Root(String),
    /// The account running userwall.
    #[error("refusing to sandbox {account}: it is the account that invoked userwall (uid {uid}{via}); choose a dedicated sandbox account")]
    InvokingUser {
        /// What was typed.
        account: String,
        /// Its uid.
        uid: u32,
        /// How we know (` from SUDO_UID` or empty).
        via: &'static str,
    },
    /// A name that does not resolve.
    #[error("no account named {0:?}: check the spelling, or pass --create-account to create it as a locked system account")]
    Unknown(String),
    /// Not a valid account name or uid.
    #[error("{value:?} is not a valid account: {why}")]
    Invalid {
        /// What was typed.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// The user database could not be read.
    #[error("could not look up account {account}: {source}")]
    Lookup {
        /// What was typed.
        account: String,
        /// The error.
        #[source]
        source: nix::Error,
    },
    /// useradd failed.
    #[error("could not create account {name}: {detail}")]
    Create {
        /// The name.
        name: String,
        /// useradd's message, or the spawn error.
        detail: String,
    },
}

/// How to resolve.
#[derive(Clone, Debug, Default)]
pub struct ResolveOptions {
    /// Create a missing named account (`--create-account`).
    pub create_missing: bool,
    /// Only look; never create, not even the default account (for read-only commands).
    pub read_only: bool,
    /// Accept root and the invoking account (for commands that only look or probe, where
    /// refusing them helps nobody).
    pub allow_any: bool,
}

/// What resolving found, with warnings for the user.
#[derive(Clone, Debug, Default)]
pub struct Resolved {
    /// The accounts, one per uid, in the order given.
    pub accounts: Vec<Account>,
    /// Things the user should know (a uid without passwd entry, an account we created).
    pub warnings: Vec<String>,
    /// Names of accounts this call created.
    pub created: Vec<String>,
}

/// The uid that invoked userwall: `SUDO_UID` when run through sudo, else the real uid.
pub fn invoking_uid() -> (u32, &'static str) {
    if let Some(uid) = std::env::var("SUDO_UID")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
    {
        return (uid, " from SUDO_UID");
    }
    (Uid::current().as_raw(), "")
}

/// Checks the shape of an account name before it reaches the user database or useradd, so a
/// name like `-r` can never be taken for an option.
pub fn validate_name(name: &str) -> Result<(), AccountError> {
    let invalid = |why: &str| {
        Err(AccountError::Invalid {
            value: name.into(),
            why: why.into(),
        })
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > 32 {
        return invalid("account names are at most 32 characters");
    }
    let first = name.as_bytes()[0];
    if !(first.is_ascii_lowercase() || first == b'_') {
        return invalid("an account name starts with a lower-case letter or '_'");
    }
    let body_ok = name.char_indices().all(|(i, c)| {
        c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || c == '_'
            || c == '-'
            || (c == '$' && i == name.len() - 1)
    });
    if !body_ok {
        return invalid("use lower-case letters, digits, '_' and '-' only");
    }
    Ok(())
}

fn check_allowed(typed: &str, uid: u32, opts: &ResolveOptions) -> Result<(), AccountError> {
    if opts.allow_any {
        return Ok(());
    }
    if uid == 0 {
        return Err(AccountError::Root(typed.into()));
    }
    let (invoker, via) = invoking_uid();
    if uid == invoker {
        return Err(AccountError::InvokingUser {
            account: typed.into(),
            uid,
            via,
        });
    }
    Ok(())
}

fn lookup_name(name: &str) -> Result<Option<User>, AccountError> {
    User::from_name(name).map_err(|source| AccountError::Lookup {
        account: name.into(),
        source,
    })
}

/// Creates a locked system account: no password (useradd leaves it locked), no login shell, no
/// home directory.
pub fn create_locked_system_account(name: &str) -> Result<(), AccountError> {
    validate_name(name)?;
    let out = Command::new("useradd")
        .args(["--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"])
        .args(["--shell", "/usr/sbin/nologin", "--comment", "userwall sandbox account", "--"])
        .arg(name)
        .output()
        .map_err(|e| AccountError::Create {
            name: name.into(),
            detail: format!("could not run useradd ({e}); install the passwd package or create the account yourself"),
        })?;
    if !out.status.success() {
        return Err(AccountError::Create {
            name: name.into(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Resolves every `--account` value (a name or a numeric uid). With none given, the default
/// account, created when missing unless `read_only`.
///
/// Nothing is created until every value has been checked, so a refused value leaves no
/// account behind.
pub fn resolve(values: &[String], opts: &ResolveOptions) -> Result<Resolved, AccountError> {
    let defaulted = values.is_empty();
    let values: Vec<String> = if defaulted {
        vec![DEFAULT_ACCOUNT.to_string()]
    } else {
        values.to_vec()
    };
    let mut out = Resolved::default();
    let mut to_create = Vec::new();
    for value in &values {
        let value = value.trim();
        if value.chars().all(|c| c.is_ascii_digit()) && !value.is_empty() {
            let uid: u32 = value.parse().map_err(|_| AccountError::Invalid {
                value: value.into(),
                why: "a uid is a number from 1 to 4294967294".into(),
            })?;
            if uid == u32::MAX {
                return Err(AccountError::Invalid {
                    value: value.into(),
                    why: "4294967295 is the kernel's 'no uid' value, not an account".into(),
                });
            }
            check_allowed(value, uid, opts)?;
            let user =
                User::from_uid(Uid::from_raw(uid)).map_err(|source| AccountError::Lookup {
                    account: value.into(),
                    source,
                })?;
            match user {
                Some(u) => out.accounts.push(Account {
                    name: Some(u.name),
                    uid,
                    gid: u.gid.as_raw(),
                }),
                None => {
                    out.warnings.push(format!(
                        "uid {uid} has no entry in the user database; it is sandboxed as a bare uid (gid {uid} is used for probes)"
                    ));
                    out.accounts.push(Account {
                        name: None,
                        uid,
                        gid: uid,
                    });
                }
            }
            continue;
        }
        validate_name(value)?;
        match lookup_name(value)? {
            Some(u) => {
                check_allowed(value, u.uid.as_raw(), opts)?;
                out.accounts.push(Account {
                    name: Some(u.name),
                    uid: u.uid.as_raw(),
                    gid: u.gid.as_raw(),
                });
            }
            None if opts.read_only => return Err(AccountError::Unknown(value.into())),
            None if defaulted || opts.create_missing => to_create.push(value.to_string()),
            None => return Err(AccountError::Unknown(value.into())),
        }
    }
    for name in to_create {
        create_locked_system_account(&name)?;
        let user = lookup_name(&name)?.ok_or_else(|| AccountError::Create {
            name: name.clone(),
            detail: "useradd succeeded but the account does not resolve".into(),
        })?;
        check_allowed(&name, user.uid.as_raw(), opts)?;
        out.warnings.push(format!(
            "created locked system account {name} (uid {})",
            user.uid
        ));
        out.created.push(name.clone());
        out.accounts.push(Account {
            name: Some(name),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        });
    }
    let mut seen = std::collections::BTreeSet::new();
    out.accounts.retain(|a| seen.insert(a.uid));
    let mut said = std::collections::BTreeSet::new();
    out.warnings.retain(|w| said.insert(w.clone()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn uid_zero_and_root_are_refused() {
        let _guard = crate::test_env_lock();
        for v in ["0", "root"] {
            let err = resolve(&values(&[v]), &ResolveOptions::default()).unwrap_err();
            assert!(matches!(err, AccountError::Root(_)), "{v}: {err}");
        }
    }

    #[test]
    fn the_invoking_user_from_sudo_uid_is_refused() {
        // SUDO_UID is read per call; this test owns the variable for its duration only.
        let _guard = crate::test_env_lock();
        std::env::set_var("SUDO_UID", "47555");
        let err = resolve(&values(&["47555"]), &ResolveOptions::default()).unwrap_err();
        std::env::remove_var("SUDO_UID");
        assert!(
            matches!(err, AccountError::InvokingUser { uid: 47555, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("SUDO_UID"));
    }

    #[test]
    fn a_bare_uid_is_accepted_with_a_warning() {
        let _guard = crate::test_env_lock();
        let r = resolve(&values(&["47556", "47556"]), &ResolveOptions::default()).unwrap();
        assert_eq!(
            r.accounts,
            vec![Account {
                name: None,
                uid: 47556,
                gid: 47556
            }]
        );
        assert_eq!(r.warnings.len(), 1, "a repeated value warns once");
        assert!(r.warnings[0].contains("no entry"));
    }

    #[test]
    fn unknown_names_are_refused_without_create_account() {
        let _guard = crate::test_env_lock();
        let err = resolve(&values(&["uw-no-such-user"]), &ResolveOptions::default()).unwrap_err();
        assert!(matches!(err, AccountError::Unknown(_)));
        assert!(err.to_string().contains("--create-account"));
    }

    #[test]
    fn malformed_values_are_refused_before_any_lookup() {
        let _guard = crate::test_env_lock();
        for bad in [
            "-r",
            "Bad",
            "a b",
            "",
            "4294967295",
            "99999999999",
            "x;rm",
            &"a".repeat(33),
        ] {
            let err = resolve(
                &values(&[bad]),
                &ResolveOptions {
                    create_missing: true,
                    ..Default::default()
                },
            );
            assert!(err.is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_refused_value_creates_nothing() {
        let _guard = crate::test_env_lock();
        // The unknown name comes first and would be created, but the uid 0 after it is
        // refused before any account is made.
        let opts = ResolveOptions {
            create_missing: true,
            ..Default::default()
        };
        let err = resolve(&values(&["uw-never-created", "0"]), &opts).unwrap_err();
        assert!(matches!(err, AccountError::Root(_)));
        assert!(User::from_name("uw-never-created").unwrap().is_none());
    }
}
