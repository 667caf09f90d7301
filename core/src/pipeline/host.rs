//! The host side of the WIT imports: what a plugin may ask of sluice (log,
//! clock, local domains, key-value state, DNS, sender authentication, the
//! message). Each plugin instance has its own [`HostState`] in its store;
//! nothing here touches a socket or the SMTP session.

use std::collections::HashSet;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::auth::SessionAuth;
use super::bindings::sluice::filter::directory as directory_wit;
use super::bindings::sluice::filter::{auth, dns, host, kv, mail, types};
use super::directory::{callout, CalloutAnswer, Directory};
use super::message::MessageResource;
use super::sandbox;
use crate::authn::{self, Authenticator};
use crate::config::{CalloutProtocol, Capabilities, Capability};
use crate::dns::{Dns, LookupError};
use crate::metrics::METRICS;
use crate::state::{Kv, StateError};

/// What every plugin instance of a server shares.
pub struct HostServices {
    pub hostname: String,
    /// Lower-cased local domains.
    pub local_domains: HashSet<String>,
    /// The server's resolver, for the `dns` interface.
    pub dns: Dns,
    /// SPF/DKIM/DMARC/ARC over that resolver, for the `auth` interface.
    pub authenticator: Authenticator,
    /// Files and mailbox servers granted to plugins (`directory` interface).
    pub directory: Arc<Directory>,
    /// Counts the DMARC verdicts of the data stage, when reports are on.
    pub dmarc_reports: Option<crate::dmarc_reports::DmarcRecorder>,
}

/// The data of one plugin instance's store.
pub struct HostState {
    wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limits: sandbox::PluginLimits,
    pub(crate) plugin: Arc<str>,
    /// The host interfaces this plugin may call.
    pub(crate) allow: Capabilities,
    pub(crate) session_id: String,
    pub(crate) services: Arc<HostServices>,
    pub(crate) kv: Kv,
    /// The session's authentication results, shared with its other plugins.
    pub(crate) auth: Arc<SessionAuth>,
    /// When the hook running now must have returned; checked on every epoch
    /// tick by the store's deadline callback.
    pub(crate) deadline: Instant,
    /// Until when host calls of the running hook may wait (DNS,
    /// authentication): four fifths of the hook's time, so the plugin keeps
    /// the rest to answer however many calls it makes.
    pub(crate) host_cutoff: Instant,
}

impl HostState {
    pub fn new(
        plugin: Arc<str>,
        allow: Capabilities,
        session_id: String,
        services: Arc<HostServices>,
        kv: Kv,
        auth: Arc<SessionAuth>,
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
        let limits = sandbox::PluginLimits::new(limits, memory_limit);
        HostState {
            wasi,
            table: ResourceTable::new(),
            limits,
            plugin,
            allow,
            session_id,
            services,
            kv,
            auth,
            deadline: Instant::now(),
            host_cutoff: Instant::now(),
        }
    }

    /// Lends a pooled instance's state to another session: the session's
    /// id and authentication results replace the previous one's, and no
    /// host resource survives (a message lives for one call only).
    pub(crate) fn rebind(&mut self, session_id: &str, auth: Arc<SessionAuth>) {
        session_id.clone_into(&mut self.session_id);
        self.auth = auth;
        self.table = ResourceTable::new();
    }

    /// How long a host call may still wait: the epoch deadline does not
    /// interrupt host code, so a host call must bound itself.
    pub(crate) fn call_budget(&self) -> Duration {
        self.host_cutoff.saturating_duration_since(Instant::now())
    }

    /// Whether the plugin may call an interface; the error is what it is
    /// told when it may not.
    fn permit(&self, capability: Capability) -> Result<(), String> {
        sandbox::check(&self.plugin, self.allow, capability).inspect_err(|denied| {
            tracing::warn!(plugin = &*self.plugin, session = %self.session_id, "{denied}");
        })
    }

    /// For interfaces whose WIT functions have no error result (auth, the
    /// message body): a denied call traps, and the plugin's `on_error`
    /// policy applies.
    fn permit_or_trap(&self, capability: Capability) -> wasmtime::Result<()> {
        self.permit(capability).map_err(wasmtime::Error::msg)
    }

    fn permit_dns(&self) -> Result<(), dns::DnsError> {
        self.permit(Capability::Dns).map_err(dns::DnsError::Invalid)
    }
}

/// Runs one lookup within a call budget; running out of it is a temporary
/// failure like any other timeout.
async fn bounded<T>(
    budget: Duration,
    name: &str,
    lookup: impl Future<Output = Result<T, LookupError>>,
) -> Result<T, dns::DnsError> {
    match tokio::time::timeout(budget, lookup).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(wit_dns_error(e)),
        Err(_) => Err(dns::DnsError::Temporary(format!(
            "{name}: no answer within the plugin's time"
        ))),
    }
}

