//! Running a stage's chain for one session: instances created lazily on a
//! plugin's first hook, each call's answer (a verdict, or a typed
//! [`PluginFault`]) logged, counted and traced, then handed to the stage's
//! verdict fold (`fold.rs`, where the rules live), which says whether the
//! next plugin is called. The outcome goes back to the SMTP session.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::Resource;

use super::auth::SessionAuth;
use super::bindings::wit_types as wit;
use super::fault::PluginFault;
use super::fold::{Flow, Fold};
use super::message::MessageResource;
use super::milter::MilterSession;
use super::plugin::{LiveInstance, Plugin};
use super::recipients;
use super::session::{HookArg, MailboxArg, SessionInfo};
use super::trace::{self, PluginStep, StepAnswer};
use super::verdict::{DataOutcome, Modification, Stage, StageOutcome};
use super::Pipeline;
use crate::config::PluginMode;
use crate::metrics::METRICS;

/// The plugin side of one SMTP session. It keeps the pipeline it started
/// with, so a reload never changes the rules under a session in flight.
pub struct SessionFilters {
    pipeline: Arc<Pipeline>,
    session_id: String,
    /// One slot per plugin of the pipeline; filled on first use, emptied
    /// after a fault (a trapped instance must not be entered again).
    instances: Vec<Option<LiveInstance>>,
    /// One slot per plugin of the pipeline: a milter element's connection
    /// and how far the milter has followed the session.
    milters: Vec<MilterSession>,
    /// SPF/DKIM/DMARC/ARC of the current transaction, shared by the
    /// session's plugins.
    auth: Arc<SessionAuth>,
    /// Every plugin's answer, when recorded (`sluice pipeline test`).
    steps: Option<Vec<PluginStep>>,
}

