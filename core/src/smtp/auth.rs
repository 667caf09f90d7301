//! The SASL exchange of SMTP AUTH (RFC 4954) for PLAIN (RFC 4616) and
//! LOGIN, sans-IO: the session hands over the AUTH command and then each
//! client line, and gets back the next step: a `334` challenge with the
//! state to continue from, the credentials to check, or a failure reply.
//! Checking the credentials is the caller's business.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::reply::Reply;

/// Mechanisms offered in EHLO, in order of preference.
pub const MECHANISMS: &str = "PLAIN LOGIN";

/// Decoded credentials from a finished exchange.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password, not even in a debug log.
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// An exchange waiting for the client's next line. Each state holds only
/// what it needs; a response consumes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchange {
    /// PLAIN without initial response: after `334 `.
    PlainResponse,
    /// LOGIN: after `334 VXNlcm5hbWU6` ("Username:").
    LoginUsername,
    /// LOGIN: after `334 UGFzc3dvcmQ6` ("Password:").
    LoginPassword { username: String },
}

/// What to do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send the reply (a 334 challenge) and feed the next line to the state.
    Continue(Exchange, Reply),
    /// Check these credentials.
    Done(Credentials),
    /// The exchange is over; send the reply.
    Failed(Reply),
}

const USERNAME_CHALLENGE: &str = "VXNlcm5hbWU6";
const PASSWORD_CHALLENGE: &str = "UGFzc3dvcmQ6";

/// Starts an exchange from `AUTH mechanism [initial-response]` (mechanism
/// uppercased by the parser; `=` is an empty initial response).
pub fn start(mechanism: &str, initial: Option<&str>) -> Step {
    match (mechanism, initial) {
        ("PLAIN", None) => Step::Continue(Exchange::PlainResponse, Reply::auth_challenge("")),
        ("PLAIN", Some(initial)) => plain(initial.as_bytes()),
        ("LOGIN", None) => Step::Continue(
            Exchange::LoginUsername,
            Reply::auth_challenge(USERNAME_CHALLENGE),
        ),
        // Some clients send the user name with AUTH LOGIN.
        ("LOGIN", Some(initial)) => Exchange::LoginUsername.respond(initial.as_bytes()),
        _ => Step::Failed(Reply::auth_mechanism_unsupported()),
    }
}

impl Exchange {
    /// Feeds one client line (without CRLF).
    pub fn respond(self, line: &[u8]) -> Step {
        if line == b"*" {
            return Step::Failed(Reply::auth_cancelled());
        }
        match self {
            Exchange::PlainResponse => plain(line),
            Exchange::LoginUsername => match decode_text(line) {
                Some(username) if !username.is_empty() => Step::Continue(
                    Exchange::LoginPassword { username },
                    Reply::auth_challenge(PASSWORD_CHALLENGE),
                ),
                _ => Step::Failed(Reply::auth_bad_response()),
            },
            Exchange::LoginPassword { username } => match decode_text(line) {
                Some(password) => Step::Done(Credentials { username, password }),
                None => Step::Failed(Reply::auth_bad_response()),
            },
        }
    }
}

/// `[authzid] NUL authcid NUL passwd` (RFC 4616 §2). Acting as another
/// identity (an authzid different from the authcid) is not supported and
/// fails like bad credentials.
fn plain(response: &[u8]) -> Step {
    let Some(message) = decode(response) else {
        return Step::Failed(Reply::auth_bad_response());
    };
    let mut parts = message.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(passwd), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Step::Failed(Reply::auth_bad_response());
    };
    let (Ok(authzid), Ok(username), Ok(password)) = (
        std::str::from_utf8(authzid),
        std::str::from_utf8(authcid),
        std::str::from_utf8(passwd),
    ) else {
        return Step::Failed(Reply::auth_bad_response());
    };
    if username.is_empty() {
        return Step::Failed(Reply::auth_bad_response());
    }
    if !authzid.is_empty() && !authzid.eq_ignore_ascii_case(username) {
        return Step::Failed(Reply::auth_failed());
    }
    Step::Done(Credentials {
        username: username.to_owned(),
        password: password.to_owned(),
    })
}

