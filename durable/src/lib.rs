//! ferry-durable: the one place Ferry writes down how a file reaches the disk so that a power
//! cut at any instant leaves either the old state or the new one, never a torn one.
//!
//! The rule: write a temporary name beside the destination, `fsync` it, `rename(2)` (or
//! `link(2)`, for a name that must not exist yet) it into place, then `fsync` the directory so
//! the new name itself survives. Every crate uses these functions instead of writing the rule
//! out again; what differs between callers (the mode, whether the name may exist, whether the
//! content is streamed) is a parameter here, not a copy there.
//!
//! Temporary names start with `.` and contain `.tmp`, so the recovery sweeps of the callers
//! (which remove `*.tmp*`) clean up after a crash; a leftover of an earlier crash of the same
//! process id is removed before it is reused.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The mode of a file anyone may read (the process umask still applies).
pub const PUBLIC: u32 = 0o666;
/// The mode of a secret: readable and writable by its owner only.
pub const SECRET: u32 = 0o600;

/// fsyncs `dir`, making the names created, renamed or removed in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// fsyncs the directory holding `path` (`.` for a bare name).
pub fn sync_parent(path: &Path) -> io::Result<()> {
    sync_dir(parent(path))
}

/// The directory holding `path` (`.` for a bare name).
pub fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A temporary name beside `path` for this process: `.<name>.tmp.<pid>`.
pub fn temp_beside(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{} has no file name", path.display())))?;
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".tmp.{}", std::process::id()));
    Ok(path.with_file_name(tmp))
}

/// The process id in a temporary name of [`temp_beside`] (`.<name>.tmp.<pid>`), for a
/// recovery sweep that removes only what a dead process left.
pub fn temp_owner(file_name: &std::ffi::OsStr) -> Option<u32> {
    let name = file_name.to_str()?;
    let (head, pid) = name.rsplit_once(".tmp.")?;
    if !head.starts_with('.') || head.len() < 2 || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Atomically replaces `path` with `bytes` (mode [`PUBLIC`]).
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_with(path, PUBLIC, |f| f.write_all(bytes))
}

/// Atomically replaces `path` with `bytes` readable by its owner only ([`SECRET`]).
pub fn replace_secret(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_with(path, SECRET, |f| f.write_all(bytes))
}

/// Atomically replaces `path` with what `write` writes into a fresh temporary file of `mode`:
/// the file is synced, renamed over `path`, and the directory synced. On an error from
/// `write` or from any step, the temporary file is removed and `path` is untouched.
pub fn replace_with<T, E: From<io::Error>>(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut File) -> Result<T, E>,
) -> Result<T, E> {
    let tmp = temp_beside(path)?;
    let result = (|| {
        let mut f = create_fresh(&tmp, mode)?;
        let out = write(&mut f)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        sync_parent(path)?;
        Ok(out)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes a new file whole or not at all, never replacing one: the temporary file is synced,
/// then hard-linked to `path`, which fails with [`io::ErrorKind::AlreadyExists`] if the name
/// exists. A crash leaves either no `path` or a complete one.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temp_beside(path)?;
    let result = (|| {
        let mut f = create_fresh(&tmp, mode)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::hard_link(&tmp, path)
    })();
    let _ = fs::remove_file(&tmp);
    result?;
    sync_parent(path)
}

/// Renames `from` (a file or directory already written and synced by the caller) to `to`,
/// then syncs the directory of `to`. `rename(2)` replaces a file, or an empty directory.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    sync_parent(to)
}

/// Points the symlink `link` at `target` in one atomic step, durably: a symlink to a
/// temporary name, renamed over `link`, and the directory synced. Whether `link` may be
/// replaced (it must not be a regular file, say) is the caller's rule, checked before.
pub fn replace_symlink(link: &Path, target: &Path) -> io::Result<()> {
    let tmp = temp_beside(link)?;
    // A leftover from a crash during an earlier switch is only ever our temporary link.
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    if let Err(e) = fs::rename(&tmp, link) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_parent(link)
}

/// Removes the file `path` durably; an absent file is not an error.
pub fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_parent(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn create_fresh(tmp: &Path, mode: u32) -> io::Result<File> {
    // Only a leftover of an earlier crash of a process with our id can be in the way.
    let _ = fs::remove_file(tmp);
    OpenOptions::new().write(true).create_new(true).mode(mode).open(tmp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp"))
            .collect()
    }

    #[test]
    fn replace_writes_and_overwrites_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        replace(&p, b"one").unwrap();
        replace(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert!(leftovers(d.path()).is_empty());
    }

    #[test]
    fn a_secret_is_private_whatever_the_umask() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("token");
        replace_secret(&p, b"s").unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let n = d.path().join("key");
        write_new(&n, b"k", SECRET).unwrap();
        assert_eq!(fs::metadata(&n).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_failing_writer_leaves_the_old_file_and_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        replace(&p, b"old").unwrap();
        let r: io::Result<()> = replace_with(&p, PUBLIC, |f| {
            f.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        });
        assert_eq!(r.unwrap_err().to_string(), "disk full");
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert!(leftovers(d.path()).is_empty());
    }

    #[test]
    fn write_new_refuses_an_existing_name_and_keeps_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        write_new(&p, b"first", PUBLIC).unwrap();
        let e = write_new(&p, b"second", PUBLIC).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&p).unwrap(), b"first");
        assert!(leftovers(d.path()).is_empty());
    }

    #[test]
    fn replace_symlink_switches_and_a_stale_temporary_is_no_obstacle() {
        let d = tempfile::tempdir().unwrap();
        let link = d.path().join("current");
        fs::create_dir(d.path().join("a")).unwrap();
        fs::create_dir(d.path().join("b")).unwrap();
        std::os::unix::fs::symlink("/nowhere", temp_beside(&link).unwrap()).unwrap();
        replace_symlink(&link, Path::new("a")).unwrap();
        replace_symlink(&link, Path::new("b")).unwrap();
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("b"));
        assert!(leftovers(d.path()).is_empty());
    }

    #[test]
    fn a_temporary_names_its_owner_and_nothing_else_does() {
        let t = temp_beside(Path::new("/x/state.json")).unwrap();
        assert_eq!(temp_owner(t.file_name().unwrap()), Some(std::process::id()));
        for other in ["state.json", ".state.json", "state.json.tmp.12", ".state.json.tmp.", ".x.tmp.1a", "a.tmp"] {
            assert_eq!(temp_owner(std::ffi::OsStr::new(other)), None, "{other}");
        }
        assert_eq!(temp_owner(std::ffi::OsStr::new(".trial.json.tmp.4242")), Some(4242));
    }

    #[test]
    fn a_name_without_a_file_name_is_an_error_not_a_panic() {
        assert_eq!(replace(Path::new("/"), b"x").unwrap_err().kind(), io::ErrorKind::InvalidInput);
        remove(&tempfile::tempdir().unwrap().path().join("absent")).unwrap();
    }
}
