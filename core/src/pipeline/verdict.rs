//! Host-side verdicts: what a stage of the pipeline decided, in the server's
//! own types. The stage's fold (`fold.rs`) turns the plugins' answers into
//! one [`StageOutcome`]; the SMTP session turns it into a reply.

use crate::smtp::reply::Reply;

/// The SMTP stages a plugin can hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Connect,
    Helo,
    Mail,
    Rcpt,
    Data,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Connect,
        Stage::Helo,
        Stage::Mail,
        Stage::Rcpt,
        Stage::Data,
    ];

    /// The hook name a plugin author knows (`on-rcpt` is "rcpt").
    pub fn name(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Helo => "helo",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What one stage decided for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageOutcome {
    /// Go on: the command succeeds.
    Accept,
    /// Permanent refusal with this (5xx) reply.
    Reject(Reply),
    /// Temporary refusal with this (4xx) reply.
    Tempfail(Reply),
    /// Send this reply and close the connection.
    Disconnect(Reply),
    /// Data stage: answer 250 and drop the message.
    Discard,
    /// Data stage: answer 250 and hold the message with this reason.
    Quarantine(String),
}

/// A change to the message or envelope asked for by a data-stage plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modification {
    PrependHeader {
        name: String,
        value: String,
    },
    AppendHeader {
        name: String,
        value: String,
    },
    RemoveHeader(String),
    AddRecipient(String),
    RemoveRecipient(String),
    /// A new envelope sender ("" for the null reverse-path), from a milter.
    ChangeSender(String),
}

/// The data stage's outcome plus the modifications the chain collected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataOutcome {
    pub outcome: StageOutcome,
    pub modifications: Vec<Modification>,
}

/// Standard replies for verdicts that came without one, or with one of the
/// wrong class.
pub(crate) mod default_reply {
    use super::Stage;
    use crate::smtp::reply::Reply;

    pub fn reject(stage: Stage) -> Reply {
        match stage {
            // RFC 5321 §3.1: a server refusing service at connect says 554.
            Stage::Connect => Reply::new(554, Some("5.7.1"), "Service refused by policy"),
            _ => Reply::new(550, Some("5.7.1"), "Rejected by policy"),
        }
    }

    pub fn tempfail() -> Reply {
        Reply::new(
            451,
            Some("4.7.1"),
            "Temporarily refused by policy, try again later",
        )
    }

    pub fn disconnect() -> Reply {
        Reply::new(421, Some("4.7.0"), "Closing connection by policy")
    }

    /// What a plugin fault costs the session under `on_error = "tempfail"`.
    pub fn plugin_fault() -> Reply {
        Reply::new(
            451,
            Some("4.3.0"),
            "Temporary filter failure, try again later",
        )
    }
}
