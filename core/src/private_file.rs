//! Reading a secret from a file only its owner may open (the admin token,
//! a smarthost's credentials): a regular file, opened without following a
//! symbolic link (so the mode checked is the mode of the file read), mode
//! 0600 or stricter, read up to a size limit.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PrivateFileError {
    #[error("cannot read {}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Group or others may open the file: its secret is as good as public.
    #[error(
        "{} is accessible by group or others (mode {mode:04o}); it holds {what}: chmod 600 it",
        path.display()
    )]
    Exposed {
        path: PathBuf,
        mode: u32,
        what: &'static str,
    },
}

/// At most `limit` bytes of `path`, which holds `what` ("the admin
/// token"), after checking it is a regular file only its owner may open.
pub fn read(path: &Path, limit: u64, what: &'static str) -> Result<Vec<u8>, PrivateFileError> {
    let io = |error| PrivateFileError::Io {
        path: path.to_owned(),
        error,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(io(std::io::Error::other("not a regular file")));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(PrivateFileError::Exposed {
            path: path.to_owned(),
            mode,
            what,
        });
    }
    let mut text = Vec::new();
    (&mut file).take(limit).read_to_end(&mut text).map_err(io)?;
    Ok(text)
}
