//! The compiled-component cache: machine code of every component sluice
//! compiled, on disk, so a restart or a reload of an unchanged plugin skips
//! Cranelift (seconds for a 30 MB interpreter-in-a-component guest).
//!
//! A file is named by a SHA-256 over the component's bytes, the wasmtime
//! version and the engine's compatibility hash (its compiler settings), so
//! a changed plugin, a sluice upgrade or a different engine configuration
//! misses instead of loading foreign code. Loading a compiled file runs
//! whatever it contains: the cache directory is created 0700, refused when
//! another user owns it or others can write to it, files are written
//! atomically (temporary file, then rename) and only regular files owned by
//! this user are loaded. A file that does not load (truncated, other
//! version) is compiled again and replaced.

use std::hash::Hasher;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::digest::{Context, SHA256};
use wasmtime::component::Component;
use wasmtime::Engine;

/// Bumped when the file layout changes.
const FORMAT: &str = "sluice-component-cache-1";

/// An entry not loaded for this long is removed when the cache is opened
/// (a load refreshes its modification time): old plugin versions and
/// entries of earlier wasmtime versions do not pile up.
const UNUSED_FOR: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);
/// A temporary file this old is the leftover of a crash mid-write.
const STALE_TEMPORARY: std::time::Duration = std::time::Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("component cache {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("component cache {path}: {problem}; refusing to load compiled code from it")]
    Unsafe { path: PathBuf, problem: String },
}

/// Where a component's machine code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from the cache.
    Hit,
    /// Compiled and stored.
    Stored,
    /// Compiled; storing failed (logged) or no cache is configured.
    Compiled,
}

/// A directory of compiled components.
#[derive(Debug, Clone)]
pub struct ComponentCache {
    dir: PathBuf,
}

impl CacheOutcome {
    /// The metrics label.
    pub fn name(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Stored => "stored",
            CacheOutcome::Compiled => "compiled",
        }
    }
}

impl ComponentCache {
    /// Opens (creating, 0700) the cache directory and checks nobody else
    /// can put files in it.
    pub fn open(dir: &Path) -> Result<ComponentCache, CacheError> {
        let io = |source| CacheError::Io {
            path: dir.to_owned(),
            source,
        };
        let dir = std::path::absolute(dir).map_err(io)?;
        match std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
        {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
        let meta = std::fs::symlink_metadata(&dir).map_err(io)?;
        let unsafe_dir = |problem: String| CacheError::Unsafe {
            path: dir.clone(),
            problem,
        };
        if !meta.is_dir() {
            return Err(unsafe_dir("not a directory (or a symbolic link)".into()));
        }
        if meta.uid() != rustix::process::geteuid().as_raw() {
            return Err(unsafe_dir(format!("owned by uid {}", meta.uid())));
        }
        if meta.mode() & 0o077 != 0 {
            // Ours, but opened up (an older version, an operator's chmod):
            // close it again before trusting its contents.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        let cache = ComponentCache { dir };
        cache.prune(UNUSED_FOR);
        Ok(cache)
    }

    /// Removes entries not loaded for `unused_for` and stale temporaries;
    /// best effort (a file another process just replaced is fine to miss).
    fn prune(&self, unused_for: std::time::Duration) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let now = std::time::SystemTime::now();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let limit = if name.ends_with(".cwasm") {
                unused_for
            } else if name.starts_with(".tmp-") {
                STALE_TEMPORARY
            } else {
                continue;
            };
            let age = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|modified| now.duration_since(modified).ok());
            if age.is_some_and(|age| age > limit) && std::fs::remove_file(entry.path()).is_ok() {
                tracing::info!(file = %entry.path().display(), "removed an unused compiled component");
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file holding `bytes` compiled by `engine`.
    pub fn path_for(&self, engine: &Engine, bytes: &[u8]) -> PathBuf {
        self.dir.join(format!("{}.cwasm", cache_key(engine, bytes)))
    }

    /// The compiled component for `bytes`: from the cache when there, else
    /// compiled and stored. Blocking (file I/O, compilation).
    pub fn load(
        &self,
        engine: &Engine,
        bytes: &[u8],
    ) -> Result<(Component, CacheOutcome), wasmtime::Error> {
        let path = self.path_for(engine, bytes);
        if let Some(component) = self.try_load(engine, &path) {
            return Ok((component, CacheOutcome::Hit));
        }
        let component = Component::new(engine, bytes)?;
        let outcome = match self.store(&component, &path) {
            Ok(()) => CacheOutcome::Stored,
            Err(e) => {
                tracing::warn!(file = %path.display(), "cannot store the compiled component: {e}");
                CacheOutcome::Compiled
            }
        };
        Ok((component, outcome))
    }

    fn try_load(&self, engine: &Engine, path: &Path) -> Option<Component> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        if !meta.is_file() || meta.uid() != rustix::process::geteuid().as_raw() {
            tracing::warn!(file = %path.display(), "ignoring a cache entry this user did not write");
            return None;
        }
        // SAFETY: the file is a regular file owned by this user in a 0700
        // directory of this user, written only by `store` below from a
        // component this engine compiled; deserialize_file still checks the
        // header, the wasmtime version and the engine configuration.
        match unsafe { Component::deserialize_file(engine, path) } {
            Ok(component) => {
                // Marks the entry used, for `prune`.
                if let Ok(file) = std::fs::File::options().write(true).open(path) {
                    let _ = file.set_modified(std::time::SystemTime::now());
                }
                Some(component)
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), "cache entry does not load, compiling again: {e:#}");
                None
            }
        }
    }

    fn store(&self, component: &Component, path: &Path) -> Result<(), CacheError> {
        let io = |source| CacheError::Io {
            path: path.to_owned(),
            source,
        };
        let code = component.serialize().map_err(|e| CacheError::Io {
            path: path.to_owned(),
            source: std::io::Error::other(format!("{e:#}")),
        })?;
        // Unique per process and call: concurrent builds never share one.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.dir.join(format!(".tmp-{}-{n}", std::process::id()));
        let written = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&code)?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(io)
    }
}

