//! ACL files in Mosquitto's syntax, and the checks the broker makes with them.
//!
//! ```text
//! # comment
//! topic read public/#            <- before any `user` line: the anonymous clients' rules
//! user alice
//! topic readwrite alice/#        <- alice's rules
//! topic deny alice/secret
//! pattern write devices/%c/state <- every client, %c = client id, %u = user name
//! ```
//! `topic [read|write|readwrite|deny] <filter>` (no access word = readwrite), `user <name>`,
//! `pattern [access] <filter>`. As in Mosquitto 2.0 (`security_default.c`):
//! - A client uses the rules of its user name's `user` section, or the anonymous section if it
//!   has no user name; then the patterns. In each list `deny` rules are tried first; the first
//!   matching rule decides. A client with no list of its own and no patterns is denied.
//! - A topic starting with `$` is matched only by rules starting with `$` [MQTT-4.7.2-1].
//! - With patterns present, a client whose user name or client id contains `+` or `#` is
//!   denied (it could otherwise widen a pattern); a `%u` pattern never matches a client
//!   without a user name. `%c`/`%u` must be a whole level.
//!
//! SUBSCRIBE: Mosquitto 2.0 grants every filter and checks read access per delivered message.
//! ringmq answers 0x80 for a filter that can never deliver anything (no read rule overlaps it,
//! or a deny rule covers all of it) and grants the rest; a granted filter that some topic under
//! it may not be read through (a wildcard only partly covered, or overlapping a deny rule) is
//! marked, and each message delivered through it is checked for read access, as Mosquitto does.
//!
//! Invariant: the checks on the message path ([`AclTable::may_read`], [`AclTable::may_write`])
//! walk the rules and the topic's levels in place and never allocate.

use std::collections::HashMap;
use std::fmt;

use crate::protocol::TopicFilter;

/// What a rule grants.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Access {
    Deny,
    Read,
    Write,
    ReadWrite,
}

impl Access {
    fn grants(self, wanted: Wanted) -> bool {
        matches!(
            (self, wanted),
            (Access::Read | Access::ReadWrite, Wanted::Read)
                | (Access::Write | Access::ReadWrite, Wanted::Write)
        )
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Wanted {
    Read,
    Write,
}

/// One `topic` or `pattern` line.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Rule {
    filter: Box<str>,
    access: Access,
    /// A pattern with `%u`: never matches a client without a user name.
    uses_username: bool,
}

/// Which rule list a client uses, resolved once per client and table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AclUser {
    /// No user name: the rules before the first `user` line, if there were any.
    Anonymous,
    /// The `user` section with this index.
    Listed(u32),
    /// A user name with no `user` section: patterns only.
    Unlisted,
}

/// Who is asking: the client id and user name that patterns substitute.
#[derive(Clone, Copy, Debug)]
pub struct Identity<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
}

/// What a SUBSCRIBE filter gets.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SubscribeVerdict {
    /// 0x80: no topic under it could be read.
    Denied,
    /// Granted; `checked`: each message delivered through it must be checked for read
    /// access (some topic under it may not be read).
    Granted { checked: bool },
}

/// A parsed ACL file, shared read-only by every worker.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AclTable {
    /// `None` when no rule came before the first `user` line (Mosquitto then has no list for
    /// anonymous clients, which denies them unless a pattern allows).
    anonymous: Option<Vec<Rule>>,
    users: Vec<Vec<Rule>>,
    user_index: HashMap<Box<str>, u32>,
    patterns: Vec<Rule>,
}

impl fmt::Debug for AclTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AclTable")
            .field("anonymous_rules", &self.anonymous.as_ref().map_or(0, Vec::len))
            .field("users", &self.users.len())
            .field("patterns", &self.patterns.len())
            .finish()
    }
}

