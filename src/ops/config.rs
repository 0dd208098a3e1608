//! The operations side's settings: the HTTP listener and the admin API's limits.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

/// What `crate::ops` runs with (built from `config::Settings`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpsConfig {
    /// Port of the HTTP listener (`/metrics`, admin API, dashboard); 0 = no listener.
    pub http_port: u16,
    /// Address of the HTTP listener; loopback unless the operator opens it.
    pub http_address: IpAddr,
    /// The admin API's bearer token, given inline ("" = none).
    pub admin_token: String,
    /// A file whose first line is the token ("" = none); read at start and again when it changes.
    pub admin_token_file: PathBuf,
    /// Depth of each worker's control queue: admin requests waiting for that worker.
    pub admin_queue_depth: usize,
    /// Items one admin list answer holds at most (clients, subscriptions, retained).
    pub admin_list_max: usize,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            http_port: 0,
            http_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            admin_token: String::new(),
            admin_token_file: PathBuf::new(),
            admin_queue_depth: 16,
            admin_list_max: 1000,
        }
    }
}

/// The largest `admin_queue_depth`: requests are small, but each waits for a worker's turn.
pub const ADMIN_QUEUE_DEPTH_MAX: usize = 4096;
/// The largest `admin_list_max`: one answer is built in memory on the HTTP thread.
pub const ADMIN_LIST_MAX_MAX: usize = 100_000;

impl OpsConfig {
    /// The HTTP listener's address, when there is one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        (self.http_port != 0).then(|| SocketAddr::new(self.http_address, self.http_port))
    }

    /// Whether the admin API has a token to check (without one it is refused).
    pub fn admin_enabled(&self) -> bool {
        !self.admin_token.is_empty() || !self.admin_token_file.as_os_str().is_empty()
    }

    /// The token in force: the inline one, or the first line of the file.
    pub fn read_token(&self) -> Result<Option<String>, String> {
        if !self.admin_token.is_empty() {
            return Ok(Some(self.admin_token.clone()));
        }
        if self.admin_token_file.as_os_str().is_empty() {
            return Ok(None);
        }
        let path = &self.admin_token_file;
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read admin_token_file {}: {error}", path.display()))?;
        let token = text.lines().next().unwrap_or("").trim().to_owned();
        if token.is_empty() {
            return Err(format!("admin_token_file {}: the first line is empty", path.display()));
        }
        Ok(Some(token))
    }
}
