//! A milter element of a chain: one milter connection per SMTP session,
//! opened on the element's first call and reused by every transaction of
//! the session. A milter expects every step in order (connect, helo, mail,
//! each rcpt, then the message), but the element sits only in the stages
//! it is configured for: a call first sends the steps the milter has not
//! seen yet from the session record (so a milter only in `data` still
//! gets connect, helo, mail and the recipients), then the stage's own.
//!
//! Its answers become verdicts: continue and accept go on to the next
//! element (a milter never vouches for a recipient, so it cannot open a
//! relay); an accept also leaves the milter out for the rest of the
//! transaction (at connect, of the session). Reject, tempfail and a reply
//! code are refusals with the milter's text; discard drops the message at
//! data; a connection failure closes the session. End-of-message changes
//! become modifications; a quarantine turns an accept into sluice's
//! quarantine with the milter's reason.
//!
//! Any failure (no connection, a timeout, a protocol error) is a fault:
//! the element's `on_error` decides, and the connection is dropped; the
//! next call opens a new one and replays the steps.

use std::net::SocketAddr;
use std::time::Duration;

use super::bindings::wit_types as wit;
use super::fault::PluginFault;
use super::message::MessageResource;
use super::session::{HookArg, SessionInfo};
use super::verdict::Modification;
use crate::metrics::METRICS;
use crate::milter::{
    header, wire, BodyAnswer, Change, MacroValues, MilterAddress, MilterClient, MilterError,
    ReplyText, Verdict,
};

/// How far a milter's accept reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accepted {
    Transaction,
    Session,
}

/// The state of one milter for one SMTP session.
#[derive(Default)]
pub struct MilterSession {
    client: Option<MilterClient>,
    connected: bool,
    /// The HELO name the milter was given.
    helo: Option<String>,
    /// MAIL was sent and no end of message or abort has closed it.
    in_transaction: bool,
    /// The transaction ended without end of message: ABORT goes before
    /// the next step.
    abort_pending: bool,
    recipients: Vec<String>,
    accepted: Option<Accepted>,
    /// The milter discarded the message before data.
    discard: bool,
}

/// What the element answered, in the chain's terms.
pub(super) type MilterAnswer = (wit::Verdict, Vec<Modification>);

impl MilterSession {
    /// The transaction is over (RSET, a new EHLO, end of the data stage).
    pub fn end_transaction(&mut self) {
        if self.in_transaction {
            self.abort_pending = true;
        }
        self.in_transaction = false;
        self.recipients.clear();
        self.discard = false;
        if self.accepted == Some(Accepted::Transaction) {
            self.accepted = None;
        }
    }

