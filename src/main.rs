//! The `ringmq` binary: command line and file -> validated config -> logging -> runtime.
//!
//! Exit codes: 0 after a clean shutdown, `--print-config` or a valid `--check-config`; 2 for a
//! configuration error (as clap does for a usage error); 1 when the runtime fails or
//! `--check-config` finds the configuration invalid.
//!
//! `ringmq passwd ...` manages a password file instead (`passwd_main`): 0 on success, 1 on an
//! error, 2 for a usage error.

use std::io::IsTerminal;
use std::process::ExitCode;

use ringmq::config::{self, Cli, Config, LogFormat};
use ringmq::ops::OpsServer;
use ringmq::runtime::StartOptions;

mod alloc;

fn main() -> ExitCode {
    let allocator = alloc::configure();
    if std::env::args_os().nth(1).is_some_and(|arg| arg == "passwd") {
        return passwd_main();
    }
    let cli = Cli::parse_args();
    if cli.print_config_docs {
        print!("{}", config::docs::markdown());
        return ExitCode::SUCCESS;
    }
    let config = match config::load(&cli) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("ringmq: {error}");
            return ExitCode::from(if cli.check_config { 1 } else { 2 });
        }
    };
    if cli.check_config {
        return check_config(&config);
    }
    if cli.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    let rust_log = std::env::var("RUST_LOG").ok();
    init_logging(&config::log_filter(&cli, rust_log.as_deref(), &config), config.log_format);
    log_start(&config, &allocator);
    match run(config) {
        Ok(()) => {
            tracing::info!("ringmq stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            // Logged when the filter lets errors through, else printed: it must be seen.
            if tracing::enabled!(tracing::Level::ERROR) {
                tracing::error!(error = format!("{error:#}"), "ringmq failed");
            } else {
                eprintln!("ringmq: error: {error:#}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `--check-config` on a configuration that loaded: its warnings, then "configuration ok".
fn check_config(config: &Config) -> ExitCode {
    for warning in &config.warnings {
        eprintln!("ringmq: warning: {warning}");
    }
    println!("configuration ok");
    ExitCode::SUCCESS
}

/// The runtime, with the HTTP listener beside it when `http_port` is set.
fn run(config: Config) -> anyhow::Result<()> {
    let options = StartOptions { control_queue_depth: config.ops.admin_queue_depth };
    let ops = config.ops;
    let bound = OpsServer::bind(&ops)?;
    ringmq::runtime::run_with(config.runtime, config.broker, &options, move |running| {
        let link = running.take_ops_link().expect("the link is taken once, here");
        bound.map(|bound| OpsServer::start(bound, &ops, link)).transpose()
    })
}

/// `ringmq passwd`: add, change or delete a user in a password file.
fn passwd_main() -> ExitCode {
    use clap::Parser as _;
    use ringmq::auth::passwd::{self, Outcome, PasswdArgs};
    let args = PasswdArgs::parse_from(std::env::args_os().skip(1));
    match passwd::run(&args, passwd::prompt_on_terminal) {
        Ok(outcome) => {
            let done = match outcome {
                Outcome::Added => "added",
                Outcome::Changed => "changed",
                Outcome::Deleted => "deleted",
            };
            eprintln!("ringmq passwd: {} {done} in {}", args.user, args.file.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("ringmq passwd: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to standard error; `filter` is a `tracing` directive string ("info", "ringmq=debug").
fn init_logging(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|error| {
        eprintln!("ringmq: ignoring bad log filter {filter:?} ({error}); using info");
        tracing_subscriber::EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn log_start(config: &Config, allocator: &alloc::Applied) {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        allocator = ?allocator,
        connection_capacity = config.connection_capacity(),
        config = config.summary(),
        "ringmq starting"
    );
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
}
