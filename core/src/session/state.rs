//! Where a session stands in the SMTP dialogue (RFC 5321 §4.1.4), and the
//! envelope of the open transaction. Each state holds only what is valid
//! in it, so "RCPT before MAIL" is a `match` arm of the verb, not a flag
//! checked by hand:
//!
//! ```text
//! Connected --HELO/EHLO--> Greeted --MAIL--> Mail --DATA (consumes the
//!     ^                     |   ^              |     transaction)--> Greeted
//!     |                     |   +----RSET------+
//!     +------STARTTLS-------+   +--AUTH--> Sasl --last line--> Greeted
//! ```
//!
//! HELO/EHLO in any state starts over as `Greeted`; STARTTLS returns to
//! `Connected` (RFC 3207 §4.2). The authenticated user and the TLS
//! parameters belong to the connection, not to a state: they survive
//! transactions and are forgotten only by STARTTLS.

use crate::smtp::address::ReversePath;
use crate::smtp::auth::Exchange;

pub enum State {
    /// Before HELO/EHLO, and again after STARTTLS.
    Connected,
    /// After HELO/EHLO, outside a mail transaction.
    Greeted(Greeting),
    /// An AUTH exchange waiting for the client's next line: every line is
    /// a SASL response, never a command.
    Sasl(Greeting, Exchange),
    /// Inside a mail transaction: after MAIL, until DATA ends it or RSET,
    /// HELO/EHLO or STARTTLS drops it.
    Mail(Greeting, Transaction),
}

/// What HELO/EHLO established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// The name the client gave.
    pub helo: String,
    /// EHLO (as opposed to HELO): ESMTP replies and Received protocol.
    pub esmtp: bool,
}

/// The open mail transaction: the envelope, in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub reverse_path: ReversePath,
    /// Accepted recipients, as stored in the spool (`local@domain`, the
    /// local part re-quoted when needed).
    pub recipients: Vec<String>,
    /// MAIL carried SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
}

impl Transaction {
    /// The reverse-path as plugins and the spool see it: "" for `<>`.
    pub fn sender(&self) -> String {
        match &self.reverse_path {
            ReversePath::Null => String::new(),
            ReversePath::Mailbox(mailbox) => mailbox.to_string(),
        }
    }
}

impl State {
    pub fn greeting(&self) -> Option<&Greeting> {
        match self {
            State::Connected => None,
            State::Greeted(g) | State::Sasl(g, _) | State::Mail(g, _) => Some(g),
        }
    }

    pub fn transaction(&self) -> Option<&Transaction> {
        match self {
            State::Mail(_, transaction) => Some(transaction),
            _ => None,
        }
    }

    /// The state name, for logs and tests.
    pub fn name(&self) -> &'static str {
        match self {
            State::Connected => "connected",
            State::Greeted(_) => "greeted",
            State::Sasl(..) => "sasl",
            State::Mail(..) => "mail",
        }
    }

    /// Ends the transaction or SASL exchange, if any (RSET, end of DATA):
    /// a greeted session stays greeted.
    pub fn reset(&mut self) {
        let state = std::mem::replace(self, State::Connected);
        *self = match state {
            State::Connected => State::Connected,
            State::Greeted(g) | State::Sasl(g, _) | State::Mail(g, _) => State::Greeted(g),
        };
    }

    /// Takes the open transaction, leaving the session greeted (DATA).
    pub fn take_transaction(&mut self) -> Option<Transaction> {
        match std::mem::replace(self, State::Connected) {
            State::Mail(g, transaction) => {
                *self = State::Greeted(g);
                Some(transaction)
            }
            other => {
                *self = other;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greeting() -> Greeting {
        Greeting {
            helo: "client.example".into(),
            esmtp: true,
        }
    }

    fn transaction() -> Transaction {
        Transaction {
            reverse_path: ReversePath::Null,
            recipients: vec!["a@localhost".into()],
            smtputf8: false,
        }
    }

    #[test]
    fn reset_keeps_the_greeting_and_drops_the_transaction() {
        let mut state = State::Mail(greeting(), transaction());
        state.reset();
        assert_eq!(state.name(), "greeted");
        assert_eq!(state.greeting(), Some(&greeting()));
        assert!(state.transaction().is_none());
        let mut state = State::Connected;
        state.reset();
        assert_eq!(state.name(), "connected");
    }

    #[test]
    fn taking_the_transaction_leaves_the_session_greeted() {
        let mut state = State::Mail(greeting(), transaction());
        assert_eq!(state.take_transaction(), Some(transaction()));
        assert_eq!(state.name(), "greeted");
        assert_eq!(state.take_transaction(), None);
        assert_eq!(state.name(), "greeted");
        let mut state = State::Connected;
        assert_eq!(state.take_transaction(), None);
        assert_eq!(state.name(), "connected");
    }

    #[test]
    fn the_null_sender_is_empty() {
        assert_eq!(transaction().sender(), "");
    }
}
