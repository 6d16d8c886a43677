//! userwall locks a sandbox account's network egress with OS-enforced, account-scoped block
//! filters: nftables on Linux (`meta skuid`), the Windows Filtering Platform on Windows.
//!
//! The layers, bottom up:
//! - [`ids`]: every fixed name and key we own.
//! - [`policy`]: the rule table, platform-neutral; every backend renders it.
//! - [`nft`]: the Linux backend (render, read back, compare, apply).
//! - [`accounts`]: resolving and refusing sandbox accounts.
//! - [`probe`]: proof on the live kernel, as each account.
//! - [`setup`] and [`marker`]: the versioned setup step a host app or the CLI runs.
//! - `sys`: the only module with `unsafe` (fork, capabilities).
//! - [`wfp`]: the Windows objects the same policy renders to (not yet installed anywhere).
//!
//! A host app's elevated setup step calls [`setup::setup`]; rendering is pure and can be
//! inspected without privileges:
//!
//! ```
//! use userwall::nft::render::{render, to_nft_text};
//! use userwall::policy::{Policy, Preset};
//!
//! let policy = Policy::preset(Preset::BypassSurfaces);
//! assert_eq!(policy.rules.len(), 12);
//! let rendered = render(&policy, &[1001].into_iter().collect());
//! let text = to_nft_text(&rendered.table);
//! assert!(text.contains("meta skuid @sandbox_uids jump sandbox_egress"));
//! assert!(text.contains("tcp dport 53 counter reject with tcp reset"));
//! ```

#![deny(missing_docs)]

#[cfg(target_os = "linux")]
pub mod accounts;
#[cfg(target_os = "linux")]
pub mod boot;
pub mod errors;
#[cfg(target_os = "linux")]
mod files;
pub mod ids;
#[cfg(target_os = "linux")]
pub mod journal;
#[cfg(target_os = "linux")]
pub mod lock;
#[cfg(target_os = "linux")]
pub mod marker;
#[cfg(target_os = "linux")]
pub mod metrics;
#[cfg(target_os = "linux")]
pub mod nft;
pub mod policy;
#[cfg(target_os = "linux")]
pub mod probe;
#[cfg(target_os = "linux")]
pub mod setup;
#[cfg(target_os = "linux")]
mod sys;
pub mod wfp;

#[cfg(target_os = "linux")]
pub use sys::{die_with_parent, is_root};

/// Serializes tests that change process-wide environment variables.
#[cfg(all(test, target_os = "linux"))]
pub(crate) fn test_env_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
