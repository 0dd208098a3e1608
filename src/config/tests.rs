//! Tests of the whole loading path: command line, file, precedence, printing, help text,
//! and the example file and README staying in step with the settings.

use super::*;

const LIMITS: KernelLimits =
    KernelLimits { open_files_soft: Some(1 << 20), open_files_hard: Some(1 << 20) };

fn cli(args: &[&str]) -> Cli {
    let mut argv = vec!["ringmq"];
    argv.extend_from_slice(args);
    Cli::try_parse_args(argv).unwrap_or_else(|error| panic!("{args:?}: {error}"))
}

fn file(text: &str) -> Settings {
    parse_file(Path::new("test.toml"), text).unwrap_or_else(|error| panic!("{error}"))
}

fn resolved(args: &[&str], file_text: Option<&str>) -> Config {
    resolve(&cli(args).settings, file_text.map(file), &LIMITS).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn no_arguments_give_the_layer_defaults() {
    let config = resolved(&[], None);
    assert_eq!(config.broker, BrokerConfig::default());
    let runtime = RuntimeConfig { workers: default_workers(), ..RuntimeConfig::default() };
    assert_eq!(config.runtime, runtime);
    assert_eq!(config.runtime.listeners, vec!["0.0.0.0:1883".parse().unwrap()]);
}

#[test]
fn mosquitto_style_flags_parse() {
    let parsed = cli(&["-p", "1884", "--bind", "127.0.0.1", "--bind", "[::1]:8883", "-vv"]);
    assert_eq!(parsed.verbose, 2);
    let config = resolve(&parsed.settings, None, &LIMITS).unwrap();
    let expected: Vec<std::net::SocketAddr> =
        vec!["127.0.0.1:1884".parse().unwrap(), "[::1]:8883".parse().unwrap()];
    assert_eq!(config.runtime.listeners, expected);
    let parsed = cli(&["-c", "/etc/ringmq.toml", "--print-config"]);
    assert_eq!(parsed.config_file.as_deref(), Some(Path::new("/etc/ringmq.toml")));
    assert!(parsed.print_config);
}

#[test]
fn every_limit_has_a_flag() {
    let config = resolved(
        &[
            "--workers=3",
            "--max-connections=5000",
            "--max-packet-size=65536",
            "--max-inflight-messages=0",
            "--max-queued-messages=10",
            "--max-queued-bytes=100000",
            "--outbuf-bytes-max=65536",
            "--max-keepalive=600",
            "--persistent-client-expiration=2d",
            "--allow-anonymous=false",
            "--set-tcp-nodelay=false",
            "--queue-qos0-messages=true",
            "--sys-interval=0",
            "--ring-entries=1024",
            "--turn-packets-max=64",
            "--log-format=json",
        ],
        None,
    );
    assert_eq!(config.runtime.workers, 3);
    assert_eq!(config.runtime.max_connections, 5000);
    assert_eq!(config.runtime.ring_entries, 1024);
    assert_eq!(config.runtime.turn_packets_max, 64);
    assert!(!config.runtime.tcp_nodelay);
    let broker = &config.broker;
    assert_eq!(broker.max_packet_size, 65_536);
    assert_eq!((broker.max_inflight_messages, broker.inflight_window()), (0, 65_535));
    assert_eq!((broker.max_queued_messages, broker.max_queued_bytes), (10, 100_000));
    assert_eq!(broker.outbuf_bytes_max, 65_536);
    assert_eq!(broker.max_keepalive_secs, 600);
    assert_eq!(broker.persistent_client_expiration_secs, 2 * 86_400);
    assert!(!broker.allow_anonymous && broker.queue_qos0_messages);
    assert_eq!(broker.sys_interval_secs, 0);
    assert_eq!(config.log_format, LogFormat::Json);
}

#[test]
fn bad_flag_values_are_refused_by_the_parser() {
    let argv = |extra: &str| vec!["ringmq".to_owned(), extra.to_owned()];
    for bad in [
        "--persistent-client-expiration=3min",
        "--bind=localhost",
        "--workers=-1",
        "--allow-anonymous=maybe",
        "--max-inflight-messages=70000",
        "--log-format=xml",
        "--no-such-flag",
    ] {
        assert!(Cli::try_parse_args(argv(bad)).is_err(), "{bad} was accepted");
    }
}

#[test]
fn file_values_are_read() {
    let config = resolved(
        &[],
        Some(
            "port = 1999\n\
             bind = [\"127.0.0.1\"]\n\
             workers = 4\n\
             max_queued_messages = 50\n\
             persistent_client_expiration = \"1w\"\n\
             retained_expiry_secs = 60\n\
             log_level = \"warn\"\n",
        ),
    );
    assert_eq!(config.runtime.listeners, vec!["127.0.0.1:1999".parse().unwrap()]);
    assert_eq!(config.runtime.workers, 4);
    assert_eq!(config.broker.max_queued_messages, 50);
    assert_eq!(config.broker.persistent_client_expiration_secs, 604_800);
    assert_eq!(config.broker.retained_expiry_secs, 60);
    assert_eq!(config.log_level, LogLevel::Warn);
}

#[test]
fn command_line_beats_file_beats_defaults() {
    let file_text = "workers = 4\nport = 1999\nmax_queued_messages = 50\nsys_interval = 30\n";
    let config = resolved(&["--workers", "6", "--bind", "127.0.0.2"], Some(file_text));
    assert_eq!(config.runtime.workers, 6, "CLI over file");
    // The file's port still applies to a CLI bind address without one.
    assert_eq!(config.runtime.listeners, vec!["127.0.0.2:1999".parse().unwrap()]);
    assert_eq!(config.broker.max_queued_messages, 50, "file over default");
    assert_eq!(config.broker.sys_interval_secs, 30, "file over default");
    assert_eq!(config.broker.max_inflight_messages, 20, "default when neither");
}

#[test]
fn unknown_file_key_names_the_key_and_the_file() {
    let error = parse_file(Path::new("/etc/ringmq.toml"), "wokers = 2\n").unwrap_err();
    let text = error.to_string();
    assert!(text.contains("/etc/ringmq.toml"), "{text}");
    assert!(text.contains("unknown field `wokers`"), "{text}");
    assert!(text.contains("line 1"), "{text}");
    assert!(text.contains("did you mean `workers`?"), "{text}");
    let far = parse_file(Path::new("x.toml"), "listener = 1883\n").unwrap_err().to_string();
    assert!(far.contains("unknown field `listener`") && !far.contains("did you mean"), "{far}");
}

#[test]
fn file_type_errors_name_the_file_and_line() {
    for (text, expected) in [
        ("workers = \"two\"\n", "line 1"),
        ("\nmax_inflight_messages = 70000\n", "line 2"),
        ("persistent_client_expiration = \"3min\"\n", "invalid duration"),
        ("bind = [\"localhost\"]\n", "invalid bind address"),
        ("max_connections = -1\n", "line 1"),
        ("workers = 2\nworkers = 3\n", "duplicate key"),
    ] {
        let error = parse_file(Path::new("r.toml"), text).unwrap_err().to_string();
        assert!(error.starts_with("config file r.toml: "), "{error}");
        assert!(error.contains(expected), "{text:?} gave: {error}");
    }
}

#[test]
fn invalid_values_are_all_reported_with_key_and_flag() {
    let file_settings = file("ring_entries = 1000\n");
    let error = resolve(&cli(&["--workers=0"]).settings, Some(file_settings), &LIMITS).unwrap_err();
    let text = error.to_string();
    assert!(text.starts_with("invalid configuration:"), "{text}");
    assert!(text.contains("workers (--workers): must be 1..=128"), "{text}");
    assert!(text.contains("ring_entries (--ring-entries): must be a power of two"), "{text}");
}

#[test]
fn a_missing_file_is_reported_with_its_path() {
    let parsed = cli(&["-c", "/nonexistent/ringmq.toml"]);
    let text = load(&parsed).unwrap_err().to_string();
    assert!(text.contains("cannot read config file /nonexistent/ringmq.toml"), "{text}");
}

#[test]
fn printed_config_reads_back_to_the_same_config() {
    let config = resolved(
        &["--workers=3", "-p", "2000", "--bind=::1", "--persistent-client-expiration=36h"],
        Some("max_queued_bytes = 123456\n"),
    );
    let printed = config.to_toml();
    assert!(printed.contains("persistent_client_expiration = \"36h\""), "{printed}");
    let reread = resolve(&Settings::default(), Some(file(&printed)), &LIMITS).unwrap();
    assert_eq!(reread, config);
}

#[test]
fn summary_is_one_line_with_every_key() {
    let config = resolved(&[], None);
    let summary = config.summary();
    assert!(!summary.contains('\n'));
    for key in defaults_table().keys() {
        assert!(summary.contains(&format!("{key}=")), "{key} missing from {summary}");
    }
}

#[test]
fn connection_capacity_is_the_smaller_of_the_two_bounds() {
    let config = resolved(&["--workers=2", "--file-table-slots=1000"], None);
    assert_eq!(config.connection_capacity(), 2 * 1000 * 64, "64 rings per worker by default");
    let flags = ["--workers=2", "--file-table-slots=1000", "--rings-per-worker-max=1"];
    assert_eq!(resolved(&flags, None).connection_capacity(), 2000);
    let config = resolved(&["--workers=2", "--max-connections=1500"], None);
    assert_eq!(config.connection_capacity(), 1500);
}

#[test]
fn help_shows_every_settings_default() {
    let help = Cli::command_with_defaults().render_help().to_string();
    let defaults = defaults_table();
    assert_eq!(defaults.len(), 65, "a setting was added: update the example file and README");
    for (key, value) in &defaults {
        let flag = format!("--{}", key.replace('_', "-"));
        assert!(help.contains(&flag), "{flag} missing from --help");
        if key != "workers" {
            let shown = match key.as_str() {
                "recv_buffers" | "mesh_ring_depth" => {
                    format!("[default: {} with the default workers]", display_value(value))
                }
                _ if display_value(value).is_empty() => "[default: none]".to_owned(),
                _ => format!("[default: {}]", display_value(value)),
            };
            assert!(help.contains(&shown), "{shown} missing from --help for {key}");
        }
    }
    assert!(help.contains("[default: 1048576]"), "max_packet_size default");
    assert!(help.contains("[default: one per core, here"), "workers default");
}

#[test]
fn log_filter_precedence() {
    let config = resolved(&[], Some("log_level = \"warn\"\n"));
    assert_eq!(log_filter(&cli(&[]), None, &config), "warn");
    assert_eq!(log_filter(&cli(&[]), Some("ringmq=trace"), &config), "ringmq=trace");
    assert_eq!(log_filter(&cli(&[]), Some(" "), &config), "warn");
    assert_eq!(log_filter(&cli(&["-v"]), Some("error"), &config), "debug");
    assert_eq!(log_filter(&cli(&["-vvv"]), None, &config), "trace");
    assert_eq!(log_filter(&cli(&["--log-level=error"]), Some("info"), &config), "error");
}

#[test]
fn edit_distance_counts_single_edits() {
    assert_eq!(edit_distance("workers", "workers"), 0);
    assert_eq!(edit_distance("wokers", "workers"), 1);
    assert_eq!(edit_distance("max_inflight", "max_inflight_messages"), 9);
    assert_eq!(edit_distance("", "abc"), 3);
}

/// The example file: each `# key = value` line, uncommented.
fn example_settings_text() -> String {
    let example = include_str!("../../ringmq.example.toml");
    example
        .lines()
        .filter_map(|line| line.strip_prefix("# "))
        .filter(|line| {
            line.split_once(" = ").is_some_and(|(key, _)| {
                !key.is_empty()
                    && key.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
            })
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

#[test]
fn example_file_parses_as_is_and_lists_every_default() {
    let example = include_str!("../../ringmq.example.toml");
    // As shipped, every key is commented out: the file is valid and changes nothing.
    assert_eq!(file(example), Settings::default());
    // Uncommented, it holds every key with its default value (workers is per machine).
    let uncommented = file(&example_settings_text());
    let given = toml::Table::try_from(&uncommented).unwrap();
    let missing: Vec<String> =
        defaults_table().keys().filter(|k| !given.contains_key(*k)).cloned().collect();
    assert!(missing.is_empty(), "keys missing from the example: {missing:?}");
    let mut built = uncommented.build();
    built.runtime.workers = default_workers();
    assert_eq!(built, Settings::default().build());
}

#[test]
fn readme_lists_every_key() {
    let readme = include_str!("../../README.md");
    for key in defaults_table().keys() {
        assert!(readme.contains(&format!("`{key}`")), "README.md does not mention `{key}`");
    }
}
