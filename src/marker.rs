//! The setup marker: a small JSON file in the state dir that records what setup last installed.
//!
//! It is written atomically (temporary file, fsync, rename) and last, after the live table has
//! been read back and found in sync, so it never claims more than what is live. It is a record,
//! not the truth: setup and status always read the live table.

use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

/// Bump whenever the rendered objects change in a way an existing install must receive (a new
/// rule, a changed verdict, a renamed chain). A bumped version makes the next setup rewrite.
///
/// History: 1, the first release; 2, the `offline` preset's comments name the inbound rows
/// they cover.
pub const SETUP_VERSION: u32 = 2;

/// The marker file's name inside the state dir.
pub const MARKER_FILE: &str = "setup.json";

/// The default state dir.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/userwall";

/// What the marker records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// [`SETUP_VERSION`] of the setup that wrote it.
    pub setup_version: u32,
    /// `nftables`.
    pub backend: String,
    /// The preset's name.
    pub preset: String,
    /// The sandbox uids.
    pub uids: Vec<u32>,
    /// [`crate::policy::Policy::fingerprint`].
    pub policy_fingerprint: String,
    /// Everything this install put on the machine, so an upgrade or uninstall can find it
    /// (`nft table inet userwall`, `file /etc/systemd/system/userwall.service`, ...).
    #[serde(default)]
    pub objects: Vec<String>,
    /// Accounts setup created (it never deletes them; this is for the operator).
    #[serde(default)]
    pub created_accounts: Vec<String>,
    /// The network namespace the table was installed in (the inode of `/proc/self/ns/net`).
    /// Rules are per namespace, so a marker from another namespace says nothing about this one.
    #[serde(default)]
    pub netns: Option<u64>,
    /// RFC 3339 time of writing.
    pub written_at: String,
}

impl Marker {
    /// The unit dir this install's boot unit was written to, from its recorded objects.
    pub fn unit_dir(&self) -> Option<PathBuf> {
        self.objects.iter().find_map(|o| {
            let path = Path::new(o.strip_prefix("file ")?);
            let dir = path.parent()?;
            let in_wants = dir.extension().is_some_and(|e| e == "wants");
            (path.file_name()? == crate::boot::UNIT_NAME && !in_wants).then(|| dir.to_path_buf())
        })
    }

    /// Whether two markers record the same install, ignoring when they were written.
    pub fn same_install(&self, other: &Marker) -> bool {
        Marker {
            written_at: String::new(),
            ..self.clone()
        } == Marker {
            written_at: String::new(),
            ..other.clone()
        }
    }
}

