//! Maildir delivery. Layout: `<root>/<domain>/<local part>/{tmp,new,cur}`,
//! domain and local part lower-cased. A message is written with a
//! `Return-Path` header to `tmp/` (a new name, never over an existing file),
//! fsynced, renamed into `new/`, and both directories fsynced, so a
//! delivered message survives a power cut; directories this delivery
//! creates are synced into their parents. Messages are created 0640: the
//! mailbox's group (a delivery agent reading it) may read them, other users
//! may not (directories get the process umask, see `cli`).
//!
//! A local part has a mailbox when its directory exists (the operator made
//! it, or an earlier delivery did under `create_mailboxes`); postmaster
//! always has one (RFC 5321 §4.5.1). Mail for any other local part goes to
//! the `catch_all` mailbox when one is configured and otherwise fails
//! permanently, creating nothing: a made-up name never becomes a mailbox.
//!
//! With `[domains] recipient_delimiter`, `alice+news@` is delivered to
//! alice's mailbox (her INBOX, no subfolder) and the message gets a
//! `Delivered-To: alice+news@…` header, so whoever reads or filters the
//! mailbox later still sees the detail the envelope carried.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sluice_spool::durable;

use super::RecipientResult;
use crate::config::{DomainsConfig, MaildirConfig};

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

/// Where mail for `local@domain` goes: its own mailbox, created if need
/// be when it may be, or the catch-all; Err is the recipient's result.
fn target_mailbox(
    root: &Path,
    mailboxes: &MaildirConfig,
    local: &str,
    domain: &str,
) -> Result<PathBuf, RecipientResult> {
    let Some(own) = mailbox_dir(root, local, domain) else {
        return Err(RecipientResult::Failed(
            "550 5.1.3 mailbox name not allowed".to_owned(),
        ));
    };
    match std::fs::metadata(&own) {
        Ok(meta) if meta.is_dir() => return Ok(own),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(RecipientResult::Deferred(format!(
                "451 4.3.0 maildir lookup failed: {e}"
            )))
        }
    }
    if mailboxes.create_mailboxes || local.eq_ignore_ascii_case("postmaster") {
        return Ok(own);
    }
    match &mailboxes.catch_all {
        Some(catch_all) => mailbox_dir(root, catch_all, domain).ok_or_else(|| {
            RecipientResult::Failed("550 5.1.3 mailbox name not allowed".to_owned())
        }),
        None => Err(RecipientResult::Failed(
            "550 5.1.1 no such mailbox".to_owned(),
        )),
    }
}

/// The Maildir tree local mail is delivered into, and who has a mailbox.
pub struct Maildirs<'a> {
    pub root: &'a Path,
    pub mailboxes: &'a MaildirConfig,
    /// The recipient delimiter: which local parts share a mailbox.
    pub domains: &'a DomainsConfig,
    /// This server's name, in the unique file names.
    pub hostname: &'a str,
}

impl Maildirs<'_> {
    pub fn deliver(
        &self,
        queue_id: &str,
        reverse_path: &str,
        local: &str,
        domain: &str,
        message: &mut dyn Read,
    ) -> RecipientResult {
        let mailbox = self.domains.mailbox_local_part(local);
        let dir = match target_mailbox(self.root, self.mailboxes, mailbox, domain) {
            Ok(dir) => dir,
            Err(result) => return result,
        };
        let mut trace = format!("Return-Path: <{reverse_path}>\r\n");
        if mailbox != local {
            trace.push_str(&format!("Delivered-To: {local}@{domain}\r\n"));
        }
        match write(&dir, self.hostname, queue_id, &trace, message) {
            Ok(path) => RecipientResult::Delivered(format!("maildir {}", path.display())),
            Err(e) => RecipientResult::Deferred(format!("451 4.3.0 maildir write failed: {e}")),
        }
    }
}

fn write(
    dir: &Path,
    hostname: &str,
    queue_id: &str,
    trace: &str,
    message: &mut dyn Read,
) -> std::io::Result<PathBuf> {
    // A mailbox created by this delivery must outlive a power cut too.
    for sub in ["tmp", "new", "cur"] {
        durable::create_dir_all(&dir.join(sub))?;
    }
    let secs = sluice_spool::unix_now();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!(
        "{secs}.{queue_id}_{n}.{}",
        hostname.replace(['/', ':'], "_")
    );
    store(dir, &name, trace, message)
}

