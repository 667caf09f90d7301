//! Why a call into a plugin failed, as a type: classified once, where the
//! call returns (`plugin.rs`, `chain.rs`), from wasmtime's typed errors and
//! the host's own limits, never from message text. The fault then travels
//! as is to the verdict fold (`fold.rs`, which applies the plugin's
//! `on_error`), to the trace (`StepAnswer::Failed`), to the
//! `sluice_plugin_faults_total{kind}` label ([`PluginFault::kind`]) and to
//! the log line.

use std::time::Duration;

use super::sandbox::MemoryCapExceeded;
use crate::smtp::address::AddressError;

/// A failed plugin call: instantiation, `init` or a hook.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PluginFault {
    /// The plugin ran past its `timeout`. `backstop: None`: the epoch
    /// interrupted guest code (a loop, or more work per message than the
    /// deadline allows). `Some(waited)`: the host's backstop gave up on a
    /// call that never returned, most likely a host import (DNS, kv,
    /// directory) stuck past the deadline, where epochs cannot interrupt.
    #[error("{}", deadline_text(.backstop))]
    Deadline { backstop: Option<Duration> },
    /// Growing a memory past the plugin's `memory` cap: the plugin holds
    /// more than its cap (a leak across hooks kept by a reused instance, a
    /// message buffered whole several times, an unbounded collection).
    #[error("memory cap exceeded: growing to {desired} bytes, cap {cap} bytes")]
    MemoryCap { desired: usize, cap: usize },
    /// A WebAssembly trap other than the deadline: a guest panic (Rust
    /// aborts with `unreachable`), an out-of-bounds access, a division by
    /// zero, a stack overflow. A bug in the plugin, not a limit of the host.
    #[error("trap: {0}")]
    Trap(wasmtime::Trap),
    /// The plugin's `init` returned an error: it refused its
    /// `[plugins.NAME.config]` (a missing or mistyped key).
    #[error("init refused its configuration: {0}")]
    InitRefused(String),
    /// The component could not be instantiated: the engine's instance pool
    /// is full (too many live instances at once) or a link-time failure.
    #[error("{0}")]
    Instantiate(String),
    /// `instances = "pooled"`: every instance stayed lent to other sessions
    /// for the plugin's whole `timeout`; `pool_size` is too small for the
    /// concurrency.
    #[error("instance pool exhausted: all {size} instances busy for {waited:?}")]
    PoolExhausted { size: u32, waited: Duration },
    /// A host import failed in a way that ends the call (a capability the
    /// plugin was not allowed, called through an interface with no error
    /// result, such as the message body), or the host could not hand the
    /// plugin its arguments.
    #[error("{0}")]
    Host(String),
    /// A data-stage answer added or removed a recipient that is not a valid
    /// RCPT mailbox (a CR or LF in it, bad syntax, over a length limit).
    #[error("invalid recipient {address:?}: {reason}")]
    BadRecipient {
        address: String,
        reason: AddressError,
    },
    /// A milter's new envelope sender is not a valid MAIL mailbox.
    #[error("invalid sender {address:?}: {reason}")]
    BadSender {
        address: String,
        reason: AddressError,
    },
    /// A milter element could not be reached, broke the protocol or asked
    /// for something sluice does not do (its connection is dropped).
    #[error("milter: {0}")]
    Milter(String),
}

fn deadline_text(backstop: &Option<Duration>) -> String {
    match backstop {
        None => "deadline exceeded".to_owned(),
        Some(waited) => format!("deadline exceeded: no answer within {waited:?}"),
    }
}

