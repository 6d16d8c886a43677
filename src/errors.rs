//! Typed error codes: a closed set of stable snake_case names, defined once here, that setup
//! reports per failed step, writes to the error report and attaches to the failure metric.
//! Host apps may match on them; a name never changes meaning once released.

use serde::{Serialize, Serializer};
use std::fmt;

macro_rules! error_codes {
    ($($(#[doc = $doc:literal])+ $variant:ident = $name:literal,)+) => {
        /// Why a setup step failed.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[doc = $doc])+ $variant,)+
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)+];

            /// The stable name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $name,)+
                }
            }
        }
    };
}

error_codes! {
    /// The process is not root.
    NotRoot = "not_root",
    /// The nft program is not installed or not found.
    NftMissing = "nft_missing",
    /// nft ran and failed, or could not be started.
    NftFailed = "nft_failed",
    /// nft printed something we could not read.
    NftOutputUnreadable = "nft_output_unreadable",
    /// A table named like ours holds objects we did not create.
    ForeignTable = "foreign_table",
    /// After applying, the live table still differs from the rendering.
    VerifyFailed = "verify_failed",
    /// uid 0 or the invoking account was requested.
    AccountRefused = "account_refused",
    /// A named account does not exist.
    AccountUnknown = "account_unknown",
    /// An account value is malformed.
    AccountInvalid = "account_invalid",
    /// The user database could not be read.
    AccountLookupFailed = "account_lookup_failed",
    /// useradd failed.
    AccountCreateFailed = "account_create_failed",
    /// Nothing says which accounts to expect.
    NoAccounts = "no_accounts",
    /// The state dir cannot be created or written.
    StateDirUnusable = "state_dir_unusable",
    /// Another setup or uninstall held the lock for too long.
    LockTimeout = "lock_timeout",
    /// The boot unit could not be written or removed.
    PersistFailed = "persist_failed",
    /// A bug: something panicked inside setup.
    Internal = "internal",
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn names_are_unique_snake_case() {
        let names: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        for name in names {
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name}"
            );
        }
    }

    #[test]
    fn serializes_as_its_name() {
        assert_eq!(
            serde_json::to_string(&ErrorCode::LockTimeout).unwrap(),
            "\"lock_timeout\""
        );
    }
}
