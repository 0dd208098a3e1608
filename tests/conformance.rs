//! The MQTT 3.1.1 conformance table: each normative statement of the standard, whom it binds,
//! and the tests that cite it. `docs/CONFORMANCE.md` is this test's output, so it cannot drift:
//! the test fails when the file differs from what the sources say now, or when a statement
//! that binds the server has no test citing it. Regenerate the file with
//! `RINGMQ_WRITE_CONFORMANCE=1 cargo test --test conformance`.
//!
//! A test cites a statement by its id in a comment or string inside the test
//! (`[MQTT-3.3.1-9]`), or in its name (`..._mqtt_3_3_1_9`, `..._mqtt_3_3_1_10_and_11`,
//! `..._mqtt_3_1_2_11_and_3_1_2_13`). Test code is: `tests/` (Rust and Python), `src/**/tests/`,
//! `src/**/tests.rs`, `src/**/*_tests.rs`, `src/**/proptests.rs`, and the part of any other
//! source file after its `#[cfg(test)] mod ... {`. A citation belongs to the function it is
//! written in, or documents (`///` above it); a helper such as the broker harness's
//! `subscribe` asserts for every test that calls it. One outside any function (a module
//! comment, a struct's documentation) counts for nothing.

mod conformance {
    pub mod statements;
}

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use conformance::statements::{Binds, STATEMENTS};

const DOC_PATH: &str = "docs/CONFORMANCE.md";
/// Functions listed per statement; the count says how many more cite it.
const LISTED_MAX: usize = 3;

/// Normalises an id to `x.y.z-n` (the standard itself spells one `3-8.3-4`).
fn normal(id: &str) -> String {
    id.replacen("3-8.3-4", "3.8.3-4", 1)
}

/// The ids written `MQTT-a.b.c-d` (or the standard's `MQTT-3-8.3-4`) in `line`.
fn ids_in_line(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(start) = rest.find("MQTT-") {
        rest = &rest[start + 5..];
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
            .unwrap_or(rest.len());
        let candidate = rest[..end].trim_end_matches(['.', '-']);
        let parts: Vec<&str> = candidate.split(['.', '-']).collect();
        if parts.len() == 4 && parts.iter().all(|p| !p.is_empty()) {
            found.push(normal(&format!("{}.{}.{}-{}", parts[0], parts[1], parts[2], parts[3])));
        }
    }
    found
}

/// The ids a test name carries after `mqtt_`: groups of four numbers, and `_and_` followed
/// by a whole id or by the last numbers of the previous one.
fn ids_in_name(name: &str) -> Vec<String> {
    let Some(start) = name.find("mqtt_") else {
        return Vec::new();
    };
    let mut ids: Vec<[String; 4]> = Vec::new();
    let mut group: Vec<String> = Vec::new();
    let flush = |group: &mut Vec<String>, ids: &mut Vec<[String; 4]>| {
        if group.len() % 4 == 0 {
            for chunk in group.chunks(4) {
                ids.push([chunk[0].clone(), chunk[1].clone(), chunk[2].clone(), chunk[3].clone()]);
            }
        } else if let Some(previous) = ids.last().cloned() {
            if group.len() < 4 {
                let mut id = previous;
                let keep = 4 - group.len();
                id[keep..].clone_from_slice(group);
                ids.push(id);
            }
        }
        group.clear();
    };
    for token in name[start + 5..].split('_') {
        if token.chars().all(|c| c.is_ascii_digit()) && !token.is_empty() {
            group.push(token.to_owned());
        } else if token == "and" {
            flush(&mut group, &mut ids);
        } else {
            break;
        }
    }
    flush(&mut group, &mut ids);
    ids.into_iter().map(|[a, b, c, d]| normal(&format!("{a}.{b}.{c}-{d}"))).collect()
}

