//! ACL parsing and checks, data-driven: (rules, who, topic, expected).

use super::*;

const FILE: &str = "\
# anonymous clients
topic read public/#
topic deny public/secret

user alice
topic readwrite alice/#
topic write shared/in
topic deny alice/locked/#
topic read $SYS/broker/#

user bob
topic shared/#

pattern readwrite devices/%c/#
pattern read users/%u/inbox
pattern deny devices/%c/private
";

fn table() -> AclTable {
    AclTable::parse(FILE).unwrap_or_else(|error| panic!("{error}"))
}

fn who<'a>(client_id: &'a str, username: Option<&'a str>) -> Identity<'a> {
    Identity { client_id, username }
}

#[test]
fn reads_and_writes_follow_mosquittos_rules() {
    let table = table();
    let anonymous = who("anon-1", None);
    let alice = who("alice-phone", Some("alice"));
    let bob = who("bob-1", Some("bob"));
    let carol = who("carol-1", Some("carol"));
    for (who, read, topic, expected) in [
        // The anonymous section.
        (anonymous, true, "public/news", true),
        (anonymous, false, "public/news", false),
        (anonymous, true, "public/secret", false), // deny first
        (anonymous, true, "private/x", false),
        // alice's section.
        (alice, true, "alice/a/b", true),
        (alice, false, "alice/a/b", true),
        (alice, false, "shared/in", true),
        (alice, true, "shared/in", false), // write only
        (alice, true, "alice/locked/x", false),
        (alice, true, "public/news", false), // not the anonymous rules
        // `$` topics only through `$` rules [MQTT-4.7.2-1].
        (alice, true, "$SYS/broker/uptime", true),
        (bob, true, "$SYS/broker/uptime", false),
        // No access word: readwrite.
        (bob, true, "shared/x/y", true),
        (bob, false, "shared/x/y", true),
        // Patterns, for everyone: %c and %u.
        (bob, false, "devices/bob-1/state", true),
        (bob, false, "devices/alice-phone/state", false),
        (carol, true, "users/carol/inbox", true),
        (carol, true, "users/bob/inbox", false),
        (carol, true, "devices/carol-1/private", false), // pattern deny first
        (anonymous, true, "devices/anon-1/x", true),
        (anonymous, true, "users/%u/inbox", false), // %u never matches without a user name
    ] {
        let user = table.resolve(who.username);
        let allowed =
            if read { table.may_read(user, who, topic) } else { table.may_write(user, who, topic) };
        let what = if read { "read" } else { "write" };
        assert_eq!(allowed, expected, "{who:?} {what} {topic}");
    }
}

#[test]
fn a_matching_rule_without_the_access_lets_the_search_go_on() {
    let table = AclTable::parse("user u\ntopic write a/#\npattern read a/%u\n").unwrap();
    let who = who("c", Some("u"));
    let user = table.resolve(Some("u"));
    assert!(table.may_read(user, who, "a/u"), "the write rule matches but does not decide");
    assert!(!table.may_read(user, who, "a/v"));
}

#[test]
fn wildcards_in_ids_deny_everything_when_patterns_are_used() {
    let table = table();
    let sneaky = who("dev/+", Some("bob"));
    let user = table.resolve(Some("bob"));
    // bob's own rules still apply; the patterns do not.
    assert!(table.may_read(user, sneaky, "shared/a"));
    assert!(!table.may_write(user, sneaky, "devices/dev/+/state"));
    let sneaky_user = who("c", Some("a#"));
    assert!(!table.may_read(table.resolve(Some("a#")), sneaky_user, "users/a#/inbox"));
}

#[test]
fn no_rules_of_ones_own_and_no_patterns_denies() {
    let table = AclTable::parse("user alice\ntopic read a\n").unwrap();
    assert_eq!(table.resolve(None), AclUser::Anonymous);
    assert!(!table.may_read(AclUser::Anonymous, who("x", None), "a"));
    assert_eq!(table.resolve(Some("zed")), AclUser::Unlisted);
    assert!(!table.may_read(AclUser::Unlisted, who("x", Some("zed")), "a"));
}

