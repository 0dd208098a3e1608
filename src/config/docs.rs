//! `docs/CONFIG.md`, generated from the settings themselves so it cannot drift: each key's
//! text is its flag's help (the doc comment on its `Settings` field), its default comes from
//! the layer configs, its section from the flag's help heading.
//!
//! `ringmq --print-config-docs > docs/CONFIG.md` writes it; a test compares the file with
//! [`markdown`] and names that command when they differ.

use clap::CommandFactory;

use super::{defaults_table, display_value, Cli};

/// The command that regenerates the file, for the stale-file message.
pub const REGENERATE: &str = "cargo run -q --bin ringmq -- --print-config-docs > docs/CONFIG.md";

const INTRO: &str = "\
Every setting is a key in the TOML file given with `-c FILE` and a command-line flag (the key \
in kebab-case: `max_connections` is `--max-connections`). Precedence: command line, then file, \
then the defaults below. Unknown keys in the file are an error. `ringmq --check-config` checks a \
configuration and exits (0 valid, 1 not); `ringmq --print-config` prints the effective values as \
a TOML file; `ringmq.example.toml` lists every key commented out.

Settings take effect at start, except the files that say they are read again \
(`admin_token_file`).
";

/// The whole file.
pub fn markdown() -> String {
    let command = Cli::command();
    let mut out = String::from("# ringmq configuration reference\n\n");
    out.push_str(&format!(
        "<!-- Generated from the code (src/config/settings.rs); do not edit by hand.\n     \
         Regenerate: {REGENERATE} -->\n\n"
    ));
    out.push_str(INTRO);
    let mut heading = None;
    for (key, value) in &defaults_table() {
        let Some(arg) = command.get_arguments().find(|arg| arg.get_id() == key.as_str()) else {
            panic!("setting {key} has no flag");
        };
        let section = arg.get_help_heading().unwrap_or("Other");
        if heading != Some(section) {
            out.push_str(&format!("\n## {section}\n"));
            heading = Some(section);
        }
        out.push_str(&entry(key, value, arg));
    }
    out
}

fn entry(key: &str, value: &toml::Value, arg: &clap::Arg) -> String {
    let value_name = arg.get_value_names().and_then(|names| names.first()).map_or("", |n| n);
    let long = arg.get_long().unwrap_or(key);
    let mut flag = format!("`--{long} <{value_name}>`");
    if let Some(short) = arg.get_short() {
        flag.push_str(&format!(", `-{short}`"));
    }
    // The machine's core count sets these defaults; the text says how.
    let default = match key {
        "workers" => "one per core (at most 128)".to_owned(),
        "recv_buffers" | "mesh_ring_depth" => "depends on `workers` (see above)".to_owned(),
        _ => match display_value(value) {
            shown if shown.is_empty() => "`\"\"` (none)".to_owned(),
            shown => format!("`{shown}`"),
        },
    };
    let mut help =
        arg.get_long_help().or(arg.get_help()).map(ToString::to_string).unwrap_or_default();
    // clap drops a one-paragraph help's final period.
    if !help.ends_with(['.', ')']) {
        help.push('.');
    }
    let mut text = format!("\n### `{key}`\n\n{help}\n\n- Flag: {flag}\n- Default: {default}\n");
    let values: Vec<String> =
        arg.get_possible_values().iter().map(|v| format!("`{}`", v.get_name())).collect();
    if !values.is_empty() {
        text.push_str(&format!("- Values: {}\n", values.join(", ")));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_md_is_generated_from_the_current_settings() {
        let committed = include_str!("../../docs/CONFIG.md");
        assert!(
            committed == markdown(),
            "docs/CONFIG.md is stale: regenerate it with `{REGENERATE}`"
        );
    }

    #[test]
    fn every_key_has_a_section_text_and_default() {
        let text = markdown();
        for key in defaults_table().keys() {
            let start = text.find(&format!("### `{key}`")).unwrap_or_else(|| panic!("{key}"));
            let body = &text[start..];
            let end = body[4..].find("\n### ").map_or(body.len(), |at| at + 4);
            let section = &body[..end];
            assert!(section.contains("- Default: "), "{key} has no default");
            assert!(section.lines().nth(2).is_some_and(|line| !line.is_empty()), "{key}: no text");
        }
    }
}
