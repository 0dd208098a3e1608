//! Password files in Mosquitto's format: one `user:hash` per line, `#` comments.
//!
//! Hashes, as `mosquitto_passwd` writes them (Mosquitto 2.0: `src/password_mosq.c`,
//! `security_default.c`):
//! - `$7$<iterations>$<base64 salt>$<base64 hash>`: PBKDF2-HMAC-SHA512 of the password with
//!   the salt, 64 bytes of output. `mosquitto_passwd` writes a 12-byte salt and 101
//!   iterations; Mosquitto 2.0 reads a salt of 12 or 64 bytes and any iteration count >= 1.
//! - `$6$<base64 salt>$<base64 hash>`: SHA-512 of the password followed by the salt (old
//!   files), read only.
//!
//! Base64 is the standard alphabet with padding, on one line. Mosquitto drops a line it cannot
//! decode and loads the rest; ringmq refuses the whole file instead, naming the line, so that a
//! broken file never silently locks users out (and a SIGHUP reload keeps the previous table).
//!
//! Comparison is constant-time ([`subtle`]); an unknown user name is checked against a dummy
//! hash of the default cost, so the answer takes as long as for a known one.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// `mosquitto_passwd`'s default iteration count for `$7$` (Mosquitto 2.0).
pub const DEFAULT_ITERATIONS: u32 = 101;
/// The salt `mosquitto_passwd` writes, in bytes.
pub const SALT_BYTES: usize = 12;
/// SHA-512's output: every hash in the file has this many bytes.
pub const HASH_BYTES: usize = 64;
/// The largest iteration count accepted: beyond it one verification would take seconds.
pub const ITERATIONS_MAX: u32 = 10_000_000;

/// One user's stored hash.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// `$6$`: SHA-512(password || salt).
    Sha512 { salt: Box<[u8]>, hash: [u8; HASH_BYTES] },
    /// `$7$`: PBKDF2-HMAC-SHA512(password, salt, iterations).
    Pbkdf2Sha512 { iterations: u32, salt: Box<[u8]>, hash: [u8; HASH_BYTES] },
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print hashes (logs end up in places the password file does not).
        match self {
            Self::Sha512 { .. } => f.write_str("$6$..."),
            Self::Pbkdf2Sha512 { iterations, .. } => write!(f, "$7${iterations}$..."),
        }
    }
}

impl PasswordHash {
    /// A new `$7$` hash of `password` with a fresh random salt.
    pub fn create(password: &[u8], iterations: u32) -> Result<Self, String> {
        if !(1..=ITERATIONS_MAX).contains(&iterations) {
            return Err(format!("iterations must be 1..={ITERATIONS_MAX}, not {iterations}"));
        }
        let mut salt = [0u8; SALT_BYTES];
        getrandom::fill(&mut salt).map_err(|error| format!("no random salt: {error}"))?;
        Ok(Self::with_salt(password, &salt, iterations))
    }

    /// A `$7$` hash with a given salt (for tests and reproducible files).
    pub fn with_salt(password: &[u8], salt: &[u8], iterations: u32) -> Self {
        let mut hash = [0u8; HASH_BYTES];
        pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut hash);
        Self::Pbkdf2Sha512 { iterations, salt: salt.into(), hash }
    }

    /// Parses a hash field (`$7$...` or `$6$...`).
    pub fn parse(field: &str) -> Result<Self, String> {
        let mut parts = field.split('$');
        if parts.next() != Some("") {
            return Err(
                "a hash starts with `$6$` or `$7$` (plain-text passwords are not read)".into()
            );
        }
        match parts.next() {
            Some("7") => {
                let iterations = parts.next().ok_or("missing iteration count")?;
                let iterations: u32 = iterations
                    .parse()
                    .map_err(|_| format!("bad iteration count {iterations:?}"))?;
                if !(1..=ITERATIONS_MAX).contains(&iterations) {
                    return Err(format!("iteration count {iterations} outside 1..={ITERATIONS_MAX}"));
                }
                let (salt, hash) = salt_and_hash(&mut parts)?;
                Ok(Self::Pbkdf2Sha512 { iterations, salt, hash })
            }
            Some("6") => {
                let (salt, hash) = salt_and_hash(&mut parts)?;
                Ok(Self::Sha512 { salt, hash })
            }
            Some(other) => Err(format!(
                "unsupported hash type `${other}$` (ringmq reads $6$ and $7$; argon2id is not supported)"
            )),
            None => Err("empty hash".into()),
        }
    }

    /// Whether `password` matches, compared in constant time.
    pub fn verify(&self, password: &[u8]) -> bool {
        let mut computed = [0u8; HASH_BYTES];
        let stored = match self {
            Self::Sha512 { salt, hash } => {
                let mut digest = Sha512::new();
                digest.update(password);
                digest.update(salt);
                computed.copy_from_slice(&digest.finalize());
                hash
            }
            Self::Pbkdf2Sha512 { iterations, salt, hash } => {
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut computed);
                hash
            }
        };
        bool::from(computed.ct_eq(stored))
    }

    /// The PBKDF2 iteration count (1 for `$6$`): what one verification costs, relatively.
    pub fn iterations(&self) -> u32 {
        match self {
            Self::Sha512 { .. } => 1,
            Self::Pbkdf2Sha512 { iterations, .. } => *iterations,
        }
    }

    /// The hash field as `mosquitto_passwd` writes it.
    pub fn encode(&self) -> String {
        match self {
            Self::Sha512 { salt, hash } => {
                format!("$6${}${}", BASE64.encode(salt), BASE64.encode(hash))
            }
            Self::Pbkdf2Sha512 { iterations, salt, hash } => {
                format!("$7${iterations}${}${}", BASE64.encode(salt), BASE64.encode(hash))
            }
        }
    }
}

