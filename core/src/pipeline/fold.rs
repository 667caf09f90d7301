//! The verdict fold of one stage: the plugins' answers, in chain order, in;
//! the stage's [`DataOutcome`] out. Pure (no wasmtime, no I/O): `chain.rs`
//! feeds it one answer per call and stops calling plugins when it says
//! [`Flow::Stop`]; the session turns the outcome into a reply. The rules
//! (design.md):
//! - the first terminal verdict (accept, reject, tempfail, disconnect, and
//!   at data discard or quarantine) decides the stage; later plugins are
//!   not consulted;
//! - `allow` vouches for a recipient and goes on;
//! - a chain that ends without a terminal verdict accepts, except at rcpt,
//!   where only a recipient some plugin allowed gets through; any other
//!   gets 554 5.7.1, so no pipeline is an open relay however it is
//!   configured;
//! - a plugin in `shadow` mode is traced and counted but never applied,
//!   its header edits and its faults included;
//! - a fault is settled by the plugin's `on_error`: skip goes on, tempfail
//!   answers 451 4.3.0, reject the stage's standard refusal;
//! - a plugin's reply of the wrong class is replaced by the standard one
//!   (a "reject" carrying 250 would otherwise accept);
//! - discard and quarantine mean something only at data; elsewhere they
//!   are taken as next;
//! - data-stage modifications are collected from every applied answer up
//!   to and including the deciding one.

use super::trace::{PluginStep, StepAnswer};
use super::verdict::{default_reply, DataOutcome, Modification, Stage, StageOutcome};
use crate::config::OnError;
use crate::smtp::reply::Reply;

/// What the chain does after one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// On to the next plugin.
    Continue,
    /// On to the next plugin; the answer was a verdict this stage does not
    /// know (discard or quarantine before data), taken as next.
    Misplaced,
    /// The stage is decided: call no further plugin.
    Stop,
}

/// The fold in progress over one stage's chain.
#[derive(Debug)]
pub struct Fold {
    stage: Stage,
    /// Some plugin allowed the recipient (rcpt: what keeps the chain closed).
    allowed: bool,
    /// Changes asked for by the applied answers so far.
    modifications: Vec<Modification>,
    /// Set by the deciding answer; the fold takes no answer after it.
    decided: Option<StageOutcome>,
}

impl Fold {
    pub fn new(stage: Stage) -> Self {
        Fold {
            stage,
            allowed: false,
            modifications: Vec::new(),
            decided: None,
        }
    }

    /// Takes the next plugin's answer. Once the fold said [`Flow::Stop`],
    /// it has decided and any further answer is ignored.
    pub fn step(&mut self, step: PluginStep) -> Flow {
        if self.decided.is_some() {
            return Flow::Stop;
        }
        if step.shadow {
            return Flow::Continue;
        }
        let decided = match step.answer {
            StepAnswer::Failed { on_error, .. } => match on_error {
                OnError::Skip => return Flow::Continue,
                // A fault ends the stage with nothing to apply: the changes
                // collected so far go with it (the stage refuses anyway).
                OnError::Tempfail => {
                    self.modifications.clear();
                    StageOutcome::Tempfail(default_reply::plugin_fault())
                }
                OnError::Reject => {
                    self.modifications.clear();
                    StageOutcome::Reject(default_reply::reject(self.stage))
                }
            },
            answer => {
                self.modifications.extend(step.modifications);
                match verdict(self.stage, answer) {
                    Verdict::Next => return Flow::Continue,
                    Verdict::Misplaced => return Flow::Misplaced,
                    Verdict::Allow => {
                        self.allowed = true;
                        return Flow::Continue;
                    }
                    Verdict::Decided(outcome) => outcome,
                }
            }
        };
        self.decided = Some(decided);
        Flow::Stop
    }

    /// The stage's outcome: the deciding answer's, or the end-of-chain rule.
    pub fn finish(self) -> DataOutcome {
        let outcome = match self.decided {
            Some(decided) => decided,
            None if self.stage == Stage::Rcpt && !self.allowed => {
                StageOutcome::Reject(Reply::relay_denied())
            }
            None => StageOutcome::Accept,
        };
        DataOutcome {
            outcome,
            modifications: self.modifications,
        }
    }
}

/// A whole chain's answers folded at once: the outcome, and how many
/// answers were consulted (those after the deciding one are not).
pub fn fold(stage: Stage, steps: impl IntoIterator<Item = PluginStep>) -> (DataOutcome, usize) {
    let mut fold = Fold::new(stage);
    let mut consulted = 0;
    for step in steps {
        consulted += 1;
        if fold.step(step) == Flow::Stop {
            break;
        }
    }
    (fold.finish(), consulted)
}

