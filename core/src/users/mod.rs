//! SMTP AUTH users: the file `<data_dir>/users` (one `name:argon2id-PHC`
//! per line, mode 0600), edited by `sluice user` and read by the server.
//!
//! A plain file rather than sled because sled lets one process open a
//! database, and `sluice user add` must work while the server runs. Edits
//! take a lock file and replace the file atomically (temporary file, fsync,
//! rename); the server re-reads it when its modification time, size or
//! inode changes, so a new user can log in without a restart.
//!
//! [`Authenticator`] is what sessions call: the lockout reservation (on
//! this node, or in Redis shared by every node), argon2 verification on the
//! blocking pool (bounded), then the reservation settled.

pub mod lockout;
pub mod password;
pub mod shared_lockout;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

pub use lockout::{FailureLimiter, Locked};

use crate::client_key::ClientKey;
use crate::config::DEFAULT_IPV6_PREFIX;
use crate::metrics::METRICS;
use crate::state::RedisState;
use lockout::{Outcome, Refused};
use shared_lockout::{SharedAttempt, SharedLockout};

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Malformed {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("invalid user name {0:?}: use a plain name or local@domain, without spaces, colons or control characters")]
    InvalidName(String),
    #[error("user {0:?} already exists (use `sluice user passwd` to change the password)")]
    Exists(String),
    #[error("no user {0:?}")]
    NotFound(String),
    #[error(transparent)]
    Hash(#[from] password::HashError),
}

/// User names are compared case-insensitively (stored lower-cased).
pub fn normalize_name(name: &str) -> Result<String, UserError> {
    let valid = !name.is_empty()
        && name.len() <= 255
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ':')
        && match name.split_once('@') {
            None => true,
            Some((local, domain)) => {
                !local.is_empty() && !domain.is_empty() && !domain.contains('@')
            }
        };
    if valid {
        Ok(name.to_lowercase())
    } else {
        Err(UserError::InvalidName(name.to_owned()))
    }
}

/// The users file as a map from name to PHC hash. A missing file is an
/// empty one.
pub fn read_users(path: &Path) -> Result<BTreeMap<String, String>, UserError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => {
            return Err(UserError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    parse_users(&text, path)
}

fn parse_users(text: &str, path: &Path) -> Result<BTreeMap<String, String>, UserError> {
    let mut users = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let malformed = |message: &str| UserError::Malformed {
            path: path.to_owned(),
            line: i + 1,
            message: message.to_owned(),
        };
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, hash) = line
            .split_once(':')
            .ok_or_else(|| malformed("expected NAME:HASH"))?;
        let name = normalize_name(name).map_err(|e| malformed(&e.to_string()))?;
        if !hash.starts_with('$') {
            return Err(malformed("the hash is not a PHC string"));
        }
        if users.insert(name, hash.to_owned()).is_some() {
            return Err(malformed("duplicate user"));
        }
    }
    Ok(users)
}

/// Edits of the users file, for the command line.
pub struct UserFile {
    path: PathBuf,
}

