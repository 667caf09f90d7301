//! Dropping root. Started as root, the server reads its keys and binds its
//! listeners, then `drop_root` hands the data directory to `[server] user`
//! and becomes that user (and group) for good, before the spool is opened,
//! a plugin starts or a connection is accepted. Started as root without a
//! user it refuses to run, like Postfix's daemons, unless `allow_root`
//! says this is a test or a throwaway container.

use std::ffi::{CStr, CString};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::{RunAs, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// Root without an account to become: the operator must name one.
    #[error(
        "started as root without [server] user: set [server] user to the unprivileged \
         account sluice should run as (or start sluice as that account)"
    )]
    RootWithoutUser,
    #[error("[server] user: no such user {0:?}")]
    UnknownUser(String),
    #[error("[server] group: no such group {0:?}")]
    UnknownGroup(String),
    /// `user = "root"` (or another uid 0 account) would drop nothing.
    #[error("[server] user: {0:?} has uid 0; name an unprivileged account")]
    UserIsRoot(String),
    #[error("looking up {kind} {name:?}: {source}")]
    Lookup {
        kind: &'static str,
        name: String,
        source: std::io::Error,
    },
    #[error("cannot hand {path} to uid {uid}: {source}")]
    Chown {
        path: PathBuf,
        uid: u32,
        source: std::io::Error,
    },
    #[error("cannot drop root ({call}): {source}")]
    Switch {
        call: &'static str,
        source: std::io::Error,
    },
    /// The switch reported success, yet root came back: never serve then.
    #[error("after dropping to uid {0}, setuid(0) still succeeds")]
    Regained(u32),
    /// The calls succeeded but the ids are not the account's.
    #[error("after dropping root, the ids are not uid {uid} gid {gid}")]
    NotSwitched { uid: u32, gid: u32 },
}

/// An account to run as, looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Account {
    uid: u32,
    gid: u32,
}

/// What `drop_root` did, for the start-up log.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not started as root: nothing to drop.
    Unprivileged,
    /// Started as root, now `user` (uid, gid).
    Dropped { user: String, uid: u32, gid: u32 },
    /// Started as root with `allow_root`: still root.
    StillRoot,
}

/// Becomes `[server] user` when running as root, after handing it
/// `owned_dirs` (the data directory, the plugin cache): every entry in
/// them still owned by root, as an earlier start as root left it. Must run
/// before anything creates a file the server later writes.
pub fn drop_root(server: &ServerConfig, owned_dirs: &[&Path]) -> Result<Outcome, PrivilegeError> {
    if !rustix::process::geteuid().is_root() {
        return Ok(Outcome::Unprivileged);
    }
    let Some(run_as) = &server.run_as else {
        if server.allow_root {
            tracing::warn!(
                "running as root: [server] allow_root is set (for tests and throwaway \
                 containers only; set [server] user instead)"
            );
            return Ok(Outcome::StillRoot);
        }
        return Err(PrivilegeError::RootWithoutUser);
    };
    let account = account(run_as)?;
    for dir in owned_dirs {
        hand_over(dir, account)?;
    }
    switch(account)?;
    Ok(Outcome::Dropped {
        user: run_as.user.clone(),
        uid: account.uid,
        gid: account.gid,
    })
}

/// The user's uid and the group's gid (the user's primary group unless
/// `group` names one), through the system's user database (NSS).
fn account(run_as: &RunAs) -> Result<Account, PrivilegeError> {
    let (uid, primary) = lookup_user(&run_as.user)?
        .ok_or_else(|| PrivilegeError::UnknownUser(run_as.user.clone()))?;
    if uid == 0 {
        return Err(PrivilegeError::UserIsRoot(run_as.user.clone()));
    }
    let gid = match &run_as.group {
        None => primary,
        Some(group) => {
            lookup_group(group)?.ok_or_else(|| PrivilegeError::UnknownGroup(group.clone()))?
        }
    };
    Ok(Account { uid, gid })
}

/// Room for one passwd or group entry; grown on ERANGE.
const ENTRY_BUFFER: usize = 4096;

/// Runs a reentrant user-database lookup (`getpwnam_r`, `getgrnam_r`):
/// `call` gets the name and a buffer and returns the C return code and
/// what it found; the buffer grows while the entry does not fit.
fn nss_lookup<T>(
    kind: &'static str,
    name: &str,
    mut call: impl FnMut(&CStr, &mut [libc::c_char]) -> (libc::c_int, Option<T>),
) -> Result<Option<T>, PrivilegeError> {
    let fail = |source| PrivilegeError::Lookup {
        kind,
        name: name.to_owned(),
        source,
    };
    let c_name = CString::new(name).map_err(|e| fail(std::io::Error::other(e)))?;
    let mut buffer = vec![0 as libc::c_char; ENTRY_BUFFER];
    loop {
        match call(&c_name, &mut buffer) {
            (0, found) => return Ok(found),
            (libc::ERANGE, _) if buffer.len() < 1 << 20 => buffer.resize(buffer.len() * 4, 0),
            (errno, _) => return Err(fail(std::io::Error::from_raw_os_error(errno))),
        }
    }
}

