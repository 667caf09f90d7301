//! Offline replay (`sluice pipeline test`): runs a listener's pipeline on a
//! recorded message without a server or a listening socket. The very
//! session code a socket drives runs over an in-memory pipe, and a small
//! client (`client`) speaks SMTP to it as a sending MTA would (EHLO, MAIL,
//! each RCPT, DATA); the traced session reports what every stage decided,
//! what every plugin answered, its header edits and its time.
//!
//! The plugins run exactly as in the server (same engine settings,
//! capabilities, timeouts, shadow mode) with these differences: their
//! key-value state starts empty and the message goes into a throwaway
//! spool (a running server's is never touched, nothing is delivered); DNS
//! goes to the resolver of `[dns]`, or to a fixture file served on
//! 127.0.0.1 (`fixture_dns`); the listener is spoken to in plain SMTP
//! without AUTH, a greeting delay or a reverse lookup.

mod client;
pub(crate) mod fixture_dns;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sluice_spool::Spool;

use crate::config::{AuthMode, Config, ListenerConfig, TlsMode};
use crate::delivery::DeliveryHandle;
use crate::dkim::DkimSigners;
use crate::dns::{Dns, ResolverSetupError};
use crate::limits::ConnectionLimits;
use crate::pipeline::{
    MailboxArg, Modification, PipelineError, PipelineSet, PluginEngine, PluginStep, Stage,
    StageOutcome, StepAnswer,
};
use crate::session::trace::StageTrace;
use crate::session::{Session, SessionContext};
use crate::users::{Authenticator, UserStore};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no listener named {0:?} in the configuration (listeners: {1})")]
    UnknownListener(String, String),
    #[error("the configuration declares no listener")]
    NoListener,
    #[error("{0}")]
    Pipeline(#[from] PipelineError),
    #[error("dns: {0}")]
    Dns(#[from] ResolverSetupError),
    #[error("scratch spool {path}: {message}")]
    Scratch { path: PathBuf, message: String },
    #[error("{0}")]
    DnsFixture(#[from] fixture_dns::FixtureError),
    #[error("{address:?} is not an address (local@domain)")]
    Address { address: String },
    #[error("the replayed session: {0}")]
    Session(#[from] std::io::Error),
}

/// The session to replay.
#[derive(Debug, Clone)]
pub struct ReplayInput {
    /// None: the first listener of the configuration.
    pub listener: Option<String>,
    pub client_ip: IpAddr,
    pub helo: String,
    /// "" is the null reverse-path.
    pub from: String,
    pub to: Vec<String>,
    pub message: Vec<u8>,
    /// Answer DNS from this file instead of `[dns]`.
    pub dns_fixture: Option<PathBuf>,
}

/// What one stage decided, and every plugin's answer on the way.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    pub stage: &'static str,
    /// The recipient, for the rcpt stage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argument: Option<String>,
    /// accept, reject, tempfail, disconnect, discard, quarantine.
    pub outcome: &'static str,
    /// The reply a client would get for a refusal; the reason of a
    /// quarantine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    pub plugins: Vec<StepReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub plugin: String,
    pub verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Header and recipient edits the plugin asked for.
    pub modifications: Vec<String>,
    /// `mode = "shadow"`: logged by the server, not applied.
    pub shadow: bool,
    pub micros: u64,
}

/// The whole replay.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub listener: String,
    pub pipeline: String,
    pub stages: Vec<StageReport>,
    /// The message's fate: accepted, rejected, tempfailed, disconnected,
    /// discarded, quarantined.
    pub result: &'static str,
    /// Data stage edits that a live server would apply to the message.
    pub applied_modifications: Vec<String>,
}

/// Runs the replay.
pub async fn replay(config: &Config, input: ReplayInput) -> Result<ReplayReport, ReplayError> {
    let listener = replayed_listener(config, input.listener.as_deref())?;
    for address in std::iter::once(&input.from)
        .filter(|from| !from.is_empty())
        .chain(&input.to)
    {
        mailbox(address)?;
    }
    let scratch = Scratch::new()?;
    let spool = Spool::open(&scratch.0).map_err(|e| ReplayError::Scratch {
        path: scratch.0.clone(),
        message: e.to_string(),
    })?;
    // Kept alive until the replay ends.
    let mut _fixture_server = None;
    let dns = match &input.dns_fixture {
        None => Dns::new(&config.dns)?,
        Some(path) => {
            let server = fixture_dns::serve(fixture_dns::load(path)?).await?;
            let mut dns_config = config.dns.clone();
            dns_config.nameservers = vec![server.address];
            _fixture_server = Some(server);
            Dns::new(&dns_config)?
        }
    };
    let max_memory = config.max_plugin_memory();
    // The server's compiled components when the cache is usable; compiling
    // from scratch otherwise (the cache is an optimisation).
    let cache_dir = config
        .plugin_cache
        .resolve(&config.server.data_dir)
        .filter(|dir| dir.is_dir());
    let engine = match PluginEngine::new(max_memory, cache_dir.as_deref()) {
        Ok(engine) => engine,
        Err(_) => PluginEngine::new(max_memory, None)?,
    };
    let set = PipelineSet::build(&engine, config, &spool, &dns).await?;
    if set.get(&listener.pipeline).is_none() {
        return Err(ReplayError::UnknownListener(
            listener.name.clone(),
            String::new(),
        ));
    }

    let (_shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
    let ctx = Arc::new(SessionContext {
        config: Arc::new(replayed_config(config)),
        pipelines: Arc::new(arc_swap::ArcSwap::from_pointee(set)),
        spool: spool.clone(),
        delivery: DeliveryHandle::detached(),
        shutdown,
        authenticator: Arc::new(Authenticator::new(
            Arc::new(UserStore::new(&scratch.0)),
            config.auth.max_failures,
            config.auth.lockout,
        )),
        dkim: DkimSigners::default(),
        limits: Arc::new(ConnectionLimits::new(1, 1)),
        dns,
        memory: crate::memory::MessageMemory::new(crate::config::DEFAULT_MESSAGE_MEMORY),
    });
    let (server_end, client_end) = tokio::io::duplex(64 * 1024);
    let peer = SocketAddr::new(input.client_ip, 0);
    let listener = Arc::new(listener);
    let Some(session) = Session::new(
        server_end,
        peer,
        "replay".to_owned(),
        listener.clone(),
        None,
        ctx,
    ) else {
        return Err(ReplayError::UnknownListener(
            listener.name.clone(),
            String::new(),
        ));
    };
    let session = tokio::spawn(session.traced().run());
    let dialogue = client::Dialogue {
        helo: &input.helo,
        from: &input.from,
        to: &input.to,
        message: &input.message,
    };
    let progress = client::send(client_end, dialogue).await;
    let trace = session.await.map_err(|e| {
        ReplayError::Session(std::io::Error::other(format!("session task failed: {e}")))
    })?;
    let progress = progress?;
    Ok(report(&listener, &trace, progress))
}

/// The configuration of the replayed session: the client address is made
/// up, so its reverse name is not looked up.
fn replayed_config(config: &Config) -> Config {
    let mut config = config.clone();
    config.server.reverse_lookup = false;
    config
}

/// The listener to replay on, spoken to in plain SMTP: no TLS, no AUTH,
/// no greeting delay.
fn replayed_listener(config: &Config, name: Option<&str>) -> Result<ListenerConfig, ReplayError> {
    let listener = match name {
        Some(name) => config
            .listeners
            .iter()
            .find(|l| l.name == name)
            .ok_or_else(|| {
                ReplayError::UnknownListener(
                    name.to_owned(),
                    config
                        .listeners
                        .iter()
                        .map(|l| l.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                )
            })?,
        None => config.listeners.first().ok_or(ReplayError::NoListener)?,
    };
    let mut listener = listener.clone();
    listener.tls = TlsMode::None;
    listener.auth = AuthMode::None;
    listener.greet_delay = Duration::ZERO;
    Ok(listener)
}

/// The report of a traced session.
fn report(
    listener: &ListenerConfig,
    trace: &[StageTrace],
    progress: client::Progress,
) -> ReplayReport {
    let mut report = ReplayReport {
        listener: listener.name.clone(),
        pipeline: listener.pipeline.clone(),
        stages: trace.iter().map(stage_report).collect(),
        result: "accepted",
        applied_modifications: Vec::new(),
    };
    let refusal = |outcome: &StageOutcome| match outcome {
        StageOutcome::Reject(_) => Some("rejected"),
        StageOutcome::Tempfail(_) => Some("tempfailed"),
        StageOutcome::Disconnect(_) => Some("disconnected"),
        _ => None,
    };
    for stage in trace {
        match stage.stage {
            // A refused recipient ends the transaction only when it is a
            // disconnect; the others are just not added.
            Stage::Rcpt => {
                if let StageOutcome::Disconnect(_) = stage.outcome {
                    report.result = "disconnected";
                    return report;
                }
            }
            Stage::Data => {
                report.result = match &stage.outcome {
                    StageOutcome::Accept => "accepted",
                    StageOutcome::Quarantine(_) => "quarantined",
                    StageOutcome::Discard => "discarded",
                    other => refusal(other).unwrap_or("rejected"),
                };
                report.applied_modifications = stage.applied.iter().map(describe).collect();
                return report;
            }
            _ => {
                if let Some(result) = refusal(&stage.outcome) {
                    report.result = result;
                    return report;
                }
            }
        }
    }
    report.result = match progress {
        client::Progress::NoRecipient => "no recipient accepted",
        // Refused by the session itself (a syntax or sequence error, a
        // limit), not by a plugin.
        client::Progress::Ended | client::Progress::Answered => "refused by the session",
    };
    report
}

fn stage_report(stage: &StageTrace) -> StageReport {
    let (name, reply) = match &stage.outcome {
        StageOutcome::Accept => ("accept", None),
        StageOutcome::Reject(r) => ("reject", Some(r.to_string())),
        StageOutcome::Tempfail(r) => ("tempfail", Some(r.to_string())),
        StageOutcome::Disconnect(r) => ("disconnect", Some(r.to_string())),
        StageOutcome::Discard => ("discard", None),
        StageOutcome::Quarantine(reason) => ("quarantine", Some(reason.clone())),
    };
    StageReport {
        stage: stage.stage.name(),
        argument: stage.argument.clone(),
        outcome: name,
        reply,
        plugins: stage.steps.iter().map(step_report).collect(),
    }
}

fn step_report(step: &PluginStep) -> StepReport {
    let detail = match &step.answer {
        StepAnswer::Reject(r) | StepAnswer::Tempfail(r) | StepAnswer::Disconnect(r) => {
            r.as_ref().map(ToString::to_string)
        }
        StepAnswer::Quarantine(reason) => Some(reason.clone()),
        StepAnswer::Failed { error, on_error } => {
            Some(format!("{error} (on_error = {on_error:?})").to_lowercase())
        }
        _ => None,
    };
    StepReport {
        plugin: step.plugin.to_string(),
        verdict: step.answer.name(),
        detail,
        modifications: step.modifications.iter().map(describe).collect(),
        shadow: step.shadow,
        micros: u64::try_from(step.elapsed.as_micros()).unwrap_or(u64::MAX),
    }
}

fn describe(modification: &Modification) -> String {
    match modification {
        Modification::PrependHeader { name, value } => format!("prepend-header {name}: {value}"),
        Modification::AppendHeader { name, value } => format!("append-header {name}: {value}"),
        Modification::RemoveHeader(name) => format!("remove-header {name}"),
        Modification::AddRecipient(rcpt) => format!("add-recipient {rcpt}"),
        Modification::RemoveRecipient(rcpt) => format!("remove-recipient {rcpt}"),
        Modification::ChangeSender(sender) => format!("change-sender <{sender}>"),
    }
}

fn mailbox(address: &str) -> Result<MailboxArg, ReplayError> {
    let trimmed = address.trim().trim_start_matches('<').trim_end_matches('>');
    match trimmed.rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => Ok(MailboxArg {
            local_part: local.to_owned(),
            domain: domain.to_ascii_lowercase(),
        }),
        _ => Err(ReplayError::Address {
            address: address.to_owned(),
        }),
    }
}

/// A scratch directory for the replay's spool, removed afterwards.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch, ReplayError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos();
        let path =
            std::env::temp_dir().join(format!("sluice-replay-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|e| ReplayError::Scratch {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(Scratch(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Reads a message file, turning bare LF line ends into CRLF as the SMTP
/// DATA phase would deliver them.
pub fn read_message(path: &Path) -> std::io::Result<Vec<u8>> {
    let bytes = std::fs::read(path)?;
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 32);
    let mut previous = 0u8;
    for byte in bytes {
        if byte == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(byte);
        previous = byte;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_line_ends() {
        let m = mailbox("<Bob@Example.ORG>").unwrap();
        assert_eq!(
            (m.local_part.as_str(), m.domain.as_str()),
            ("Bob", "example.org")
        );
        assert!(mailbox("nobody").is_err());
        assert!(mailbox("@x").is_err());
        let dir = std::env::temp_dir().join(format!("sluice-replay-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("m.eml");
        std::fs::write(&file, b"A: b\nC: d\r\n\nbody\n").unwrap();
        assert_eq!(
            read_message(&file).unwrap(),
            b"A: b\r\nC: d\r\n\r\nbody\r\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