/// Why the marker could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MarkerError {
    /// I/O in the state dir.
    #[error("{action} {path}: {source}; check that the state dir exists and is writable by root, or pass --state-dir")]
    Io {
        /// What we did.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The state dir could be tampered with by someone other than root.
    #[error("state dir {path} {why}: userwall keeps what setup trusts where only root can write; fix its owner and mode (chown root: and chmod 755) or pass another --state-dir")]
    Unsafe {
        /// The dir.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The file is not a marker.
    #[error("{path} is not a valid userwall marker ({detail}); it is ignored and will be rewritten by the next setup")]
    Corrupt {
        /// Where.
        path: PathBuf,
        /// The parse error.
        detail: String,
    },
}

/// The marker path in a state dir.
pub fn marker_path(state_dir: &Path) -> PathBuf {
    state_dir.join(MARKER_FILE)
}

/// Reads the marker and decides whether it can be believed at all: a marker that is corrupt,
/// from a newer setup version, not owned by root or writable by others is treated as absent,
/// and the second value says why.
pub fn read_trusted(state_dir: &Path) -> Result<(Option<Marker>, Option<String>), MarkerError> {
    use std::os::unix::fs::MetadataExt;
    let path = marker_path(state_dir);
    let marker = match read(state_dir) {
        Ok(m) => m,
        Err(e @ MarkerError::Corrupt { .. }) => return Ok((None, Some(e.to_string()))),
        Err(e) => return Err(e),
    };
    let Some(marker) = marker else {
        return Ok((None, None));
    };
    let meta = fs::metadata(&path).map_err(|source| MarkerError::Io {
        action: "reading",
        path: path.clone(),
        source,
    })?;
    let ignored = if meta.uid() != 0 {
        Some(format!(
            "{} is owned by uid {}, not root; it is ignored",
            path.display(),
            meta.uid()
        ))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "{} is writable by others (mode {:o}); it is ignored",
            path.display(),
            meta.mode() & 0o777
        ))
    } else if marker.netns.is_some() && marker.netns != current_netns() {
        Some(format!(
            "{} records a setup in another network namespace; it is ignored here (give each namespace its own --state-dir)",
            path.display()
        ))
    } else if marker.uids.is_empty() || marker.uids.iter().any(|&u| u == 0 || u == u32::MAX) {
        Some(format!(
            "{} records no sandbox uid, uid 0 or uid 4294967295; it is ignored",
            path.display()
        ))
    } else if marker.backend != "nftables" {
        Some(format!(
            "{} records the {:?} backend, not nftables; it is ignored",
            path.display(),
            marker.backend
        ))
    } else if marker.preset.parse::<crate::policy::Preset>().is_err() {
        Some(format!(
            "{} records an unknown preset {:?}; it is ignored",
            path.display(),
            marker.preset
        ))
    } else if marker.setup_version > SETUP_VERSION {
        Some(format!(
            "{} was written by a newer userwall (setup version {} > {SETUP_VERSION}); it is ignored",
            path.display(),
            marker.setup_version
        ))
    } else {
        None
    };
    Ok(if ignored.is_some() {
        (None, ignored)
    } else {
        (Some(marker), None)
    })
}

/// The current network namespace's identity: the inode of `/proc/self/ns/net`.
pub fn current_netns() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self/ns/net").ok().map(|m| m.ino())
}

/// Whether this process runs in the host's network namespace (the one of PID 1). When that
/// cannot be read, assume it does.
pub fn in_host_netns() -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        current_netns(),
        fs::metadata("/proc/1/ns/net").ok().map(|m| m.ino()),
    ) {
        (Some(here), Some(host)) => here == host,
        _ => true,
    }
}

/// Whether the marker in `state_dir` may be removed from this namespace: it is absent,
/// unreadable as a marker, or records this namespace (or none).
pub fn belongs_here(state_dir: &Path) -> bool {
    match read(state_dir) {
        Ok(Some(m)) => m.netns.is_none() || m.netns == current_netns(),
        _ => true,
    }
}

