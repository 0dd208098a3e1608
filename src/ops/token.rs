//! The admin API's bearer token: from `admin_token`, or the first line of `admin_token_file`,
//! which is read again when its modification time changes (looked at on each admin request:
//! one `stat`) and on [`Token::reload`] (SIGHUP), so a token can be rotated without a restart.
//! A reload that fails keeps the previous token and logs why.

use std::time::SystemTime;

use super::config::OpsConfig;
use super::http::Response;

#[derive(Debug)]
pub struct Token {
    config: OpsConfig,
    current: Option<String>,
    /// The token file's modification time when it was last read.
    file_modified: Option<SystemTime>,
}

impl Token {
    /// Reads the token now; an unreadable file is an error (the configuration was checked,
    /// so this means it changed since).
    pub fn load(config: &OpsConfig) -> Result<Self, String> {
        let file_modified = modified(config);
        let current = config.read_token()?;
        Ok(Self { config: config.clone(), current, file_modified })
    }

    /// Reads the token file again if its modification time changed.
    pub fn reload_if_changed(&mut self) {
        let now = modified(&self.config);
        if now.is_some() && now != self.file_modified {
            self.reload();
        }
    }

    /// Reads the token file again (nothing to do for an inline token).
    pub fn reload(&mut self) {
        self.file_modified = modified(&self.config);
        match self.config.read_token() {
            Ok(token) => {
                let changed = token != self.current;
                self.current = token;
                tracing::info!(changed, "admin token reloaded");
            }
            Err(error) => tracing::warn!(%error, "admin token not reloaded; keeping the old one"),
        }
    }

    /// Checks an `Authorization` header: `Ok` for `Bearer <token>`, else the response to send.
    pub fn check(&self, header: Option<&str>) -> Result<(), Response> {
        let Some(expected) = &self.current else {
            return Err(Response::new(
                403,
                "application/json",
                r#"{"error":"the admin API is off: set admin_token_file or admin_token"}"#,
            ));
        };
        let given = header.and_then(|value| value.strip_prefix("Bearer ")).map(str::trim);
        if given.is_some_and(|given| constant_time_eq(given.as_bytes(), expected.as_bytes())) {
            return Ok(());
        }
        let mut response =
            Response::new(401, "application/json", r#"{"error":"missing or wrong bearer token"}"#);
        response.headers.push(("WWW-Authenticate", "Bearer realm=\"ringmq\"".to_owned()));
        Err(response)
    }
}

fn modified(config: &OpsConfig) -> Option<SystemTime> {
    let path = &config.admin_token_file;
    if path.as_os_str().is_empty() {
        return None;
    }
    std::fs::metadata(path).and_then(|metadata| metadata.modified()).ok()
}

/// Compares without stopping at the first difference, so the time taken does not tell an
/// attacker how much of a guess was right (the length still shows).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let config = OpsConfig { admin_token: "s3cret-token".to_owned(), ..OpsConfig::default() };
        let token = Token::load(&config).unwrap();
        assert!(token.check(Some("Bearer s3cret-token")).is_ok());
        for header in [None, Some("Bearer s3cret-tokeN"), Some("s3cret-token"), Some("Bearer ")] {
            assert_eq!(token.check(header).unwrap_err().status, 401, "{header:?}");
        }
        let off = Token::load(&OpsConfig::default()).unwrap();
        assert_eq!(off.check(Some("Bearer anything")).unwrap_err().status, 403);
    }

    #[test]
    fn a_token_file_is_read_again_when_it_changes_or_on_reload() {
        let path = std::env::temp_dir().join(format!("ringmq-token-{}", std::process::id()));
        std::fs::write(&path, "first-token\n").unwrap();
        let config = OpsConfig { admin_token_file: path.clone(), ..OpsConfig::default() };
        let mut token = Token::load(&config).unwrap();
        assert!(token.check(Some("Bearer first-token")).is_ok());
        std::fs::write(&path, "second-token\nignored\n").unwrap();
        // Modification times can be coarse: make sure this write looks newer.
        let later = SystemTime::now() + std::time::Duration::from_secs(2);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(later).unwrap();
        token.reload_if_changed();
        assert!(token.check(Some("Bearer first-token")).is_err());
        assert!(token.check(Some("Bearer second-token")).is_ok());
        std::fs::write(&path, "third-token\n").unwrap();
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(later).unwrap();
        token.reload_if_changed();
        assert!(token.check(Some("Bearer second-token")).is_ok(), "same time: not read again");
        token.reload();
        assert!(token.check(Some("Bearer third-token")).is_ok(), "an explicit reload reads it");
        std::fs::remove_file(&path).unwrap();
        token.reload();
        assert!(token.check(Some("Bearer third-token")).is_ok(), "a failed reload keeps it");
    }
}
