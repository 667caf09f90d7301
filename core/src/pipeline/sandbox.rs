//! The sandbox's gates: which imports a component may have (checked once,
//! when it is loaded), which host interfaces a plugin may call (checked on
//! every call, from `[plugins.NAME] allow`), and the store limiter that
//! holds a plugin to its `memory` cap with a typed error
//! ([`MemoryCapExceeded`], classified in `fault.rs`).
//!
//! Imports: everything of `sluice:filter`, plus the WASI interfaces any
//! wasm32-wasip2 guest's standard library imports whether it uses them or
//! not. Those reach nothing: the host gives a plugin no preopened
//! directory (so `wasi:filesystem` opens no file), no environment, no
//! arguments, and stdio that goes nowhere. Anything else (`wasi:sockets`,
//! `wasi:http`, another package) is refused with the import's name.

use wasmtime::component::types::ComponentItem;
use wasmtime::component::Component;
use wasmtime::Engine;

use crate::config::{Capabilities, Capability};

/// Interfaces a component may import, as `package/interface` without the
/// version; `package/*` admits every interface of the package.
const ALLOWED_IMPORTS: &[&str] = &[
    "sluice:filter/*",
    "wasi:io/*",
    "wasi:clocks/*",
    "wasi:random/*",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    // Types only: without a preopened directory there is nothing to open.
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
];

/// Whether an import name (`wasi:io/streams@0.2.4`) is inside the sandbox.
pub fn import_allowed(name: &str) -> bool {
    let unversioned = name.split('@').next().unwrap_or(name);
    let Some((package, _interface)) = unversioned.split_once('/') else {
        // A bare function or an unnamed instance: not part of any world
        // sluice offers.
        return false;
    };
    ALLOWED_IMPORTS
        .iter()
        .any(|allowed| match allowed.strip_suffix("/*") {
            Some(allowed_package) => package == allowed_package,
            None => unversioned == *allowed,
        })
}

/// The imports of `component` the sandbox refuses, in declaration order.
/// Type and resource imports (the world's own `use mail.{message}`) carry
/// no behaviour and pass; functions, instances and modules must come from
/// an allowed interface.
pub fn forbidden_imports(engine: &Engine, component: &Component) -> Vec<String> {
    component
        .component_type()
        .imports(engine)
        .filter(|(_, item)| !matches!(item.ty, ComponentItem::Type(_) | ComponentItem::Resource(_)))
        .map(|(name, _)| name)
        .filter(|name| !import_allowed(name))
        .map(str::to_owned)
        .collect()
}

/// The answer a plugin gets when it calls an interface it was not allowed.
pub fn denied(plugin: &str, capability: Capability) -> String {
    format!(
        "not allowed: {} (plugins.{plugin}.allow does not list it)",
        capability.name()
    )
}

/// Checks one call against a plugin's capabilities.
pub fn check(plugin: &str, allow: Capabilities, capability: Capability) -> Result<(), String> {
    if allow.allows(capability) {
        Ok(())
    } else {
        Err(denied(plugin, capability))
    }
}

/// The error [`PluginLimits`] fails a memory growth with; wasmtime turns it
/// into a trap of the call and hands it back inside its error, where
/// [`PluginFault`] finds it by type.
#[derive(Debug, thiserror::Error)]
#[error("memory growth to {desired} bytes refused: cap {cap} bytes")]
pub struct MemoryCapExceeded {
    pub desired: usize,
    pub cap: usize,
}

/// A plugin store's resource limiter: wasmtime's [`wasmtime::StoreLimits`]
/// for every count and table, and the memory cap checked here first, so a
/// breach comes back as a typed [`MemoryCapExceeded`]. (`StoreLimits` with
/// `trap_on_grow_failure` reports it as an untyped message.)
pub struct PluginLimits {
    inner: wasmtime::StoreLimits,
    memory_cap: usize,
}

impl PluginLimits {
    /// `inner` should carry the same `memory_size` as `memory_cap`, so a
    /// memory created over the cap at instantiation fails there too.
    pub fn new(inner: wasmtime::StoreLimits, memory_cap: usize) -> Self {
        PluginLimits { inner, memory_cap }
    }
}

impl wasmtime::ResourceLimiter for PluginLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            return Err(wasmtime::Error::new(MemoryCapExceeded {
                desired,
                cap: self.memory_cap,
            }));
        }
        self.inner.memory_growing(current, desired, maximum)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_world_and_inert_wasi_are_allowed() {
        for name in [
            "sluice:filter/host@0.1.0",
            "sluice:filter/kv",
            "wasi:io/streams@0.2.4",
            "wasi:io/error@0.2.0",
            "wasi:clocks/wall-clock@0.2.4",
            "wasi:random/insecure-seed@0.2.4",
            "wasi:cli/environment@0.2.4",
            "wasi:cli/stderr@0.2.4",
            "wasi:filesystem/types@0.2.4",
            "wasi:filesystem/preopens@0.2.4",
        ] {
            assert!(import_allowed(name), "{name} should be allowed");
        }
    }

    #[test]
    fn network_and_foreign_imports_are_refused() {
        for name in [
            "wasi:sockets/tcp@0.2.4",
            "wasi:sockets/ip-name-lookup@0.2.4",
            "wasi:sockets/instance-network@0.2.4",
            "wasi:http/outgoing-handler@0.2.4",
            "wasi:cli/run@0.2.4",
            "wasi:filesystem/other@0.2.4",
            "wasi:iox/streams@0.2.4",
            "sluice:filterx/host",
            "acme:evil/exfiltrate@1.0.0",
            "print",
            "",
        ] {
            assert!(!import_allowed(name), "{name} should be refused");
        }
    }

    #[test]
    fn capability_checks_name_the_interface_and_the_key() {
        let allow = Capabilities::from_iter([Capability::Kv]);
        assert!(check("p", allow, Capability::Kv).is_ok());
        let error = check("p", allow, Capability::Dns).unwrap_err();
        assert!(error.starts_with("not allowed: dns"), "{error}");
        assert!(error.contains("plugins.p.allow"), "{error}");
        assert!(check("p", Capabilities::NONE, Capability::MessageBody).is_err());
        assert!(check("p", Capabilities::all(), Capability::Auth).is_ok());
    }
}
