//! A traced session's record of each stage: what the stage decided and
//! every plugin's answer on the way. `sluice pipeline test` reports it.

use crate::pipeline::{Modification, PluginStep, Stage, StageOutcome};

#[derive(Debug, Clone)]
pub struct StageTrace {
    pub stage: Stage,
    /// The recipient, for the rcpt stage.
    pub argument: Option<String>,
    pub outcome: StageOutcome,
    /// Each plugin's answer, in the order they ran.
    pub steps: Vec<PluginStep>,
    /// Data stage: the edits applied to an accepted or quarantined message.
    pub applied: Vec<Modification>,
}
