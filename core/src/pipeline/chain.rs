//! Running a stage's chain for one session: instances created lazily on a
//! plugin's first hook, verdicts folded in configured order, faults handed to
//! the plugin's `on_error` policy. The rules (design.md):
//! - the first terminal verdict decides the stage;
//! - a chain that ends without one accepts, except at rcpt, where only a
//!   recipient some plugin allowed (or accepted) gets through; any other gets
//!   554 5.7.1, so no pipeline is an open relay however it is configured;
//! - a plugin in `shadow` mode runs, and its verdict is logged and counted
//!   but never applied.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::Resource;

use super::auth::SessionAuth;
use super::bindings::wit_types as wit;
use super::message::MessageResource;
use super::plugin::{describe_error, LiveInstance, Plugin};
use super::session::{MailboxArg, SessionInfo};
use super::trace::{self, PluginStep};
use super::verdict::{default_reply, DataOutcome, Modification, Stage, StageOutcome};
use super::Pipeline;
use crate::config::{OnError, PluginMode};
use crate::metrics::METRICS;
use crate::smtp::reply::Reply;

/// The argument of a hook call.
pub enum HookArg<'a> {
    Connect,
    Helo(&'a str),
    Mail(Option<&'a MailboxArg>),
    Rcpt(&'a MailboxArg),
    Data(&'a MessageResource),
}

impl HookArg<'_> {
    fn stage(&self) -> Stage {
        match self {
            HookArg::Connect => Stage::Connect,
            HookArg::Helo(_) => Stage::Helo,
            HookArg::Mail(_) => Stage::Mail,
            HookArg::Rcpt(_) => Stage::Rcpt,
            HookArg::Data(_) => Stage::Data,
        }
    }
}

/// The plugin side of one SMTP session. It keeps the pipeline it started
/// with, so a reload never changes the rules under a session in flight.
pub struct SessionFilters {
    pipeline: Arc<Pipeline>,
    session_id: String,
    /// One slot per plugin of the pipeline; filled on first use, emptied
    /// after a fault (a trapped instance must not be entered again).
    instances: Vec<Option<LiveInstance>>,
    /// SPF/DKIM/DMARC/ARC of the current transaction, shared by the
    /// session's plugins.
    auth: Arc<SessionAuth>,
    /// Every plugin's answer, when recorded (`sluice pipeline test`).
    steps: Option<Vec<PluginStep>>,
}

impl SessionFilters {
    pub fn new(pipeline: Arc<Pipeline>, session_id: String) -> Self {
        let instances = (0..pipeline.plugins.len()).map(|_| None).collect();
        let auth = Arc::new(SessionAuth::new(pipeline.services.authenticator.clone()));
        SessionFilters {
            pipeline,
            session_id,
            instances,
            auth,
            steps: None,
        }
    }

    /// From now on, records every plugin's answer for [`Self::take_steps`].
    pub fn record_steps(&mut self) {
        self.steps.get_or_insert_with(Vec::new);
    }

    /// The answers recorded since the last call, in call order.
    pub fn take_steps(&mut self) -> Vec<PluginStep> {
        self.steps.as_mut().map(std::mem::take).unwrap_or_default()
    }

    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// Runs the connect, helo, mail or rcpt chain.
    pub async fn run(&mut self, info: &SessionInfo, arg: HookArg<'_>) -> StageOutcome {
        self.run_chain(info, arg).await.outcome
    }

    /// Runs the data chain over the received message.
    pub async fn run_data(&mut self, info: &SessionInfo, message: &Arc<[u8]>) -> DataOutcome {
        let message = MessageResource::new(Arc::clone(message));
        self.run_chain(info, HookArg::Data(&message)).await
    }

    async fn run_chain(&mut self, info: &SessionInfo, arg: HookArg<'_>) -> DataOutcome {
        let stage = arg.stage();
        let pipeline = self.pipeline.clone();
        self.auth.enter(info, &arg).await;
        let mut allowed = false;
        let mut modifications = Vec::new();
        // The same record for every plugin of the stage: converted once.
        let session = wit_session(info);
        for &index in pipeline.stage(stage) {
            let plugin = &pipeline.plugins[index];
            let started = Instant::now();
            let called = self.call(index, &session, &arg).await;
            let elapsed = started.elapsed();
            METRICS
                .hook_seconds
                .observe(&[stage.name(), &plugin.name], elapsed);
            if let Some(steps) = &mut self.steps {
                let answer = match &called {
                    Ok(a) => Ok((&a.verdict, a.modifications.as_slice())),
                    Err(e) => Err(e.as_str()),
                };
                let mut step = trace::step(&plugin.name, answer, plugin.on_error, elapsed);
                step.shadow = plugin.mode == PluginMode::Shadow;
                steps.push(step);
            }
            if plugin.mode == PluginMode::Shadow {
                self.shadow(plugin, stage, called);
                continue;
            }
            let verdict = match called {
                Ok(answer) => {
                    modifications.extend(answer.modifications);
                    answer.verdict
                }
                Err(error) => {
                    plugin.record_fault();
                    METRICS
                        .plugin_faults
                        .inc(&[&plugin.name, fault_kind(&error)]);
                    tracing::warn!(
                        plugin = &*plugin.name,
                        hook = stage.name(),
                        session = %self.session_id,
                        policy = ?plugin.on_error,
                        "plugin failed: {error}"
                    );
                    match plugin.on_error {
                        OnError::Skip => continue,
                        OnError::Tempfail => {
                            return outcome(StageOutcome::Tempfail(default_reply::plugin_fault()))
                        }
                        OnError::Reject => {
                            return outcome(StageOutcome::Reject(default_reply::reject(stage)))
                        }
                    }
                }
            };
            tracing::debug!(plugin = &*plugin.name, hook = stage.name(), session = %self.session_id, ?verdict, "verdict");
            METRICS
                .verdicts
                .inc(&[stage.name(), &plugin.name, verdict_name(&verdict)]);
            let decided = match verdict {
                wit::Verdict::Next => None,
                wit::Verdict::Allow => {
                    allowed = true;
                    None
                }
                wit::Verdict::Accept => Some(StageOutcome::Accept),
                wit::Verdict::Reject(reply) => {
                    Some(StageOutcome::Reject(checked_reply(reply, 5, || {
                        default_reply::reject(stage)
                    })))
                }
                wit::Verdict::Tempfail(reply) => Some(StageOutcome::Tempfail(checked_reply(
                    reply,
                    4,
                    default_reply::tempfail,
                ))),
                wit::Verdict::Disconnect(reply) => {
                    Some(StageOutcome::Disconnect(checked_disconnect_reply(reply)))
                }
                wit::Verdict::Discard if stage == Stage::Data => Some(StageOutcome::Discard),
                wit::Verdict::Quarantine(reason) if stage == Stage::Data => {
                    Some(StageOutcome::Quarantine(reason))
                }
                wit::Verdict::Discard | wit::Verdict::Quarantine(_) => {
                    tracing::warn!(
                        plugin = &*plugin.name,
                        hook = stage.name(),
                        "discard/quarantine is only meaningful at data; taken as next"
                    );
                    None
                }
            };
            if let Some(decided) = decided {
                return DataOutcome {
                    outcome: decided,
                    modifications,
                };
            }
        }
        let end = if stage == Stage::Rcpt && !allowed {
            StageOutcome::Reject(Reply::relay_denied())
        } else {
            StageOutcome::Accept
        };
        DataOutcome {
            outcome: end,
            modifications,
        }
    }

    /// A shadow plugin's answer: logged and counted, never applied (its
    /// header edits included); a fault gets no `on_error` policy.
    fn shadow(&self, plugin: &Plugin, stage: Stage, called: Result<PluginAnswer, String>) {
        match called {
            Ok(answer) => {
                let verdict = verdict_name(&answer.verdict);
                METRICS
                    .shadow_verdicts
                    .inc(&[stage.name(), &plugin.name, verdict]);
                tracing::info!(
                    plugin = &*plugin.name,
                    hook = stage.name(),
                    session = %self.session_id,
                    verdict,
                    detail = ?answer.verdict,
                    modifications = answer.modifications.len(),
                    "shadow verdict (not applied)"
                );
            }
            Err(error) => {
                plugin.record_fault();
                METRICS
                    .plugin_faults
                    .inc(&[&plugin.name, fault_kind(&error)]);
                tracing::warn!(
                    plugin = &*plugin.name,
                    hook = stage.name(),
                    session = %self.session_id,
                    "shadow plugin failed (ignored): {error}"
                );
            }
        }
    }

    /// Calls one plugin's hook, creating its instance first if needed.
    async fn call(
        &mut self,
        index: usize,
        session: &wit::Session,
        arg: &HookArg<'_>,
    ) -> Result<PluginAnswer, String> {
        let plugin = self.pipeline.plugins[index].clone();
        let mut live = match self.instances[index].take() {
            Some(live) => live,
            None => {
                plugin
                    .checkout(&self.session_id, &self.pipeline.services, &self.auth)
                    .await?
            }
        };
        let answer = invoke(&plugin, &mut live, session, arg).await?;
        // Only an instance that answered cleanly is kept for the next hook.
        self.instances[index] = Some(live);
        Ok(answer)
    }
}

impl Drop for SessionFilters {
    /// Pooled instances go back to their pool for the next session.
    fn drop(&mut self) {
        for (plugin, slot) in self.pipeline.plugins.iter().zip(&mut self.instances) {
            if let Some(live) = slot.take() {
                plugin.release(live);
            }
        }
    }
}

/// The metrics label of a verdict.
fn verdict_name(verdict: &wit::Verdict) -> &'static str {
    match verdict {
        wit::Verdict::Next => "next",
        wit::Verdict::Allow => "allow",
        wit::Verdict::Accept => "accept",
        wit::Verdict::Reject(_) => "reject",
        wit::Verdict::Tempfail(_) => "tempfail",
        wit::Verdict::Disconnect(_) => "disconnect",
        wit::Verdict::Discard => "discard",
        wit::Verdict::Quarantine(_) => "quarantine",
    }
}

/// The metrics label of a failed call, from its description (see
/// `plugin::describe_error`).
fn fault_kind(error: &str) -> &'static str {
    if error.starts_with("deadline exceeded") {
        "timeout"
    } else if error.contains("memory") {
        "memory"
    } else if error.starts_with("trap:") {
        "trap"
    } else {
        "error"
    }
}