impl PluginFault {
    /// The `kind` label of `sluice_plugin_faults_total`. The values are the
    /// ones dashboards already read: timeout, memory, trap, error.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginFault::Deadline { .. } => "timeout",
            PluginFault::MemoryCap { .. } => "memory",
            PluginFault::Trap(_) => "trap",
            PluginFault::InitRefused(_)
            | PluginFault::Instantiate(_)
            | PluginFault::PoolExhausted { .. }
            | PluginFault::Host(_)
            | PluginFault::BadRecipient { .. }
            | PluginFault::BadSender { .. }
            | PluginFault::Milter(_) => "error",
        }
    }

    /// A failed hook call.
    pub(crate) fn from_call(error: &wasmtime::Error) -> PluginFault {
        Self::limit_or_trap(error).unwrap_or_else(|| PluginFault::Host(format!("{error:#}")))
    }

    /// A failed instantiation or `init` call (a trap there is still a trap).
    pub(crate) fn from_instantiate(error: &wasmtime::Error) -> PluginFault {
        Self::limit_or_trap(error).unwrap_or_else(|| PluginFault::Instantiate(format!("{error:#}")))
    }

    /// The faults wasmtime reports by type: its traps, and the memory cap
    /// breach sluice's limiter raises ([`MemoryCapExceeded`], see
    /// `sandbox::PluginLimits`).
    fn limit_or_trap(error: &wasmtime::Error) -> Option<PluginFault> {
        if let Some(cap) = error.downcast_ref::<MemoryCapExceeded>() {
            return Some(PluginFault::MemoryCap {
                desired: cap.desired,
                cap: cap.cap,
            });
        }
        match error.downcast_ref::<wasmtime::Trap>()? {
            wasmtime::Trap::Interrupt => Some(PluginFault::Deadline { backstop: None }),
            trap => Some(PluginFault::Trap(*trap)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::config::{self, DnsConfig};
    use crate::dns::Dns;
    use crate::pipeline::sandbox::PluginLimits;
    use crate::pipeline::verdict::default_reply;
    use crate::pipeline::{
        HookArg, MailboxArg, PipelineSet, PluginEngine, SessionFilters, SessionInfo, StageOutcome,
        StepAnswer,
    };

    /// A core module with one page of memory and one exported function
    /// `f` whose body (without the end opcode) is `body`.
    fn module_with(body: &[u8]) -> Vec<u8> {
        let mut code = vec![0x00]; // no locals
        code.extend_from_slice(body);
        code.push(0x0b); // end
        let mut module = b"\0asm\x01\0\0\0".to_vec();
        module.extend([0x01, 4, 1, 0x60, 0, 0]); // type: () -> ()
        module.extend([0x03, 2, 1, 0]); // function 0 has type 0
        module.extend([0x05, 3, 1, 0x00, 1]); // memory: min 1 page, no max
        module.extend([0x07, 5, 1, 1, b'f', 0x00, 0]); // export "f" = func 0
        let body_len = u8::try_from(code.len()).unwrap();
        module.extend([0x0a, body_len + 2, 1, body_len]);
        module.extend(code);
        module
    }

    /// Runs `f` of [`module_with`]`(body)` in a store held to `cap` bytes.
    fn run(body: &[u8], cap: usize) -> wasmtime::Error {
        let engine = wasmtime::Engine::default();
        let module = wasmtime::Module::new(&engine, module_with(body)).unwrap();
        let limits = wasmtime::StoreLimitsBuilder::new()
            .memory_size(cap)
            .trap_on_grow_failure(true)
            .build();
        let mut store = wasmtime::Store::new(&engine, PluginLimits::new(limits, cap));
        store.limiter(|limits| limits);
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        let f = instance.get_typed_func::<(), ()>(&mut store, "f").unwrap();
        f.call(&mut store, ()).unwrap_err()
    }

    #[test]
    fn an_out_of_bounds_access_is_a_trap_not_a_memory_cap() {
        // i32.load at 64 KiB, one past the only page; drop the value.
        let error = run(&[0x41, 0x80, 0x80, 0x04, 0x28, 0x02, 0x00, 0x1a], 1 << 20);
        let fault = PluginFault::from_call(&error);
        assert_eq!(fault, PluginFault::Trap(wasmtime::Trap::MemoryOutOfBounds));
        assert_eq!(fault.kind(), "trap");
        // The text that used to be matched for "memory" is still there.
        assert!(
            fault.to_string().contains("out of bounds memory access"),
            "{fault}"
        );
    }

    #[test]
    fn growing_past_the_cap_is_a_memory_cap_fault() {
        // memory.grow by 100 pages with a 1 MiB (16 pages) cap; drop the result.
        let error = run(&[0x41, 0xe4, 0x00, 0x40, 0x00, 0x1a], 1 << 20);
        let fault = PluginFault::from_call(&error);
        assert_eq!(
            fault,
            PluginFault::MemoryCap {
                desired: 101 << 16,
                cap: 1 << 20
            }
        );
        assert_eq!(fault.kind(), "memory");
    }

    #[test]
    fn errors_that_are_neither_limit_nor_trap_keep_their_text() {
        let error = wasmtime::Error::msg("not allowed: dns (plugins.p.allow does not list it)");
        let fault = PluginFault::from_call(&error);
        assert_eq!(fault, PluginFault::Host(error.to_string()));
        assert_eq!(fault.kind(), "error");
        let fault = PluginFault::from_instantiate(&wasmtime::Error::msg("pool full"));
        assert_eq!(fault, PluginFault::Instantiate("pool full".into()));
        // A trap while instantiating is still a trap, the deadline too.
        let interrupted = wasmtime::Error::from(wasmtime::Trap::Interrupt);
        assert_eq!(
            PluginFault::from_instantiate(&interrupted),
            PluginFault::Deadline { backstop: None }
        );
    }

    #[test]
    fn the_metric_labels_stay_the_ones_dashboards_read() {
        let cases = [
            (PluginFault::Deadline { backstop: None }, "timeout"),
            (
                PluginFault::Deadline {
                    backstop: Some(Duration::from_millis(350)),
                },
                "timeout",
            ),
            (PluginFault::MemoryCap { desired: 2, cap: 1 }, "memory"),
            (
                PluginFault::Trap(wasmtime::Trap::UnreachableCodeReached),
                "trap",
            ),
            (PluginFault::InitRefused("no".into()), "error"),
            (PluginFault::Instantiate("no".into()), "error"),
            (
                PluginFault::PoolExhausted {
                    size: 1,
                    waited: Duration::from_millis(300),
                },
                "error",
            ),
            (PluginFault::Host("no".into()), "error"),
        ];
        for (fault, kind) in cases {
            assert_eq!(fault.kind(), kind, "{fault:?}");
        }
    }

    fn session_info() -> SessionInfo {
        SessionInfo {
            id: "faults".into(),
            client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
            client_port: 40000,
            listener: "mx".into(),
            reverse_name: None,
            helo: Some("client.example.net".into()),
            tls: None,
            authenticated_user: None,
            reverse_path: Some("sender@example.net".into()),
            recipients: Vec::new(),
        }
    }

    /// Each misbehaving fixture at rcpt, in its own pipeline named after
    /// it; the engine goes along, its epoch ticker is what ends the loop.
    async fn fixture_pipelines(data_dir: &Path) -> (PluginEngine, PipelineSet) {
        let fixtures = Path::new(env!("SLUICE_PLUGIN_DIR"));
        let mut text = format!(
            "[server]\nhostname = \"mx.example.test\"\ndata_dir = \"{}\"\n\n\
             [domains]\nlocal = [\"example.org\"]\n\n\
             [[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:2525\"\npipeline = \"trap\"\n\n",
            data_dir.display()
        );
        for name in ["trap", "loop", "oom"] {
            let path = fixtures.join(format!("fixture_{name}.wasm"));
            text.push_str(&format!(
                "[pipeline.{name}]\nrcpt = [\"{name}\"]\n\n\
                 [plugins.{name}]\npath = \"{}\"\ntimeout = \"200ms\"\nmemory = \"16MiB\"\n\
                 on_error = \"tempfail\"\n\n",
                path.display()
            ));
        }
        let config = config::load_str(&text, "fault test").unwrap();
        let spool = sluice_spool::Spool::open(&data_dir.join("spool")).unwrap();
        // No fixture looks anything up: an absent name server is enough.
        let dns = Dns::new(&DnsConfig {
            nameservers: vec!["127.0.0.1:1".parse().unwrap()],
            timeout: Duration::from_millis(100),
            attempts: 1,
            dnssec: Default::default(),
        })
        .unwrap();
        let engine = PluginEngine::new(16 << 20, None).unwrap();
        let set = PipelineSet::build(&engine, &config, &spool, &dns)
            .await
            .unwrap();
        (engine, set)
    }

    #[tokio::test]
    async fn the_fixture_plugins_fault_each_with_its_own_kind() {
        let dir = tempfile::tempdir().unwrap();
        let (_engine, set) = fixture_pipelines(dir.path()).await;
        let recipient = MailboxArg {
            local_part: "alice".into(),
            domain: "example.org".into(),
        };
        for (name, kind) in [("trap", "trap"), ("loop", "timeout"), ("oom", "memory")] {
            let pipeline = set.get(name).unwrap();
            let mut filters = SessionFilters::new(Arc::clone(pipeline), format!("s-{name}"));
            filters.record_steps();
            let outcome = filters
                .run(&session_info(), HookArg::Rcpt(&recipient))
                .await;
            assert_eq!(
                outcome,
                StageOutcome::Tempfail(default_reply::plugin_fault()),
                "{name}"
            );
            let steps = filters.take_steps();
            let [step] = steps.as_slice() else {
                panic!("{name}: {steps:?}")
            };
            let StepAnswer::Failed { error, .. } = &step.answer else {
                panic!("{name}: {step:?}")
            };
            assert_eq!(error.kind(), kind, "{name}: {error}");
            match (name, error) {
                ("trap", PluginFault::Trap(wasmtime::Trap::UnreachableCodeReached)) => {}
                ("loop", PluginFault::Deadline { backstop: None }) => {}
                ("oom", PluginFault::MemoryCap { desired, cap }) => {
                    assert_eq!(*cap, 16 << 20);
                    assert!(desired > cap, "{desired} {cap}");
                }
                _ => panic!("{name}: {error:?}"),
            }
            assert_eq!(pipeline.plugin(name).unwrap().faults(), 1, "{name}");
        }
    }
}
