//! The Windows Filtering Platform backend, platform-neutral parts.
//!
//! What exists: the exact objects (provider, sublayer, filters, their conditions) rendered from
//! the policy ([`spec`]), SIDs ([`sid`]) and the self-relative security descriptor of the
//! ALE_USER_ID condition ([`sd`]), all tested on Linux. What does not exist yet: the raw Fwpm*0
//! call layer, the safe wrappers, install/verify/uninstall and the fake engine.

pub mod fake;
pub mod logic;
pub mod raw;
pub mod safe;
pub mod sd;
pub mod sid;
pub mod spec;
