//! Boot persistence on Linux: a systemd unit that re-applies our table at boot.
//!
//! nftables rules live in kernel memory and are gone after a reboot. Setup therefore leaves two
//! files behind: the exact nft JSON batch it applied (`table.json` in the state dir) and a
//! oneshot unit that feeds that batch to nft early in boot, before network-pre.target, so no
//! sandbox process runs with its egress open. The batch replaces only `inet userwall` (add,
//! delete, add), so the unit cannot touch another table either.
//!
//! Debian's and Ubuntu's `nftables.service` runs `flush ruleset` when its configuration starts
//! with it (at start and reload), and on every stop. So the unit starts after it (`After=`),
//! follows its stops and restarts (`PartOf=`) and its reloads (`ReloadPropagatedFrom=`, with an
//! `ExecReload=` that re-applies the batch): each puts our table back after the flush. None of
//! these lines needs nftables.service to exist.
//!
//! On Windows the same job is done by the filters' persistent flag: BFE reloads persistent
//! objects when it starts, and no unit is needed.

use std::fs;
use std::path::{Path, PathBuf};

/// The unit's file name.
pub const UNIT_NAME: &str = "userwall.service";
/// The default unit dir.
pub const DEFAULT_UNIT_DIR: &str = "/etc/systemd/system";
/// The target whose `.wants` directory enables the unit: early boot, before any network.
pub const WANTED_BY: &str = "sysinit.target";
/// The batch file's name in the state dir.
pub const TABLE_FILE: &str = "table.json";

/// Why persisting failed.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct BootError {
    /// What we did.
    pub action: &'static str,
    /// Where.
    pub path: PathBuf,
    /// The error.
    #[source]
    pub source: std::io::Error,
}

/// Where the unit goes and what it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootUnit {
    /// The unit dir (`/etc/systemd/system`).
    pub unit_dir: PathBuf,
    /// The state dir that holds the batch.
    pub state_dir: PathBuf,
    /// The absolute path of nft.
    pub nft: PathBuf,
}

/// Whether a path can stand in a unit file as it is: systemd splits command lines on white
/// space and gives `%`, `$`, backslashes, quotes and `;` meaning of their own.
fn plain_for_systemd(path: &Path) -> bool {
    let Some(text) = path.to_str() else {
        return false;
    };
    // Path::components hides "." and "//", so the text is checked: systemd ignores paths that
    // are not normalized.
    let normalized = !text.contains("//")
        && !text.contains("/./")
        && !text.ends_with("/.")
        && !text.ends_with('/')
        && !path
            .components()
            .any(|c| c == std::path::Component::ParentDir);
    path.is_absolute()
        && normalized
        && !text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "%$\\\"';".contains(c))
}

/// Checks that the unit can name these paths, before anything is written.
pub fn check_paths(state_dir: &Path, unit_dir: &Path) -> Result<(), BootError> {
    for path in [state_dir, unit_dir] {
        if !plain_for_systemd(path) {
            return Err(BootError {
                action: "refusing to name in a unit file",
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "the path must be absolute, normalized UTF-8 without spaces, quotes, %, $, \\ or ; (pass another --state-dir / --unit-dir, or --no-boot-unit)",
                ),
            });
        }
    }
    Ok(())
}

impl BootUnit {
    /// The unit for a state dir in a unit dir, running the system's nft (never a
    /// `USERWALL_NFT` stand-in; `/usr/sbin/nft` when none is found, which then fails the step
    /// that needs it).
    pub fn system(unit_dir: &Path, state_dir: &Path) -> BootUnit {
        BootUnit {
            unit_dir: unit_dir.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            nft: absolute_nft(Path::new("nft")).unwrap_or_else(|| PathBuf::from("/usr/sbin/nft")),
        }
    }

    /// The unit file's path.
    pub fn unit_path(&self) -> PathBuf {
        self.unit_dir.join(UNIT_NAME)
    }

    /// The enablement link's path.
    pub fn wants_link(&self) -> PathBuf {
        self.unit_dir
            .join(format!("{WANTED_BY}.wants"))
            .join(UNIT_NAME)
    }

    /// The batch file's path.
    pub fn table_path(&self) -> PathBuf {
        self.state_dir.join(TABLE_FILE)
    }

    /// The unit text.
    pub fn render(&self) -> String {
        let nft = self.nft.display();
        format!(
            "# Written by userwall setup; removed by userwall uninstall. Do not edit: setup rewrites it.\n\
             [Unit]\n\
             Description=userwall: block sandbox accounts' egress (table inet userwall)\n\
             DefaultDependencies=no\n\
             Before=network-pre.target shutdown.target\n\
             Wants=network-pre.target\n\
             After=nftables.service\n\
             PartOf=nftables.service\n\
             ReloadPropagatedFrom=nftables.service\n\
             Conflicts=shutdown.target\n\
             RequiresMountsFor={state}\n\
             ConditionPathExists={table}\n\
             \n\
             [Service]\n\
             Type=oneshot\n\
             RemainAfterExit=yes\n\
             ExecStart={nft} -j -f {table}\n\
             ExecReload={nft} -j -f {table}\n\
             ExecStop=-{nft} delete table inet userwall\n\
             \n\
             [Install]\n\
             WantedBy={WANTED_BY}\n",
            state = self.state_dir.display(),
            table = self.table_path().display(),
        )
    }

