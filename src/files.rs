//! The few file operations every state file shares: written atomically without following a
//! planted link, read only when small and regular.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// The largest state file we read (markers are under 1 KiB).
pub const READ_LIMIT: u64 = 64 * 1024;

/// Writes `bytes` to `path` through a temporary file in the same directory: created fresh
/// (never opened through an existing file or link), synced, renamed into place, and the
/// directory synced so the rename survives a crash.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    // A leftover (or planted) temporary name is unlinked, which removes a link, never its target.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads a small regular file; `Ok(None)` when it does not exist. A link, FIFO, device or a file
/// over [`READ_LIMIT`] is an `InvalidData` error, so a planted path can neither hang nor flood
/// the reader.
pub fn read_small(path: &Path) -> std::io::Result<Option<String>> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
    if !meta.file_type().is_file() {
        return Err(invalid("not a regular file".into()));
    }
    if meta.len() > READ_LIMIT {
        return Err(invalid(format!(
            "{} bytes, more than a state file ever holds",
            meta.len()
        )));
    }
    let mut text = String::new();
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?
        .take(READ_LIMIT)
        .read_to_string(&mut text)?;
    Ok(Some(text))
}

/// Why a directory is not fit to hold what root trusts (the marker, the batch the boot unit
/// runs): it, or any directory above it, can be changed by someone other than root. A directory
/// is safe when root owns it and no group or other user may write it; an ancestor may also be
/// a sticky, root-owned directory such as /tmp, where others cannot rename or remove root's
/// entries.
pub fn unsafe_dir_reason(dir: &Path) -> Option<String> {
    let dir = match fs::canonicalize(dir) {
        Ok(d) => d,
        Err(e) => return Some(format!("cannot be resolved ({e})")),
    };
    for (depth, path) in dir.ancestors().enumerate() {
        let Ok(meta) = fs::metadata(path) else {
            continue;
        };
        let what = if depth == 0 {
            "is".to_string()
        } else {
            format!("is inside {}, which is", path.display())
        };
        if meta.uid() != 0 {
            return Some(format!("{what} owned by uid {}, not root", meta.uid()));
        }
        let writable_by_others = meta.mode() & 0o022 != 0;
        let sticky = meta.mode() & 0o1000 != 0;
        if writable_by_others && (depth == 0 || !sticky) {
            return Some(format!(
                "{what} writable by group or others (mode {:o})",
                meta.mode() & 0o7777
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planted_link_at_the_temporary_name_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        let target = dir.path().join("state.json");
        let tmp = dir
            .path()
            .join(format!(".state.json.{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        write_atomic(&target, b"new", 0o644).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(fs::read_to_string(&target).unwrap(), "new");
        assert!(!fs::symlink_metadata(&target)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn links_fifos_and_large_files_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(read_small(&fifo).is_err(), "a FIFO would hang the reader");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(read_small(&link).is_err());
        let big = dir.path().join("big");
        fs::write(&big, vec![b'x'; READ_LIMIT as usize + 1]).unwrap();
        assert!(read_small(&big).is_err());
        assert!(read_small(&dir.path().join("absent")).unwrap().is_none());
    }
}

#[cfg(test)]
mod dir_tests {
    use super::*;

    #[test]
    fn a_directory_under_one_a_user_owns_is_unsafe() {
        if !nix::unistd::Uid::effective().is_root() {
            return;
        }
        let top = tempfile::tempdir().unwrap();
        let user_dir = top.path().join("alice");
        fs::create_dir(&user_dir).unwrap();
        std::os::unix::fs::chown(&user_dir, Some(47123), None).unwrap();
        let state = user_dir.join("state");
        fs::create_dir(&state).unwrap();
        let why = unsafe_dir_reason(&state).expect("a user-owned parent must be refused");
        assert!(why.contains("not root"), "{why}");
        assert!(
            unsafe_dir_reason(top.path()).is_none(),
            "root's temp dir under sticky /tmp is fine"
        );
    }
}
