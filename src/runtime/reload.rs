//! Reloading settings without dropping connections: SIGHUP (or [`super::Running::reload`])
//! makes every [`ReloadSource`] load its files again on the main thread; each new value goes
//! to every worker, which swaps it in between two loop turns.
//!
//! - A source loads and parses everything it needs before anything changes; on any error it
//!   changes nothing (the workers keep the previous value) and the error is logged with the
//!   source's name: "reload of auth refused, keeping the previous tables: acl_file ...: line 3".
//! - A loaded value is a [`Reloaded`], cheap to clone (an `Arc` of immutable data). It is
//!   pushed into every worker's inbox (`Stopper::deliver`, a mutex taken only on a reload) and
//!   the worker is woken through the eventfd it already keeps a read armed on for stops; the
//!   worker takes its inbox in the wake-up's completion handler and applies each value
//!   (`Worker::apply_reload`). Nothing on the message path is locked or shared.
//!
//! To make another setting reloadable (certificates, limits): add a `Reloaded` variant, a
//! `ReloadSource` that builds it, register the source (in `runtime::start_with`, or from
//! outside with `Running::add_reload_source`), and apply the variant in
//! `Worker::apply_reload`. A source whose value lives outside the workers (the HTTP thread's
//! token) returns no `Reloaded` and applies itself in `load`.

use std::sync::Arc;

use crate::auth::{AuthFiles, AuthTables};

/// One reloaded value, for every worker.
#[derive(Clone, Debug)]
pub enum Reloaded {
    /// The password and ACL tables.
    Auth(Arc<AuthTables>),
}

/// Something a reload re-reads.
pub trait ReloadSource: Send + std::fmt::Debug {
    /// Names the source in log lines.
    fn name(&self) -> &'static str;
    /// Loads the new value and a one-line description of it, or says why it cannot. A source
    /// that applies itself outside the workers (e.g. the HTTP thread's admin token) returns
    /// `None` as its value.
    fn load(&mut self) -> Result<(Option<Reloaded>, String), String>;
}

/// The password and ACL files.
#[derive(Debug)]
pub struct AuthSource {
    files: AuthFiles,
    generation: u64,
}

impl AuthSource {
    /// Loads the tables once (at start-up); a broken file is an error here, as in Mosquitto.
    pub fn load_initial(files: AuthFiles) -> Result<(Self, Arc<AuthTables>), String> {
        let tables = AuthTables::load(&files, 1)?;
        Ok((Self { files, generation: 1 }, Arc::new(tables)))
    }
}

impl ReloadSource for AuthSource {
    fn name(&self) -> &'static str {
        "auth"
    }

    fn load(&mut self) -> Result<(Option<Reloaded>, String), String> {
        let tables = AuthTables::load(&self.files, self.generation + 1)?;
        self.generation += 1;
        let summary = tables.to_string();
        Ok((Some(Reloaded::Auth(Arc::new(tables))), summary))
    }
}

/// What one source's reload did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReloadReport {
    pub source: &'static str,
    /// The loaded value's description, or why it was refused.
    pub outcome: Result<String, String>,
}

/// Every reloadable source of a running broker.
#[derive(Debug, Default)]
pub struct Reloader {
    sources: Vec<Box<dyn ReloadSource>>,
}

impl Reloader {
    pub fn new(sources: Vec<Box<dyn ReloadSource>>) -> Self {
        Self { sources }
    }

    /// One more source, reloaded after the others.
    pub fn add(&mut self, source: Box<dyn ReloadSource>) {
        self.sources.push(source);
    }

    /// Loads every source; hands each new value to `deliver`; logs and returns what happened.
    pub fn reload(&mut self, mut deliver: impl FnMut(Reloaded)) -> Vec<ReloadReport> {
        let mut reports = Vec::with_capacity(self.sources.len());
        for source in &mut self.sources {
            let source_name = source.name();
            let outcome = match source.load() {
                Ok((value, summary)) => {
                    if let Some(value) = value {
                        deliver(value);
                    }
                    tracing::info!(source = source_name, "reloaded: {summary}");
                    Ok(summary)
                }
                Err(error) => {
                    tracing::warn!(
                        source = source_name,
                        "reload refused, keeping the previous configuration: {error}"
                    );
                    Err(error)
                }
            };
            reports.push(ReloadReport { source: source_name, outcome });
        }
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_file_is_refused_and_a_fixed_one_loads_with_a_new_generation() {
        let dir = std::env::temp_dir().join(format!("ringmq-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let acl = dir.join("acl");
        std::fs::write(&acl, "topic read a/#\n").unwrap();
        let files = AuthFiles { password_file: None, acl_file: Some(acl.clone()) };
        let (source, initial) = AuthSource::load_initial(files).unwrap();
        assert_eq!(initial.generation, 1);
        let mut reloader = Reloader::new(vec![Box::new(source)]);

        std::fs::write(&acl, "topic read a/#\nnonsense\n").unwrap();
        let mut delivered = Vec::new();
        let reports = reloader.reload(|value| delivered.push(value));
        assert!(delivered.is_empty(), "nothing delivered after a refusal");
        assert_eq!(reports.len(), 1);
        let error = reports[0].outcome.clone().unwrap_err();
        assert!(error.contains("line 2"), "{error}");

        std::fs::write(&acl, "topic read b/#\n").unwrap();
        let reports = reloader.reload(|value| delivered.push(value));
        assert_eq!(reports[0].outcome, Ok("no password file, ACL with 1 rules for 0 users".into()));
        let [Reloaded::Auth(tables)] = delivered.as_slice() else { panic!("{delivered:?}") };
        assert_eq!(tables.generation, 2, "a refused reload does not use up a generation");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
