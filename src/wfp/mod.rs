//! The Windows Filtering Platform backend, built in three layers so that everything above a
//! thin set of calls can be proven on Linux:
//!
//! - [`raw`]: windows-sys types and the [`raw::Fwpm`] trait, one method per Fwpm*0 call, with
//!   the real implementation compiled on Windows (and type-checked on Linux under
//!   `--cfg userwall_wfp_check`).
//! - [`safe`]: an engine handle that closes on drop, a transaction that aborts unless
//!   committed, owned structures whose pointers point into buffers they own, and enumerations
//!   copied out before the engine's memory is freed.
//! - [`logic`]: install, verify and uninstall, with no unsafe code.
//!
//! [`spec`] renders the policy to the exact objects, [`sid`] and [`sd`] build the ALE_USER_ID
//! condition, [`accounts`] decides which accounts may be sandboxed, and [`fake`] is the engine
//! the tests run against. Nothing here has run on Windows yet, and the CLI does not use it.

pub mod accounts;
#[cfg(any(windows, userwall_wfp_check))]
pub mod cli;
pub mod fake;
pub mod logic;
pub mod raw;
pub mod safe;
pub mod sd;
pub mod sid;
pub mod spec;