/// One applied verdict, as the fold sees it.
enum Verdict {
    Next,
    Allow,
    Misplaced,
    Decided(StageOutcome),
}

fn verdict(stage: Stage, answer: StepAnswer) -> Verdict {
    match answer {
        StepAnswer::Next => Verdict::Next,
        StepAnswer::Allow => Verdict::Allow,
        StepAnswer::Accept => Verdict::Decided(StageOutcome::Accept),
        StepAnswer::Reject(reply) => {
            Verdict::Decided(StageOutcome::Reject(checked_reply(reply, 5, || {
                default_reply::reject(stage)
            })))
        }
        StepAnswer::Tempfail(reply) => Verdict::Decided(StageOutcome::Tempfail(checked_reply(
            reply,
            4,
            default_reply::tempfail,
        ))),
        StepAnswer::Disconnect(reply) => {
            Verdict::Decided(StageOutcome::Disconnect(checked_disconnect_reply(reply)))
        }
        StepAnswer::Discard if stage == Stage::Data => Verdict::Decided(StageOutcome::Discard),
        StepAnswer::Quarantine(reason) if stage == Stage::Data => {
            Verdict::Decided(StageOutcome::Quarantine(reason))
        }
        StepAnswer::Discard | StepAnswer::Quarantine(_) => Verdict::Misplaced,
        // Settled by `Fold::step` before it gets here.
        StepAnswer::Failed { .. } => Verdict::Next,
    }
}

/// A plugin's reply is used only when its class matches the verdict.
fn checked_reply(reply: Option<Reply>, class: u16, default: impl FnOnce() -> Reply) -> Reply {
    match reply {
        Some(r) if r.code / 100 == class && r.code < 600 => r,
        _ => default(),
    }
}