impl SessionFilters {
    pub fn new(pipeline: Arc<Pipeline>, session_id: String) -> Self {
        let instances = (0..pipeline.plugins.len()).map(|_| None).collect();
        let milters = (0..pipeline.plugins.len())
            .map(|_| MilterSession::default())
            .collect();
        let auth = Arc::new(SessionAuth::new(pipeline.services.authenticator.clone()));
        SessionFilters {
            pipeline,
            session_id,
            instances,
            milters,
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

    /// The mail transaction is over without a message (RSET, a new EHLO):
    /// milters are told before their next step.
    pub fn end_transaction(&mut self) {
        self.milters
            .iter_mut()
            .for_each(MilterSession::end_transaction);
    }

    /// Runs the connect, helo, mail or rcpt chain.
    pub async fn run(&mut self, info: &SessionInfo, arg: HookArg<'_>) -> StageOutcome {
        self.run_chain(info, arg).await.outcome
    }

    /// Runs the data chain over the received message.
    pub async fn run_data(&mut self, info: &SessionInfo, message: &MessageResource) -> DataOutcome {
        let decision = self.run_chain(info, HookArg::Data(message)).await;
        if let Some(recorder) = &self.pipeline.services.dmarc_reports {
            self.auth.report_dmarc(recorder, &decision).await;
        }
        decision
    }

    async fn run_chain(&mut self, info: &SessionInfo, arg: HookArg<'_>) -> DataOutcome {
        let stage = arg.stage();
        let pipeline = self.pipeline.clone();
        self.auth.enter(info, &arg).await;
        let mut fold = Fold::new(stage);
        // The same record for every plugin of the stage: converted once.
        let session = wit_session(info);
        for &index in pipeline.stage(stage) {
            let plugin = &pipeline.plugins[index];
            let started = Instant::now();
            let called = self.call(index, info, &session, &arg).await;
            let elapsed = started.elapsed();
            METRICS
                .hook_seconds
                .observe(&[stage.name(), &plugin.name], elapsed);
            let step = trace::step(
                &plugin.name,
                called.map(|answer| (answer.verdict, answer.modifications)),
                plugin.on_error,
                elapsed,
                plugin.mode == PluginMode::Shadow,
            );
            self.observe(plugin, stage, &step);
            if let Some(steps) = &mut self.steps {
                steps.push(step.clone());
            }
            match fold.step(step) {
                Flow::Continue => {}
                Flow::Misplaced => tracing::warn!(
                    plugin = &*plugin.name,
                    stage = stage.name(),
                    session = %self.session_id,
                    "discard/quarantine is only meaningful at data; taken as next"
                ),
                Flow::Stop => break,
            }
        }
        if stage == Stage::Data {
            // Received, refused or dropped: the transaction ends here.
            self.end_transaction();
        }
        fold.finish()
    }

    /// Logs and counts one plugin's answer, applied or not. A shadow
    /// plugin's answer is reported as such (its fault gets no `on_error`).
    fn observe(&self, plugin: &Plugin, stage: Stage, step: &PluginStep) {
        let (name, stage) = (&*plugin.name, stage.name());
        match &step.answer {
            StepAnswer::Failed { error, on_error } => {
                plugin.record_fault();
                METRICS.plugin_faults.inc(&[name, error.kind()]);
                if step.shadow {
                    tracing::warn!(
                        plugin = name,
                        stage,
                        session = %self.session_id,
                        kind = error.kind(),
                        detail = %error,
                        "shadow plugin failed (ignored)"
                    );
                } else {
                    tracing::warn!(
                        plugin = name,
                        stage,
                        session = %self.session_id,
                        kind = error.kind(),
                        detail = %error,
                        policy = ?on_error,
                        "plugin failed"
                    );
                }
            }
            answer if step.shadow => {
                let verdict = answer.name();
                METRICS.shadow_verdicts.inc(&[stage, name, verdict]);
                tracing::info!(
                    plugin = name,
                    stage,
                    session = %self.session_id,
                    verdict,
                    detail = ?answer,
                    modifications = step.modifications.len(),
                    "shadow verdict (not applied)"
                );
            }
            answer => {
                tracing::debug!(plugin = name, stage, session = %self.session_id, ?answer, "verdict");
                METRICS.verdicts.inc(&[stage, name, answer.name()]);
            }
        }
    }

    /// Calls one plugin's hook, creating its instance first if needed.
    async fn call(
        &mut self,
        index: usize,
        info: &SessionInfo,
        session: &wit::Session,
        arg: &HookArg<'_>,
    ) -> Result<PluginAnswer, PluginFault> {
        let plugin = self.pipeline.plugins[index].clone();
        if let Some(address) = plugin.milter_address() {
            let hostname = &self.pipeline.services.hostname;
            let (verdict, modifications) = self.milters[index]
                .call(&plugin.name, address, plugin.timeout, hostname, info, arg)
                .await?;
            return Ok(PluginAnswer {
                verdict,
                modifications: recipients::check(&plugin.name, plugin.allow, modifications)?,
            });
        }
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
        let modifications = recipients::check(&plugin.name, plugin.allow, answer.modifications)?;
        Ok(PluginAnswer {
            modifications,
            ..answer
        })
    }
}

impl Drop for SessionFilters {
    /// Pooled instances go back to their pool for the next session; milters
    /// are told the session is over.
    fn drop(&mut self) {
        self.milters.iter_mut().for_each(MilterSession::close);
        for (plugin, slot) in self.pipeline.plugins.iter().zip(&mut self.instances) {
            if let Some(live) = slot.take() {
                plugin.release(live);
            }
        }
    }
}

struct PluginAnswer {
    verdict: wit::Verdict,
    modifications: Vec<Modification>,
}

async fn invoke(
    plugin: &Plugin,
    live: &mut LiveInstance,
    session: &wit::Session,
    arg: &HookArg<'_>,
) -> Result<PluginAnswer, PluginFault> {
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
                    .map_err(|e| PluginFault::Host(format!("cannot hand the message over: {e}")))?;
                let borrowed = Resource::<MessageResource>::new_borrow(handle.rep());
                let result = filter.call_on_data(&mut *store, session, borrowed).await;
                // The message outlives no call: drop the host side now.
                let _ = store.data_mut().table.delete(handle);
                return result
                    .map(|r| PluginAnswer {
                        verdict: r.verdict,
                        modifications: r.modifications.into_iter().map(host_modification).collect(),
                    })
                    .map_err(|e| PluginFault::from_call(&e));
            }
        };
        verdict
            .map(|verdict| PluginAnswer {
                verdict,
                modifications: Vec::new(),
            })
            .map_err(|e| PluginFault::from_call(&e))
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
