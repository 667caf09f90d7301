//! The MTA side of the Sendmail milter protocol (version 6, as libmilter
//! and Postfix speak it), so existing milters (rspamd, clamav-milter,
//! OpenDKIM…) judge sluice's SMTP stages.
//!
//! - `wire`: packets and their fields
//! - `negotiate`: option negotiation (actions, protocol steps, macro lists)
//! - `macros`: the macros sent before each command
//! - `reply`: the milter's answers, decoded
//! - `header`: header fields in the form milters get them
//! - `client`: one milter connection, step by step, each step bounded
//!
//! The pipeline element that feeds it from the stages is
//! `pipeline::milter`.

pub mod client;
pub mod header;
pub mod macros;
pub mod negotiate;
pub mod reply;
pub mod wire;

use std::path::PathBuf;
use std::time::Duration;

pub use client::{BodyAnswer, MilterClient};
pub use macros::MacroValues;
pub use reply::{Change, ReplyText, Verdict};

/// Where a milter listens: `inet:HOST:PORT` or `unix:/PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MilterAddress {
    Inet { host: String, port: u16 },
    Unix(PathBuf),
}

impl MilterAddress {
    /// Parses the part after `milter:` (`inet:127.0.0.1:11332`,
    /// `inet:[::1]:8891`, `unix:/run/milter.sock`).
    pub fn parse(text: &str) -> Result<MilterAddress, String> {
        let usage = || format!("{text:?} is not \"inet:HOST:PORT\" or \"unix:/PATH\"");
        if let Some(path) = text.strip_prefix("unix:") {
            if !path.starts_with('/') || path.len() < 2 {
                return Err(usage());
            }
            return Ok(MilterAddress::Unix(PathBuf::from(path)));
        }
        let target = text.strip_prefix("inet:").ok_or_else(usage)?;
        let (host, port) = target.rsplit_once(':').ok_or_else(usage)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(usage)?;
        if host.is_empty() || host.contains(['/', ' ']) {
            return Err(usage());
        }
        Ok(MilterAddress::Inet {
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for MilterAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MilterAddress::Inet { host, port } if host.contains(':') => {
                write!(f, "inet:[{host}]:{port}")
            }
            MilterAddress::Inet { host, port } => write!(f, "inet:{host}:{port}"),
            MilterAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MilterError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("connection: {0}")]
    Io(std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("protocol: {0}")]
    Protocol(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print() {
        for (text, parsed) in [
            (
                "inet:127.0.0.1:11332",
                MilterAddress::Inet {
                    host: "127.0.0.1".into(),
                    port: 11332,
                },
            ),
            (
                "inet:[::1]:8891",
                MilterAddress::Inet {
                    host: "::1".into(),
                    port: 8891,
                },
            ),
            (
                "unix:/run/milter.sock",
                MilterAddress::Unix("/run/milter.sock".into()),
            ),
        ] {
            assert_eq!(MilterAddress::parse(text).unwrap(), parsed);
            assert_eq!(parsed.to_string(), text);
        }
        for bad in [
            "",
            "inet:",
            "inet:host",
            "inet:host:0",
            "inet:host:99999",
            "inet::25",
            "unix:",
            "unix:relative.sock",
            "tcp:host:25",
        ] {
            assert!(MilterAddress::parse(bad).is_err(), "{bad}");
        }
    }
}