    /// The command the unit runs at start, as program and arguments, for tests that simulate a
    /// boot.
    pub fn start_command(&self) -> (PathBuf, Vec<String>) {
        (
            self.nft.clone(),
            vec![
                "-j".into(),
                "-f".into(),
                self.table_path().display().to_string(),
            ],
        )
    }

    /// Whether the unit, its link and the batch are in place with this content.
    pub fn is_current(&self, batch: &str) -> bool {
        crate::files::read_small(&self.unit_path())
            .ok()
            .flatten()
            .as_deref()
            == Some(self.render().as_str())
            && crate::files::read_small(&self.table_path())
                .ok()
                .flatten()
                .as_deref()
                == Some(batch)
            && fs::read_link(self.wants_link()).is_ok()
    }

    /// Whether any of the unit, its link or the batch is on disk.
    pub fn is_present(&self) -> bool {
        [self.unit_path(), self.wants_link(), self.table_path()]
            .iter()
            .any(|p| fs::symlink_metadata(p).is_ok())
    }

    /// Writes the batch, the unit and its enablement link. Returns whether anything changed.
    pub fn install(&self, batch: &str) -> Result<bool, BootError> {
        check_paths(&self.state_dir, &self.unit_dir)?;
        check_paths(&self.nft, &self.unit_dir)?;
        if self.is_current(batch) {
            return Ok(false);
        }
        write_atomic(&self.table_path(), batch, 0o600)?;
        write_atomic(&self.unit_path(), &self.render(), 0o644)?;
        let link = self.wants_link();
        let dir = link.parent().expect("the link has a parent");
        fs::create_dir_all(dir).map_err(|source| BootError {
            action: "creating",
            path: dir.into(),
            source,
        })?;
        let target = PathBuf::from("..").join(UNIT_NAME);
        if fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(&target, &link).map_err(|source| BootError {
                action: "linking",
                path: link.clone(),
                source,
            })?;
        }
        Ok(true)
    }

    /// Removes the link, the unit and the batch; absent is fine. Returns whether the unit or
    /// its link was there.
    pub fn remove(&self) -> Result<bool, BootError> {
        let mut removed = false;
        for path in [self.wants_link(), self.unit_path(), self.table_path()] {
            match fs::remove_file(&path) {
                Ok(()) => removed |= path != self.table_path(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(BootError {
                        action: "removing",
                        path,
                        source,
                    })
                }
            }
        }
        Ok(removed)
    }
}

/// Finds nft's absolute path, as the unit needs one.
pub fn absolute_nft(program: &Path) -> Option<PathBuf> {
    if program.is_absolute() {
        return Some(program.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn write_atomic(path: &Path, text: &str, mode: u32) -> Result<(), BootError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|source| BootError {
            action: "creating the directory of",
            path: path.into(),
            source,
        })?;
    }
    crate::files::write_atomic(path, text.as_bytes(), mode).map_err(|source| BootError {
        action: "writing",
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(dir: &Path) -> BootUnit {
        BootUnit {
            unit_dir: dir.join("units"),
            state_dir: dir.join("state"),
            nft: "/usr/sbin/nft".into(),
        }
    }

    #[test]
    fn the_unit_runs_early_and_only_touches_our_table() {
        let text = unit(Path::new("/x")).render();
        for line in [
            "DefaultDependencies=no",
            "Before=network-pre.target shutdown.target",
            "After=nftables.service",
            "PartOf=nftables.service",
            "ReloadPropagatedFrom=nftables.service",
            "ExecReload=/usr/sbin/nft -j -f /x/state/table.json",
            "Type=oneshot",
            "ExecStart=/usr/sbin/nft -j -f /x/state/table.json",
            "ExecStop=-/usr/sbin/nft delete table inet userwall",
            "WantedBy=sysinit.target",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("flush"));
    }

    #[test]
    fn paths_systemd_would_misread_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut u = unit(dir.path());
        u.state_dir = dir.path().join("with space");
        let err = u.install("{}").unwrap_err();
        assert!(err.to_string().contains("without spaces"), "{err}");
        for bad in ["/a/../b", "/a/./b", "/a//b", "relative"] {
            assert!(
                check_paths(Path::new(bad), Path::new("/etc/systemd/system")).is_err(),
                "{bad}"
            );
        }
        assert!(!u.unit_path().exists());
    }

    #[test]
    fn install_is_idempotent_and_remove_clears_everything() {
        let dir = tempfile::tempdir().unwrap();
        let u = unit(dir.path());
        assert!(u.install("{}").unwrap());
        assert!(
            !u.install("{}").unwrap(),
            "second install changed something"
        );
        assert!(u.install("{\"changed\":1}").unwrap());
        assert_eq!(
            fs::read_link(u.wants_link()).unwrap(),
            PathBuf::from("../userwall.service")
        );
        assert!(u.remove().unwrap());
        assert!(!u.remove().unwrap());
        assert!(!u.unit_path().exists() && !u.table_path().exists());
    }
}
