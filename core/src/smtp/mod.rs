//! Sans-IO SMTP protocol code: bytes in, typed values out, no sockets and no
//! async. The session (`crate::session`) reads from the socket, feeds
//! [`LineBuffer`] and [`DataReceiver`], parses lines with
//! [`parse_command`], and writes the [`Reply`] values it decides on.
//!
//! - [`auth`]: the SASL exchange of AUTH (PLAIN, LOGIN)
//! - [`line`]: command-line framing (CRLF, tolerated bare LF, 512 limit)
//! - [`command`]: one command line into a [`Command`]
//! - [`address`]: RFC 5321 paths and mailboxes
//! - [`dsn`]: the DSN parameters of MAIL and RCPT (RFC 3461), xtext
//! - [`data`]: the DATA receiver (end-of-data, unstuffing, smuggling
//!   defense) and `dot_stuff` for the client side
//! - [`reply`]: every reply sluice sends, with its codes
//! - [`received`]: trace headers and RFC 5322 dates
//! - [`submission`]: author addresses, Date and Message-ID for RFC 6409

pub mod address;
pub mod auth;
pub mod command;
pub mod data;
pub mod dsn;
pub mod line;
pub mod received;
pub mod reply;
pub mod submission;

pub use address::{AddressError, Domain, ForwardPath, Mailbox, ReversePath};
pub use command::{parse_command, parse_command_with, Body, Command, MailParams, ParseError};
pub use data::{dot_stuff, DataError, DataLimits, DataProgress, DataReceiver, DotStuffer};
pub use line::{Line, LineBuffer};
pub use received::{count_received, received_header, rfc5322_date};
pub use reply::Reply;