/// The function a line declares, if any (`fn name(`, `async fn`, Python's `def name(`).
fn declared_function(line: &str) -> Option<&str> {
    let trimmed = line.trim_start();
    let after = ["fn ", "pub fn ", "pub(crate) fn ", "async fn ", "pub async fn ", "def "]
        .iter()
        .find_map(|prefix| trimmed.strip_prefix(prefix))?;
    let end = after.find(|c: char| !(c.is_alphanumeric() || c == '_'))?;
    (end > 0).then(|| &after[..end])
}

/// Whether the whole of `path` (relative to the crate root) is test code.
fn all_test_code(path: &Path) -> bool {
    let text = path.to_string_lossy();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    text.starts_with("tests/")
        || text.contains("/tests/")
        || name == "tests.rs"
        || name == "proptests.rs"
        || name.ends_with("_tests.rs")
}

/// Source files under `dir` (relative to `root`): Rust, and Python under `tests/`; sorted.
fn source_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let relative = path.strip_prefix(root).expect("listed under the root").to_path_buf();
        let python = relative.starts_with("tests") && relative.extension() == Some("py".as_ref());
        if path.is_dir() {
            source_files(root, &relative, out);
        } else if relative.extension() == Some("rs".as_ref()) || python {
            out.push(relative);
        }
    }
}

/// Whether `lines[index]` opens an inline test module (`#[cfg(test)]` then `mod name {`),
/// after which the rest of the file is test code.
fn opens_test_module(lines: &[&str], index: usize) -> bool {
    lines[index].trim_start().starts_with("#[cfg(test)]")
        && lines.get(index + 1).is_some_and(|next| {
            let next = next.trim();
            next.starts_with("mod ") && next.ends_with('{')
        })
}

/// Every citation in test code: id -> the functions (`path::name`) that cite it.
fn citations(root: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    source_files(root, Path::new("src"), &mut files);
    source_files(root, Path::new("tests"), &mut files);
    let mut cited: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in files {
        // This test and its statement list name every id without testing any.
        if path.starts_with("tests/conformance") || path == Path::new("tests/conformance.rs") {
            continue;
        }
        let text = std::fs::read_to_string(root.join(&path)).expect("a readable source file");
        let lines: Vec<&str> = text.lines().collect();
        let mut in_tests = all_test_code(&path);
        let mut function: Option<String> = None;
        // Ids in `///` lines belong to the item they document, the next function if it is one.
        let mut documented: Vec<String> = Vec::new();
        for (index, line) in lines.iter().enumerate() {
            if !in_tests {
                in_tests = opens_test_module(&lines, index);
                continue;
            }
            let trimmed = line.trim_start();
            if trimmed.starts_with("///") {
                documented.extend(ids_in_line(line));
                continue;
            }
            if let Some(name) = declared_function(line) {
                function = Some(name.to_owned());
                let ids = ids_in_name(name).into_iter().chain(documented.drain(..));
                for id in ids {
                    cited.entry(id).or_default().insert(format!("{}::{name}", path.display()));
                }
            } else if !(trimmed.is_empty() || trimmed.starts_with("#[")) {
                documented.clear();
            }
            let Some(name) = &function else { continue };
            for id in ids_in_line(line) {
                cited.entry(id).or_default().insert(format!("{}::{name}", path.display()));
            }
        }
    }
    cited
}