impl UserFile {
    /// The users file of a data directory.
    pub fn in_data_dir(data_dir: &Path) -> UserFile {
        UserFile {
            path: data_dir.join("users"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn list(&self) -> Result<Vec<String>, UserError> {
        Ok(read_users(&self.path)?.into_keys().collect())
    }

    /// Adds a user; `hash` is a PHC string from [`password::hash_password`].
    pub fn add(&self, name: &str, hash: &str) -> Result<(), UserError> {
        let name = normalize_name(name)?;
        self.edit(|users| {
            if users.contains_key(&name) {
                return Err(UserError::Exists(name.clone()));
            }
            users.insert(name.clone(), hash.to_owned());
            Ok(())
        })
    }

    pub fn set_password(&self, name: &str, hash: &str) -> Result<(), UserError> {
        let name = normalize_name(name)?;
        self.edit(|users| match users.get_mut(&name) {
            Some(old) => {
                *old = hash.to_owned();
                Ok(())
            }
            None => Err(UserError::NotFound(name.clone())),
        })
    }

    pub fn delete(&self, name: &str) -> Result<(), UserError> {
        let name = normalize_name(name)?;
        self.edit(|users| {
            users
                .remove(&name)
                .map(|_| ())
                .ok_or_else(|| UserError::NotFound(name.clone()))
        })
    }

    /// Whether `name` exists (for checks before asking for a password).
    pub fn contains(&self, name: &str) -> Result<bool, UserError> {
        let name = normalize_name(name)?;
        Ok(read_users(&self.path)?.contains_key(&name))
    }

    /// Read, change, write back atomically, under a lock file so two
    /// concurrent `sluice user` commands cannot lose each other's change.
    fn edit(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, String>) -> Result<(), UserError>,
    ) -> Result<(), UserError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| UserError::Io { path, source }
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = self.path.with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        lock.lock().map_err(io(&lock_path))?;
        keep_owner(dir, &lock).map_err(io(&lock_path))?;

        let mut users = read_users(&self.path)?;
        change(&mut users)?;
        let mut text = String::new();
        for (name, hash) in &users {
            text.push_str(name);
            text.push(':');
            text.push_str(hash);
            text.push('\n');
        }
        let tmp = self.path.with_extension("tmp");
        // Under the lock, a leftover is a crashed edit's: removed, never
        // written through (it could be a symbolic link to anywhere), so the
        // new file is created afresh with its mode.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&tmp)(e)),
            _ => {}
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        keep_owner(dir, &file).map_err(io(&tmp))?;
        file.write_all(text.as_bytes()).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        // The rename itself must survive a crash too.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        Ok(())
    }
}

/// `sluice user` run as root next to a server that dropped to its
/// `[server] user`: a file it creates gets the data directory's owner, or
/// the server could no longer read it (or take the lock).
fn keep_owner(dir: &Path, file: &std::fs::File) -> std::io::Result<()> {
    let owner = std::fs::metadata(dir)?;
    if rustix::process::geteuid().is_root() && owner.uid() != 0 {
        std::os::unix::fs::fchown(file, Some(owner.uid()), Some(owner.gid()))?;
    }
    Ok(())
}

/// What identifies one version of the file on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

struct Cached {
    stamp: Option<Stamp>,
    users: Arc<BTreeMap<String, String>>,
}

/// The server's read-only view of the users file, re-read when it changes.
pub struct UserStore {
    path: PathBuf,
    cache: Mutex<Cached>,
}

impl UserStore {
    pub fn new(data_dir: &Path) -> UserStore {
        UserStore {
            path: data_dir.join("users"),
            cache: Mutex::new(Cached {
                stamp: None,
                users: Arc::new(BTreeMap::new()),
            }),
        }
    }

    /// The current users, re-reading the file if it changed. Blocking (a
    /// stat, and a read after a change). A file that cannot be parsed is
    /// reported and the previous version stays in use.
    pub fn users(&self) -> Arc<BTreeMap<String, String>> {
        let stamp = std::fs::metadata(&self.path).ok().map(|m| Stamp {
            modified: m.modified().ok(),
            len: m.len(),
            inode: m.ino(),
        });
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.stamp != stamp {
            match read_users(&self.path) {
                Ok(users) => {
                    tracing::info!(path = %self.path.display(), users = users.len(), "users file loaded");
                    cache.users = Arc::new(users);
                }
                Err(e) => tracing::error!("users file not reloaded: {e}"),
            }
            cache.stamp = stamp;
        }
        cache.users.clone()
    }

    /// Whether `password` is `name`'s. Blocking and slow (argon2).
    pub fn verify(&self, name: &str, password: &str) -> bool {
        let users = self.users();
        let name = name.to_lowercase();
        match users.get(&name) {
            Some(hash) => password::verify_password(password, hash),
            None => {
                // Same cost as a wrong password: no user enumeration by timing.
                password::verify_password(password, password::dummy_hash());
                false
            }
        }
    }
}

/// The result of one AUTH attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// The credentials are valid; the normalized user name.
    Success(String),
    BadCredentials,
    /// Refused before checking: too many recent failures.
    Locked(Locked),
    /// The check could not run (overload, internal error): try later.
    Unavailable,
}

