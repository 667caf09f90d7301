//! The admin API's bearer token: read once from `[admin] token_file`
//! (which nobody but its owner may open), and compared in constant time
//! with what a TCP request presents. `assets` reads it at start; `guard`
//! asks it whether a request's `Authorization` matches.

use std::path::Path;

use ring::digest;

use crate::private_file::{self, PrivateFileError};

/// Shortest token accepted: a guessable token is no lock.
const MIN_TOKEN_LENGTH: usize = 16;
/// Longest token accepted (it travels in a request header).
const MAX_TOKEN_LENGTH: usize = 4096;

/// Why a token file is refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Unreadable, not a regular file, or open to group or others.
    #[error(transparent)]
    File(#[from] PrivateFileError),
    #[error(
        "{} holds no usable token: expected one line of {MIN_TOKEN_LENGTH} to \
         {MAX_TOKEN_LENGTH} visible ASCII characters", path.display()
    )]
    Malformed { path: std::path::PathBuf },
}

/// The token that unlocks the whole admin API over TCP. Only its digest is
/// kept: comparing digests takes the same time whatever the presented
/// value's length or content.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// Reads the token from its file: one line (a final newline is
    /// dropped), a regular file that only its owner may open.
    pub fn read(path: &Path) -> Result<AdminToken, TokenError> {
        let text = private_file::read(path, MAX_TOKEN_LENGTH as u64 + 2, "the admin token")?;
        let token = text.strip_suffix(b"\n").unwrap_or(&text);
        let token = token.strip_suffix(b"\r").unwrap_or(token);
        AdminToken::new(token).ok_or_else(|| TokenError::Malformed {
            path: path.to_owned(),
        })
    }

    /// A token from its text; None unless it is long enough and made of
    /// visible ASCII (what an `Authorization` header can carry).
    pub fn new(token: &[u8]) -> Option<AdminToken> {
        let usable = (MIN_TOKEN_LENGTH..=MAX_TOKEN_LENGTH).contains(&token.len())
            && token.iter().all(u8::is_ascii_graphic);
        usable.then(|| AdminToken {
            digest: sha256(token),
        })
    }

    /// Whether `presented` is the token, in time independent of where (or
    /// whether) it differs.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let other = sha256(presented);
        let difference = self
            .digest
            .iter()
            .zip(other.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(difference) == 0
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const TOKEN: &str = "0123456789abcdef-secret";

    fn token_file(dir: &Path, text: &str, mode: u32) -> std::path::PathBuf {
        let path = dir.join("admin.token");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn reads_one_line_and_matches_only_it() {
        let dir = tempfile::tempdir().unwrap();
        let token =
            AdminToken::read(&token_file(dir.path(), &format!("{TOKEN}\n"), 0o600)).unwrap();
        assert!(token.matches(TOKEN.as_bytes()));
        assert!(!token.matches(format!("{TOKEN}\n").as_bytes()));
        assert!(!token.matches(&TOKEN.as_bytes()[..TOKEN.len() - 1]));
        assert!(!token.matches(b""));
        assert!(!token.matches(TOKEN.to_uppercase().as_bytes()));
        assert_eq!(format!("{token:?}"), "AdminToken(..)");
        let token = AdminToken::read(&token_file(dir.path(), TOKEN, 0o400)).unwrap();
        assert!(token.matches(TOKEN.as_bytes()));
    }

    #[test]
    fn refuses_a_file_others_may_open() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o640, 0o604, 0o620, 0o644, 0o660] {
            let path = token_file(dir.path(), TOKEN, mode);
            let err = AdminToken::read(&path).unwrap_err();
            assert!(
                matches!(err, TokenError::File(PrivateFileError::Exposed { .. })),
                "{mode:o}: {err}"
            );
            let text = err.to_string();
            assert!(
                text.contains(&format!("mode 0{mode:o}")) && text.contains("chmod 600"),
                "{text}"
            );
        }
    }

    #[test]
    fn refuses_short_or_unprintable_tokens_symlinks_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        for text in [
            "",
            "\n",
            "short\n",
            "with a space in it\n",
            "two\nlines-of-token-text\n",
        ] {
            let path = token_file(dir.path(), text, 0o600);
            let err = AdminToken::read(&path).unwrap_err();
            assert!(
                matches!(err, TokenError::Malformed { .. }),
                "{text:?}: {err}"
            );
        }
        let target = token_file(dir.path(), TOKEN, 0o600);
        let link = dir.path().join("link.token");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(
            AdminToken::read(&link),
            Err(TokenError::File(PrivateFileError::Io { .. }))
        ));
        let err = AdminToken::read(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().starts_with("cannot read "), "{err}");
    }
}
