//! `ringmq passwd`: add, change and delete users in a Mosquitto password file, as
//! `mosquitto_passwd` does.
//!
//! ```text
//! ringmq passwd [-c] [-I ITERATIONS] FILE USER            prompt for the password (twice)
//! ringmq passwd [-c] [-I ITERATIONS] -b FILE USER PASSWORD
//! ringmq passwd -D FILE USER
//! ```
//! `-c` creates (or overwrites) the file; without it the file must exist. Lines for other users
//! and comments are kept in place; a changed user keeps its line. The file is rewritten
//! through a temporary file and a rename, with the old file's permissions (0600 for a new one),
//! so a reader (a broker reloading) never sees half a file. New hashes are `$7$` with a 12-byte
//! random salt and 101 iterations by default, which Mosquitto 2.0 reads.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use clap::Parser;

use super::password::{PasswordHash, DEFAULT_ITERATIONS};

/// The command line of `ringmq passwd`.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "ringmq passwd",
    about = "Add, change or delete a user in a Mosquitto-format password file.",
    after_help = "Hashes are PBKDF2-SHA512 ($7$), readable by Mosquitto 2 and by ringmq's \
                  password_file. Send the broker SIGHUP to reload the file."
)]
pub struct PasswdArgs {
    /// Create the file, overwriting it if it exists.
    #[arg(short = 'c', conflicts_with = "delete")]
    pub create: bool,
    /// Delete USER.
    #[arg(short = 'D')]
    pub delete: bool,
    /// Batch mode: take the password from the command line (visible to other users of the
    /// machine; prefer the prompt).
    #[arg(short = 'b', conflicts_with = "delete", requires = "password")]
    pub batch: bool,
    /// PBKDF2 iterations of the new hash.
    #[arg(short = 'I', value_name = "ITERATIONS", default_value_t = DEFAULT_ITERATIONS)]
    pub iterations: u32,
    pub file: PathBuf,
    pub user: String,
    /// With -b only.
    pub password: Option<String>,
}

/// What a successful run did, for the message printed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    Added,
    Changed,
    Deleted,
}

/// Runs the command; `prompt` supplies the password when not in batch mode.
pub fn run(
    args: &PasswdArgs,
    prompt: impl FnOnce() -> Result<String, String>,
) -> Result<Outcome, String> {
    check_user(&args.user)?;
    if args.password.is_some() && !args.batch {
        return Err("a password on the command line needs -b".into());
    }
    let text = if args.create { String::new() } else { read_existing(&args.file)? };
    if args.delete {
        let (rewritten, found) = remove_user(&text, &args.user);
        if !found {
            return Err(format!("user {} not found in {}", args.user, args.file.display()));
        }
        write_atomically(&args.file, &rewritten)?;
        return Ok(Outcome::Deleted);
    }
    let password = match &args.password {
        Some(password) => password.clone(),
        None => prompt()?,
    };
    let hash = PasswordHash::create(password.as_bytes(), args.iterations)?;
    let (rewritten, changed) = set_user(&text, &args.user, &hash.encode());
    write_atomically(&args.file, &rewritten)?;
    Ok(if changed { Outcome::Changed } else { Outcome::Added })
}

/// Asks twice on the terminal, as `mosquitto_passwd` does.
pub fn prompt_on_terminal() -> Result<String, String> {
    let first = rpassword::prompt_password("Password: ").map_err(|error| error.to_string())?;
    let second =
        rpassword::prompt_password("Reenter password: ").map_err(|error| error.to_string())?;
    if first != second {
        return Err("passwords do not match".into());
    }
    if first.is_empty() {
        return Err("empty password".into());
    }
    Ok(first)
}

fn check_user(user: &str) -> Result<(), String> {
    if user.is_empty() {
        return Err("empty user name".into());
    }
    if user.contains(':') || user.contains(['\n', '\r']) {
        return Err("a user name may not contain ':' or a line break".into());
    }
    if user.trim() != user {
        return Err("a user name may not start or end with white space".into());
    }
    Ok(())
}

fn read_existing(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {} ({error}); use -c to create it", path.display()))
}

/// The user name of a password file line, if it is a user line.
fn line_user(line: &str) -> Option<&str> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return None;
    }
    trimmed.split_once(':').map(|(user, _)| user.trim())
}

