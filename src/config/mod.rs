//! Configuration: every knob and limit, from the command line and an optional TOML file.
//!
//! Precedence is command line > file (`-c/--config FILE`) > defaults, where the defaults are
//! those of [`BrokerConfig`] and [`RuntimeConfig`]. The command line and the file parse into
//! the same [`Settings`] type, so each key exists in both or neither. The file rejects unknown
//! keys, naming the key and the file. The result is validated ([`validate`]) before the
//! binary sizes anything from it; `--print-config` prints the effective values as TOML that
//! reads back to the same configuration.

mod bind;
pub mod docs;
mod duration;
mod settings;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};

pub use bind::BindAddress;
pub use duration::DurationSecs;
pub use settings::{default_workers, LogFormat, LogLevel, Settings, DEFAULT_PORT};
pub use validate::{validate, Invalid, KernelLimits};

use crate::broker::BrokerConfig;
use crate::ops::OpsConfig;
use crate::runtime::RuntimeConfig;

/// The command line. Run `ringmq --help` for the generated text.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "ringmq",
    version,
    about = "An MQTT 3.1.1 broker for Linux built on io_uring: one pinned ring per core.",
    after_help = "Every setting can also be given in the TOML file passed with -c, under the \
                  same name in snake_case (see ringmq.example.toml). Precedence: command line, \
                  then file, then the defaults shown. Logging: -v/-vv, else RUST_LOG, else \
                  log_level."
)]
pub struct Cli {
    /// TOML configuration file; unknown keys are an error.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config_file: Option<PathBuf>,

    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Check the configuration (file and flags) and exit: 0 and "configuration ok" when it
    /// is valid, 2 and every problem otherwise. Nothing is bound or started.
    #[arg(long)]
    pub check_config: bool,

    /// Print docs/CONFIG.md (every setting, generated from this binary) and exit.
    #[arg(long, hide = true)]
    pub print_config_docs: bool,

    /// Log more: -v for debug, -vv for trace (overrides RUST_LOG and log_level).
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    pub verbose: u8,

    #[command(flatten)]
    pub settings: Settings,
}

impl Cli {
    /// The clap command, with each setting's default appended to its help text.
    pub fn command_with_defaults() -> clap::Command {
        let mut command = <Cli as CommandFactory>::command();
        // `defaults_table` keeps the struct's field order (toml's `preserve_order`), which
        // is also the order of the help text.
        for (key, value) in &defaults_table() {
            let shown = match key.as_str() {
                "workers" => format!("one per core, here {value}"),
                // Scaled down per worker as workers grow (see their help text).
                "recv_buffers" | "mesh_ring_depth" => {
                    format!("{} with the default workers", display_value(value))
                }
                _ => display_value(value),
            };
            let shown = if shown.is_empty() { "none".to_owned() } else { shown };
            command = command.mut_arg(key, |arg| {
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                arg.help(format!("{help} [default: {shown}]"))
            });
        }
        command
    }

    /// Parses the process's arguments; prints help, version or an error and exits on those.
    pub fn parse_args() -> Cli {
        let matches = Cli::command_with_defaults().get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
    }

    /// Parses `args` (the first is the program name), for tests.
    pub fn try_parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Cli::command_with_defaults().try_get_matches_from(args)?;
        Cli::from_arg_matches(&matches)
    }
}

/// The defaults of every setting as a TOML table, keyed like the file.
fn defaults_table() -> toml::Table {
    // Serializing a struct of numbers, strings and lists to a table cannot fail.
    toml::Table::try_from(Settings::defaults()).expect("settings serialize to a TOML table")
}

fn display_value(value: &toml::Value) -> String {
    match value {
        toml::Value::String(text) => text.clone(),
        toml::Value::Array(items) => items.iter().map(display_value).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration:\n{}", list(.0))]
    Invalid(Vec<Invalid>),
}

fn list(errors: &[Invalid]) -> String {
    errors.iter().map(|error| format!("  {error}")).collect::<Vec<_>>().join("\n")
}

/// The effective, validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub runtime: RuntimeConfig,
    pub broker: BrokerConfig,
    pub ops: OpsConfig,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    /// Legal values that are probably unintended; the binary logs them at start-up.
    pub warnings: Vec<String>,
}