fn render(cited: &BTreeMap<String, BTreeSet<String>>) -> String {
    let mut doc = String::from(
        "# MQTT 3.1.1 conformance\n\n\
         Generated by `tests/conformance.rs` from the sources; do not edit. Regenerate with\n\
         `RINGMQ_WRITE_CONFORMANCE=1 cargo test --test conformance` (the test fails while this\n\
         file is out of date, and when a statement binding the server has no test).\n\n\
         Each normative statement of MQTT 3.1.1 (OASIS Standard, Appendix B), whom it binds, and\n\
         the test functions that cite it (file::function; a helper such as the broker harness's\n\
         `subscribe` checks its statement in every test that calls it). Statements are\n\
         paraphrased; the standard's text is at\n\
         <http://docs.oasis-open.org/mqtt/mqtt/v3.1.1/os/mqtt-v3.1.1-os.html>.\n\n",
    );
    let server = STATEMENTS.iter().filter(|(_, binds, _)| *binds == Binds::Server).count();
    let tested = STATEMENTS
        .iter()
        .filter(|(id, binds, _)| *binds == Binds::Server && cited.contains_key(&normal(id)))
        .count();
    let _ = writeln!(
        doc,
        "{} statements: {server} bind the server, of which {tested} are cited by tests.\n",
        STATEMENTS.len()
    );
    doc.push_str("| id | binds | statement (paraphrased) | tests |\n| --- | --- | --- | --- |\n");
    for (id, binds, summary) in STATEMENTS {
        let binds = match binds {
            Binds::Server => "server".to_owned(),
            Binds::Client => "client".to_owned(),
            Binds::Feature(feature) => format!("server ({feature})"),
        };
        let tests = match cited.get(&normal(id)) {
            None => "none".to_owned(),
            Some(functions) => {
                let mut listed: Vec<String> =
                    functions.iter().take(LISTED_MAX).map(|f| format!("`{f}`")).collect();
                if functions.len() > LISTED_MAX {
                    listed.push(format!("and {} more", functions.len() - LISTED_MAX));
                }
                listed.join(", ")
            }
        };
        let _ = writeln!(doc, "| MQTT-{id} | {binds} | {summary} | {tests} |");
    }
    doc
}

#[test]
fn the_conformance_table_is_current_and_every_server_statement_is_tested() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cited = citations(root);
    let known: BTreeSet<String> = STATEMENTS.iter().map(|(id, _, _)| normal(id)).collect();
    let unknown: Vec<&String> = cited.keys().filter(|id| !known.contains(*id)).collect();
    assert!(unknown.is_empty(), "tests cite ids MQTT 3.1.1 does not have: {unknown:?}");
    let doc = render(&cited);
    let path = root.join(DOC_PATH);
    if std::env::var_os("RINGMQ_WRITE_CONFORMANCE").is_some() {
        std::fs::write(&path, &doc).expect("docs/CONFORMANCE.md is writable");
    }
    let untested: Vec<&str> = STATEMENTS
        .iter()
        .filter(|(id, binds, _)| *binds == Binds::Server && !cited.contains_key(&normal(id)))
        .map(|(id, _, _)| *id)
        .collect();
    assert!(untested.is_empty(), "server statements no test cites: {untested:?}");
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        written == doc,
        "{DOC_PATH} is out of date: run `RINGMQ_WRITE_CONFORMANCE=1 cargo test --test conformance`"
    );
}

#[test]
fn ids_are_found_in_comments_and_names() {
    assert_eq!(ids_in_line("x [MQTT-3.3.1-9] y (MQTT-4.7.3-1)."), ["3.3.1-9", "4.7.3-1"]);
    assert_eq!(ids_in_line("spelled [MQTT-3-8.3-4] there"), ["3.8.3-4"]);
    assert_eq!(
        ids_in_line("[MQTT-3.1.2-8..17] is a range, MQTT-4 a chapter"),
        Vec::<String>::new()
    );
    assert_eq!(ids_in_name("deletes_mqtt_3_3_1_10_and_11"), ["3.3.1-10", "3.3.1-11"]);
    assert_eq!(ids_in_name("x_mqtt_3_1_2_11_and_3_1_2_13"), ["3.1.2-11", "3.1.2-13"]);
    assert_eq!(ids_in_name("flags_mqtt_3_6_1_1_3_8_1_1"), ["3.6.1-1", "3.8.1-1"]);
    assert_eq!(ids_in_name("order_mqtt_4_6_0_2_and_3"), ["4.6.0-2", "4.6.0-3"]);
    assert_eq!(ids_in_name("test_mqtt_3_1_client_is_accepted"), Vec::<String>::new());
    assert_eq!(declared_function("    pub fn subscribe(&mut self"), Some("subscribe"));
    assert_eq!(declared_function("def test_round_trip(broker):"), Some("test_round_trip"));
}
