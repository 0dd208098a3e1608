//! ringmq-bench: the load generator (issue 5) and the sans-IO micro-benchmarks.
fn main() {
    eprintln!("ringmq-bench: no subcommands yet");
    std::process::exit(2);
}