struct PluginAnswer {
    verdict: wit::Verdict,
    modifications: Vec<Modification>,
}

fn outcome(outcome: StageOutcome) -> DataOutcome {
    DataOutcome {
        outcome,
        modifications: Vec::new(),
    }
}

async fn invoke(
    plugin: &Plugin,
    live: &mut LiveInstance,
    session: &wit::Session,
    arg: &HookArg<'_>,
) -> Result<PluginAnswer, String> {
    plugin.arm_deadline(&mut live.store);
    let LiveInstance { store, filter, .. } = live;
    let call = async {
        let verdict = match arg {
            HookArg::Connect => filter.call_on_connect(&mut *store, session).await,
            HookArg::Helo(helo) => filter.call_on_helo(&mut *store, session, helo).await,
            HookArg::Mail(path) => {
                let path = path.map(wit_address);
                filter
                    .call_on_mail(&mut *store, session, path.as_ref())
                    .await
            }
            HookArg::Rcpt(rcpt) => {
                filter
                    .call_on_rcpt(&mut *store, session, &wit_address(rcpt))
                    .await
            }
            HookArg::Data(message) => {
                let handle = store
                    .data_mut()
                    .table
                    .push(MessageResource::clone(message))
                    .map_err(|e| e.to_string())?;
                let borrowed = Resource::<MessageResource>::new_borrow(handle.rep());
                let result = filter.call_on_data(&mut *store, session, borrowed).await;
                // The message outlives no call: drop the host side now.
                let _ = store.data_mut().table.delete(handle);
                return result
                    .map(|r| PluginAnswer {
                        verdict: r.verdict,
                        modifications: r.modifications.into_iter().map(host_modification).collect(),
                    })
                    .map_err(|e| describe_error(&e));
            }
        };
        verdict
            .map(|verdict| PluginAnswer {
                verdict,
                modifications: Vec::new(),
            })
            .map_err(|e| describe_error(&e))
    };
    plugin.with_backstop(call).await
}