/// The uid and primary gid of user `name`.
fn lookup_user(name: &str) -> Result<Option<(u32, u32)>, PrivilegeError> {
    nss_lookup("user", name, |c_name, buffer| {
        // SAFETY: all-zero is a valid `passwd` (null pointers, zero ids).
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call and `buffer.len()`
        // is its real size; of the entry only the ids are read, not the
        // strings that point into `buffer`.
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &mut entry,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut found,
            )
        };
        (
            rc,
            (!found.is_null()).then_some((entry.pw_uid, entry.pw_gid)),
        )
    })
}

/// The gid of group `name`.
fn lookup_group(name: &str) -> Result<Option<u32>, PrivilegeError> {
    nss_lookup("group", name, |c_name, buffer| {
        // SAFETY: all-zero is a valid `group` (null pointers, zero id).
        let mut entry: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: as in `lookup_user`; only the gid is read.
        let rc = unsafe {
            libc::getgrnam_r(
                c_name.as_ptr(),
                &mut entry,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut found,
            )
        };
        (rc, (!found.is_null()).then_some(entry.gr_gid))
    })
}

/// Gives `dir` and everything under it that root owns to the account,
/// modes unchanged. Symbolic links are changed themselves, never followed,
/// and a directory someone else owns is left alone with its contents:
/// only what the server itself created as root is handed over.
fn hand_over(dir: &Path, account: Account) -> Result<(), PrivilegeError> {
    let fail = |path: &Path, source: std::io::Error| PrivilegeError::Chown {
        path: path.to_owned(),
        uid: account.uid,
        source,
    };
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(fail(dir, e)),
    };
    if meta.uid() != 0 {
        return Ok(());
    }
    rustix::fs::chownat(
        rustix::fs::CWD,
        dir,
        Some(rustix::fs::Uid::from_raw(account.uid)),
        Some(rustix::fs::Gid::from_raw(account.gid)),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| fail(dir, e.into()))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir).map_err(|e| fail(dir, e))? {
            let entry = entry.map_err(|e| fail(dir, e))?;
            hand_over(&entry.path(), account)?;
        }
    }
    Ok(())
}

/// Supplementary groups cleared, then the group, then the user (the
/// other order would leave no right to change the group), then proof that
/// root is gone. glibc applies each call to every thread of the process
/// (the async runtime's workers are already running), not just this one.
fn switch(account: Account) -> Result<(), PrivilegeError> {
    let check = |call: &'static str, rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(PrivilegeError::Switch {
                call,
                source: std::io::Error::last_os_error(),
            })
        }
    };
    // SAFETY: plain system calls on integers; setgroups reads no memory
    // when the count is 0.
    unsafe {
        check("setgroups", libc::setgroups(0, std::ptr::null()))?;
        check("setgid", libc::setgid(account.gid))?;
        check("setuid", libc::setuid(account.uid))?;
    }
    // SAFETY: as above; expected to fail with EPERM.
    if unsafe { libc::setuid(0) } == 0 {
        return Err(PrivilegeError::Regained(account.uid));
    }
    let ids = [
        rustix::process::getuid().as_raw(),
        rustix::process::geteuid().as_raw(),
        rustix::process::getgid().as_raw(),
        rustix::process::getegid().as_raw(),
    ];
    if ids != [account.uid, account.uid, account.gid, account.gid] {
        return Err(PrivilegeError::NotSwitched {
            uid: account.uid,
            gid: account.gid,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found_with_uid_0_and_a_missing_user_is_none() {
        assert_eq!(lookup_user("root").expect("lookup"), Some((0, 0)));
        assert_eq!(lookup_user("no-such-user-here").expect("lookup"), None);
        assert_eq!(lookup_group("root").expect("lookup"), Some(0));
        assert_eq!(lookup_group("no-such-group-here").expect("lookup"), None);
    }

    #[test]
    fn root_is_refused_as_the_account_to_run_as() {
        let run_as = RunAs {
            user: "root".into(),
            group: None,
        };
        assert!(matches!(
            account(&run_as),
            Err(PrivilegeError::UserIsRoot(_))
        ));
    }
}
