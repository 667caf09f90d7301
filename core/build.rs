//! Builds sluice's guest plugins before the `sluice` crate compiles.
//!
//! `plugins/` is a cargo workspace of its own (the SDK, the bundled plugins,
//! the test fixtures), built here for wasm32-wasip2 in release mode into
//! `<target dir>/plugins`, so each plugin `cdylib` comes out as a component.
//! Two things go on to the crate:
//! - `$OUT_DIR/builtins.rs`: `BUILTINS`, every bundled plugin (a crate
//!   directly under `plugins/` other than `sdk/`) embedded as
//!   `("NAME", include_bytes!(..))`; `pipeline::plugin` serves them as
//!   `builtin:NAME`.
//! - `SLUICE_PLUGIN_DIR`: the directory with every `.wasm`, fixtures included,
//!   which the tests load by path.

use std::env;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const WASM_TARGET: &str = "wasm32-wasip2";

/// Directories under `plugins/` that are not bundled plugins.
const NOT_BUNDLED: &[&str] = &["sdk", "fixtures", "target"];

#[derive(Debug)]
enum BuildError {
    Env(&'static str),
    Io(String, io::Error),
    Spawn(String, io::Error),
    /// The nested cargo (or rustup) failed; its output is already on stderr.
    Failed(String),
    NoPackageName(PathBuf),
    NotLocked(&'static str, PathBuf),
    MissingComponent {
        name: String,
        path: PathBuf,
    },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::Env(var) => write!(f, "cargo did not set {var}"),
            BuildError::Io(what, e) => write!(f, "{what}: {e}"),
            BuildError::Spawn(what, e) => write!(f, "cannot run {what}: {e}"),
            BuildError::Failed(what) => write!(f, "{what} failed (its output is above)"),
            BuildError::NotLocked(package, lock) => {
                write!(f, "{} does not pin a version of {package}", lock.display())
            }
            BuildError::NoPackageName(path) => {
                write!(f, "{}: no [package] name found", path.display())
            }
            BuildError::MissingComponent { name, path } => write!(
                f,
                "plugin crate {name:?} built no component at {} \
                 (is it a member of plugins/Cargo.toml with crate-type = [\"cdylib\"]?)",
                path.display()
            ),
        }
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: building sluice's plugins: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), BuildError> {
    let manifest_dir = env_path("CARGO_MANIFEST_DIR")?;
    let out_dir = env_path("OUT_DIR")?;
    let repo = manifest_dir
        .parent()
        .ok_or(BuildError::Env("CARGO_MANIFEST_DIR with a parent"))?
        .to_path_buf();
    let plugins = repo.join("plugins");
    let wit = repo.join("wit");

    watch(&plugins, &wit)?;

    let target_dir = main_target_dir(&out_dir).join("plugins");
    ensure_wasm_target()?;
    build_plugins(&plugins, &target_dir)?;

    let plugin_dir = target_dir.join(WASM_TARGET).join("release");
    let bundled = bundled_plugins(&plugins, &plugin_dir)?;
    write_builtins(&out_dir.join("builtins.rs"), &bundled)?;
    println!("cargo:rustc-env=SLUICE_PLUGIN_DIR={}", plugin_dir.display());
    let lock = repo.join("Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let version = locked_version(&lock, "wasmtime")?;
    println!("cargo:rustc-env=SLUICE_WASMTIME_VERSION={version}");
    Ok(())
}

/// The version of `package` that Cargo.lock pins, for `sluice --version`.
fn locked_version(lock: &Path, package: &'static str) -> Result<String, BuildError> {
    let text = fs::read_to_string(lock)
        .map_err(|e| BuildError::Io(format!("reading {}", lock.display()), e))?;
    let name_line = format!("name = \"{package}\"");
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line == name_line {
            if let Some(version) = lines
                .next()
                .and_then(|l| l.strip_prefix("version = \""))
                .and_then(|l| l.strip_suffix('"'))
            {
                return Ok(version.to_owned());
            }
        }
    }
    Err(BuildError::NotLocked(package, lock.to_owned()))
}

fn env_path(var: &'static str) -> Result<PathBuf, BuildError> {
    env::var_os(var)
        .map(PathBuf::from)
        .ok_or(BuildError::Env(var))
}

/// Reruns this script when the WIT or any plugin source, manifest or lock
/// changes. Only the inputs are listed: a `target/` from a native
/// `cargo test` inside `plugins/` must not trigger (or slow) rebuilds.
fn watch(plugins: &Path, wit: &Path) -> Result<(), BuildError> {
    println!("cargo:rerun-if-changed={}", wit.display());
    let entries =
        fs::read_dir(plugins).map_err(|e| BuildError::Io(plugins.display().to_string(), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| BuildError::Io(plugins.display().to_string(), e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "target" || (name.starts_with('.') && name != ".cargo") {
            continue;
        }
        // A directory is scanned recursively by cargo.
        println!("cargo:rerun-if-changed={}", entry.path().display());
    }
    Ok(())
}

/// The target directory of the build running this script: `OUT_DIR` is
/// `<target>[/<triple>]/<profile>/build/<pkg>-<hash>/out`. Falls back to an
/// absolute `CARGO_TARGET_DIR`, then to `OUT_DIR` itself.
fn main_target_dir(out_dir: &Path) -> PathBuf {
    let from_out_dir = out_dir
        .ancestors()
        .find(|dir| dir.file_name().is_some_and(|name| name == "build"))
        .and_then(Path::parent)
        .and_then(Path::parent);
    if let Some(dir) = from_out_dir {
        return dir.to_path_buf();
    }
    match env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        _ => out_dir.to_path_buf(),
    }
}

fn rustc() -> OsString {
    env::var_os("RUSTC").unwrap_or_else(|| "rustc".into())
}

/// Installs the wasm32-wasip2 standard library when the toolchain lacks it
/// (rustup honours rust-toolchain.toml's `targets` only when it installs the
/// toolchain itself).
fn ensure_wasm_target() -> Result<(), BuildError> {
    let output = Command::new(rustc())
        .args(["--print", "sysroot"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| BuildError::Spawn("rustc --print sysroot".into(), e))?;
    if !output.status.success() {
        return Err(BuildError::Failed("rustc --print sysroot".into()));
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if sysroot.join("lib/rustlib").join(WASM_TARGET).is_dir() {
        return Ok(());
    }
    let what = format!("rustup target add {WASM_TARGET}");
    let status = Command::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .stdout(Stdio::from(io::stderr()))
        .status()
        .map_err(|e| BuildError::Spawn(what.clone(), e))?;
    if status.success() {
        Ok(())
    } else {
        Err(BuildError::Failed(what))
    }
}

/// Whether a variable of this build script's environment describes the host
/// build and must not reach the nested cargo. Kept: CARGO_HOME, network and
/// registry settings, RUSTC (same compiler), RUSTUP_TOOLCHAIN, and
/// CARGO_MAKEFLAGS so the nested build shares the outer jobserver.
fn leaks_host_settings(key: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "CARGO_PKG_",
        "CARGO_CFG_",
        "CARGO_FEATURE_",
        "CARGO_MANIFEST_",
        "CARGO_PROFILE_",
        "CARGO_BUILD_",
        // CARGO_TARGET_DIR and per-triple runner/linker/rustflags.
        "CARGO_TARGET_",
        "CARGO_ENCODED_",
        "CARGO_LLVM_COV",
        "__CARGO_",
        "DEP_",
    ];
    const NAMES: &[&str] = &[
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_LINKER",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_CRATE_NAME",
        "CARGO_RUSTC_CURRENT_DIR",
        "CARGO_INCREMENTAL",
        "LLVM_PROFILE_FILE",
        "OUT_DIR",
        "TARGET",
        "HOST",
        "NUM_JOBS",
        "OPT_LEVEL",
        "DEBUG",
        "PROFILE",
    ];
    NAMES.contains(&key) || PREFIXES.iter().any(|prefix| key.starts_with(prefix))
}

fn build_plugins(plugins: &Path, target_dir: &Path) -> Result<(), BuildError> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--release", "--workspace", "--target", WASM_TARGET])
        .arg("--manifest-path")
        .arg(plugins.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        // Our stdout is cargo's instruction channel: keep it clean.
        .stdout(Stdio::from(io::stderr()));
    for (key, _) in env::vars_os() {
        if let Some(key) = key.to_str() {
            if leaks_host_settings(key) {
                command.env_remove(key);
            }
        }
    }
    let what = format!("cargo build --target {WASM_TARGET} for plugins/");
    let status = command
        .status()
        .map_err(|e| BuildError::Spawn(what.clone(), e))?;
    if status.success() {
        Ok(())
    } else {
        Err(BuildError::Failed(what))
    }
}

/// A bundled plugin: its crate name and its component.
struct Bundled {
    name: String,
    wasm: PathBuf,
}

/// Every crate directly under `plugins/` except the SDK and the fixtures
/// that builds a component (`cdylib`), sorted by name.
fn bundled_plugins(plugins: &Path, plugin_dir: &Path) -> Result<Vec<Bundled>, BuildError> {
    let io_err = |e| BuildError::Io(plugins.display().to_string(), e);
    let mut bundled = Vec::new();
    for entry in fs::read_dir(plugins).map_err(io_err)? {
        let dir = entry.map_err(io_err)?.path();
        let skip = dir.file_name().is_none_or(|name| {
            let name = name.to_string_lossy();
            name.starts_with('.') || NOT_BUNDLED.contains(&name.as_ref())
        });
        let manifest = dir.join("Cargo.toml");
        if skip || !manifest.is_file() {
            continue;
        }
        let text = fs::read_to_string(&manifest)
            .map_err(|e| BuildError::Io(manifest.display().to_string(), e))?;
        if !text.contains("cdylib") {
            continue;
        }
        let name =
            package_name(&text).ok_or_else(|| BuildError::NoPackageName(manifest.clone()))?;
        let wasm = plugin_dir.join(format!("{}.wasm", name.replace('-', "_")));
        if !wasm.is_file() {
            return Err(BuildError::MissingComponent { name, path: wasm });
        }
        bundled.push(Bundled { name, wasm });
    }
    bundled.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(bundled)
}

/// The `name` of the `[package]` table of a Cargo.toml (enough TOML for
/// the manifests in `plugins/`, without a TOML parser in the build).
fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
            continue;
        }
        if !in_package {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim() == "name" {
            let value = value.trim();
            return value
                .strip_prefix('"')
                .and_then(|v| v.split_once('"'))
                .map(|(name, _)| name.to_string());
        }
    }
    None
}

fn write_builtins(path: &Path, bundled: &[Bundled]) -> Result<(), BuildError> {
    let mut code = String::from(
        "/// The plugins bundled with sluice, as (name, component), served as\n\
         /// `builtin:NAME`. Generated by core/build.rs.\n\
         pub const BUILTINS: &[(&str, &[u8])] = &[\n",
    );
    for plugin in bundled {
        // Debug formatting gives valid Rust string literals for both.
        code.push_str(&format!(
            "    ({:?}, include_bytes!({:?})),\n",
            plugin.name,
            plugin.wasm.display().to_string()
        ));
    }
    code.push_str("];\n");
    fs::write(path, code).map_err(|e| BuildError::Io(path.display().to_string(), e))
}