fn wit_session(info: &SessionInfo) -> wit::Session {
    wit::Session {
        id: info.id.clone(),
        client_ip: info.client_ip.to_string(),
        client_port: info.client_port,
        listener: info.listener.clone(),
        reverse_name: info.reverse_name.clone(),
        helo: info.helo.clone(),
        tls: info.tls.as_ref().map(|t| wit::TlsInfo {
            version: t.version.clone(),
            cipher: t.cipher.clone(),
        }),
        authenticated_user: info.authenticated_user.clone(),
        reverse_path: info.reverse_path.clone(),
        recipients: info.recipients.clone(),
    }
}

fn wit_address(mailbox: &MailboxArg) -> wit::Address {
    wit::Address {
        local_part: mailbox.local_part.clone(),
        domain: mailbox.domain.clone(),
    }
}

fn host_modification(m: wit::Modification) -> Modification {
    match m {
        wit::Modification::PrependHeader(h) => Modification::PrependHeader {
            name: h.name,
            value: h.value,
        },
        wit::Modification::AppendHeader(h) => Modification::AppendHeader {
            name: h.name,
            value: h.value,
        },
        wit::Modification::RemoveHeader(name) => Modification::RemoveHeader(name),
        wit::Modification::AddRecipient(r) => Modification::AddRecipient(r),
        wit::Modification::RemoveRecipient(r) => Modification::RemoveRecipient(r),
    }
}

/// A plugin's reply is used only when its class matches the verdict
/// (a "reject" with a 250 would otherwise accept).
fn checked_reply(reply: Option<wit::Reply>, class: u16, default: impl FnOnce() -> Reply) -> Reply {
    match reply {
        Some(r) if r.code / 100 == class && r.code < 600 => {
            Reply::new(r.code, r.enhanced.as_deref(), r.text)
        }
        _ => default(),
    }
}

fn checked_disconnect_reply(reply: Option<wit::Reply>) -> Reply {
    match reply {
        Some(r) if r.code == 421 || (500..600).contains(&r.code) => {
            Reply::new(r.code, r.enhanced.as_deref(), r.text)
        }
        _ => default_reply::disconnect(),
    }
}