/// Reads the marker; `Ok(None)` when there is none.
pub fn read(state_dir: &Path) -> Result<Option<Marker>, MarkerError> {
    let path = marker_path(state_dir);
    let text = match crate::files::read_small(&path) {
        Ok(Some(text)) => text,
        Ok(None) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Err(MarkerError::Corrupt {
                path,
                detail: e.to_string(),
            })
        }
        Err(source) => {
            return Err(MarkerError::Io {
                action: "reading",
                path,
                source,
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| MarkerError::Corrupt {
            path,
            detail: e.to_string(),
        })
}

/// Writes the marker atomically, mode 0644, creating the state dir (mode 0755) when missing.
pub fn write(state_dir: &Path, marker: &Marker) -> Result<(), MarkerError> {
    create_state_dir(state_dir)?;
    let path = marker_path(state_dir);
    let text = serde_json::to_string_pretty(marker).expect("marker serializes") + "\n";
    crate::files::write_atomic(&path, text.as_bytes(), 0o644).map_err(|source| MarkerError::Io {
        action: "writing",
        path,
        source,
    })
}

fn create_state_dir(state_dir: &Path) -> Result<(), MarkerError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(state_dir)
        .map_err(|source| MarkerError::Io {
            action: "creating",
            path: state_dir.into(),
            source,
        })
}

/// Checks that the marker could be written, creating the state dir when missing, by writing and
/// removing a probe file. Setup calls it before changing anything.
pub fn check_writable(state_dir: &Path) -> Result<(), MarkerError> {
    create_state_dir(state_dir)?;
    if let Some(why) = crate::files::unsafe_dir_reason(state_dir) {
        return Err(MarkerError::Unsafe {
            path: state_dir.into(),
            why,
        });
    }
    let probe = state_dir.join(format!(".write-check.{}", std::process::id()));
    crate::files::write_atomic(&probe, b"", 0o600).map_err(|source| MarkerError::Io {
        action: "writing in",
        path: state_dir.into(),
        source,
    })?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

/// Removes the marker; absent is fine.
pub fn remove(state_dir: &Path) -> Result<bool, MarkerError> {
    let path = marker_path(state_dir);
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(MarkerError::Io {
            action: "removing",
            path,
            source,
        }),
    }
}

/// The current time in RFC 3339, seconds precision.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Marker {
        Marker {
            setup_version: SETUP_VERSION,
            backend: "nftables".into(),
            preset: "bypass-surfaces".into(),
            uids: vec![1000],
            policy_fingerprint: "sha256:0011223344556677".into(),
            objects: vec!["nft table inet userwall".into()],
            created_accounts: Vec::new(),
            netns: current_netns(),
            written_at: now_rfc3339(),
        }
    }

    #[test]
    fn round_trips_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("nested/state");
        write(&state, &sample()).unwrap();
        assert!(read(&state).unwrap().unwrap().same_install(&sample()));
        let names: Vec<_> = fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(MARKER_FILE)]);
    }

    #[test]
    fn missing_is_none_and_garbage_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().is_none());
        fs::write(marker_path(dir.path()), "{not json").unwrap();
        let err = read(dir.path()).unwrap_err();
        assert!(matches!(err, MarkerError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn untrusted_markers_are_treated_as_absent_with_a_reason() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &sample()).unwrap();
        let path = marker_path(dir.path());
        if nix::unistd::Uid::effective().is_root() {
            assert!(read_trusted(dir.path()).unwrap().0.is_some());
            fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
            let (m, why) = read_trusted(dir.path()).unwrap();
            assert!(m.is_none() && why.unwrap().contains("writable by others"));
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            std::os::unix::fs::chown(&path, Some(47123), None).unwrap();
            let (m, why) = read_trusted(dir.path()).unwrap();
            assert!(m.is_none() && why.unwrap().contains("not root"));
            std::os::unix::fs::chown(&path, Some(0), None).unwrap();
        }
        let newer = Marker {
            setup_version: SETUP_VERSION + 1,
            ..sample()
        };
        write(dir.path(), &newer).unwrap();
        let (m, why) = read_trusted(dir.path()).unwrap();
        if nix::unistd::Uid::effective().is_root() {
            assert!(m.is_none() && why.unwrap().contains("newer"));
        }
        let elsewhere = Marker {
            netns: Some(1),
            ..sample()
        };
        write(dir.path(), &elsewhere).unwrap();
        let (m, why) = read_trusted(dir.path()).unwrap();
        if nix::unistd::Uid::effective().is_root() {
            assert!(m.is_none() && why.unwrap().contains("another network namespace"));
        }
        assert!(!belongs_here(dir.path()));
        fs::write(&path, "[]").unwrap();
        assert!(belongs_here(dir.path()));
        let (m, why) = read_trusted(dir.path()).unwrap();
        assert!(m.is_none() && why.unwrap().contains("not a valid userwall marker"));
    }

    #[test]
    fn same_install_ignores_the_time() {
        let a = sample();
        let b = Marker {
            written_at: "2000-01-01T00:00:00Z".into(),
            ..a.clone()
        };
        assert!(a.same_install(&b));
        assert!(!a.same_install(&Marker {
            uids: vec![1001],
            ..a.clone()
        }));
    }
}