/// Writes the trace header lines and the message as `tmp/<name>`, then
/// moves it to `new/<name>`.
fn store(dir: &Path, name: &str, trace: &str, message: &mut dyn Read) -> std::io::Result<PathBuf> {
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
        file.write_all(trace.as_bytes())?;
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

    const CREATE: MaildirConfig = MaildirConfig {
        catch_all: None,
        create_mailboxes: true,
    };

    fn to(root: &Path, mailboxes: &MaildirConfig, local: &str) -> RecipientResult {
        to_with(root, mailboxes, "", local)
    }

    fn to_with(
        root: &Path,
        mailboxes: &MaildirConfig,
        recipient_delimiter: &str,
        local: &str,
    ) -> RecipientResult {
        let domains = DomainsConfig {
            local: vec!["example.org".into()],
            recipient_delimiter: recipient_delimiter.into(),
        };
        let maildirs = Maildirs {
            root,
            mailboxes,
            domains: &domains,
            hostname: "h",
        };
        maildirs.deliver("id", "s@x.test", local, "example.org", &mut &b"x\r\n"[..])
    }

    fn messages(root: &Path, local: &str) -> Vec<Vec<u8>> {
        let new = root.join("example.org").join(local).join("new");
        match std::fs::read_dir(new) {
            Ok(files) => files
                .map(|f| std::fs::read(f.unwrap().path()).unwrap())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    #[test]
    fn a_detail_is_delivered_to_the_base_mailbox_with_delivered_to() {
        let root = tempfile::tempdir().unwrap();
        let strict = MaildirConfig::default();
        std::fs::create_dir_all(root.path().join("example.org/alice")).unwrap();
        for local in ["alice+news", "Alice-x+y", "postmaster+x"] {
            let result = to_with(root.path(), &strict, "+-", local);
            assert!(
                matches!(result, RecipientResult::Delivered(_)),
                "{local}: {result:?}"
            );
        }
        let alice = messages(root.path(), "alice");
        assert_eq!(alice.len(), 2);
        assert!(alice
            .iter()
            .any(|m| m
                == b"Return-Path: <s@x.test>\r\nDelivered-To: alice+news@example.org\r\nx\r\n"));
        let postmaster = messages(root.path(), "postmaster");
        assert_eq!(postmaster.len(), 1);
        assert!(postmaster[0]
            .starts_with(b"Return-Path: <s@x.test>\r\nDelivered-To: postmaster+x@example.org\r\n"));
        // An unknown base name is refused as before, creating nothing.
        let result = to_with(root.path(), &strict, "+", "bob+x");
        assert!(
            matches!(&result, RecipientResult::Failed(reply) if reply.starts_with("550 5.1.1")),
            "{result:?}"
        );
        assert!(!root.path().join("example.org/bob").exists());
        assert!(!root.path().join("example.org/bob+x").exists());
        // Without a delimiter the detail is part of the name.
        let result = to_with(root.path(), &strict, "", "alice+news");
        assert!(matches!(result, RecipientResult::Failed(_)), "{result:?}");
        assert_eq!(messages(root.path(), "alice").len(), 2);
    }

    #[test]
    fn only_existing_mailboxes_and_postmaster_receive_by_default() {
        let root = tempfile::tempdir().unwrap();
        let strict = MaildirConfig::default();
        let result = to(root.path(), &strict, "nobody");
        assert!(
            matches!(&result, RecipientResult::Failed(reply) if reply.starts_with("550 5.1.1")),
            "{result:?}"
        );
        assert!(!root.path().join("example.org").exists());

        std::fs::create_dir_all(root.path().join("example.org/alice")).unwrap();
        for local in ["Alice", "postmaster"] {
            let result = to(root.path(), &strict, local);
            assert!(
                matches!(result, RecipientResult::Delivered(_)),
                "{local}: {result:?}"
            );
        }
        let new = |local: &str| root.path().join("example.org").join(local).join("new");
        assert_eq!(std::fs::read_dir(new("alice")).unwrap().count(), 1);
        assert_eq!(std::fs::read_dir(new("postmaster")).unwrap().count(), 1);
    }

    #[test]
    fn the_catch_all_receives_for_unknown_local_parts() {
        let root = tempfile::tempdir().unwrap();
        let catch_all = MaildirConfig {
            catch_all: Some("everything".into()),
            create_mailboxes: false,
        };
        let result = to(root.path(), &catch_all, "nobody");
        assert!(
            matches!(result, RecipientResult::Delivered(_)),
            "{result:?}"
        );
        let domain = root.path().join("example.org");
        assert!(!domain.join("nobody").exists());
        let caught = std::fs::read_dir(domain.join("everything/new"))
            .unwrap()
            .count();
        assert_eq!(caught, 1);
    }

    #[test]
    fn writes_return_path_and_exact_bytes_into_new() {
        let root = tempfile::tempdir().unwrap();
        let maildirs = Maildirs {
            root: root.path(),
            mailboxes: &CREATE,
            domains: &DomainsConfig::default(),
            hostname: "mx.test",
        };
        let result = maildirs.deliver(
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
        let err = store(&dir, "1.id_0.mx", "", &mut &b"x\r\n"[..]).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        assert_eq!(std::fs::read_dir(dir.join("new")).unwrap().count(), 0);

        // Not readable by others even under a umask that would allow it.
        let stored = store(&dir, "2.id_1.mx", "", &mut &b"x\r\n"[..]).unwrap();
        let mode = std::fs::metadata(&stored).unwrap().permissions().mode();
        assert_eq!(mode & 0o007, 0, "{mode:o}");
    }

    #[test]
    fn unsafe_local_parts_fail_permanently() {
        let root = tempfile::tempdir().unwrap();
        for local in ["../etc", ".hidden", "a/b", ""] {
            let result = to(root.path(), &CREATE, local);
            assert!(
                matches!(result, RecipientResult::Failed(_)),
                "{local}: {result:?}"
            );
        }
    }
}