#[test]
fn subscribe_verdicts() {
    use SubscribeVerdict::{Denied, Granted};
    let table = table();
    let anonymous = who("anon-1", None);
    let alice = who("alice-phone", Some("alice"));
    for (who, filter, expected) in [
        (anonymous, "public/news", Granted { checked: false }),
        (anonymous, "public/secret", Denied),
        (anonymous, "#", Granted { checked: true }), // partly readable: checked per message
        (anonymous, "private/#", Denied),
        (alice, "alice/x", Granted { checked: false }),
        (alice, "alice/#", Granted { checked: true }), // overlaps its deny rule
        (alice, "alice/locked/#", Denied),
        (alice, "shared/in", Denied), // write only
        (alice, "$SYS/#", Granted { checked: true }),
        (alice, "$SYS/broker/+", Granted { checked: false }),
        (alice, "#", Granted { checked: true }),
        (who("d1", Some("bob")), "devices/d1/+", Granted { checked: true }),
        (who("d1", Some("bob")), "devices/d1/private", Denied),
        (who("d1", Some("bob")), "shared/+/x", Granted { checked: false }),
        (who("d1", Some("bob")), "devices/d2/+", Denied),
    ] {
        let user = table.resolve(who.username);
        assert_eq!(table.subscribe_verdict(user, who, filter), expected, "{who:?} {filter}");
    }
}

#[test]
fn overlap_and_cover_on_levels() {
    for (rule, filter, overlap, covers) in [
        ("a/#", "a", true, true),
        ("a", "a/#", true, false),
        ("a/+", "a/#", true, false),
        ("a/+", "a/+", true, true),
        ("a/+", "a/b", true, true),
        ("a/b", "a/+", true, false),
        ("+/b", "a/+", true, false),
        ("a/b/c", "a/+", false, false),
        ("#", "$SYS/#", false, false),
        ("$SYS/#", "#", false, false),
        ("$SYS/#", "$SYS/x", true, true),
        ("#", "x/y/z", true, true),
    ] {
        assert_eq!(filters_overlap(rule, filter, None), overlap, "overlap {rule} {filter}");
        assert_eq!(filter_covers(rule, filter, None), covers, "cover {rule} {filter}");
    }
}

#[test]
fn substitution_is_a_whole_level_and_never_a_wildcard() {
    let plus_id = who("+", None);
    assert!(!filter_matches("devices/%c", "devices/x", Some(plus_id)));
    assert!(filter_matches("devices/%c", "devices/+", Some(plus_id)));
    let id = who("dev", None);
    assert!(!filter_matches("devices/x%c", "devices/xdev", Some(id)));
    assert!(filter_matches("devices/%c/#", "devices/dev/a/b", Some(id)));
}

#[test]
fn parse_errors_name_the_line() {
    for (text, expected) in [
        ("topic", "line 1: empty topic"),
        ("user", "line 1: `user` without a user name"),
        ("# c\ntopic sideways a/b", "line 2: unknown access \"sideways\""),
        ("topic read a/#/b", "invalid topic"),
        ("topics read a", "unknown keyword \"topics\""),
    ] {
        let error = AclTable::parse(text).unwrap_err();
        assert!(error.contains(expected), "{text:?}: {error}");
    }
}

#[test]
fn deny_rules_go_first_whatever_their_place_in_the_file() {
    let table = AclTable::parse("topic read a/#\ntopic deny a/b\n").unwrap();
    assert!(!table.may_read(AclUser::Anonymous, who("c", None), "a/b"));
    assert!(table.may_read(AclUser::Anonymous, who("c", None), "a/c"));
    assert_eq!(table.summary(), (0, 2));
}