impl Config {
    /// Every setting's effective value, as a TOML file that loads back to this config.
    pub fn to_toml(&self) -> String {
        let settings = Settings::from_built(&self.built());
        // See `defaults_table`: this serialization cannot fail.
        toml::to_string(&settings).expect("settings serialize to TOML")
    }

    /// Connections the process can hold: `max_connections`, or fewer when the workers'
    /// direct file tables (each worker's rings) together hold fewer.
    pub fn connection_capacity(&self) -> usize {
        let per_worker = (self.runtime.file_table_slots as usize)
            .saturating_mul(usize::from(self.runtime.rings_per_worker_max));
        let tables = self.runtime.workers.saturating_mul(per_worker);
        self.runtime.max_connections.min(tables)
    }

    /// Every setting on one line, `key=value` separated by spaces, for the start-up log.
    pub fn summary(&self) -> String {
        let table = toml::Table::try_from(Settings::from_built(&self.built()))
            .expect("settings serialize to a TOML table");
        let pairs: Vec<String> = table
            .iter()
            .map(|(key, value)| match key.as_str() {
                // A secret stays out of the logs.
                "admin_token" if !self.ops.admin_token.is_empty() => format!("{key}=<set>"),
                _ => format!("{key}={}", display_value(value)),
            })
            .collect();
        pairs.join(" ").replace(", ", ",")
    }

    fn built(&self) -> settings::Built {
        settings::Built {
            runtime: self.runtime.clone(),
            broker: self.broker.clone(),
            ops: self.ops.clone(),
            log_level: self.log_level,
            log_format: self.log_format,
        }
    }
}

/// Reads the file named by `-c` (if any), merges it under the command line, validates.
pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
    let file = match &cli.config_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
            Some(parse_file(path, &text)?)
        }
        None => None,
    };
    resolve(&cli.settings, file, &KernelLimits::of_this_process())
}

/// Parses a config file's text; `path` only names the file in errors.
pub fn parse_file(path: &Path, text: &str) -> Result<Settings, ConfigError> {
    toml::from_str(text).map_err(|error| {
        let mut message = error.to_string().trim_end().to_owned();
        if let Some(hint) = suggestion(&message) {
            message.push_str(&hint);
        }
        ConfigError::Parse { path: path.to_owned(), message }
    })
}

/// "did you mean ...?" for an unknown key that is one or two edits from a known one.
fn suggestion(message: &str) -> Option<String> {
    let rest = message.split("unknown field `").nth(1)?;
    let unknown = &rest[..rest.find('`')?];
    let known = defaults_table();
    let closest = known.keys().min_by_key(|key| edit_distance(unknown, key))?;
    (edit_distance(unknown, closest) <= 2).then(|| format!("\n(did you mean `{closest}`?)"))
}

/// Levenshtein distance, for the short key names above.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, a_char) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &b_char) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(a_char != b_char);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// Command line over file over defaults, then validation against `kernel`.
pub fn resolve(
    cli: &Settings,
    file: Option<Settings>,
    kernel: &KernelLimits,
) -> Result<Config, ConfigError> {
    let merged = file.unwrap_or_default().overlay(cli.clone());
    let built = merged.build();
    let mut checked = validate(&built.runtime, &built.broker, kernel);
    validate::check_ops(&built.ops, &mut checked);
    let warnings = checked.map_err(ConfigError::Invalid)?;
    Ok(Config {
        runtime: built.runtime,
        broker: built.broker,
        ops: built.ops,
        log_level: built.log_level,
        log_format: built.log_format,
        warnings,
    })
}

/// The `tracing` filter: `-v`/`-vv` or `--log-level` on the command line, else `RUST_LOG`,
/// else the file's `log_level`, else info.
pub fn log_filter(cli: &Cli, rust_log: Option<&str>, config: &Config) -> String {
    match (cli.verbose, cli.settings.log_level, rust_log) {
        (1, _, _) => "debug".to_owned(),
        (2.., _, _) => "trace".to_owned(),
        (0, Some(level), _) => level.as_str().to_owned(),
        (0, None, Some(directives)) if !directives.trim().is_empty() => directives.to_owned(),
        (0, None, _) => config.log_level.as_str().to_owned(),
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests;