    /// The session is over: QUIT, without waiting for anything.
    pub fn close(&mut self) {
        if let Some(client) = self.client.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = client.quit().await;
                });
            }
        }
    }

    pub(super) async fn call(
        &mut self,
        name: &str,
        address: &MilterAddress,
        timeout: Duration,
        hostname: &str,
        info: &SessionInfo,
        arg: &HookArg<'_>,
    ) -> Result<MilterAnswer, PluginFault> {
        if matches!(arg, HookArg::Mail(_)) {
            self.end_transaction();
        }
        if self.accepted.is_some() {
            return Ok((wit::Verdict::Next, Vec::new()));
        }
        if self.discard {
            return Ok((discard_at(arg), Vec::new()));
        }
        let result = self.exchange(address, timeout, hostname, info, arg).await;
        if let Some(client) = &mut self.client {
            METRICS
                .milter_round_trips
                .add(&[name], client.take_round_trips());
        }
        if matches!(arg, HookArg::Data(_)) {
            self.end_transaction();
        }
        match result {
            Ok(answer) => Ok(answer),
            Err(e) => {
                // The milter's view of the session is unknown now: start over.
                self.reset_connection();
                Err(match e {
                    // Counted with the other deadlines (`kind="timeout"`).
                    MilterError::Timeout(waited) => PluginFault::Deadline {
                        backstop: Some(waited),
                    },
                    other => PluginFault::Milter(other.to_string()),
                })
            }
        }
    }

    fn reset_connection(&mut self) {
        self.client = None;
        self.connected = false;
        self.helo = None;
        self.in_transaction = false;
        self.abort_pending = false;
        self.recipients.clear();
    }

    async fn exchange(
        &mut self,
        address: &MilterAddress,
        timeout: Duration,
        hostname: &str,
        info: &SessionInfo,
        arg: &HookArg<'_>,
    ) -> Result<MilterAnswer, MilterError> {
        let mut macros = session_macros(hostname, info);
        if self.client.is_none() {
            let client = MilterClient::open(address, timeout).await?;
            let negotiated = client.negotiated();
            tracing::debug!(
                milter = %address,
                session = %info.id,
                version = negotiated.version,
                actions = format_args!("{:#x}", negotiated.actions),
                steps = format_args!("{:#x}", negotiated.steps),
                "milter connection negotiated"
            );
            self.client = Some(client);
        }
        if !self.connected {
            let name = info
                .reverse_name
                .clone()
                .unwrap_or_else(|| format!("[{}]", info.client_ip));
            let peer = SocketAddr::new(info.client_ip, info.client_port);
            let verdict = self.client()?.connect(&macros, &name, Some(peer)).await?;
            self.connected = true;
            if let Some(answer) = self.settle(verdict, Accepted::Session, arg) {
                return Ok(answer);
            }
        }
        if matches!(arg, HookArg::Connect) {
            return Ok((wit::Verdict::Next, Vec::new()));
        }
        let helo = match arg {
            HookArg::Helo(name) => Some((*name).to_owned()),
            _ => info.helo.clone(),
        };
        if let Some(name) = helo.filter(|h| self.helo.as_ref() != Some(h)) {
            let verdict = self.client()?.helo(&macros, &name).await?;
            self.helo = Some(name);
            if let Some(answer) = self.settle(verdict, Accepted::Session, arg) {
                return Ok(answer);
            }
        }
        if matches!(arg, HookArg::Helo(_)) {
            return Ok((wit::Verdict::Next, Vec::new()));
        }
        if self.abort_pending {
            self.client()?.abort().await?;
            self.abort_pending = false;
        }
        if !self.in_transaction {
            let sender = match arg {
                HookArg::Mail(Some(mailbox)) => {
                    format!("{}@{}", mailbox.local_part, mailbox.domain)
                }
                HookArg::Mail(None) => String::new(),
                _ => info.reverse_path.clone().unwrap_or_default(),
            };
            macros.set("mail_addr", sender.clone());
            let verdict = self.client()?.mail(&macros, &sender).await?;
            self.in_transaction = true;
            if let Some(answer) = self.settle(verdict, Accepted::Transaction, arg) {
                return Ok(answer);
            }
        }
        if matches!(arg, HookArg::Mail(_)) {
            return Ok((wit::Verdict::Next, Vec::new()));
        }
        let mut recipients: Vec<String> = info.recipients.clone();
        if let HookArg::Rcpt(mailbox) = arg {
            recipients = vec![format!("{}@{}", mailbox.local_part, mailbox.domain)];
        }
        for rcpt in recipients {
            if self.recipients.contains(&rcpt) {
                continue;
            }
            macros.set("rcpt_addr", rcpt.clone());
            let verdict = self.client()?.rcpt(&macros, &rcpt).await?;
            self.recipients.push(rcpt);
            if let Some(answer) = self.settle(verdict, Accepted::Transaction, arg) {
                return Ok(answer);
            }
        }
        let HookArg::Data(message) = arg else {
            return Ok((wit::Verdict::Next, Vec::new()));
        };
        let (verdict, changes) = send_message(self.client()?, &macros, message).await?;
        // End of message closes the transaction for the milter.
        self.in_transaction = false;
        match verdict {
            // The changes come with an accept or continue only.
            Verdict::Continue | Verdict::Accept => changes_answer(changes),
            refused => Ok(self
                .settle(refused, Accepted::Transaction, arg)
                .unwrap_or((wit::Verdict::Next, Vec::new()))),
        }
    }

    fn client(&mut self) -> Result<&mut MilterClient, MilterError> {
        self.client
            .as_mut()
            .ok_or_else(|| MilterError::Protocol("no connection".into()))
    }

    /// A step's verdict: `None` to go on to the next step, or the answer.
    fn settle(
        &mut self,
        verdict: Verdict,
        scope: Accepted,
        arg: &HookArg<'_>,
    ) -> Option<MilterAnswer> {
        let refusal = |v: wit::Verdict| Some((v, Vec::new()));
        match verdict {
            Verdict::Continue => None,
            Verdict::Accept => {
                self.accepted = Some(scope);
                Some((wit::Verdict::Next, Vec::new()))
            }
            Verdict::Reject(reply) => refusal(wit::Verdict::Reject(reply.map(wit_reply))),
            Verdict::Tempfail(reply) => refusal(wit::Verdict::Tempfail(reply.map(wit_reply))),
            Verdict::Disconnect => refusal(wit::Verdict::Disconnect(None)),
            Verdict::Discard => {
                self.discard = true;
                refusal(discard_at(arg))
            }
        }
    }
}