/// Replaces `user`'s first line with the new hash (dropping any later duplicates) or appends
/// one; returns the text and whether the user existed.
fn set_user(text: &str, user: &str, hash: &str) -> (String, bool) {
    let mut out = String::with_capacity(text.len() + user.len() + hash.len() + 2);
    let mut found = false;
    for line in text.lines() {
        if line_user(line) == Some(user) {
            if !found {
                out.push_str(&format!("{user}:{hash}\n"));
            }
            found = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !found {
        out.push_str(&format!("{user}:{hash}\n"));
    }
    (out, found)
}

/// Removes every line of `user`; returns the text and whether there was one.
fn remove_user(text: &str, user: &str) -> (String, bool) {
    let mut out = String::with_capacity(text.len());
    let mut found = false;
    for line in text.lines() {
        if line_user(line) == Some(user) {
            found = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    (out, found)
}

/// Writes `text` to a temporary file beside `path` and renames it over `path`.
fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    let mode = std::fs::metadata(path).map_or(0o600, |meta| meta.permissions().mode() & 0o7777);
    let file_name = path.file_name().ok_or_else(|| format!("{} is not a file", path.display()))?;
    let mut temporary = path.to_path_buf();
    temporary.set_file_name(format!(".{}.ringmq-tmp", file_name.to_string_lossy()));
    let failed = |error: std::io::Error| format!("cannot write {}: {error}", temporary.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)
        .map_err(failed)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(failed)?;
    file.write_all(text.as_bytes()).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    drop(file);
    std::fs::rename(&temporary, path)
        .map_err(|error| format!("cannot replace {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Checked, PasswordFile};

    fn args(extra: &[&str]) -> PasswdArgs {
        let mut argv = vec!["ringmq passwd"];
        argv.extend_from_slice(extra);
        PasswdArgs::try_parse_from(argv).unwrap_or_else(|error| panic!("{extra:?}: {error}"))
    }

    fn temp_file(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ringmq-passwd-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("passwd")
    }

    fn no_prompt() -> Result<String, String> {
        panic!("no prompt expected")
    }

    #[test]
    fn create_add_change_delete() {
        let path = temp_file("cycle");
        let file = path.to_str().unwrap();
        assert_eq!(run(&args(&["-c", "-b", file, "alice", "one"]), no_prompt), Ok(Outcome::Added));
        std::fs::write(&path, format!("# keep me\n{}", std::fs::read_to_string(&path).unwrap()))
            .unwrap();
        assert_eq!(run(&args(&["-b", file, "bob", "two"]), no_prompt), Ok(Outcome::Added));
        assert_eq!(run(&args(&[file, "alice"]), || Ok("three".into())), Ok(Outcome::Changed));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# keep me\nalice:$7$101$"), "{text}");
        let parsed = PasswordFile::parse(&text).unwrap();
        assert_eq!(parsed.check("alice", b"three"), Checked::Valid);
        assert_eq!(parsed.check("bob", b"two"), Checked::Valid);
        assert_eq!(run(&args(&["-D", file, "alice"]), no_prompt), Ok(Outcome::Deleted));
        let parsed = PasswordFile::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(parsed.check("alice", b"three"), Checked::UnknownUser);
        assert_eq!(parsed.len(), 1);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn errors_are_reported_not_written() {
        let path = temp_file("errors");
        let file = path.to_str().unwrap();
        let error = run(&args(&["-b", file, "a", "pw"]), no_prompt).unwrap_err();
        assert!(error.contains("use -c"), "{error}");
        run(&args(&["-c", "-b", file, "a", "pw"]), no_prompt).unwrap();
        let error = run(&args(&["-D", file, "nobody"]), no_prompt).unwrap_err();
        assert!(error.contains("not found"), "{error}");
        let error = run(&args(&["-b", file, "a:b", "pw"]), no_prompt).unwrap_err();
        assert!(error.contains("':'"), "{error}");
        let error = run(&args(&["-b", "-I", "0", file, "a", "pw"]), no_prompt).unwrap_err();
        assert!(error.contains("iterations"), "{error}");
        let error = run(&args(&[file, "a"]), || Err("passwords do not match".into())).unwrap_err();
        assert!(error.contains("do not match"));
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn the_command_line_needs_consistent_flags() {
        for bad in [
            vec!["-b", "f", "u"],            // -b without a password
            vec!["-c", "-D", "f", "u"],      // create and delete
            vec!["-D", "-b", "f", "u", "p"], // delete in batch
            vec!["f"],                       // no user
        ] {
            let mut argv = vec!["ringmq passwd"];
            argv.extend_from_slice(&bad);
            assert!(PasswdArgs::try_parse_from(argv).is_err(), "{bad:?} accepted");
        }
        let parsed = args(&["-I", "2000", "f", "u"]);
        assert_eq!(parsed.iterations, 2000);
    }
}