/// Base64 of a response; `=` is the empty response (RFC 4954 §4).
fn decode(response: &[u8]) -> Option<Vec<u8>> {
    let response = response.trim_ascii();
    if response == b"=" {
        return Some(Vec::new());
    }
    STANDARD.decode(response).ok()
}

/// A base64 response that must be UTF-8 text without NUL.
fn decode_text(response: &[u8]) -> Option<String> {
    let bytes = decode(response)?;
    let text = String::from_utf8(bytes).ok()?;
    (!text.contains('\0')).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> String {
        STANDARD.encode(s)
    }

    fn creds(u: &str, p: &str) -> Step {
        Step::Done(Credentials {
            username: u.into(),
            password: p.into(),
        })
    }

    fn code(step: &Step) -> (u16, String) {
        match step {
            Step::Continue(_, r) | Step::Failed(r) => {
                (r.code, r.enhanced.clone().unwrap_or_default())
            }
            Step::Done(_) => (0, String::new()),
        }
    }

    #[test]
    fn plain_with_initial_response() {
        let initial = b64(b"\0alice\0s3cret pass");
        assert_eq!(
            start("PLAIN", Some(&initial)),
            creds("alice", "s3cret pass")
        );
        let initial = b64(b"alice\0alice\0pw");
        assert_eq!(start("PLAIN", Some(&initial)), creds("alice", "pw"));
    }

    #[test]
    fn plain_after_challenge() {
        let Step::Continue(state, reply) = start("PLAIN", None) else {
            panic!("expected a challenge")
        };
        assert_eq!(reply.to_bytes(), b"334 \r\n");
        assert_eq!(
            state.respond(b64(b"\0bob\0pw").as_bytes()),
            creds("bob", "pw")
        );
    }

    #[test]
    fn login_two_challenges() {
        let Step::Continue(state, reply) = start("LOGIN", None) else {
            panic!("expected a challenge")
        };
        assert_eq!(reply.to_bytes(), b"334 VXNlcm5hbWU6\r\n");
        let Step::Continue(state, reply) = state.respond(b64(b"carol").as_bytes()) else {
            panic!("expected a challenge")
        };
        assert_eq!(reply.to_bytes(), b"334 UGFzc3dvcmQ6\r\n");
        assert_eq!(state.respond(b64(b"pw").as_bytes()), creds("carol", "pw"));
    }

    #[test]
    fn login_with_initial_user_name() {
        let Step::Continue(state, _) = start("LOGIN", Some(&b64(b"dave"))) else {
            panic!("expected the password challenge")
        };
        assert_eq!(
            state,
            Exchange::LoginPassword {
                username: "dave".into()
            }
        );
    }

    #[test]
    fn cancel_bad_base64_and_malformed() {
        assert_eq!(
            code(&Exchange::PlainResponse.respond(b"*")),
            (501, "5.0.0".into())
        );
        assert_eq!(
            code(&Exchange::LoginUsername.respond(b"*")),
            (501, "5.0.0".into())
        );
        assert_eq!(
            code(&Exchange::PlainResponse.respond(b"!!!notbase64")),
            (501, "5.5.2".into())
        );
        // No NUL separators.
        assert_eq!(
            code(&Exchange::PlainResponse.respond(b64(b"alice pw").as_bytes())),
            (501, "5.5.2".into())
        );
        // Empty response.
        assert_eq!(code(&start("PLAIN", Some("="))), (501, "5.5.2".into()));
        // Invalid UTF-8 user name.
        assert_eq!(
            code(&Exchange::LoginUsername.respond(b64(b"\xff\xfe").as_bytes())),
            (501, "5.5.2".into())
        );
    }

    #[test]
    fn proxy_authorization_is_refused_and_unknown_mechanisms() {
        let initial = b64(b"root\0alice\0pw");
        assert_eq!(code(&start("PLAIN", Some(&initial))), (535, "5.7.8".into()));
        assert_eq!(code(&start("CRAM-MD5", None)), (504, "5.5.4".into()));
    }

    #[test]
    fn credentials_debug_hides_the_password() {
        let c = Credentials {
            username: "alice".into(),
            password: "hunter2-secret".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