fn salt_and_hash<'a>(
    parts: &mut impl Iterator<Item = &'a str>,
) -> Result<(Box<[u8]>, [u8; HASH_BYTES]), String> {
    let salt = parts.next().ok_or("missing salt")?;
    let salt = BASE64.decode(salt).map_err(|error| format!("salt is not base64: {error}"))?;
    // Mosquitto 2.0 accepts exactly these two salt sizes.
    if salt.len() != SALT_BYTES && salt.len() != HASH_BYTES {
        return Err(format!("salt of {} bytes (12 or 64 expected)", salt.len()));
    }
    let hash = parts.next().ok_or("missing hash")?;
    let hash = BASE64.decode(hash).map_err(|error| format!("hash is not base64: {error}"))?;
    let hash: [u8; HASH_BYTES] = hash
        .try_into()
        .map_err(|hash: Vec<u8>| format!("hash of {} bytes (64 expected)", hash.len()))?;
    if parts.next().is_some() {
        return Err("trailing `$` fields after the hash".into());
    }
    Ok((salt.into_boxed_slice(), hash))
}

/// What a password check found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Checked {
    Valid,
    /// The user is listed and the password does not match.
    WrongPassword,
    /// The user is not listed (a dummy hash was checked, for equal timing).
    UnknownUser,
}

/// A parsed password file: user name -> hash.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PasswordFile {
    users: HashMap<Box<str>, PasswordHash>,
}

impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile").field("users", &self.users.len()).finish()
    }
}

impl PasswordFile {
    /// Parses a file's text. Errors name the 1-based line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut users = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let Some((user, hash)) =
                parse_line(line).map_err(|error| format!("line {}: {error}", index + 1))?
            else {
                continue;
            };
            // As in Mosquitto, a repeated user name: the last line wins.
            users.insert(user.into(), hash);
        }
        Ok(Self { users })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn get(&self, user: &str) -> Option<&PasswordHash> {
        self.users.get(user)
    }

    /// Checks `password` for `user`; an unknown user costs a dummy verification.
    pub fn check(&self, user: &str, password: &[u8]) -> Checked {
        match self.users.get(user) {
            Some(hash) if hash.verify(password) => Checked::Valid,
            Some(_) => Checked::WrongPassword,
            None => {
                let _ = dummy_hash().verify(password);
                Checked::UnknownUser
            }
        }
    }

    /// The largest iteration count of any entry (the worst verification cost).
    pub fn iterations_max(&self) -> u32 {
        self.users.values().map(PasswordHash::iterations).max().unwrap_or(0)
    }
}

/// One line: `None` for a blank or comment line.
fn parse_line(line: &str) -> Result<Option<(&str, PasswordHash)>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (user, rest) = line.split_once(':').ok_or("no `:` between user name and hash")?;
    let user = user.trim();
    if user.is_empty() {
        return Err("empty user name".into());
    }
    let hash = PasswordHash::parse(rest.trim())?;
    Ok(Some((user, hash)))
}

