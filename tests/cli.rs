//! The binary's command line, end to end: exit codes, `--print-config`, `--help`, and
//! configuration errors as a user sees them. Only paths that exit by themselves are run
//! here; serving is tested by the integration tests against a running broker.

use std::io::Write;
use std::process::{Command, Output};

fn ringmq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("the ringmq binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("ringmq-cli-{}-{name}", std::process::id()));
    let mut file = std::fs::File::create(&path).expect("temp file");
    file.write_all(text.as_bytes()).expect("write temp file");
    path
}

#[test]
fn print_config_prints_a_loadable_file_and_exits_0() {
    let output = ringmq(&["--print-config", "-p", "2883", "--workers", "3"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let printed = stdout(&output);
    assert!(printed.contains("port = 2883\n"), "{printed}");
    assert!(printed.contains("bind = [\"0.0.0.0:2883\"]\n"), "{printed}");
    assert!(printed.contains("workers = 3\n"), "{printed}");
    // Feeding the output back as the file gives the same output.
    let path = temp_file("printed.toml", &printed);
    let again = ringmq(&["--print-config", "-c", path.to_str().unwrap()]);
    std::fs::remove_file(&path).ok();
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(stdout(&again), printed);
}

#[test]
fn the_example_file_loads() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/ringmq.example.toml");
    let output = ringmq(&["--print-config", "-c", example]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stdout(&output).contains("max_packet_size = 1048576\n"));
}

#[test]
fn invalid_values_exit_2_naming_each_key() {
    let output = ringmq(&["--print-config", "--workers", "0", "--ring-entries", "1000"]);
    assert_eq!(output.status.code(), Some(2));
    let error = stderr(&output);
    assert!(error.contains("workers (--workers): must be 1..=128"), "{error}");
    assert!(error.contains("ring_entries (--ring-entries): must be a power of two"), "{error}");
    assert!(stdout(&output).is_empty(), "nothing printed on error");
}

#[test]
fn an_unknown_file_key_exits_2_naming_key_and_file() {
    let path = temp_file("typo.toml", "max_conections = 10\n");
    let output = ringmq(&["--print-config", "-c", path.to_str().unwrap()]);
    std::fs::remove_file(&path).ok();
    assert_eq!(output.status.code(), Some(2));
    let error = stderr(&output);
    assert!(error.contains(path.to_str().unwrap()), "{error}");
    assert!(error.contains("unknown field `max_conections`"), "{error}");
    assert!(error.contains("did you mean `max_connections`?"), "{error}");
}

#[test]
fn a_bad_flag_is_a_usage_error() {
    let output = ringmq(&["--persistent-client-expiration", "3min"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("invalid duration `3min`"), "{}", stderr(&output));
}

#[test]
fn help_lists_flags_with_defaults() {
    let output = ringmq(&["--help"]);
    assert_eq!(output.status.code(), Some(0));
    let help = stdout(&output);
    for expected in [
        "-p, --port <PORT>",
        "--bind <ADDR>",
        "-c, --config <FILE>",
        "-v, --verbose",
        "--max-connections <N>",
        "[default: 1883]",
        "[default: 20]",
        "[default: one per core, here",
    ] {
        assert!(help.contains(expected), "{expected:?} missing from --help");
    }
}
