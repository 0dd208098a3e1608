//! Authentication and authorisation: Mosquitto's password and ACL files, and the per-address
//! limit on failed CONNECTs.
//!
//! [`AuthTables`] is what a reload produces: the parsed password file and ACL file (each
//! optional), immutable and shared by every worker behind an `Arc`. A worker swaps its `Arc`
//! when a reload reaches it (`runtime::reload`); nothing is locked on the message path. The
//! parsers are pure (text in, table or error out); [`AuthTables::load`] is the one place that
//! reads the files, and runs on the main thread, never on a worker's ring loop.
//!
//! Map: `password` (hashes, the file, verification), `acl` (rules and checks), `limiter`
//! (failures per address), `passwd` (`ringmq passwd`: editing a password file).

pub mod acl;
pub mod limiter;
pub mod passwd;
pub mod password;

use std::fmt;
use std::path::{Path, PathBuf};

pub use acl::{AclTable, AclUser, Identity, SubscribeVerdict};
pub use limiter::{FailureLimiter, LimiterConfig};
pub use password::{Checked, PasswordFile, PasswordHash};

/// The files a reload reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthFiles {
    pub password_file: Option<PathBuf>,
    pub acl_file: Option<PathBuf>,
}

/// The loaded tables: what every worker checks CONNECT, PUBLISH, SUBSCRIBE and deliveries
/// against. `None` = that file is not configured (no password check / no ACL).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthTables {
    pub passwords: Option<PasswordFile>,
    pub acl: Option<AclTable>,
    /// Bumped by every load, so a worker can tell state resolved against an older table.
    pub generation: u64,
}

impl AuthTables {
    /// Reads and parses the configured files. Either both load or the error names the file
    /// (and the line) that did not, and nothing changes.
    pub fn load(files: &AuthFiles, generation: u64) -> Result<Self, String> {
        let passwords = match &files.password_file {
            Some(path) => Some(
                PasswordFile::parse(&read(path)?)
                    .map_err(|error| format!("password_file {}: {error}", path.display()))?,
            ),
            None => None,
        };
        let acl = match &files.acl_file {
            Some(path) => Some(
                AclTable::parse(&read(path)?)
                    .map_err(|error| format!("acl_file {}: {error}", path.display()))?,
            ),
            None => None,
        };
        Ok(Self { passwords, acl, generation })
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))
}

impl fmt::Display for AuthTables {
    /// One line for the log: what was loaded.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.passwords {
            Some(passwords) => write!(
                f,
                "{} users in the password file (PBKDF2 iterations up to {})",
                passwords.len(),
                passwords.iterations_max()
            )?,
            None => f.write_str("no password file")?,
        }
        match &self.acl {
            Some(acl) => {
                let (users, rules) = acl.summary();
                write!(f, ", ACL with {rules} rules for {users} users")
            }
            None => f.write_str(", no ACL file"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_reads_both_files_and_names_the_broken_one() {
        let dir = std::env::temp_dir().join(format!("ringmq-auth-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let passwords = dir.join("passwd");
        let acl = dir.join("acl");
        let hash = PasswordHash::with_salt(b"pw", &[1; 12], 3).encode();
        std::fs::write(&passwords, format!("u:{hash}\n")).unwrap();
        std::fs::write(&acl, "topic read #\n").unwrap();
        let files =
            AuthFiles { password_file: Some(passwords.clone()), acl_file: Some(acl.clone()) };
        let tables = AuthTables::load(&files, 7).unwrap();
        assert_eq!(tables.generation, 7);
        assert_eq!(tables.passwords.as_ref().unwrap().check("u", b"pw"), Checked::Valid);
        assert_eq!(
            tables.to_string(),
            "1 users in the password file (PBKDF2 iterations up to 3), ACL with 1 rules for 0 users"
        );
        std::fs::write(&acl, "topic read #\nbogus\n").unwrap();
        let error = AuthTables::load(&files, 8).unwrap_err();
        assert!(error.contains("acl_file") && error.contains("line 2"), "{error}");
        std::fs::remove_file(&passwords).unwrap();
        let error = AuthTables::load(&files, 9).unwrap_err();
        assert!(error.contains("cannot read"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_files_means_no_tables() {
        let tables = AuthTables::load(&AuthFiles::default(), 1).unwrap();
        assert!(tables.passwords.is_none() && tables.acl.is_none());
    }
}