/// Checks credentials for sessions: the lockout reservation first, then
/// bounded argon2 work off the async threads, then the reservation settled.
pub struct Authenticator {
    store: Arc<UserStore>,
    /// This node's lockout counts: the only ones without shared state, the
    /// fallback while Redis cannot be reached.
    limiter: FailureLimiter,
    /// The counts every node shares (`[state] backend = "redis"`).
    shared: Option<SharedLockout>,
    /// Whether the last shared call failed, so the fallback is logged when
    /// it starts and ends rather than once per attempt.
    shared_down: AtomicBool,
    /// How IPv6 clients are grouped into one client (`[server] ipv6_prefix`).
    ipv6_prefix: u8,
    /// argon2id takes ~19 MiB and tens of milliseconds per check: bound the
    /// checks in flight so a flood of AUTH cannot exhaust memory.
    slots: tokio::sync::Semaphore,
}

/// Where an attempt was counted, so it is settled there.
enum Reservation {
    Local(lockout::Attempt),
    Shared(SharedAttempt),
}

impl Authenticator {
    pub fn new(store: Arc<UserStore>, max_failures: u32, lockout: Duration) -> Authenticator {
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        Authenticator {
            store,
            limiter: FailureLimiter::new(max_failures, lockout),
            shared: None,
            shared_down: AtomicBool::new(false),
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
            slots: tokio::sync::Semaphore::new(parallel * 2),
        }
    }

    /// Keeps the lockout counts in `redis`, shared with every node using
    /// it; this node's table serves while Redis cannot be reached.
    pub fn with_shared_lockout(mut self, redis: &RedisState) -> Authenticator {
        self.shared = Some(SharedLockout::new(
            redis,
            self.limiter.max_failures(),
            self.limiter.window(),
        ));
        self
    }

    /// Groups IPv6 clients by networks of `bits` bits instead of /64.
    pub fn with_ipv6_prefix(mut self, bits: u8) -> Authenticator {
        self.ipv6_prefix = bits;
        self
    }

    /// What the lockout counts `ip` as (its IPv6 network, or itself).
    pub fn client_key(&self, ip: IpAddr) -> ClientKey {
        ClientKey::new(ip, self.ipv6_prefix)
    }

    pub async fn authenticate(&self, client: IpAddr, user: &str, password: &str) -> AuthOutcome {
        let client = self.client_key(client);
        // Counted before waiting for a hashing slot: concurrent attempts
        // beyond max_failures are refused here, without an argon2 run.
        let reservation = match self.reserve(client, user).await {
            Ok(reservation) => reservation,
            Err(Refused::Locked(locked)) => return AuthOutcome::Locked(locked),
            Err(Refused::Full) => {
                tracing::warn!(client = %client, "AUTH refused for now: the lockout table is full of locked clients and users");
                return AuthOutcome::Unavailable;
            }
        };
        let (outcome, settled) = match self.verify(user, password).await {
            Some(true) => (
                AuthOutcome::Success(user.to_lowercase()),
                Outcome::Succeeded,
            ),
            Some(false) => (AuthOutcome::BadCredentials, Outcome::Failed),
            None => (AuthOutcome::Unavailable, Outcome::Abandoned),
        };
        self.settle(reservation, settled).await;
        outcome
    }

    /// Whether `password` is `user`'s; None when the check could not run.
    async fn verify(&self, user: &str, password: &str) -> Option<bool> {
        let _slot = self.slots.acquire().await.ok()?;
        let store = self.store.clone();
        let (name, secret) = (user.to_owned(), password.to_owned());
        let verified = tokio::task::spawn_blocking(move || {
            METRICS.auth_verifications.inc(&[]);
            store.verify(&name, &secret)
        })
        .await;
        match verified {
            Ok(verified) => Some(verified),
            Err(e) => {
                tracing::error!("password verification failed to run: {e}");
                None
            }
        }
    }

