//! Passwords: the policy `sluice user add|passwd` enforces (length, not a
//! common password, not the user name), argon2id hashing into PHC strings,
//! and verification. Hashing is deliberately slow; callers on the async
//! runtime run it with `spawn_blocking`.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use ring::rand::SecureRandom;

/// Passwords refused whatever their length, lower-cased, one per line
/// (`#` lines are comments).
const COMMON_PASSWORDS: &str = include_str!("../../../config/common-passwords.txt");

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("password is too short: {length} characters, at least {minimum} required")]
    TooShort { length: usize, minimum: usize },
    #[error("password is on the list of common passwords; choose another")]
    Common,
    #[error("password must not contain the user name")]
    ContainsName,
    #[error("password must not contain control characters or line breaks")]
    ControlCharacter,
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("no random salt available from the system")]
    Random,
    #[error("password hashing failed: {0}")]
    Argon2(String),
}

/// Checks a new password for `user` against the policy.
pub fn check_policy(user: &str, password: &str, min_length: usize) -> Result<(), PolicyError> {
    if password.chars().any(char::is_control) {
        return Err(PolicyError::ControlCharacter);
    }
    let length = password.chars().count();
    if length < min_length {
        return Err(PolicyError::TooShort {
            length,
            minimum: min_length,
        });
    }
    let lower = password.to_lowercase();
    if is_common(&lower) {
        return Err(PolicyError::Common);
    }
    let local = user.split('@').next().unwrap_or(user).to_lowercase();
    if local.chars().count() >= 3 && lower.contains(&local) {
        return Err(PolicyError::ContainsName);
    }
    Ok(())
}

fn is_common(lower: &str) -> bool {
    COMMON_PASSWORDS
        .lines()
        .filter(|l| !l.starts_with('#'))
        .any(|l| l == lower)
}

/// An argon2id PHC string (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`)
/// with a fresh 16-byte salt.
pub fn hash_password(password: &str) -> Result<String, HashError> {
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| HashError::Random)?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| HashError::Argon2(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| HashError::Argon2(e.to_string()))
}

/// Whether `password` matches the PHC string `hash`. A malformed hash
/// matches nothing.
pub fn verify_password(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash to verify against when the user does not exist, so an unknown
/// name costs as much time as a wrong password and does not reveal itself.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        hash_password("sluice dummy password for unknown users").unwrap_or_else(|_| {
            // Verification of a malformed hash fails fast, which only
            // matters if the system has no randomness at all.
            String::new()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("correct horse batterY", &hash));
        assert!(!verify_password("anything", "not a phc string"));
        assert_ne!(hash, hash_password("correct horse battery").unwrap());
    }

    #[test]
    fn policy() {
        assert_eq!(
            check_policy("alice", "short", 12),
            Err(PolicyError::TooShort {
                length: 5,
                minimum: 12
            })
        );
        // On the embedded list, whatever the case.
        assert_eq!(
            check_policy("alice", "QWERTY123456", 12),
            Err(PolicyError::Common)
        );
        assert_eq!(
            check_policy("alice", "1q2w3e4r5t6y", 12),
            Err(PolicyError::Common)
        );
        assert_eq!(
            check_policy("alice@example.org", "xx-Alice-2024-yy", 12),
            Err(PolicyError::ContainsName)
        );
        assert_eq!(
            check_policy("bob", "tab\there-and-long", 12),
            Err(PolicyError::ControlCharacter)
        );
        assert_eq!(check_policy("bob", "plum-orbit-window-47", 12), Ok(()));
        // Length counts characters, not bytes.
        assert!(check_policy("bob", "ééééééééééé", 12).is_err());
    }

    #[test]
    fn common_list_is_embedded() {
        let entries = COMMON_PASSWORDS
            .lines()
            .filter(|l| !l.starts_with('#'))
            .count();
        assert!(entries >= 5000, "{entries}");
        assert!(is_common("password"));
    }
}