impl AclTable {
    /// Parses a file's text; errors name the 1-based line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut table = AclTable::default();
        let mut current: Option<u32> = None;
        for (index, line) in text.lines().enumerate() {
            table
                .parse_line(line, &mut current)
                .map_err(|error| format!("line {}: {error}", index + 1))?;
        }
        Ok(table)
    }

    fn parse_line(&mut self, line: &str, current: &mut Option<u32>) -> Result<(), String> {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            return Ok(());
        }
        let line = line.trim_start();
        let (keyword, rest) = line.split_once([' ', '\t']).unwrap_or((line, ""));
        let rest = rest.trim();
        match keyword {
            "user" => {
                if rest.is_empty() {
                    return Err("`user` without a user name".into());
                }
                let next = u32::try_from(self.users.len()).map_err(|_| "too many users")?;
                let index = *self.user_index.entry(rest.into()).or_insert(next);
                if index == next {
                    self.users.push(Vec::new());
                }
                *current = Some(index);
                Ok(())
            }
            "topic" | "pattern" => {
                let rule = parse_rule(rest, keyword == "pattern")?;
                let list = match (keyword, *current) {
                    ("pattern", _) => &mut self.patterns,
                    (_, Some(user)) => &mut self.users[user as usize],
                    (_, None) => self.anonymous.get_or_insert_with(Vec::new),
                };
                insert_rule(list, rule);
                Ok(())
            }
            other => Err(format!("unknown keyword {other:?} (topic, pattern or user)")),
        }
    }

    /// The rule list for a user name (`None`: anonymous).
    pub fn resolve(&self, username: Option<&str>) -> AclUser {
        match username {
            None => AclUser::Anonymous,
            Some(name) => {
                self.user_index.get(name).map_or(AclUser::Unlisted, |&i| AclUser::Listed(i))
            }
        }
    }

    /// Users with a section, rules in all (for the reload log line).
    pub fn summary(&self) -> (usize, usize) {
        let rules = self.anonymous.as_ref().map_or(0, Vec::len)
            + self.users.iter().map(Vec::len).sum::<usize>()
            + self.patterns.len();
        (self.users.len(), rules)
    }

    /// May this client publish to `topic`? Does not allocate.
    pub fn may_write(&self, user: AclUser, who: Identity<'_>, topic: &str) -> bool {
        self.check(user, who, topic, Wanted::Write)
    }

    /// May this client receive a message on `topic`? Does not allocate.
    pub fn may_read(&self, user: AclUser, who: Identity<'_>, topic: &str) -> bool {
        self.check(user, who, topic, Wanted::Read)
    }

    fn own_rules(&self, user: AclUser) -> Option<&[Rule]> {
        match user {
            AclUser::Anonymous => self.anonymous.as_deref(),
            AclUser::Listed(index) => self.users.get(index as usize).map(Vec::as_slice),
            AclUser::Unlisted => None,
        }
    }

    fn check(&self, user: AclUser, who: Identity<'_>, topic: &str, wanted: Wanted) -> bool {
        let own = self.own_rules(user);
        if own.is_none() && self.patterns.is_empty() {
            return false;
        }
        // In each list the deny rules come first; a matching rule that neither denies nor
        // grants this access lets the search go on (Mosquitto's order).
        for rule in own.unwrap_or_default() {
            if filter_matches(&rule.filter, topic, None) {
                if rule.access == Access::Deny {
                    return false;
                }
                if rule.access.grants(wanted) {
                    return true;
                }
            }
        }
        if self.patterns.is_empty() || !pattern_safe(who) {
            return false;
        }
        for rule in &self.patterns {
            if rule.uses_username && who.username.is_none() {
                continue;
            }
            if filter_matches(&rule.filter, topic, Some(who)) {
                if rule.access == Access::Deny {
                    return false;
                }
                if rule.access.grants(wanted) {
                    return true;
                }
            }
        }
        false
    }

    /// The SUBACK answer for `filter` (see the module documentation).
    pub fn subscribe_verdict(
        &self,
        user: AclUser,
        who: Identity<'_>,
        filter: &str,
    ) -> SubscribeVerdict {
        let own = Overlap::of(self.own_rules(user).unwrap_or_default(), filter, None);
        if own.deny_covers {
            return SubscribeVerdict::Denied;
        }
        let patterns = if self.patterns.is_empty() || !pattern_safe(who) {
            Overlap::default()
        } else {
            let usable =
                self.patterns.iter().filter(|r| !(r.uses_username && who.username.is_none()));
            Overlap::of_iter(usable, filter, Some(who))
        };
        if !own.read_overlaps && (patterns.deny_covers || !patterns.read_overlaps) {
            return SubscribeVerdict::Denied;
        }
        // Topics the own rules do not allow fall through to the patterns.
        let pattern_denies_matter = patterns.deny_overlaps && !own.read_covers;
        let covered = own.read_covers || patterns.read_covers;
        SubscribeVerdict::Granted {
            checked: own.deny_overlaps || pattern_denies_matter || !covered,
        }
    }
}

/// How one rule list relates to a subscription filter.
#[derive(Clone, Copy, Default, Debug)]
struct Overlap {
    deny_covers: bool,
    deny_overlaps: bool,
    read_covers: bool,
    read_overlaps: bool,
}

impl Overlap {
    fn of(rules: &[Rule], filter: &str, who: Option<Identity<'_>>) -> Self {
        Self::of_iter(rules.iter(), filter, who)
    }

    fn of_iter<'r>(
        rules: impl Iterator<Item = &'r Rule>,
        filter: &str,
        who: Option<Identity<'_>>,
    ) -> Self {
        let mut overlap = Overlap::default();
        for rule in rules {
            if !filters_overlap(&rule.filter, filter, who) {
                continue;
            }
            let covers = filter_covers(&rule.filter, filter, who);
            match rule.access {
                Access::Deny => {
                    overlap.deny_overlaps = true;
                    overlap.deny_covers |= covers;
                }
                Access::Read | Access::ReadWrite => {
                    overlap.read_overlaps = true;
                    overlap.read_covers |= covers;
                }
                Access::Write => {}
            }
        }
        overlap
    }
}

