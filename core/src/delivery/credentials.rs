//! What a route authenticates to its next hop with (a smarthost, as users
//! relay through a provider): a username and password read from the
//! route's `auth_file`, a file only its owner may open holding one line
//! `username:password` (split at the first colon, as Postfix's
//! `sasl_passwd`). The SMTP client sends them with AUTH PLAIN or LOGIN
//! (RFC 4954, RFC 4616), and only over verified TLS.

use std::path::{Path, PathBuf};

use base64::Engine;

use crate::private_file::{self, PrivateFileError};

/// Longest credentials file read.
const MAX_FILE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(transparent)]
    File(#[from] PrivateFileError),
    #[error(
        "{} holds no usable credentials: expected one line username:password \
         (UTF-8, no NUL or CR)", path.display()
    )]
    Malformed { path: PathBuf },
}

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    username: String,
    password: String,
}

// The password stays out of logs and debug output.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({:?}, ..)", self.username)
    }
}

impl Credentials {
    pub fn read(path: &Path) -> Result<Credentials, CredentialsError> {
        let text = private_file::read(path, MAX_FILE, "a route's credentials")?;
        let malformed = || CredentialsError::Malformed {
            path: path.to_owned(),
        };
        let text = String::from_utf8(text).map_err(|_| malformed())?;
        let line = text.strip_suffix('\n').unwrap_or(&text);
        let line = line.strip_suffix('\r').unwrap_or(line);
        Credentials::parse(line).ok_or_else(malformed)
    }

    /// `username:password`; None when either is empty or holds a character
    /// the SASL exchange cannot carry (NUL separates PLAIN's fields).
    pub fn parse(line: &str) -> Option<Credentials> {
        let (username, password) = line.split_once(':')?;
        let usable = |s: &str| !s.is_empty() && !s.contains(['\0', '\r', '\n']);
        (usable(username) && usable(password)).then(|| Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
        })
    }

    pub fn username(&self) -> &str {
        &self.username
    }

    /// AUTH PLAIN's initial response (RFC 4616): NUL, username, NUL,
    /// password, in base64; no authorization identity.
    pub fn plain(&self) -> String {
        let message = format!("\0{}\0{}", self.username, self.password);
        base64::engine::general_purpose::STANDARD.encode(message)
    }

    /// AUTH LOGIN's two answers: the username and the password in base64.
    pub fn login(&self) -> (String, String) {
        let b64 = base64::engine::general_purpose::STANDARD;
        (b64.encode(&self.username), b64.encode(&self.password))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn one_line_split_at_the_first_colon() {
        let c = Credentials::parse("relay@example.org:pa:ss word").unwrap();
        assert_eq!(c.username(), "relay@example.org");
        assert_eq!(c.plain(), "AHJlbGF5QGV4YW1wbGUub3JnAHBhOnNzIHdvcmQ=");
        assert_eq!(
            c.login(),
            ("cmVsYXlAZXhhbXBsZS5vcmc=".into(), "cGE6c3Mgd29yZA==".into())
        );
        assert!(!format!("{c:?}").contains("pa:ss"));
        for bad in ["nocolon", ":password", "user:", "us\0er:pw", "user:p\rw"] {
            assert!(Credentials::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_file_must_be_private_and_well_formed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("smarthost");
        std::fs::write(&path, "user:secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = Credentials::read(&path).unwrap_err();
        assert!(
            matches!(
                err,
                CredentialsError::File(PrivateFileError::Exposed { .. })
            ),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Credentials::read(&path).unwrap().username(), "user");
        std::fs::write(&path, "user-without-password\n").unwrap();
        let err = Credentials::read(&path).unwrap_err().to_string();
        assert!(err.contains("no usable credentials"), "{err}");
    }
}
