//! The host side of the WIT imports: what a plugin may ask of sluice (log,
//! clock, local domains, key-value state, DNS, sender authentication, the
//! message). Each plugin instance has its own [`HostState`] in its store;
//! nothing here touches a socket or the SMTP session.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sluice_spool::KvStore;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::StoreLimits;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::sluice::filter::{auth, dns, host, kv, mail, types};
use super::message::MessageResource;

/// What every plugin instance of a server shares.
#[derive(Debug)]
pub struct HostServices {
    pub hostname: String,
    /// Lower-cased local domains.
    pub local_domains: HashSet<String>,
}

/// The data of one plugin instance's store.
pub struct HostState {
    wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limits: StoreLimits,
    pub(crate) plugin: Arc<str>,
    pub(crate) session_id: String,
    pub(crate) services: Arc<HostServices>,
    pub(crate) kv: KvStore,
    /// When the hook running now must have returned; checked on every epoch
    /// tick by the store's deadline callback.
    pub(crate) deadline: Instant,
}

impl HostState {
    pub fn new(
        plugin: Arc<str>,
        session_id: String,
        services: Arc<HostServices>,
        kv: KvStore,
        memory_limit: usize,
    ) -> Self {
        // No preopened directories, no environment, no arguments, no network:
        // the guest's WASI imports exist (std needs them) but reach nothing.
        let wasi = WasiCtx::builder().allow_ip_name_lookup(false).build();
        let limits = wasmtime::StoreLimitsBuilder::new()
            .memory_size(memory_limit)
            .instances(64)
            .tables(64)
            .memories(16)
            .trap_on_grow_failure(true)
            .build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            limits,
            plugin,
            session_id,
            services,
            kv,
            deadline: Instant::now(),
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for HostState {}

impl host::Host for HostState {
    async fn log(&mut self, level: types::LogLevel, message: String) -> wasmtime::Result<()> {
        let plugin = &*self.plugin;
        let session = &self.session_id;
        match level {
            types::LogLevel::Trace => tracing::trace!(plugin, session, "{message}"),
            types::LogLevel::Debug => tracing::debug!(plugin, session, "{message}"),
            types::LogLevel::Info => tracing::info!(plugin, session, "{message}"),
            types::LogLevel::Warn => tracing::warn!(plugin, session, "{message}"),
            types::LogLevel::Error => tracing::error!(plugin, session, "{message}"),
        }
        Ok(())
    }

    async fn now(&mut self) -> wasmtime::Result<u64> {
        Ok(SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0))
    }

    async fn is_local_domain(&mut self, domain: String) -> wasmtime::Result<bool> {
        Ok(self
            .services
            .local_domains
            .contains(&domain.to_ascii_lowercase()))
    }

    async fn hostname(&mut self) -> wasmtime::Result<String> {
        Ok(self.services.hostname.clone())
    }
}

impl kv::Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, String>> {
        Ok(self.kv.get(&key).map_err(|e| e.to_string()))
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_seconds: Option<u32>,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(self
            .kv
            .set(&key, &value, ttl_seconds)
            .map_err(|e| e.to_string()))
    }

    async fn incr(
        &mut self,
        key: String,
        delta: i64,
        ttl_seconds: Option<u32>,
    ) -> wasmtime::Result<Result<i64, String>> {
        Ok(self
            .kv
            .incr(&key, delta, ttl_seconds)
            .map_err(|e| e.to_string()))
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), String>> {
        Ok(self.kv.delete(&key).map_err(|e| e.to_string()))
    }
}

/// DNS answers until the resolver is wired in: every lookup is a temporary
/// failure, so a plugin can never mistake "not looked up" for "no record".
fn dns_unavailable<T>() -> wasmtime::Result<Result<T, dns::DnsError>> {
    Ok(Err(dns::DnsError::Temporary(
        "DNS lookups are not configured on this server".to_owned(),
    )))
}

impl dns::Host for HostState {
    async fn txt(&mut self, _name: String) -> wasmtime::Result<Result<Vec<String>, dns::DnsError>> {
        dns_unavailable()
    }
    async fn a(&mut self, _name: String) -> wasmtime::Result<Result<Vec<String>, dns::DnsError>> {
        dns_unavailable()
    }
    async fn aaaa(
        &mut self,
        _name: String,
    ) -> wasmtime::Result<Result<Vec<String>, dns::DnsError>> {
        dns_unavailable()
    }
    async fn mx(
        &mut self,
        _name: String,
    ) -> wasmtime::Result<Result<Vec<dns::MxRecord>, dns::DnsError>> {
        dns_unavailable()
    }
    async fn ptr(&mut self, _ip: String) -> wasmtime::Result<Result<Vec<String>, dns::DnsError>> {
        dns_unavailable()
    }
}

/// Sender authentication is computed by the auth service; until a
/// transaction has results, every check reports `temperror`, never a pass or
/// fail it did not establish.
impl auth::Host for HostState {
    async fn spf_mail_from(&mut self) -> wasmtime::Result<auth::SpfResult> {
        Ok(auth::SpfResult {
            outcome: auth::AuthResult::Temperror,
            domain: String::new(),
            explanation: Some("SPF is not evaluated on this server".to_owned()),
        })
    }
    async fn spf_helo(&mut self) -> wasmtime::Result<auth::SpfResult> {
        self.spf_mail_from().await
    }
    async fn dkim(&mut self) -> wasmtime::Result<Vec<auth::DkimResult>> {
        Ok(Vec::new())
    }
    async fn dmarc(&mut self) -> wasmtime::Result<auth::DmarcResult> {
        Ok(auth::DmarcResult {
            outcome: auth::AuthResult::Temperror,
            header_from: String::new(),
            policy: auth::DmarcPolicy::None,
        })
    }
    async fn arc(&mut self) -> wasmtime::Result<auth::AuthResult> {
        Ok(auth::AuthResult::Temperror)
    }
}

impl mail::Host for HostState {}

impl mail::HostMessage for HostState {
    async fn size(&mut self, this: Resource<MessageResource>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&this)?.size())
    }

    async fn header(
        &mut self,
        this: Resource<MessageResource>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&this)?.header(&name).map(str::to_owned))
    }

    async fn headers(
        &mut self,
        this: Resource<MessageResource>,
    ) -> wasmtime::Result<Vec<types::Header>> {
        Ok(self
            .table
            .get(&this)?
            .headers()
            .iter()
            .map(|h| types::Header {
                name: h.name.clone(),
                value: h.value.clone(),
            })
            .collect())
    }

    async fn read(
        &mut self,
        this: Resource<MessageResource>,
        offset: u64,
        len: u32,
    ) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&this)?.read(offset, len).to_vec())
    }

    async fn body_text(
        &mut self,
        this: Resource<MessageResource>,
    ) -> wasmtime::Result<Vec<String>> {
        Ok(self.table.get(&this)?.body_text().to_vec())
    }

    async fn attachments(
        &mut self,
        this: Resource<MessageResource>,
    ) -> wasmtime::Result<Vec<mail::Attachment>> {
        Ok(self
            .table
            .get(&this)?
            .attachments()
            .iter()
            .map(|a| mail::Attachment {
                filename: a.filename.clone(),
                content_type: a.content_type.clone(),
                size: a.size,
            })
            .collect())
    }

    async fn drop(&mut self, this: Resource<MessageResource>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}