/// Discard means something at data only; before, it is remembered and the
/// stage goes on.
fn discard_at(arg: &HookArg<'_>) -> wit::Verdict {
    match arg {
        HookArg::Data(_) => wit::Verdict::Discard,
        _ => wit::Verdict::Next,
    }
}

/// DATA, the header fields, end of headers, the body in chunks (until the
/// milter has seen enough), end of message.
async fn send_message(
    client: &mut MilterClient,
    macros: &MacroValues,
    message: &MessageResource,
) -> Result<(Verdict, Vec<Change>), MilterError> {
    let verdict = client.data(macros).await?;
    if verdict != Verdict::Continue {
        return Ok((verdict, Vec::new()));
    }
    let head = message.head();
    for (name, value) in header::fields(head) {
        let verdict = client.header(&name, &value).await?;
        if verdict != Verdict::Continue {
            return Ok((verdict, Vec::new()));
        }
    }
    let verdict = client.end_of_headers(macros).await?;
    if verdict != Verdict::Continue {
        return Ok((verdict, Vec::new()));
    }
    if client.wants_body() {
        let mut offset = head.len() as u64;
        while offset < message.size() {
            let chunk = message
                .read(offset, wire::BODY_CHUNK as u32)
                .map_err(|e| MilterError::Io(std::io::Error::other(e.to_string())))?;
            if chunk.is_empty() {
                break;
            }
            offset += chunk.len() as u64;
            match client.body(&chunk).await? {
                BodyAnswer::Skip => break,
                BodyAnswer::Verdict(Verdict::Continue) => {}
                BodyAnswer::Verdict(verdict) => return Ok((verdict, Vec::new())),
            }
        }
    }
    client.end_of_message(macros).await
}

/// End-of-message changes as modifications; a quarantine makes the
/// verdict.
fn changes_answer(changes: Vec<Change>) -> Result<MilterAnswer, MilterError> {
    let mut verdict = wit::Verdict::Next;
    let mut modifications = Vec::new();
    for change in changes {
        match change {
            Change::AddHeader { name, value } => {
                modifications.push(Modification::AppendHeader { name, value })
            }
            // sluice inserts at the top of the header section only.
            Change::InsertHeader { name, value, .. } => {
                modifications.push(Modification::PrependHeader { name, value })
            }
            // sluice edits every field of a name at once: a change replaces
            // them all with the one value, an empty value removes them.
            Change::ChangeHeader { name, value, .. } => {
                modifications.push(Modification::RemoveHeader(name.clone()));
                if !value.is_empty() {
                    modifications.push(Modification::AppendHeader { name, value });
                }
            }
            Change::AddRecipient(rcpt) => modifications.push(Modification::AddRecipient(rcpt)),
            Change::DeleteRecipient(rcpt) => {
                modifications.push(Modification::RemoveRecipient(rcpt))
            }
            Change::ChangeSender(sender) => modifications.push(Modification::ChangeSender(sender)),
            Change::ReplaceBody(_) => {
                return Err(MilterError::Protocol(
                    "replacing the body is not supported".into(),
                ))
            }
            Change::Quarantine(reason) => verdict = wit::Verdict::Quarantine(reason),
        }
    }
    Ok((verdict, modifications))
}

fn wit_reply(reply: ReplyText) -> wit::Reply {
    wit::Reply {
        code: reply.code,
        enhanced: reply.enhanced,
        text: reply.text,
    }
}