/// Parses `[access] <filter>` of a `topic` or `pattern` line.
fn parse_rule(rest: &str, pattern: bool) -> Result<Rule, String> {
    let (access, filter) = match rest.split_once([' ', '\t']) {
        Some((word, filter)) => match word {
            "read" => (Access::Read, filter.trim()),
            "write" => (Access::Write, filter.trim()),
            "readwrite" => (Access::ReadWrite, filter.trim()),
            "deny" => (Access::Deny, filter.trim()),
            // No access word: the whole rest is the filter (Mosquitto needs the word when
            // the topic has a space, so this cannot be one with a typo'd word).
            other => {
                return Err(format!("unknown access {other:?} (read, write, readwrite or deny)"))
            }
        },
        None => (Access::ReadWrite, rest),
    };
    if filter.is_empty() {
        return Err("empty topic".into());
    }
    TopicFilter::try_from(filter).map_err(|error| format!("invalid topic {filter:?}: {error}"))?;
    Ok(Rule { filter: filter.into(), access, uses_username: pattern && filter.contains("%u") })
}

/// Mosquitto puts `deny` rules first, the rest in file order.
fn insert_rule(list: &mut Vec<Rule>, rule: Rule) {
    if rule.access == Access::Deny {
        let first_allow = list.iter().position(|r| r.access != Access::Deny).unwrap_or(list.len());
        list.insert(first_allow, rule);
    } else {
        list.push(rule);
    }
}

/// With patterns in use, a `+` or `#` in the user name or client id denies everything.
fn pattern_safe(who: Identity<'_>) -> bool {
    let unsafe_text = |text: &str| text.contains(['+', '#']);
    !unsafe_text(who.client_id) && !who.username.is_some_and(unsafe_text)
}

/// A rule's level, after `%c`/`%u` substitution when `who` is given.
fn substituted<'a>(level: &'a str, who: Option<Identity<'a>>) -> &'a str {
    match (level, who) {
        ("%c", Some(who)) => who.client_id,
        ("%u", Some(who)) => who.username.unwrap_or(level),
        _ => level,
    }
}

/// A substituted level that must be taken literally (an id is never a wildcard).
fn is_literal_substitution(level: &str, who: Option<Identity<'_>>) -> bool {
    who.is_some() && (level == "%c" || level == "%u")
}

/// Does rule `filter` match the topic name `topic`? (`who`: substitute `%c`/`%u`.)
fn filter_matches(filter: &str, topic: &str, who: Option<Identity<'_>>) -> bool {
    if topic.starts_with('$') != filter.starts_with('$') {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        let literal = is_literal_substitution(level, who);
        match substituted(level, who) {
            "#" if !literal => return true,
            "+" if !literal => {
                if topic_levels.next().is_none() {
                    return false;
                }
            }
            expected => {
                if topic_levels.next() != Some(expected) {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}

/// Can some topic match both `rule` and the subscription `filter`?
fn filters_overlap(rule: &str, filter: &str, who: Option<Identity<'_>>) -> bool {
    // A `$` topic is matched only by filters whose first level is that literal, so a `$`
    // filter and a non-`$` one never share a topic.
    if rule.starts_with('$') != filter.starts_with('$') {
        return false;
    }
    let mut rule_levels = rule.split('/');
    let mut filter_levels = filter.split('/');
    loop {
        let (level, other) = match (rule_levels.next(), filter_levels.next()) {
            (None, None) => return true,
            // "a/#" also matches "a".
            (None, Some(other)) => return other == "#" && filter_levels.next().is_none(),
            (Some(level), other) => (level, other),
        };
        let literal = is_literal_substitution(level, who);
        match (substituted(level, who), other) {
            ("#", _) if !literal => return true,
            (_, Some("#")) => return true,
            (_, None) => return false,
            ("+", Some(_)) if !literal => {}
            (_, Some("+")) => {}
            (expected, Some(other)) if expected == other => {}
            _ => return false,
        }
    }
}

/// Does `rule` match every topic the subscription `filter` can match?
fn filter_covers(rule: &str, filter: &str, who: Option<Identity<'_>>) -> bool {
    if rule.starts_with('$') != filter.starts_with('$') {
        return false;
    }
    let mut filter_levels = filter.split('/');
    for level in rule.split('/') {
        let literal = is_literal_substitution(level, who);
        match (substituted(level, who), filter_levels.next()) {
            ("#", _) if !literal => return true,
            (_, None) => return false,
            // `+` covers a literal or `+`, never a `#` (more than one level).
            ("+", Some(other)) if !literal => {
                if other == "#" {
                    return false;
                }
            }
            (_, Some("+" | "#")) => return false,
            (expected, Some(other)) if expected == other => {}
            _ => return false,
        }
    }
    filter_levels.next().is_none()
}

#[cfg(test)]
#[path = "acl_tests.rs"]
mod tests;