    async fn reserve(&self, client: ClientKey, user: &str) -> Result<Reservation, Refused> {
        if let Some(shared) = &self.shared {
            match shared.reserve(client, user).await {
                Ok(reserved) => {
                    if self.shared_down.swap(false, Ordering::Relaxed) {
                        tracing::info!("AUTH lockout counts shared through redis again");
                    }
                    return reserved.map(Reservation::Shared).map_err(Refused::Locked);
                }
                Err(e) => {
                    METRICS.auth_lockout_fallbacks.inc(&[]);
                    if !self.shared_down.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "{e}; AUTH lockout counted on this node alone until redis answers"
                        );
                    }
                }
            }
        }
        self.limiter
            .reserve(client, user, Instant::now())
            .map(Reservation::Local)
    }

    async fn settle(&self, reservation: Reservation, outcome: Outcome) {
        match reservation {
            Reservation::Local(attempt) => self.limiter.settle(attempt, outcome, Instant::now()),
            Reservation::Shared(attempt) => {
                let Some(shared) = &self.shared else { return };
                if let Err(e) = shared.settle(attempt, outcome).await {
                    // The attempt stays counted as a failure until its
                    // window passes: the safe side for a lockout.
                    tracing::warn!("{e}; the AUTH attempt stays counted as failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast_hash(password: &str) -> String {
        password::hash_password(password).unwrap()
    }

    #[test]
    fn names() {
        assert_eq!(
            normalize_name("Alice@Example.ORG").unwrap(),
            "alice@example.org"
        );
        assert_eq!(normalize_name("bob").unwrap(), "bob");
        for bad in ["", "a b", "a:b", "@x", "x@", "a@b@c", "tab\there"] {
            assert!(normalize_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn add_passwd_del_list_and_file_format() {
        let dir = tempfile::tempdir().unwrap();
        let file = UserFile::in_data_dir(dir.path());
        assert!(file.list().unwrap().is_empty());
        file.add("Alice@example.org", "$argon2id$a").unwrap();
        file.add("bob", "$argon2id$b").unwrap();
        assert!(matches!(
            file.add("alice@EXAMPLE.org", "$x"),
            Err(UserError::Exists(_))
        ));
        assert_eq!(file.list().unwrap(), vec!["alice@example.org", "bob"]);
        file.set_password("BOB", "$argon2id$c").unwrap();
        assert!(matches!(
            file.set_password("carol", "$x"),
            Err(UserError::NotFound(_))
        ));
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert_eq!(text, "alice@example.org:$argon2id$a\nbob:$argon2id$c\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        file.delete("alice@example.org").unwrap();
        assert!(matches!(
            file.delete("alice@example.org"),
            Err(UserError::NotFound(_))
        ));
        assert_eq!(file.list().unwrap(), vec!["bob"]);
    }

    #[test]
    fn a_leftover_temporary_file_is_replaced_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let file = UserFile::in_data_dir(dir.path());
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        std::os::unix::fs::symlink(&victim, file.path().with_extension("tmp")).unwrap();
        file.add("alice", "$argon2id$a").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        assert_eq!(file.list().unwrap(), vec!["alice"]);
        assert!(!file.path().with_extension("tmp").exists());
    }

    #[test]
    fn malformed_file_names_the_line() {
        let err = parse_users(
            "# users\nalice:$argon2id$x\nno hash here\n",
            Path::new("users"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("users:3:"), "{err}");
        let err = parse_users("a:$x\nA:$y\n", Path::new("users"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("duplicate"), "{err}");
    }

    #[test]
    fn store_sees_changes_without_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = UserStore::new(dir.path());
        let file = UserFile::in_data_dir(dir.path());
        assert!(!store.verify("alice", "a-long-secret-1"));
        file.add("alice", &fast_hash("a-long-secret-1")).unwrap();
        assert!(store.verify("ALICE", "a-long-secret-1"));
        assert!(!store.verify("alice", "a-long-secret-2"));
        file.set_password("alice", &fast_hash("a-long-secret-2"))
            .unwrap();
        assert!(store.verify("alice", "a-long-secret-2"));
        // A broken edit by hand keeps the last good version.
        std::fs::write(file.path(), "garbage line\n").unwrap();
        assert!(store.verify("alice", "a-long-secret-2"));
    }

    #[tokio::test]
    async fn authenticator_locks_out_after_failures() {
        let dir = tempfile::tempdir().unwrap();
        UserFile::in_data_dir(dir.path())
            .add("alice", &fast_hash("a-long-secret-1"))
            .unwrap();
        let auth = Authenticator::new(
            Arc::new(UserStore::new(dir.path())),
            2,
            Duration::from_secs(600),
        );
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            auth.authenticate(ip, "alice", "a-long-secret-1").await,
            AuthOutcome::Success("alice".into())
        );
        assert_eq!(
            auth.authenticate(ip, "alice", "wrong").await,
            AuthOutcome::BadCredentials
        );
        assert_eq!(
            auth.authenticate(ip, "nobody", "wrong").await,
            AuthOutcome::BadCredentials
        );
        assert_eq!(
            auth.authenticate(ip, "alice", "a-long-secret-1").await,
            AuthOutcome::Locked(Locked::Client)
        );
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(
            auth.authenticate(other, "alice", "a-long-secret-1").await,
            AuthOutcome::Success("alice".into())
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_wrong_attempts_verify_at_most_max_failures() {
        let dir = tempfile::tempdir().unwrap();
        UserFile::in_data_dir(dir.path())
            .add("alice", &fast_hash("a-long-secret-1"))
            .unwrap();
        let auth = Arc::new(Authenticator::new(
            Arc::new(UserStore::new(dir.path())),
            5,
            Duration::from_secs(600),
        ));
        // 40 clients at once (distinct addresses: only the user's count
        // can stop them), all started before any check ends.
        let attempts: Vec<_> = (0..40u8)
            .map(|i| {
                let auth = auth.clone();
                tokio::spawn(async move {
                    let ip = IpAddr::from([127, 0, 1, i]);
                    auth.authenticate(ip, "alice", "wrong-guess").await
                })
            })
            .collect();
        let mut checked = 0;
        for attempt in attempts {
            match attempt.await.unwrap() {
                AuthOutcome::BadCredentials => checked += 1,
                AuthOutcome::Locked(Locked::User) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(checked, 5);
        // Locked: the right password is refused too.
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        assert_eq!(
            auth.authenticate(ip, "alice", "a-long-secret-1").await,
            AuthOutcome::Locked(Locked::User)
        );
    }

    #[tokio::test]
    async fn ipv6_clients_of_one_64_share_the_client_lockout() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Authenticator::new(
            Arc::new(UserStore::new(dir.path())),
            2,
            Duration::from_secs(600),
        );
        let ip = |text: &str| -> IpAddr { text.parse().unwrap() };
        for (client, user) in [("2001:db8:5:6::1", "a"), ("2001:db8:5:6::2", "b")] {
            assert_eq!(
                auth.authenticate(ip(client), user, "x").await,
                AuthOutcome::BadCredentials
            );
        }
        assert_eq!(
            auth.authenticate(ip("2001:db8:5:6:ffff::3"), "c", "x")
                .await,
            AuthOutcome::Locked(Locked::Client)
        );
        assert_eq!(
            auth.authenticate(ip("2001:db8:5:7::1"), "d", "x").await,
            AuthOutcome::BadCredentials
        );
        // Per address with 128.
        let per_address = Authenticator::new(
            Arc::new(UserStore::new(dir.path())),
            1,
            Duration::from_secs(600),
        )
        .with_ipv6_prefix(128);
        assert_eq!(
            per_address.authenticate(ip("2001:db8::1"), "a", "x").await,
            AuthOutcome::BadCredentials
        );
        assert_eq!(
            per_address.authenticate(ip("2001:db8::2"), "b", "x").await,
            AuthOutcome::BadCredentials
        );
        // Mapped IPv4 is the IPv4 client.
        assert_eq!(
            per_address
                .authenticate(ip("::ffff:192.0.2.1"), "c", "x")
                .await,
            AuthOutcome::BadCredentials
        );
        assert_eq!(
            per_address.authenticate(ip("192.0.2.1"), "d", "x").await,
            AuthOutcome::Locked(Locked::Client)
        );
    }
}
