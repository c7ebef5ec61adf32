//! The atomic symlink switch.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} exists and is not a symlink; refusing to replace it")]
    NotASymlink { path: PathBuf },
    #[error("switch target {path} is not a directory")]
    BadTarget { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SwitchError + '_ {
    move |source| SwitchError::Io { path: path.to_path_buf(), source }
}

/// Where `link` points now, or `None` if it does not exist.
pub fn current_target(link: &Path) -> Result<Option<PathBuf>, SwitchError> {
    match fs::symlink_metadata(link) {
        Ok(m) if m.file_type().is_symlink() => Ok(Some(fs::read_link(link).map_err(io_err(link))?)),
        Ok(_) => Err(SwitchError::NotASymlink { path: link.to_path_buf() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(link)(e)),
    }
}

/// Points `link` at `target` in one atomic step, durably.
///
/// A regular file or directory at `link` is never replaced. `target` must be a directory.
pub fn switch_symlink(link: &Path, target: &Path) -> Result<(), SwitchError> {
    current_target(link)?;
    let dir = match link.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // A relative target resolves from the link's directory, so check it from there.
    if !fs::metadata(dir.join(target)).map(|m| m.is_dir()).unwrap_or(false) {
        return Err(SwitchError::BadTarget { path: target.to_path_buf() });
    }
    if link.file_name().is_none() {
        return Err(SwitchError::NotASymlink { path: link.to_path_buf() });
    }
    ferry_durable::replace_symlink(link, target).map_err(io_err(link))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_replaces_the_link_and_leaves_no_temporary() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        let link = t.path().join("current");
        assert_eq!(current_target(&link).unwrap(), None);
        switch_symlink(&link, &a).unwrap();
        assert_eq!(current_target(&link).unwrap(), Some(a.clone()));
        switch_symlink(&link, &b).unwrap();
        assert_eq!(current_target(&link).unwrap(), Some(b));
        let names: Vec<_> = fs::read_dir(t.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 3, "only a, b and current remain: {names:?}");
    }

    #[test]
    fn switch_refuses_to_replace_a_directory_or_point_at_nothing() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("current");
        fs::create_dir(&real).unwrap();
        let target = t.path().join("a");
        fs::create_dir(&target).unwrap();
        assert!(matches!(switch_symlink(&real, &target), Err(SwitchError::NotASymlink { .. })));
        assert!(real.is_dir());
        let link = t.path().join("link");
        assert!(matches!(switch_symlink(&link, &t.path().join("missing")), Err(SwitchError::BadTarget { .. })));
        assert_eq!(current_target(&link).unwrap(), None);
    }
}
