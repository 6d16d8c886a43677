//! The Linux backend: one nftables table we own, `inet userwall`.
//!
//! - [`render`] turns policy rows into the table.
//! - [`state`] is the table as data, read back from `nft -j list`.
//! - [`diff`] compares the two; that comparison, never a marker file, decides what is live.
//! - [`runner`] is the only place that runs `nft`.
//!
//! Nothing outside our table is ever listed for change, replaced or deleted. Before replacing or
//! deleting our table we check it holds nothing we did not create ([`state::TableState::foreign_content`]).

pub mod diff;
pub mod render;
pub mod runner;
pub mod state;

use crate::ids::{NFT_FAMILY, NFT_TABLE};
pub use runner::{Nft, NftError};
use serde_json::Value;
use state::TableState;

/// The live table, parsed, with the raw listing (for counters).
#[derive(Clone, Debug)]
pub struct LiveTable {
    /// Parsed state, counters zeroed.
    pub state: TableState,
    /// What nft printed.
    pub listing: Value,
}

/// Errors of the backend's operations.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// nft itself failed.
    #[error(transparent)]
    Nft(#[from] NftError),
    /// A table named like ours holds things we did not put there.
    #[error("table {NFT_FAMILY} {NFT_TABLE} exists but holds objects userwall does not create ({}); it is not ours to replace or delete: delete those objects (nft delete rule inet userwall CHAIN handle N, ...) or the whole table yourself, then run again", .0.join("; "))]
    ForeignTable(Vec<String>),
    /// The listing did not parse.
    #[error(transparent)]
    Listing(#[from] state::ListingError),
    /// After a write, the table is not what we wrote.
    #[error("after {action}, the live table still differs: {}", .differences.join("; "))]
    NotSettled {
        /// What we had done.
        action: String,
        /// How it differs.
        differences: Vec<String>,
    },
}

/// Reads our table, or `None` when it does not exist.
pub fn read_live(nft: &Nft) -> Result<Option<LiveTable>, BackendError> {
    if !nft.table_exists(NFT_FAMILY, NFT_TABLE)? {
        return Ok(None);
    }
    let listing = nft.list_table(NFT_FAMILY, NFT_TABLE)?;
    let state = TableState::from_listing(&listing)?;
    Ok(Some(LiveTable { state, listing }))
}

fn refuse_foreign(live: Option<&LiveTable>) -> Result<(), BackendError> {
    match live.map(|l| l.state.foreign_content()) {
        Some(foreign) if !foreign.is_empty() => Err(BackendError::ForeignTable(foreign)),
        _ => Ok(()),
    }
}

/// Replaces our table with `desired` in one nft transaction. `live` is what the caller read
/// just before; a table holding anything we did not create is refused.
pub fn apply(
    nft: &Nft,
    desired: &TableState,
    live: Option<&LiveTable>,
) -> Result<(), BackendError> {
    refuse_foreign(live)?;
    nft.apply(&desired.replace_batch(), "replacing table inet userwall")?;
    Ok(())
}

/// Reads our table back and fails unless it equals `desired`.
pub fn verify(nft: &Nft, desired: &TableState) -> Result<(), BackendError> {
    let after = read_live(nft)?;
    let differences = diff::diff(desired, after.as_ref().map(|l| &l.state));
    if !differences.is_empty() {
        return Err(BackendError::NotSettled {
            action: "replacing table inet userwall".into(),
            differences: differences.iter().map(ToString::to_string).collect(),
        });
    }
    Ok(())
}

/// Deletes our table when present, then lists tables again and fails if it is still there.
/// Returns whether there was anything to delete.
pub fn remove(nft: &Nft) -> Result<bool, BackendError> {
    let live = read_live(nft)?;
    if live.is_none() {
        return Ok(false);
    }
    refuse_foreign(live.as_ref())?;
    nft.apply(&state::delete_batch(), "deleting table inet userwall")?;
    if nft.table_exists(NFT_FAMILY, NFT_TABLE)? {
        return Err(BackendError::NotSettled {
            action: "deleting table inet userwall".into(),
            differences: vec!["the table is still listed".into()],
        });
    }
    Ok(true)
}
