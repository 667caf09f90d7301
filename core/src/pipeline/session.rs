//! What plugins are told about the SMTP session: the host-side record the
//! session driver keeps up to date and the chain converts for each call.

use std::net::IpAddr;

use super::message::MessageResource;
use super::verdict::Stage;

/// The session as plugins see it (WIT `session`).
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: String,
    pub client_ip: IpAddr,
    pub client_port: u16,
    pub listener: String,
    pub reverse_name: Option<String>,
    pub helo: Option<String>,
    pub tls: Option<TlsInfo>,
    pub authenticated_user: Option<String>,
    /// "" for the null reverse-path; None before MAIL.
    pub reverse_path: Option<String>,
    pub recipients: Vec<String>,
}

pub use crate::tls::TlsInfo;

/// A mailbox handed to `on-mail` / `on-rcpt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxArg {
    pub local_part: String,
    pub domain: String,
}

/// The argument of a hook call.
pub enum HookArg<'a> {
    Connect,
    Helo(&'a str),
    Mail(Option<&'a MailboxArg>),
    Rcpt(&'a MailboxArg),
    Data(&'a MessageResource),
}

impl HookArg<'_> {
    pub fn stage(&self) -> Stage {
        match self {
            HookArg::Connect => Stage::Connect,
            HookArg::Helo(_) => Stage::Helo,
            HookArg::Mail(_) => Stage::Mail,
            HookArg::Rcpt(_) => Stage::Rcpt,
            HookArg::Data(_) => Stage::Data,
        }
    }
}