/// A hash of the default cost that no password matches in practice, for unknown users.
fn dummy_hash() -> &'static PasswordHash {
    static DUMMY: OnceLock<PasswordHash> = OnceLock::new();
    DUMMY.get_or_init(|| {
        PasswordHash::with_salt(b"ringmq-no-such-user", &[0x5a; SALT_BYTES], DEFAULT_ITERATIONS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by Debian's mosquitto_passwd 2.0.11 (`mosquitto_passwd -c -b pw alice secret`).
    const ALICE: &str = "alice:$7$101$is0A2sT3WhhvKIGQ$Sv+joLLvKEAcr0VMzF7YpZn/HT6Axr0kFpFtoxZsRLts5PFyVusfLUQ4cNffus38+CLpIxwxpphglvh5gkFC0w==";

    #[test]
    fn a_mosquitto_passwd_line_verifies_its_password_and_no_other() {
        let file = PasswordFile::parse(ALICE).unwrap();
        assert_eq!(file.check("alice", b"secret"), Checked::Valid);
        assert_eq!(file.check("alice", b"Secret"), Checked::WrongPassword);
        assert_eq!(file.check("alice", b""), Checked::WrongPassword);
        assert_eq!(file.check("bob", b"secret"), Checked::UnknownUser);
    }

    #[test]
    fn pbkdf2_sha512_matches_the_rfc_style_vector() {
        // PBKDF2-HMAC-SHA512("password", "salt", 1), first 16 bytes (RFC 6070 style vector
        // for SHA-512, as published with the Python/OpenSSL test suites).
        let hash = PasswordHash::with_salt(b"password", b"salt", 1);
        let PasswordHash::Pbkdf2Sha512 { hash, .. } = hash else { unreachable!() };
        assert_eq!(
            hash[..16],
            [
                0x86, 0x7f, 0x70, 0xcf, 0x1a, 0xde, 0x02, 0xcf, 0xf3, 0x75, 0x25, 0x99, 0xa3, 0xa5,
                0x3d, 0xc4
            ]
        );
    }

    #[test]
    fn sha512_salted_hashes_verify() {
        let salt = [7u8; SALT_BYTES];
        let mut digest = Sha512::new();
        digest.update(b"hunter2");
        digest.update(salt);
        let line = format!("old:$6${}${}", BASE64.encode(salt), BASE64.encode(digest.finalize()));
        let file = PasswordFile::parse(&line).unwrap();
        assert_eq!(file.check("old", b"hunter2"), Checked::Valid);
        assert_eq!(file.check("old", b"hunter3"), Checked::WrongPassword);
        assert_eq!(file.get("old").unwrap().iterations(), 1);
    }

    #[test]
    fn encode_and_parse_round_trip() {
        let hash = PasswordHash::create(b"pw", 7).unwrap();
        let text = hash.encode();
        assert!(text.starts_with("$7$7$"), "{text}");
        assert_eq!(PasswordHash::parse(&text).unwrap(), hash);
        assert!(hash.verify(b"pw") && !hash.verify(b"pW"));
    }

    #[test]
    fn comments_blank_lines_and_spaces_are_skipped() {
        let text = format!("# users\n\n   \n  {ALICE}  \n");
        let file = PasswordFile::parse(&text).unwrap();
        assert_eq!(file.len(), 1);
        assert_eq!(file.iterations_max(), 101);
    }

    #[test]
    fn broken_lines_are_refused_with_their_line_number() {
        for (text, expected) in [
            ("alice", "line 1: no `:`"),
            ("# c\nalice:secret", "line 2: a hash starts with"),
            (":$7$101$AAAA$BBBB", "line 1: empty user name"),
            ("a:$8$x", "line 1: unsupported hash type `$8$`"),
            ("a:$7$0$is0A2sT3WhhvKIGQ$AAAA", "iteration count 0"),
            ("a:$7$x$is0A2sT3WhhvKIGQ$AAAA", "bad iteration count"),
            ("a:$7$101$AAAA$AAAA", "salt of 3 bytes"),
            ("a:$7$101$is0A2sT3WhhvKIGQ$AAAA", "hash of 3 bytes"),
            ("a:$7$101$is0A2sT3WhhvKIGQ$!!", "hash is not base64"),
        ] {
            let error = PasswordFile::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn the_last_line_for_a_user_wins() {
        let first = PasswordHash::with_salt(b"one", &[1; 12], 2).encode();
        let second = PasswordHash::with_salt(b"two", &[2; 12], 2).encode();
        let file = PasswordFile::parse(&format!("u:{first}\nu:{second}\n")).unwrap();
        assert_eq!(file.check("u", b"two"), Checked::Valid);
        assert_eq!(file.check("u", b"one"), Checked::WrongPassword);
    }

    #[test]
    fn debug_output_never_shows_a_hash() {
        let file = PasswordFile::parse(ALICE).unwrap();
        let shown = format!("{file:?} {:?}", file.get("alice").unwrap());
        assert!(!shown.contains("Sv+j") && !shown.contains("is0A"), "{shown}");
    }
}
