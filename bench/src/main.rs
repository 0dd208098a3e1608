//! ringmq-bench: the MQTT load generator (issue 5). See `ringmq-bench --help`.

use std::net::{Ipv4Addr, SocketAddrV4};

use clap::Parser;
use ringmq_bench::cli::{self, Cli, Command};
use ringmq_bench::client::run_load;
use ringmq_bench::plan::{LoadConfig, Plan};
use ringmq_bench::relay::{Relay, RelayConfig};
use ringmq_bench::report::{self, CpuUse};
use ringmq_bench::sys;

fn main() {
    sys::ignore_sigpipe();
    sys::catch_stop_signals();
    let cli = Cli::parse();
    if let Err(error) = run(&cli) {
        eprintln!("ringmq-bench: {error:#}");
        std::process::exit(1);
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let progress = !cli.quiet;
    let plan_of = |publishers, subscribers, topics: Option<u32>, default_topics: u32| Plan {
        publishers,
        subscribers,
        topics: topics.unwrap_or(default_topics).max(1),
        idle: 0,
    };
    let (name, connection, config) = match &cli.command {
        Command::Conn { connection, conns } => {
            let plan = Plan { publishers: 0, subscribers: 0, topics: 1, idle: *conns };
            ("conn", connection, cli::load_config(connection, None, plan, progress))
        }
        Command::Pub { connection, messages, pubs } => {
            let plan = plan_of(*pubs, 0, messages.topics, *pubs);
            ("pub", connection, cli::load_config(connection, Some(messages), plan, progress))
        }
        Command::Sub { connection, messages, subs } => {
            let plan = plan_of(0, *subs, messages.topics, *subs);
            ("sub", connection, cli::load_config(connection, Some(messages), plan, progress))
        }
        Command::Pubsub { connection, messages, pattern } => {
            let plan = pattern.plan(messages.topics);
            ("pubsub", connection, cli::load_config(connection, Some(messages), plan, progress))
        }
        Command::Tls(args) => return ringmq_bench::tls::run(args, cli.json),
        Command::Relay { connection, messages, pattern, relay_queue_bytes } => {
            let plan = pattern.plan(messages.topics);
            let config = cli::load_config(connection, Some(messages), plan, progress)
                .map_err(anyhow::Error::msg)?;
            return run_relay(cli, config, *relay_queue_bytes);
        }
    };
    let config = config.map_err(anyhow::Error::msg)?;
    let broker_before = connection.broker_pid.and_then(sys::other_process_cpu_ns);
    let outcome = run_load(config.clone())?;
    let broker = connection.broker_pid.and_then(|pid| {
        let before = broker_before?;
        let after = sys::other_process_cpu_ns(pid)?;
        Some(CpuUse::new((after.0 - before.0, after.1 - before.1), outcome.wall_secs))
    });
    let report = report::build(name, &config, &outcome, broker, None);
    print(cli, &report, None)?;
    match outcome.interrupted_by {
        Some(signal) => anyhow::bail!("stopped early by {signal} (the report above is partial)"),
        None => Ok(()),
    }
}

/// Starts the relay on a free loopback port, runs the pattern through it, stops it.
fn run_relay(cli: &Cli, mut config: LoadConfig, queue_bytes_max: usize) -> anyhow::Result<()> {
    let connections_max = u32::try_from(config.plan.connections() + 16)
        .map_err(|_| anyhow::anyhow!("too many connections for one relay"))?;
    let relay = Relay::start(RelayConfig {
        listen: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
        connections_max,
        queue_bytes_max,
        drop_one_in: 0,
    })?;
    config.target.hosts = vec![*relay.address.ip()];
    config.target.port = relay.address.port();
    let outcome = run_load(config.clone());
    let relay_stats = relay.stop()?;
    let outcome = outcome?;
    let relay_cpu = CpuUse::new(relay_stats.cpu_ns, outcome.wall_secs);
    let report = report::build("relay", &config, &outcome, None, Some(relay_cpu));
    print(cli, &report, Some(serde_json::to_value(relay_stats)?))
}

fn print(
    cli: &Cli,
    report: &report::LoadReport,
    relay: Option<serde_json::Value>,
) -> anyhow::Result<()> {
    let text = report::text(report);
    if cli.json {
        eprintln!("{text}");
        let mut value = serde_json::to_value(report)?;
        if let (Some(relay), Some(object)) = (relay, value.as_object_mut()) {
            object.insert("relay".into(), relay);
        }
        println!("{}", serde_json::to_string(&value)?);
    } else {
        println!("{text}");
    }
    Ok(())
}