/// A disconnect closes the connection: 421, or a permanent refusal.
fn checked_disconnect_reply(reply: Option<Reply>) -> Reply {
    match reply {
        Some(r) if r.code == 421 || (500..600).contains(&r.code) => r,
        _ => default_reply::disconnect(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::pipeline::fault::PluginFault;

    fn answer(answer: StepAnswer) -> PluginStep {
        PluginStep {
            plugin: Arc::from("p"),
            answer,
            modifications: Vec::new(),
            elapsed: Duration::ZERO,
            shadow: false,
        }
    }

    fn shadow(step: StepAnswer) -> PluginStep {
        PluginStep {
            shadow: true,
            ..answer(step)
        }
    }

    fn edits(step: StepAnswer, name: &str) -> PluginStep {
        PluginStep {
            modifications: vec![header(name)],
            ..answer(step)
        }
    }

    fn header(name: &str) -> Modification {
        Modification::PrependHeader {
            name: name.to_owned(),
            value: "1".to_owned(),
        }
    }

    fn fault(on_error: OnError) -> StepAnswer {
        StepAnswer::Failed {
            error: PluginFault::Deadline { backstop: None },
            on_error,
        }
    }

    fn reply(code: u16) -> Option<Reply> {
        Some(Reply::new(code, None, "plugin's own"))
    }

    fn outcome(stage: Stage, steps: Vec<PluginStep>) -> StageOutcome {
        fold(stage, steps).0.outcome
    }

    const NOT_DATA: [Stage; 4] = [Stage::Connect, Stage::Helo, Stage::Mail, Stage::Rcpt];

    #[test]
    fn the_rcpt_chain_is_closed() {
        let denied = StageOutcome::Reject(Reply::relay_denied());
        assert_eq!(outcome(Stage::Rcpt, vec![]), denied);
        assert_eq!(outcome(Stage::Rcpt, vec![answer(StepAnswer::Next)]), denied);
        // A skipped fault vouches for nothing.
        assert_eq!(
            outcome(
                Stage::Rcpt,
                vec![answer(fault(OnError::Skip)), answer(StepAnswer::Next)]
            ),
            denied
        );
        assert_eq!(Reply::relay_denied().code, 554);
        assert_eq!(Reply::relay_denied().enhanced.as_deref(), Some("5.7.1"));
    }

    #[test]
    fn allow_vouches_and_the_chain_goes_on() {
        let mut fold = Fold::new(Stage::Rcpt);
        assert_eq!(fold.step(answer(StepAnswer::Allow)), Flow::Continue);
        assert_eq!(fold.step(answer(StepAnswer::Next)), Flow::Continue);
        assert_eq!(fold.finish().outcome, StageOutcome::Accept);
        // A later plugin still refuses a recipient another allowed.
        assert_eq!(
            outcome(
                Stage::Rcpt,
                vec![
                    answer(StepAnswer::Allow),
                    answer(StepAnswer::Reject(reply(550)))
                ]
            ),
            StageOutcome::Reject(Reply::new(550, None, "plugin's own"))
        );
    }

    #[test]
    fn accept_at_rcpt_lets_the_recipient_through_alone() {
        assert_eq!(
            outcome(Stage::Rcpt, vec![answer(StepAnswer::Accept)]),
            StageOutcome::Accept
        );
    }

    #[test]
    fn the_other_stages_accept_a_chain_without_a_terminal_verdict() {
        for stage in [Stage::Connect, Stage::Helo, Stage::Mail, Stage::Data] {
            assert_eq!(outcome(stage, vec![]), StageOutcome::Accept, "{stage}");
            assert_eq!(
                outcome(
                    stage,
                    vec![answer(StepAnswer::Next), answer(StepAnswer::Next)]
                ),
                StageOutcome::Accept,
                "{stage}"
            );
        }
    }

    #[test]
    fn the_first_terminal_verdict_wins_and_later_plugins_are_not_consulted() {
        let terminals = [
            (StepAnswer::Accept, StageOutcome::Accept),
            (
                StepAnswer::Reject(None),
                StageOutcome::Reject(default_reply::reject(Stage::Mail)),
            ),
            (
                StepAnswer::Tempfail(None),
                StageOutcome::Tempfail(default_reply::tempfail()),
            ),
            (
                StepAnswer::Disconnect(None),
                StageOutcome::Disconnect(default_reply::disconnect()),
            ),
        ];
        for (first, expected) in terminals {
            let steps = vec![
                answer(StepAnswer::Next),
                answer(first.clone()),
                answer(StepAnswer::Reject(reply(550))),
                answer(StepAnswer::Accept),
            ];
            let (decided, consulted) = fold(Stage::Mail, steps);
            assert_eq!(decided.outcome, expected, "{first:?}");
            assert_eq!(consulted, 2, "{first:?}");
        }
        // And the fold keeps its decision if handed more.
        let mut fold = Fold::new(Stage::Helo);
        assert_eq!(fold.step(answer(StepAnswer::Tempfail(None))), Flow::Stop);
        assert_eq!(fold.step(answer(StepAnswer::Accept)), Flow::Stop);
        assert_eq!(
            fold.finish().outcome,
            StageOutcome::Tempfail(default_reply::tempfail())
        );
    }

    #[test]
    fn shadow_answers_are_never_applied() {
        for stage in Stage::ALL {
            let steps = vec![
                shadow(StepAnswer::Reject(reply(550))),
                shadow(StepAnswer::Tempfail(None)),
                shadow(StepAnswer::Disconnect(None)),
                shadow(StepAnswer::Discard),
                shadow(StepAnswer::Quarantine("spam".into())),
                shadow(fault(OnError::Reject)),
                shadow(fault(OnError::Tempfail)),
                PluginStep {
                    shadow: true,
                    ..edits(StepAnswer::Next, "X-Shadow")
                },
                answer(StepAnswer::Accept),
            ];
            let (decided, consulted) = fold(stage, steps);
            assert_eq!(decided.outcome, StageOutcome::Accept, "{stage}");
            assert_eq!(decided.modifications, vec![], "{stage}");
            assert_eq!(consulted, 9, "{stage}");
        }
        // A shadow allow does not open the rcpt chain, nor a shadow accept.
        for vouch in [StepAnswer::Allow, StepAnswer::Accept] {
            assert_eq!(
                outcome(Stage::Rcpt, vec![shadow(vouch)]),
                StageOutcome::Reject(Reply::relay_denied())
            );
        }
    }

    #[test]
    fn discard_and_quarantine_decide_only_at_data() {
        assert_eq!(
            outcome(Stage::Data, vec![answer(StepAnswer::Discard)]),
            StageOutcome::Discard
        );
        assert_eq!(
            outcome(
                Stage::Data,
                vec![answer(StepAnswer::Quarantine("spam".into()))]
            ),
            StageOutcome::Quarantine("spam".into())
        );
        for stage in NOT_DATA {
            for misplaced in [StepAnswer::Discard, StepAnswer::Quarantine("spam".into())] {
                let mut fold = Fold::new(stage);
                assert_eq!(fold.step(answer(misplaced.clone())), Flow::Misplaced);
                // Taken as next: the chain goes on, and its end rule applies.
                assert_eq!(fold.step(answer(StepAnswer::Allow)), Flow::Continue);
                assert_eq!(fold.finish().outcome, StageOutcome::Accept, "{stage}");
            }
        }
        // A misplaced verdict vouches for nothing at rcpt.
        assert_eq!(
            outcome(
                Stage::Rcpt,
                vec![answer(StepAnswer::Discard), answer(StepAnswer::Next)]
            ),
            StageOutcome::Reject(Reply::relay_denied())
        );
    }

    #[test]
    fn a_fault_follows_the_plugins_on_error() {
        for stage in Stage::ALL {
            let (decided, consulted) = fold(
                stage,
                vec![answer(fault(OnError::Tempfail)), answer(StepAnswer::Accept)],
            );
            assert_eq!(
                decided.outcome,
                StageOutcome::Tempfail(default_reply::plugin_fault()),
                "{stage}"
            );
            assert_eq!(consulted, 1);
            let (decided, consulted) = fold(
                stage,
                vec![answer(fault(OnError::Reject)), answer(StepAnswer::Accept)],
            );
            assert_eq!(
                decided.outcome,
                StageOutcome::Reject(default_reply::reject(stage)),
                "{stage}"
            );
            assert_eq!(consulted, 1);
            // Skip: as if the plugin were not in the chain.
            let (decided, consulted) = fold(
                stage,
                vec![answer(fault(OnError::Skip)), answer(StepAnswer::Accept)],
            );
            assert_eq!(decided.outcome, StageOutcome::Accept, "{stage}");
            assert_eq!(consulted, 2);
        }
        let fault_reply = default_reply::plugin_fault();
        assert_eq!(
            (fault_reply.code, fault_reply.enhanced.as_deref()),
            (451, Some("4.3.0"))
        );
        assert_eq!(default_reply::reject(Stage::Connect).code, 554);
        assert_eq!(default_reply::reject(Stage::Rcpt).code, 550);
    }

    #[test]
    fn a_reply_of_the_wrong_class_is_replaced_by_the_standard_one() {
        let stage = Stage::Rcpt;
        let cases = [
            (
                StepAnswer::Reject(reply(250)),
                StageOutcome::Reject(default_reply::reject(stage)),
            ),
            (
                StepAnswer::Reject(reply(451)),
                StageOutcome::Reject(default_reply::reject(stage)),
            ),
            (
                StepAnswer::Reject(None),
                StageOutcome::Reject(default_reply::reject(stage)),
            ),
            (
                StepAnswer::Tempfail(reply(550)),
                StageOutcome::Tempfail(default_reply::tempfail()),
            ),
            (
                StepAnswer::Tempfail(reply(250)),
                StageOutcome::Tempfail(default_reply::tempfail()),
            ),
            (
                StepAnswer::Disconnect(reply(450)),
                StageOutcome::Disconnect(default_reply::disconnect()),
            ),
            (
                StepAnswer::Disconnect(reply(250)),
                StageOutcome::Disconnect(default_reply::disconnect()),
            ),
            (
                StepAnswer::Disconnect(reply(600)),
                StageOutcome::Disconnect(default_reply::disconnect()),
            ),
            // The right class keeps the plugin's reply.
            (
                StepAnswer::Reject(reply(554)),
                StageOutcome::Reject(reply(554).unwrap()),
            ),
            (
                StepAnswer::Tempfail(reply(452)),
                StageOutcome::Tempfail(reply(452).unwrap()),
            ),
            (
                StepAnswer::Disconnect(reply(421)),
                StageOutcome::Disconnect(reply(421).unwrap()),
            ),
            (
                StepAnswer::Disconnect(reply(550)),
                StageOutcome::Disconnect(reply(550).unwrap()),
            ),
        ];
        for (given, expected) in cases {
            assert_eq!(
                outcome(stage, vec![answer(given.clone())]),
                expected,
                "{given:?}"
            );
        }
    }

    #[test]
    fn modifications_are_collected_up_to_the_deciding_plugin() {
        let (decided, consulted) = fold(
            Stage::Data,
            vec![
                edits(StepAnswer::Next, "X-First"),
                edits(StepAnswer::Allow, "X-Second"),
                edits(StepAnswer::Accept, "X-Decider"),
                edits(StepAnswer::Next, "X-Never"),
            ],
        );
        assert_eq!(decided.outcome, StageOutcome::Accept);
        assert_eq!(
            decided.modifications,
            vec![header("X-First"), header("X-Second"), header("X-Decider")]
        );
        assert_eq!(consulted, 3);
        // A chain that runs out keeps every applied plugin's changes.
        let (decided, _) = fold(
            Stage::Data,
            vec![
                edits(StepAnswer::Next, "X-First"),
                answer(fault(OnError::Skip)),
                edits(StepAnswer::Next, "X-Last"),
            ],
        );
        assert_eq!(decided.outcome, StageOutcome::Accept);
        assert_eq!(
            decided.modifications,
            vec![header("X-First"), header("X-Last")]
        );
        // A fault that ends the stage carries none.
        for on_error in [OnError::Tempfail, OnError::Reject] {
            let (decided, _) = fold(
                Stage::Data,
                vec![edits(StepAnswer::Next, "X-First"), answer(fault(on_error))],
            );
            assert_eq!(decided.modifications, vec![], "{on_error:?}");
        }
    }
}
