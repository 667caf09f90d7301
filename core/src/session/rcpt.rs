//! RCPT (RFC 5321 §4.1.1.3): a recipient joins the transaction when the
//! recipient limit and the rcpt stage of the pipeline let it (the rcpt
//! chain is closed: some plugin must vouch for it). Every refusal of the
//! stage counts toward the session's error limit.

use super::state::State;
use super::{Flow, Session, SessionStream};
use crate::pipeline::{HookArg, MailboxArg};
use crate::smtp::address::{Domain, ForwardPath, Mailbox};
use crate::smtp::reply::Reply;
use sluice_spool::RecipientDsn;

impl<S: SessionStream> Session<S> {
    /// RCPT inside a transaction (the dispatch answers the other states).
    pub(super) async fn rcpt(&mut self, forward_path: ForwardPath, dsn: RecipientDsn) -> Flow {
        let so_far = self.state.transaction().map_or(0, |t| t.recipients.len());
        if so_far >= self.ctx.config.server.max_recipients {
            return self.reply(Reply::too_many_recipients());
        }
        let argument = self.mailbox_arg(&forward_path.0);
        let address = format!(
            "{}@{}",
            quote_local_part(&argument.local_part),
            argument.domain
        );
        let outcome = self
            .run_stage(HookArg::Rcpt(&argument), Some(address.clone()))
            .await;
        if let Some(flow) = self.refused(outcome) {
            // A refused recipient is a client error (as in Postfix): one
            // connection cannot probe for valid addresses without limit.
            self.errors += 1;
            return flow;
        }
        match &mut self.state {
            State::Mail(_, transaction) => {
                transaction.keep_recipient_dsn(&address, dsn);
                transaction.recipients.push(address);
                self.reply(Reply::recipient_ok())
            }
            // The rcpt stage cannot change the state.
            _ => self.error(Reply::bad_sequence()),
        }
    }

    /// The plugin view of a mailbox. `<postmaster>` (RFC 5321 §4.5.1) is
    /// the postmaster of our first local domain.
    pub(super) fn mailbox_arg(&self, mailbox: &Mailbox) -> MailboxArg {
        let domain = match &mailbox.domain {
            Domain::Name(name) => name.clone(),
            Domain::Literal(std::net::IpAddr::V4(ip)) => format!("[{ip}]"),
            Domain::Literal(std::net::IpAddr::V6(ip)) => format!("[IPv6:{ip}]"),
            Domain::None => self
                .ctx
                .config
                .domains
                .local
                .first()
                .cloned()
                .unwrap_or_else(|| self.hostname().to_owned()),
        };
        MailboxArg {
            local_part: mailbox.local_part.clone(),
            domain,
        }
    }
}

/// Re-quotes a local part that is not a valid dot-string, so the stored
/// address reads back as the same mailbox.
fn quote_local_part(local: &str) -> String {
    let atext = |c: char| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii();
    let dot_string = !local.is_empty()
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.chars().all(|c| c == '.' || atext(c));
    if dot_string {
        local.to_owned()
    } else {
        let mut quoted = String::with_capacity(local.len() + 2);
        quoted.push('"');
        for c in local.chars() {
            if c == '"' || c == '\\' {
                quoted.push('\\');
            }
            quoted.push(c);
        }
        quoted.push('"');
        quoted
    }
}

#[cfg(test)]
mod tests {
    use super::quote_local_part;

    #[test]
    fn local_parts_are_quoted_only_when_needed() {
        assert_eq!(quote_local_part("bob.smith"), "bob.smith");
        assert_eq!(quote_local_part("bob smith"), "\"bob smith\"");
        assert_eq!(quote_local_part("a\"b"), "\"a\\\"b\"");
        assert_eq!(quote_local_part(".bob"), "\".bob\"");
        assert_eq!(quote_local_part("bö"), "bö");
    }
}