fn wit_dns_error(error: LookupError) -> dns::DnsError {
    match error {
        LookupError::NxDomain(_) => dns::DnsError::Nxdomain,
        e @ LookupError::Temporary { .. } => dns::DnsError::Temporary(e.to_string()),
        e @ LookupError::InvalidName(_) => dns::DnsError::Invalid(e.to_string()),
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

impl HostState {
    /// Runs one kv call if the plugin was granted kv, within a call budget
    /// like DNS: a Redis that does not answer costs the plugin an error,
    /// not its deadline. Failures are counted per plugin, and the backend
    /// logs when it stops and starts answering. (`&mut self`: the host
    /// state is Send but not Sync, and the call awaits.)
    async fn kv_call<T, Call>(&mut self, call: impl FnOnce(Kv) -> Call) -> Result<T, String>
    where
        Call: Future<Output = Result<T, StateError>>,
    {
        self.permit(Capability::Kv)?;
        let error = match tokio::time::timeout(self.call_budget(), call(self.kv.clone())).await {
            Ok(Ok(value)) => {
                self.kv.answered();
                return Ok(value);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "kv: no answer within the plugin's time".to_owned(),
        };
        METRICS.state_errors.inc(&[&self.plugin]);
        self.kv.failed(&self.plugin, &error);
        Err(error)
    }
}

impl kv::Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, String>> {
        Ok(self.kv_call(|kv| async move { kv.get(&key).await }).await)
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_seconds: Option<u32>,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(self
            .kv_call(|kv| async move { kv.set(&key, &value, ttl_seconds).await })
            .await)
    }

    async fn incr(
        &mut self,
        key: String,
        delta: i64,
        ttl_seconds: Option<u32>,
    ) -> wasmtime::Result<Result<i64, String>> {
        Ok(self
            .kv_call(|kv| async move { kv.incr(&key, delta, ttl_seconds).await })
            .await)
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), String>> {
        Ok(self
            .kv_call(|kv| async move { kv.delete(&key).await })
            .await)
    }
}

impl dns::Host for HostState {
    async fn txt(&mut self, name: String) -> wasmtime::Result<Result<Vec<String>, dns::DnsError>> {
        if let Err(denied) = self.permit_dns() {
            return Ok(Err(denied));
        }
        let dns = self.services.dns.clone();
        Ok(bounded(self.call_budget(), &name, dns.txt(&name)).await)
    }

    async fn a(&mut self, name: String) -> wasmtime::Result<Result<Vec<String>, dns::DnsError>> {
        if let Err(denied) = self.permit_dns() {
            return Ok(Err(denied));
        }
        let dns = self.services.dns.clone();
        let answer = bounded(self.call_budget(), &name, dns.a(&name)).await;
        Ok(answer.map(|ips| ips.iter().map(ToString::to_string).collect()))
    }

    async fn aaaa(&mut self, name: String) -> wasmtime::Result<Result<Vec<String>, dns::DnsError>> {
        if let Err(denied) = self.permit_dns() {
            return Ok(Err(denied));
        }
        let dns = self.services.dns.clone();
        let answer = bounded(self.call_budget(), &name, dns.aaaa(&name)).await;
        Ok(answer.map(|ips| ips.iter().map(ToString::to_string).collect()))
    }

    async fn mx(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<Vec<dns::MxRecord>, dns::DnsError>> {
        if let Err(denied) = self.permit_dns() {
            return Ok(Err(denied));
        }
        let dns = self.services.dns.clone();
        let answer = bounded(self.call_budget(), &name, dns.mx(&name)).await;
        Ok(answer.map(|records| {
            records
                .into_iter()
                .map(|mx| dns::MxRecord {
                    preference: mx.preference,
                    exchange: mx.exchange,
                })
                .collect()
        }))
    }

    async fn ptr(&mut self, ip: String) -> wasmtime::Result<Result<Vec<String>, dns::DnsError>> {
        if let Err(denied) = self.permit_dns() {
            return Ok(Err(denied));
        }
        let Ok(address) = ip.trim().parse::<IpAddr>() else {
            return Ok(Err(dns::DnsError::Invalid(format!(
                "{ip:?} is not an IP address"
            ))));
        };
        let dns = self.services.dns.clone();
        Ok(bounded(self.call_budget(), &ip, dns.ptr(address)).await)
    }
}

/// Sender authentication, computed by the session's [`SessionAuth`] on the
/// first ask and shared by every plugin of the transaction.
impl auth::Host for HostState {
    async fn spf_mail_from(&mut self) -> wasmtime::Result<auth::SpfResult> {
        self.permit_or_trap(Capability::Auth)?;
        let budget = self.call_budget();
        Ok(wit_spf(self.auth.spf_mail_from(budget).await))
    }

    async fn spf_helo(&mut self) -> wasmtime::Result<auth::SpfResult> {
        self.permit_or_trap(Capability::Auth)?;
        let budget = self.call_budget();
        Ok(wit_spf(self.auth.spf_helo(budget).await))
    }

    async fn dkim(&mut self) -> wasmtime::Result<Vec<auth::DkimResult>> {
        self.permit_or_trap(Capability::Auth)?;
        let budget = self.call_budget();
        Ok(self
            .auth
            .dkim(budget)
            .await
            .into_iter()
            .map(|d| auth::DkimResult {
                outcome: wit_outcome(d.outcome),
                domain: d.domain,
                selector: d.selector,
                identity: d.identity,
                reason: d.reason,
            })
            .collect())
    }

    async fn dmarc(&mut self) -> wasmtime::Result<auth::DmarcResult> {
        self.permit_or_trap(Capability::Auth)?;
        let budget = self.call_budget();
        let dmarc = self.auth.dmarc(budget).await;
        Ok(auth::DmarcResult {
            outcome: wit_outcome(dmarc.outcome),
            header_from: dmarc.header_from,
            policy: match dmarc.policy {
                authn::DmarcPolicy::None => auth::DmarcPolicy::None,
                authn::DmarcPolicy::Quarantine => auth::DmarcPolicy::Quarantine,
                authn::DmarcPolicy::Reject => auth::DmarcPolicy::Reject,
            },
            sampled: dmarc.sampled,
            reason: dmarc.reason,
        })
    }

    async fn arc(&mut self) -> wasmtime::Result<auth::AuthResult> {
        self.permit_or_trap(Capability::Auth)?;
        let budget = self.call_budget();
        Ok(wit_outcome(self.auth.arc(budget).await))
    }

    async fn arc_sealer(&mut self) -> wasmtime::Result<String> {
        self.permit_or_trap(Capability::Auth)?;
        let budget = self.call_budget();
        Ok(self.auth.arc_sealer(budget).await)
    }
}

fn wit_outcome(outcome: authn::Outcome) -> auth::AuthResult {
    match outcome {
        authn::Outcome::None => auth::AuthResult::None,
        authn::Outcome::Pass => auth::AuthResult::Pass,
        authn::Outcome::Fail => auth::AuthResult::Fail,
        authn::Outcome::SoftFail => auth::AuthResult::Softfail,
        authn::Outcome::Neutral => auth::AuthResult::Neutral,
        authn::Outcome::TempError => auth::AuthResult::Temperror,
        authn::Outcome::PermError => auth::AuthResult::Permerror,
    }
}

fn wit_spf(check: authn::SpfCheck) -> auth::SpfResult {
    auth::SpfResult {
        outcome: wit_outcome(check.outcome),
        domain: check.domain,
        explanation: check.explanation,
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
        self.permit_or_trap(Capability::MessageBody)?;
        Ok(self.table.get(&this)?.read(offset, len)?)
    }

    async fn body_text(
        &mut self,
        this: Resource<MessageResource>,
    ) -> wasmtime::Result<Vec<String>> {
        self.permit_or_trap(Capability::MessageBody)?;
        let message = self.table.get(&this)?.clone();
        Ok(message.body_text().await.to_vec())
    }

    async fn attachments(
        &mut self,
        this: Resource<MessageResource>,
    ) -> wasmtime::Result<Vec<mail::Attachment>> {
        self.permit_or_trap(Capability::MessageBody)?;
        let message = self.table.get(&this)?.clone();
        Ok(message
            .attachments()
            .await
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

fn host_protocol(protocol: directory_wit::CalloutProtocol) -> CalloutProtocol {
    match protocol {
        directory_wit::CalloutProtocol::Lmtp => CalloutProtocol::Lmtp,
        directory_wit::CalloutProtocol::Smtp => CalloutProtocol::Smtp,
    }
}

impl directory_wit::Host for HostState {
    async fn lookup(
        &mut self,
        path: String,
        key: String,
    ) -> wasmtime::Result<Result<Option<String>, String>> {
        let directory = self.services.directory.clone();
        Ok(directory
            .lookup(&self.plugin, &path, &key)
            .await
            .map_err(|e| e.to_string()))
    }

    async fn callout_granted(
        &mut self,
        protocol: directory_wit::CalloutProtocol,
        target: String,
    ) -> wasmtime::Result<bool> {
        Ok(self
            .services
            .directory
            .callout_granted(&self.plugin, host_protocol(protocol), &target))
    }

    async fn verify_recipient(
        &mut self,
        protocol: directory_wit::CalloutProtocol,
        target: String,
        address: String,
    ) -> wasmtime::Result<directory_wit::CalloutAnswer> {
        let protocol = host_protocol(protocol);
        if !self
            .services
            .directory
            .callout_granted(&self.plugin, protocol, &target)
        {
            return Ok(directory_wit::CalloutAnswer::Unavailable(format!(
                "{target} is not in this plugin's [plugins.{}] callouts",
                self.plugin
            )));
        }
        let budget = self.call_budget();
        let hostname = self.services.hostname.clone();
        let answer = callout(protocol, &target, &address, &hostname, budget).await;
        tracing::debug!(
            plugin = &*self.plugin,
            session = %self.session_id,
            "callout {target} for {address}: {answer:?}"
        );
        Ok(match answer {
            CalloutAnswer::Exists => directory_wit::CalloutAnswer::Exists,
            CalloutAnswer::Unknown(reply) => directory_wit::CalloutAnswer::Unknown(reply),
            CalloutAnswer::Unavailable(reply) => directory_wit::CalloutAnswer::Unavailable(reply),
        })
    }
}
