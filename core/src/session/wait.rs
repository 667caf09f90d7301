//! How long a session waits on its client. Every read and write of the
//! session happens in steps that end at [`Wait::step_end`]; after a step
//! that brought nothing, [`Wait::expired`] says whether to give up. A wait
//! has a timeout since the client last made progress, may have a deadline
//! for a whole phase (DATA), and is cut into slices of
//! `command_under_load`, so that load arriving while a client stalls
//! shortens the wait too (Postfix's stress mode). A client that stalls on
//! purpose so costs one session for a bounded time, never a slot forever.

use std::time::Duration;

use tokio::time::Instant;

/// Where a client stalled, when a wait on it expired: the `phase` of the
/// timeout metric and log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// Idle between commands.
    Command,
    /// Too slow sending the message text.
    Data,
    /// Not reading its replies.
    Write,
    /// Not finishing the TLS handshake.
    TlsHandshake,
}

impl Stall {
    pub fn as_str(self) -> &'static str {
        match self {
            Stall::Command => "command",
            Stall::Data => "data",
            Stall::Write => "write",
            Stall::TlsHandshake => "tls_handshake",
        }
    }
}

/// One wait on the client: plain values, checked by the session between
/// the steps of a read or a write.
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    /// How long the client may make no progress.
    idle: Duration,
    /// The longest step: the timeout under load.
    slice: Duration,
    /// The end of the whole phase, whatever the progress.
    deadline: Option<Instant>,
    /// When the client last made progress (or the wait began).
    since: Instant,
}

impl Wait {
    /// A wait of `idle` without progress, or of `under_load` once the
    /// server is under load.
    pub fn new(idle: Duration, under_load: Duration) -> Wait {
        Wait {
            idle,
            slice: under_load.min(idle),
            deadline: None,
            since: Instant::now(),
        }
    }

    /// The same wait, ending at `deadline` at the latest.
    pub fn until(self, deadline: Instant) -> Wait {
        Wait {
            deadline: Some(deadline),
            ..self
        }
    }

    /// When the next step gives up: the end of a slice, of the idle
    /// timeout or of the deadline, whichever comes first.
    pub fn step_end(&self) -> Instant {
        let end = (self.since + self.idle).min(Instant::now() + self.slice);
        self.deadline.map_or(end, |deadline| end.min(deadline))
    }

    /// The client made progress: the idle timeout starts over.
    pub fn progressed(&mut self) {
        self.since = Instant::now();
    }

    /// Whether the deadline of the phase has passed. Checked after
    /// progress too: a client that trickles bytes never stalls a step.
    pub fn overdue(&self) -> bool {
        self.deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// After a step that brought nothing: whether the wait is over. Under
    /// load one slice without progress is enough.
    pub fn expired(&self, under_load: bool) -> bool {
        under_load || Instant::now() >= self.since + self.idle || self.overdue()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn a_wait_is_cut_into_slices_and_ends_at_its_idle_timeout() {
        let wait = Wait::new(30 * SECOND, 10 * SECOND);
        let start = Instant::now();
        assert_eq!(wait.step_end(), start + 10 * SECOND);
        tokio::time::advance(10 * SECOND).await;
        assert!(!wait.expired(false));
        assert!(wait.expired(true), "one slice is enough under load");
        tokio::time::advance(15 * SECOND).await;
        assert_eq!(wait.step_end(), start + 30 * SECOND);
        tokio::time::advance(5 * SECOND).await;
        assert!(wait.expired(false));
    }

    #[tokio::test(start_paused = true)]
    async fn progress_restarts_the_idle_timeout_but_not_the_deadline() {
        let start = Instant::now();
        let mut wait = Wait::new(10 * SECOND, 10 * SECOND).until(start + 25 * SECOND);
        for _ in 0..2 {
            tokio::time::advance(9 * SECOND).await;
            wait.progressed();
            assert!(!wait.expired(false));
            assert!(!wait.overdue());
        }
        assert_eq!(wait.step_end(), start + 25 * SECOND);
        tokio::time::advance(7 * SECOND).await;
        assert!(wait.overdue());
        assert!(wait.expired(false));
    }
}
