//! Maildir delivery. Layout: `<root>/<domain>/<local part>/{tmp,new,cur}`,
//! domain and local part lower-cased. A message is written with a
//! `Return-Path` header to `tmp/` (a new name, never over an existing file),
//! fsynced, renamed into `new/`, and both directories fsynced, so a
//! delivered message survives a power cut; directories this delivery
//! creates are synced into their parents. Messages are created 0640: the
//! mailbox's group (a delivery agent reading it) may read them, other users
//! may not (directories get the process umask, see `cli`).

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sluice_spool::durable;

use super::RecipientResult;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The mailbox directory of a local recipient, or None when the address
/// cannot name a directory safely.
pub fn mailbox_dir(root: &Path, local: &str, domain: &str) -> Option<PathBuf> {
    let safe = |s: &str| {
        !s.is_empty() && !s.starts_with('.') && !s.contains(['/', '\\', '\0']) && s != ".."
    };
    let local = local.to_lowercase();
    let domain = domain.to_ascii_lowercase();
    if !safe(&local) || !safe(&domain) {
        return None;
    }
    Some(root.join(domain).join(local))
}

pub fn deliver(
    root: &Path,
    hostname: &str,
    queue_id: &str,
    reverse_path: &str,
    local: &str,
    domain: &str,
    message: &mut dyn Read,
) -> RecipientResult {
    let Some(dir) = mailbox_dir(root, local, domain) else {
        return RecipientResult::Failed("550 5.1.3 mailbox name not allowed".to_owned());
    };
    match write(&dir, hostname, queue_id, reverse_path, message) {
        Ok(path) => RecipientResult::Delivered(format!("maildir {}", path.display())),
        Err(e) => RecipientResult::Deferred(format!("451 4.3.0 maildir write failed: {e}")),
    }
}

fn write(
    dir: &Path,
    hostname: &str,
    queue_id: &str,
    reverse_path: &str,
    message: &mut dyn Read,
) -> std::io::Result<PathBuf> {
    // A mailbox created by this delivery must outlive a power cut too.
    for sub in ["tmp", "new", "cur"] {
        durable::create_dir_all(&dir.join(sub))?;
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!(
        "{secs}.{queue_id}_{n}.{}",
        hostname.replace(['/', ':'], "_")
    );
    store(dir, &name, reverse_path, message)
}

/// Writes the message as `tmp/<name>`, then moves it to `new/<name>`.
fn store(
    dir: &Path,
    name: &str,
    reverse_path: &str,
    message: &mut dyn Read,
) -> std::io::Result<PathBuf> {
    let tmp = dir.join("tmp").join(name);
    let new = dir.join("new").join(name);
    // create_new: whatever already sits under this name (a file, or a
    // symbolic link planted by someone with access to tmp/) is neither
    // followed nor overwritten; the delivery is deferred and retried under
    // a new name.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(&tmp)?;
    let written = (|| {
        file.write_all(format!("Return-Path: <{reverse_path}>\r\n").as_bytes())?;
        copy(message, &mut file)?;
        file.sync_all()
    })();
    drop(file);
    if let Err(e) = written {
        // A half-written message left in tmp/ would only be swept later.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &new)?;
    // The rename changed both directories.
    durable::sync_dir(&dir.join("new"))?;
    durable::sync_dir(&dir.join("tmp"))?;
    Ok(new)
}

/// Copies the message a block at a time: it is read from the spool, never
/// held whole.
fn copy(message: &mut dyn Read, file: &mut std::fs::File) -> std::io::Result<()> {
    let mut block = vec![0u8; 64 << 10];
    loop {
        match message.read(&mut block) {
            Ok(0) => return Ok(()),
            Ok(n) => file.write_all(&block[..n])?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_return_path_and_exact_bytes_into_new() {
        let root = tempfile::tempdir().unwrap();
        let result = deliver(
            root.path(),
            "mx.test",
            "abc",
            "s@x.test",
            "User",
            "Example.ORG",
            &mut &b"Subject: x\r\n\r\nbody\r\n"[..],
        );
        assert!(
            matches!(result, RecipientResult::Delivered(_)),
            "{result:?}"
        );
        let dir = root.path().join("example.org/user");
        let files: Vec<_> = std::fs::read_dir(dir.join("new")).unwrap().collect();
        assert_eq!(files.len(), 1);
        let content = std::fs::read(files[0].as_ref().unwrap().path()).unwrap();
        assert_eq!(
            content,
            b"Return-Path: <s@x.test>\r\nSubject: x\r\n\r\nbody\r\n"
        );
        assert_eq!(std::fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn never_writes_through_what_already_sits_in_tmp() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("example.org/user");
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let victim = root.path().join("victim");
        std::fs::write(&victim, b"untouched").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("tmp/1.id_0.mx")).unwrap();
        let err = store(&dir, "1.id_0.mx", "s@x.test", &mut &b"x\r\n"[..]).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        assert_eq!(std::fs::read_dir(dir.join("new")).unwrap().count(), 0);

        // Not readable by others even under a umask that would allow it.
        let stored = store(&dir, "2.id_1.mx", "s@x.test", &mut &b"x\r\n"[..]).unwrap();
        let mode = std::fs::metadata(&stored).unwrap().permissions().mode();
        assert_eq!(mode & 0o007, 0, "{mode:o}");
    }

    #[test]
    fn unsafe_local_parts_fail_permanently() {
        let root = tempfile::tempdir().unwrap();
        for local in ["../etc", ".hidden", "a/b", ""] {
            let result = deliver(
                root.path(),
                "h",
                "id",
                "",
                local,
                "example.org",
                &mut &b"x\r\n"[..],
            );
            assert!(
                matches!(result, RecipientResult::Failed(_)),
                "{local}: {result:?}"
            );
        }
    }
}