/// Hex SHA-256 over the format, the engine's compatibility hash (compiler
/// target and flags, tunables, wasm features, and the wasmtime version) and
/// the component's bytes.
pub fn cache_key(engine: &Engine, bytes: &[u8]) -> String {
    let mut hasher = Sha256Hasher(Context::new(&SHA256));
    hasher.write(FORMAT.as_bytes());
    hasher.write(&[0]);
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
    hasher.write(&[0]);
    hasher.write(bytes);
    hasher
        .0
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Feeds `Hash` output into SHA-256 (the compatibility hash is only
/// `impl Hash`).
struct Sha256Hasher(Context);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finish();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest.as_ref()[..8]);
        u64::from_le_bytes(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_follows_content_and_engine_configuration() {
        let engine = Engine::default();
        let a = cache_key(&engine, b"component a");
        assert_eq!(a, cache_key(&engine, b"component a"));
        assert_eq!(a.len(), 64);
        assert_ne!(a, cache_key(&engine, b"component b"));
        // Same version, other compiler settings: another key.
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let other = Engine::new(&config).unwrap();
        assert_ne!(a, cache_key(&other, b"component a"));
        // Same settings in another engine: the same key.
        assert_eq!(
            cache_key(&other, b"component a"),
            cache_key(&Engine::new(&config).unwrap(), b"component a")
        );
    }

    #[test]
    fn compiles_once_then_loads_and_survives_a_corrupt_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ComponentCache::open(&dir.path().join("cache")).unwrap();
        let mode = std::fs::metadata(cache.dir()).unwrap().mode();
        assert_eq!(mode & 0o777, 0o700);
        let engine = Engine::default();
        let wasm = wat_component();
        let (_, first) = cache.load(&engine, &wasm).unwrap();
        assert_eq!(first, CacheOutcome::Stored);
        let (_, second) = cache.load(&engine, &wasm).unwrap();
        assert_eq!(second, CacheOutcome::Hit);
        std::fs::write(cache.path_for(&engine, &wasm), b"garbage").unwrap();
        let (_, third) = cache.load(&engine, &wasm).unwrap();
        assert_eq!(third, CacheOutcome::Stored);
        let (_, fourth) = cache.load(&engine, &wasm).unwrap();
        assert_eq!(fourth, CacheOutcome::Hit);
    }

    #[test]
    fn unused_entries_and_stale_temporaries_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ComponentCache::open(dir.path()).unwrap();
        let engine = Engine::default();
        let wasm = wat_component();
        cache.load(&engine, &wasm).unwrap();
        let entry = cache.path_for(&engine, &wasm);
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        let tmp = dir.path().join(".tmp-1-1");
        std::fs::write(&tmp, b"partial").unwrap();
        let other = dir.path().join("keep.txt");
        std::fs::write(&other, b"").unwrap();
        for path in [&entry, &tmp, &other] {
            let file = std::fs::File::options().write(true).open(path).unwrap();
            file.set_modified(old).unwrap();
        }
        // Younger than the limit: kept; the temporary is stale.
        cache.prune(std::time::Duration::from_secs(3 * 3600));
        assert!(entry.exists() && other.exists() && !tmp.exists());
        cache.prune(std::time::Duration::from_secs(3600));
        assert!(!entry.exists() && other.exists());
        // A hit refreshes the entry's time.
        cache.load(&engine, &wasm).unwrap();
        let file = std::fs::File::options().write(true).open(&entry).unwrap();
        file.set_modified(old).unwrap();
        assert_eq!(cache.load(&engine, &wasm).unwrap().1, CacheOutcome::Hit);
        cache.prune(std::time::Duration::from_secs(3600));
        assert!(entry.exists());
    }

    #[test]
    fn an_open_directory_is_closed_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache");
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        ComponentCache::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().mode();
        assert_eq!(mode & 0o777, 0o700);
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(
            ComponentCache::open(&file),
            Err(CacheError::Unsafe { .. })
        ));
    }

    /// The smallest component: an empty one, in binary form.
    fn wat_component() -> Vec<u8> {
        // (component) — the component-model preamble with no sections.
        vec![0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00]
    }
}