/// The macros sluice knows for the session so far.
fn session_macros(hostname: &str, info: &SessionInfo) -> MacroValues {
    let mut macros = MacroValues::default();
    macros.set("j", hostname);
    macros.set("daemon_name", info.listener.clone());
    macros.set("client_addr", info.client_ip.to_string());
    macros.set("client_port", info.client_port.to_string());
    let name = info.reverse_name.clone();
    macros.set(
        "client_name",
        name.clone().unwrap_or_else(|| "unknown".into()),
    );
    macros.set(
        "_",
        format!(
            "{} [{}]",
            name.unwrap_or_else(|| "unknown".into()),
            info.client_ip
        ),
    );
    // The session id: the queue id is not known before the message is
    // stored.
    macros.set("i", info.id.clone());
    if let Some(tls) = &info.tls {
        macros.set("tls_version", tls.version.clone());
        macros.set("cipher", tls.cipher.clone());
    }
    if let Some(user) = &info.authenticated_user {
        macros.set("auth_authen", user.clone());
    }
    if let Some(sender) = &info.reverse_path {
        macros.set("mail_addr", sender.clone());
    }
    macros
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, value: &str) -> (String, String) {
        (name.to_owned(), value.to_owned())
    }

    #[test]
    fn end_of_message_changes_become_modifications() {
        let (name, value) = header("X-Spam", "Yes");
        let (verdict, modifications) = changes_answer(vec![
            Change::AddHeader {
                name: name.clone(),
                value: value.clone(),
            },
            Change::InsertHeader {
                index: 0,
                name: "DKIM-Signature".into(),
                value: "v=1".into(),
            },
            Change::ChangeHeader {
                index: 1,
                name: "Subject".into(),
                value: "[SPAM] hi".into(),
            },
            Change::ChangeHeader {
                index: 1,
                name: "X-Old".into(),
                value: String::new(),
            },
            Change::AddRecipient("copy@example.org".into()),
            Change::DeleteRecipient("a@example.org".into()),
            Change::ChangeSender("bounces@example.org".into()),
        ])
        .unwrap();
        assert!(matches!(verdict, wit::Verdict::Next));
        assert_eq!(
            modifications,
            vec![
                Modification::AppendHeader { name, value },
                Modification::PrependHeader {
                    name: "DKIM-Signature".into(),
                    value: "v=1".into()
                },
                Modification::RemoveHeader("Subject".into()),
                Modification::AppendHeader {
                    name: "Subject".into(),
                    value: "[SPAM] hi".into()
                },
                Modification::RemoveHeader("X-Old".into()),
                Modification::AddRecipient("copy@example.org".into()),
                Modification::RemoveRecipient("a@example.org".into()),
                Modification::ChangeSender("bounces@example.org".into()),
            ]
        );
    }

    #[test]
    fn a_quarantine_is_the_verdict_and_a_new_body_a_fault() {
        let (verdict, _) = changes_answer(vec![Change::Quarantine("virus".into())]).unwrap();
        assert!(matches!(verdict, wit::Verdict::Quarantine(reason) if reason == "virus"));
        assert!(changes_answer(vec![Change::ReplaceBody(b"x".to_vec())]).is_err());
    }

    #[test]
    fn verdicts_map_and_accept_leaves_the_milter_out() {
        let mut session = MilterSession::default();
        let rcpt = super::super::session::MailboxArg {
            local_part: "a".into(),
            domain: "example.org".into(),
        };
        let arg = HookArg::Rcpt(&rcpt);
        assert!(session
            .settle(Verdict::Continue, Accepted::Transaction, &arg)
            .is_none());
        let reply = ReplyText {
            code: 550,
            enhanced: Some("5.1.1".into()),
            text: "unknown".into(),
        };
        let Some((wit::Verdict::Reject(Some(r)), _)) =
            session.settle(Verdict::Reject(Some(reply)), Accepted::Transaction, &arg)
        else {
            panic!("not a reject");
        };
        assert_eq!((r.code, r.text.as_str()), (550, "unknown"));
        // Never a vouching "allow": a milter cannot open the relay.
        assert!(matches!(
            session.settle(Verdict::Accept, Accepted::Transaction, &arg),
            Some((wit::Verdict::Next, _))
        ));
        assert_eq!(session.accepted, Some(Accepted::Transaction));
        session.end_transaction();
        assert_eq!(session.accepted, None);
        // Discard before data is remembered for the data stage.
        assert!(matches!(
            session.settle(Verdict::Discard, Accepted::Transaction, &arg),
            Some((wit::Verdict::Next, _))
        ));
        assert!(session.discard);
    }
}
