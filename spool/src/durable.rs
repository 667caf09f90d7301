//! Making file-system changes survive a power cut: a file's data is on disk
//! once it was fsynced (or fdatasynced) after its last write, and a name
//! created, renamed or removed in a directory once that directory was
//! fsynced. `sync_file_range` is neither: it neither persists the file's
//! metadata nor flushes the device's write cache.

use std::fs::File;
use std::io;
use std::path::Path;

/// fsyncs a directory, making the names created, renamed or removed in it
/// durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `create_dir_all` that also fsyncs the parent of every directory it
/// creates, so the new directories are still there after a power cut.
/// Returns whether anything was created.
pub fn create_dir_all(dir: &Path) -> io::Result<bool> {
    if dir.is_dir() {
        return Ok(false);
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        // Made by someone else meanwhile; their parent sync is theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(false),
        Err(e) => return Err(e),
    }
    let parent = match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => parent,
        None => Path::new("."),
    };
    sync_dir(parent)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_nested_directories_once() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b/c");
        assert!(create_dir_all(&nested).unwrap());
        assert!(nested.is_dir());
        assert!(!create_dir_all(&nested).unwrap());
        sync_dir(&nested).unwrap();
    }

    #[test]
    fn a_file_in_the_way_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(create_dir_all(&file.join("sub")).is_err());
    }
}
