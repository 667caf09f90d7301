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
use sluice_spool::{DsnEnvelope, RecipientDsn};

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
    /// The DSN parameters (RFC 3461), when MAIL or a RCPT gave some:
    /// boxed, as most transactions have none.
    pub dsn: Option<Box<TransactionDsn>>,
}

/// The DSN parameters of a transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransactionDsn {
    /// MAIL's RET and ENVID.
    pub envelope: DsnEnvelope,
    /// NOTIFY and ORCPT of the recipients that gave them, by address: a
    /// recipient a plugin added has none, one it removed takes its own
    /// along.
    pub recipients: Vec<(String, RecipientDsn)>,
}

impl Transaction {
    /// The reverse-path as plugins and the spool see it: "" for `<>`.
    pub fn sender(&self) -> String {
        match &self.reverse_path {
            ReversePath::Null => String::new(),
            ReversePath::Mailbox(mailbox) => mailbox.to_string(),
        }
    }

    /// MAIL's RET and ENVID, for the spool.
    pub fn dsn_envelope(&self) -> DsnEnvelope {
        self.dsn
            .as_ref()
            .map(|dsn| dsn.envelope.clone())
            .unwrap_or_default()
    }

    /// Keeps a recipient's NOTIFY and ORCPT, if it gave any.
    pub fn keep_recipient_dsn(&mut self, address: &str, dsn: RecipientDsn) {
        if !dsn.is_empty() {
            let kept = self.dsn.get_or_insert_with(Default::default);
            kept.recipients.push((address.to_owned(), dsn));
        }
    }

    /// Each recipient's DSN parameters, in recipient order, for the spool.
    pub fn recipient_dsn(&self) -> Vec<RecipientDsn> {
        let Some(kept) = self.dsn.as_ref().filter(|d| !d.recipients.is_empty()) else {
            return Vec::new();
        };
        self.recipients
            .iter()
            .map(|address| {
                kept.recipients
                    .iter()
                    .find(|(a, _)| a == address)
                    .map(|(_, dsn)| dsn.clone())
                    .unwrap_or_default()
            })
            .collect()
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

    /// Greeted → Mail: opens `transaction` (MAIL). In any other state it is
    /// handed back and the state is unchanged.
    pub fn open_transaction(&mut self, transaction: Transaction) -> Result<(), Transaction> {
        match std::mem::replace(self, State::Connected) {
            State::Greeted(g) => {
                *self = State::Mail(g, transaction);
                Ok(())
            }
            other => {
                *self = other;
                Err(transaction)
            }
        }
    }

    /// Greeted → Sasl: an AUTH exchange waits for the client's next line.
    /// False, the state unchanged, in any other state.
    pub fn await_sasl(&mut self, exchange: Exchange) -> bool {
        match std::mem::replace(self, State::Connected) {
            State::Greeted(g) => {
                *self = State::Sasl(g, exchange);
                true
            }
            other => {
                *self = other;
                false
            }
        }
    }

    /// Sasl → Greeted: takes the exchange waiting for a response; None,
    /// the state unchanged, in any other state.
    pub fn take_sasl(&mut self) -> Option<Exchange> {
        match std::mem::replace(self, State::Connected) {
            State::Sasl(g, exchange) => {
                *self = State::Greeted(g);
                Some(exchange)
            }
            other => {
                *self = other;
                None
            }
        }
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
            dsn: None,
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
    fn transitions_from_the_wrong_state_change_nothing() {
        let mut state = State::Connected;
        assert_eq!(state.open_transaction(transaction()), Err(transaction()));
        assert!(!state.await_sasl(Exchange::PlainResponse));
        assert_eq!(state.take_sasl(), None);
        assert_eq!(state.name(), "connected");
        let mut state = State::Mail(greeting(), transaction());
        assert!(!state.await_sasl(Exchange::PlainResponse));
        assert_eq!(state.transaction(), Some(&transaction()));
    }

    #[test]
    fn mail_and_sasl_go_through_greeted() {
        let mut state = State::Greeted(greeting());
        assert_eq!(state.open_transaction(transaction()), Ok(()));
        assert_eq!(state.name(), "mail");
        state.reset();
        assert!(state.await_sasl(Exchange::LoginUsername));
        assert_eq!(state.name(), "sasl");
        assert_eq!(state.take_sasl(), Some(Exchange::LoginUsername));
        assert_eq!(state.name(), "greeted");
    }

    #[test]
    fn recipient_dsn_follows_the_recipients_by_address() {
        let never = RecipientDsn {
            notify: Some(sluice_spool::Notify::default()),
            orcpt: None,
        };
        let mut t = transaction();
        assert!(t.recipient_dsn().is_empty());
        t.recipients = vec!["b@localhost".into(), "a@localhost".into()];
        t.keep_recipient_dsn("a@localhost", never.clone());
        t.keep_recipient_dsn("b@localhost", RecipientDsn::default());
        // "b" stands for a recipient a plugin added: it has none.
        assert_eq!(t.recipient_dsn(), vec![RecipientDsn::default(), never]);
    }

    #[test]
    fn the_null_sender_is_empty() {
        assert_eq!(transaction().sender(), "");
    }
}
