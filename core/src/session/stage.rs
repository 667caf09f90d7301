//! How the session asks the pipeline: the record plugins are shown (built
//! from the state, so the envelope lives only in the transaction), one
//! stage run, its trace, and the reply of a refusing outcome.

use super::trace::StageTrace;
use super::{Flow, Session, SessionStream};
use crate::pipeline::{HookArg, Modification, SessionInfo, Stage, StageOutcome};

impl<S: SessionStream> Session<S> {
    /// The session as plugins see it now.
    pub(super) fn plugin_view(&self) -> SessionInfo {
        let transaction = self.state.transaction();
        SessionInfo {
            id: self.client.id.clone(),
            client_ip: self.client.ip,
            client_port: self.client.port,
            listener: self.listener.name.clone(),
            reverse_name: self.client.reverse_name.clone(),
            helo: self.state.greeting().map(|g| g.helo.clone()),
            tls: self.tls_info.clone(),
            authenticated_user: self.user.clone(),
            reverse_path: transaction.map(|t| t.sender()),
            recipients: transaction
                .map(|t| t.recipients.clone())
                .unwrap_or_default(),
        }
    }

    /// Runs one stage of the pipeline (not data: see `intake`) and records
    /// it when traced. `argument` names the recipient in the trace.
    pub(super) async fn run_stage(
        &mut self,
        arg: HookArg<'_>,
        argument: Option<String>,
    ) -> StageOutcome {
        let stage = arg.stage();
        let info = self.plugin_view();
        let outcome = self.filters.run(&info, arg).await;
        self.record(stage, argument, &outcome, &[]);
        outcome
    }

    /// Adds a stage to the trace, with the answers its plugins gave and
    /// the edits `applied` to the message; copies nothing when untraced.
    pub(super) fn record(
        &mut self,
        stage: Stage,
        argument: Option<String>,
        outcome: &StageOutcome,
        applied: &[Modification],
    ) {
        if let Some(trace) = &mut self.trace {
            trace.push(StageTrace {
                stage,
                argument,
                outcome: outcome.clone(),
                steps: self.filters.take_steps(),
                applied: applied.to_vec(),
            });
        }
    }

    /// Queues the reply of a refusing outcome; None when the stage accepted.
    pub(super) fn refused(&mut self, outcome: StageOutcome) -> Option<Flow> {
        match outcome {
            StageOutcome::Accept | StageOutcome::Discard | StageOutcome::Quarantine(_) => None,
            StageOutcome::Reject(reply) | StageOutcome::Tempfail(reply) => Some(self.reply(reply)),
            StageOutcome::Disconnect(reply) => {
                self.reply(reply);
                Some(Flow::Close)
            }
        }
    }
}
