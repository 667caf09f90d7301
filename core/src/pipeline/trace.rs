//! What each plugin of a chain answered, and how long it took, in host
//! types: built for every call, folded into the stage's outcome
//! (`fold.rs`), and kept only when asked for
//! ([`SessionFilters::record_steps`], by the offline replay of `sluice
//! pipeline test`). The live server never keeps them.
//!
//! [`SessionFilters::record_steps`]: super::SessionFilters::record_steps

use std::sync::Arc;
use std::time::Duration;

use super::bindings::wit_types as wit;
use super::fault::PluginFault;
use super::verdict::Modification;
use crate::config::OnError;
use crate::smtp::reply::Reply;

/// One plugin's answer to one hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginStep {
    pub plugin: Arc<str>,
    pub answer: StepAnswer,
    /// Data stage: the changes the plugin asked for (applied only if the
    /// stage accepts the message).
    pub modifications: Vec<Modification>,
    /// From the call into the plugin (instantiation included, for its
    /// first hook of the session) to its answer.
    pub elapsed: Duration,
    /// `mode = "shadow"`: the answer was logged, not applied.
    pub shadow: bool,
}

/// A plugin's verdict as it gave it: the reply is the plugin's own, before
/// sluice substitutes a standard one for a missing or wrong-class reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepAnswer {
    Next,
    Allow,
    Accept,
    Reject(Option<Reply>),
    Tempfail(Option<Reply>),
    Disconnect(Option<Reply>),
    Discard,
    Quarantine(String),
    /// The call failed (trap, deadline, memory cap, init error); the
    /// plugin's `on_error` policy decided what followed.
    Failed {
        error: PluginFault,
        on_error: OnError,
    },
}

impl StepAnswer {
    /// The verdict's WIT name ("next", "reject", …; "error" for a failure).
    pub fn name(&self) -> &'static str {
        match self {
            StepAnswer::Next => "next",
            StepAnswer::Allow => "allow",
            StepAnswer::Accept => "accept",
            StepAnswer::Reject(_) => "reject",
            StepAnswer::Tempfail(_) => "tempfail",
            StepAnswer::Disconnect(_) => "disconnect",
            StepAnswer::Discard => "discard",
            StepAnswer::Quarantine(_) => "quarantine",
            StepAnswer::Failed { .. } => "error",
        }
    }
}

/// One call's record, built from what the call returned (by value: the
/// live server folds it without a copy; only a recording keeps one).
pub(super) fn step(
    plugin: &Arc<str>,
    result: Result<(wit::Verdict, Vec<Modification>), PluginFault>,
    on_error: OnError,
    elapsed: Duration,
    shadow: bool,
) -> PluginStep {
    let reply =
        |r: Option<wit::Reply>| r.map(|r| Reply::new(r.code, r.enhanced.as_deref(), r.text));
    let (answer, modifications) = match result {
        Ok((verdict, modifications)) => {
            let answer = match verdict {
                wit::Verdict::Next => StepAnswer::Next,
                wit::Verdict::Allow => StepAnswer::Allow,
                wit::Verdict::Accept => StepAnswer::Accept,
                wit::Verdict::Reject(r) => StepAnswer::Reject(reply(r)),
                wit::Verdict::Tempfail(r) => StepAnswer::Tempfail(reply(r)),
                wit::Verdict::Disconnect(r) => StepAnswer::Disconnect(reply(r)),
                wit::Verdict::Discard => StepAnswer::Discard,
                wit::Verdict::Quarantine(reason) => StepAnswer::Quarantine(reason),
            };
            (answer, modifications)
        }
        Err(error) => (StepAnswer::Failed { error, on_error }, Vec::new()),
    };
    PluginStep {
        plugin: plugin.clone(),
        answer,
        modifications,
        elapsed,
        shadow,
    }
}
