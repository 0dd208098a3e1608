//! Password file, failed-login limit and ACL, through the scripted-client harness.

use std::net::SocketAddr;

use super::harness::*;
use crate::auth::{AclTable, AuthTables, PasswordFile, PasswordHash};
use crate::broker::{BrokerConfig, CloseReason};
use crate::protocol::{Connect, ConnectReturnCode, Packet, QoS, SubackCode, Utf8Bytes};

/// Cheap hashes (2 iterations) keep the tests fast; the cost is measured elsewhere.
fn passwords(users: &[(&str, &str)]) -> PasswordFile {
    let text: String = users
        .iter()
        .map(|(user, password)| {
            let hash = PasswordHash::with_salt(password.as_bytes(), &[9; 12], 2);
            format!("{user}:{}\n", hash.encode())
        })
        .collect();
    PasswordFile::parse(&text).expect("test password file")
}

fn tables(users: &[(&str, &str)], acl: Option<&str>, generation: u64) -> AuthTables {
    AuthTables {
        passwords: Some(passwords(users)),
        acl: acl.map(|text| AclTable::parse(text).expect("test ACL")),
        generation,
    }
}

fn login(client_id: &str, user: Option<&str>, password: Option<&str>) -> Connect {
    Connect {
        username: user.map(|user| Utf8Bytes::from(user.to_owned())),
        password: password.map(|password| bytes::Bytes::copy_from_slice(password.as_bytes())),
        ..connect_packet(client_id, true)
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test address")
}

fn code(cluster: &mut Cluster, connect: Connect) -> ConnectReturnCode {
    cluster.connect_from(0, addr("192.0.2.1:5000"), connect).1.code
}

#[test]
fn bad_credentials_get_0x04_and_no_user_name_0x05_when_anonymous_is_off() {
    // [MQTT-3.2.2-5]: a refused CONNECT gets its return code, then the connection closes.
    let mut cluster =
        Cluster::single(BrokerConfig { allow_anonymous: false, ..Default::default() });
    cluster.set_auth(tables(&[("alice", "secret")], None, 1));
    assert_eq!(
        code(&mut cluster, login("c1", Some("alice"), Some("secret"))),
        ConnectReturnCode::Accepted
    );
    for (user, password) in
        [(Some("alice"), Some("Secret")), (Some("alice"), None), (Some("mallory"), Some("secret"))]
    {
        let (client, connack) =
            cluster.connect_from(0, addr("192.0.2.1:5000"), login("c2", user, password));
        assert_eq!(connack.code, ConnectReturnCode::BadUsernameOrPassword, "{user:?} {password:?}");
        assert!(!connack.session_present, "[MQTT-3.2.2-4]");
        let reason = CloseReason::ConnectRefused(ConnectReturnCode::BadUsernameOrPassword);
        assert_eq!(cluster.ended(client), Some(Ended::ByBroker(reason)));
    }
    assert_eq!(code(&mut cluster, login("c3", None, None)), ConnectReturnCode::NotAuthorized);
    let stats = cluster.broker(0).stats();
    assert_eq!(stats.connects_refused_credentials, 3);
    assert_eq!(stats.connects_refused, 4);
    assert_eq!(cluster.broker(0).session_count(), 1, "refusals create no session");
}

#[test]
fn anonymous_clients_pass_a_password_file_when_allowed() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    cluster.set_auth(tables(&[("alice", "secret")], None, 1));
    assert_eq!(code(&mut cluster, login("anon", None, None)), ConnectReturnCode::Accepted);
}

#[test]
fn a_failed_login_does_not_take_over_the_session() {
    // [MQTT-3.1.4-2] applies to an accepted CONNECT only: a guess must not kick the owner.
    let mut cluster = Cluster::single(BrokerConfig::default());
    cluster.set_auth(tables(&[("alice", "secret")], None, 1));
    let (owner, connack) =
        cluster.connect_from(0, addr("192.0.2.1:1"), login("phone", Some("alice"), Some("secret")));
    assert_eq!(connack.code, ConnectReturnCode::Accepted);
    assert_eq!(
        code(&mut cluster, login("phone", Some("alice"), Some("guess"))),
        ConnectReturnCode::BadUsernameOrPassword
    );
    assert_eq!(cluster.ended(owner), None);
}

#[test]
fn failed_logins_from_one_address_are_limited_until_the_window_ends() {
    let config =
        BrokerConfig { auth_failures_max: 3, auth_failure_window_secs: 60, ..Default::default() };
    let mut cluster = Cluster::single(config);
    cluster.set_auth(tables(&[("alice", "secret")], None, 1));
    let guesser = addr("198.51.100.7:4000");
    for guess in ["a", "b", "c"] {
        let (_, connack) = cluster.connect_from(0, guesser, login("g", Some("alice"), Some(guess)));
        assert_eq!(connack.code, ConnectReturnCode::BadUsernameOrPassword);
    }
    // Even the right password is refused now, without being checked.
    let (_, connack) = cluster.connect_from(0, guesser, login("g", Some("alice"), Some("secret")));
    assert_eq!(connack.code, ConnectReturnCode::NotAuthorized);
    // Another port of the same address is the same source; another address is not.
    let same_host = addr("198.51.100.7:4001");
    let (_, connack) =
        cluster.connect_from(0, same_host, login("g", Some("alice"), Some("secret")));
    assert_eq!(connack.code, ConnectReturnCode::NotAuthorized);
    let (_, connack) = cluster.connect_from(
        0,
        addr("198.51.100.8:4000"),
        login("h", Some("alice"), Some("secret")),
    );
    assert_eq!(connack.code, ConnectReturnCode::Accepted);
    let stats = cluster.broker(0).stats();
    assert_eq!((stats.connects_refused_credentials, stats.connects_rate_limited), (3, 2));
    cluster.advance(60_000);
    let (_, connack) = cluster.connect_from(0, guesser, login("g", Some("alice"), Some("secret")));
    assert_eq!(connack.code, ConnectReturnCode::Accepted, "the window ended");
}

#[test]
fn a_handoff_carries_the_peer_address_to_the_home_worker() {
    let config = BrokerConfig { auth_failures_max: 1, ..Default::default() };
    let mut cluster = Cluster::new(2, config);
    cluster.set_auth(tables(&[("alice", "secret")], None, 1));
    let away = client_id_on(1, 2, "away");
    let guesser = addr("203.0.113.9:1234");
    let (client, connack) =
        cluster.connect_from(0, guesser, login(&away, Some("alice"), Some("x")));
    assert_eq!(connack.code, ConnectReturnCode::BadUsernameOrPassword);
    assert_eq!(cluster.where_is(client), crate::broker::WorkerId(1), "checked on the home worker");
    let (_, connack) =
        cluster.connect_from(0, guesser, login(&away, Some("alice"), Some("secret")));
    assert_eq!(
        connack.code,
        ConnectReturnCode::NotAuthorized,
        "the address was limited on worker 1"
    );
    let (accepted, connack) = cluster.connect_from(
        0,
        addr("203.0.113.10:1"),
        login(&away, Some("alice"), Some("secret")),
    );
    assert_eq!(connack.code, ConnectReturnCode::Accepted);
    let conn = cluster.conn_of(accepted);
    assert_eq!(
        cluster.broker(1).peer_addr(conn).map(|peer| peer.to_string()),
        Some("203.0.113.10:1".into())
    );
}

const ACL: &str = "\
topic read public/#
user alice
topic readwrite alice/#
topic read public/#
topic write inbox/#
topic deny public/secret
user watcher
topic read #
pattern write devices/%c/state
";

fn acl_cluster() -> Cluster {
    let mut cluster = Cluster::single(BrokerConfig::default());
    cluster.set_auth(tables(&[("alice", "a"), ("watcher", "w"), ("bob", "b")], Some(ACL), 1));
    cluster
}

fn connect_as(cluster: &mut Cluster, client_id: &str, user: &str, password: &str) -> Client {
    let (client, connack) =
        cluster.connect_from(0, addr("192.0.2.5:1"), login(client_id, Some(user), Some(password)));
    assert_eq!(connack.code, ConnectReturnCode::Accepted, "{user}");
    client
}

#[test]
fn a_denied_publish_is_acknowledged_and_dropped_at_every_qos() {
    // [MQTT-3.3.5-2]: the server acknowledges by the normal QoS rules and does not deliver.
    let mut cluster = acl_cluster();
    let watcher = connect_as(&mut cluster, "w", "watcher", "w");
    assert_eq!(
        cluster.subscribe(watcher, &[("#", QoS::ExactlyOnce)]),
        vec![SubackCode::Granted(QoS::ExactlyOnce)]
    );
    let alice = connect_as(&mut cluster, "a", "alice", "a");
    cluster.publish(alice, "public/news", b"0", QoS::AtMostOnce, false);
    assert!(cluster.recv(alice).is_empty(), "QoS 0: nothing to acknowledge");
    cluster.publish(alice, "public/news", b"1", QoS::AtLeastOnce, true);
    let id = cluster.last_packet_id(alice);
    assert_eq!(cluster.recv(alice), vec![Packet::Puback(pid(id))]);
    cluster.publish(alice, "public/news", b"2", QoS::ExactlyOnce, false);
    let id = cluster.last_packet_id(alice);
    assert_eq!(cluster.recv(alice), vec![Packet::Pubrec(pid(id))]);
    cluster.send(alice, Packet::Pubrel(pid(id)));
    assert_eq!(cluster.recv(alice), vec![Packet::Pubcomp(pid(id))]);
    assert!(cluster.recv_publishes(watcher).is_empty(), "nothing denied was delivered");
    assert_eq!(cluster.broker(0).retained_count(), 0, "a denied retained message is not stored");
    assert_eq!(cluster.broker(0).stats().publishes_denied, 3);
    // Allowed topics still flow, including through a pattern.
    cluster.publish(alice, "alice/x", b"ok", QoS::AtLeastOnce, false);
    let bob = connect_as(&mut cluster, "dev-7", "bob", "b");
    cluster.publish(bob, "devices/dev-7/state", b"on", QoS::AtMostOnce, false);
    cluster.publish(bob, "devices/dev-8/state", b"spoof", QoS::AtMostOnce, false);
    let got: Vec<String> =
        cluster.recv_acking(watcher).iter().map(|p| p.topic.as_str().to_owned()).collect();
    assert_eq!(got, vec!["alice/x", "devices/dev-7/state"]);
    assert_eq!(cluster.broker(0).stats().publishes_denied, 4);
}

#[test]
fn a_denied_filter_gets_0x80_and_the_others_in_the_same_subscribe_are_granted() {
    // [MQTT-3.8.4-4] [MQTT-3.8.4-5]: one return code per filter, in order; 0x80 = failure.
    let mut cluster = acl_cluster();
    let alice = connect_as(&mut cluster, "a", "alice", "a");
    let codes = cluster.subscribe(
        alice,
        &[
            ("alice/#", QoS::AtLeastOnce),
            ("inbox/#", QoS::AtMostOnce),
            ("public/secret", QoS::AtMostOnce),
            ("public/+", QoS::AtMostOnce),
        ],
    );
    assert_eq!(
        codes,
        vec![
            SubackCode::Granted(QoS::AtLeastOnce),
            SubackCode::Failure,
            SubackCode::Failure,
            SubackCode::Granted(QoS::AtMostOnce)
        ]
    );
    assert_eq!(cluster.broker(0).stats().subscriptions_denied, 2);
    assert_eq!(cluster.broker(0).subscription_count(), 2, "denied filters are not stored");
    let anonymous = cluster.connect("anon", true);
    assert_eq!(
        cluster.subscribe(anonymous, &[("alice/#", QoS::AtMostOnce)]),
        vec![SubackCode::Failure]
    );
}

#[test]
fn a_wildcard_subscriber_receives_only_what_it_may_read() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let acl = format!("{ACL}user bob\ntopic write public/#\n");
    cluster.set_auth(tables(&[("alice", "a"), ("bob", "b")], Some(&acl), 1));
    let alice = connect_as(&mut cluster, "a", "alice", "a");
    // alice may read public/# but not public/secret: `public/#` is granted and checked.
    let granted = cluster.subscribe(alice, &[("public/#", QoS::AtMostOnce)]);
    assert_eq!(granted, vec![SubackCode::Granted(QoS::AtMostOnce)]);
    let bob = connect_as(&mut cluster, "b", "bob", "b");
    cluster.publish(bob, "public/news", b"n", QoS::AtMostOnce, false);
    cluster.publish(bob, "public/secret", b"s", QoS::AtMostOnce, false);
    cluster.publish(bob, "public/more", b"m", QoS::AtMostOnce, false);
    let got = topics(cluster.recv_publishes(alice));
    assert_eq!(got, vec!["public/news", "public/more"]);
    assert_eq!(cluster.broker(0).stats().deliveries_denied, 1);
}

fn topics(publishes: Vec<crate::protocol::Publish>) -> Vec<String> {
    publishes.iter().map(|p| p.topic.as_str().to_owned()).collect()
}

#[test]
fn retained_messages_sent_on_subscribe_are_checked_too() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let acl = "topic readwrite #\nuser alice\ntopic read shared/+\ntopic deny shared/hidden\n";
    cluster.set_auth(tables(&[("alice", "a")], Some(acl), 1));
    let anonymous = cluster.connect("anon", true);
    cluster.publish(anonymous, "shared/open", b"o", QoS::AtMostOnce, true);
    cluster.publish(anonymous, "shared/hidden", b"h", QoS::AtMostOnce, true);
    let alice = connect_as(&mut cluster, "a", "alice", "a");
    assert_eq!(
        cluster.subscribe(alice, &[("shared/+", QoS::AtMostOnce)]),
        vec![SubackCode::Granted(QoS::AtMostOnce)]
    );
    let got: Vec<String> =
        cluster.recv_publishes(alice).iter().map(|p| p.topic.as_str().to_owned()).collect();
    assert_eq!(got, vec!["shared/open"], "[MQTT-3.3.1-6] retained, but only what alice may read");
}

#[test]
fn a_will_the_client_may_not_write_is_refused_at_connect() {
    let mut cluster = acl_cluster();
    let mut connect = login("a", Some("alice"), Some("a"));
    connect.will = Some(will("public/obituary", b"gone", QoS::AtMostOnce, false));
    assert_eq!(code(&mut cluster, connect), ConnectReturnCode::NotAuthorized);
    let mut connect = login("a", Some("alice"), Some("a"));
    connect.will = Some(will("alice/status", b"gone", QoS::AtMostOnce, false));
    assert_eq!(code(&mut cluster, connect), ConnectReturnCode::Accepted);
    assert_eq!(cluster.broker(0).stats().connects_refused_unauthorised, 1);
}

#[test]
fn a_reload_changes_passwords_for_the_next_connect_and_keeps_connections() {
    let mut cluster = acl_cluster();
    let alice = connect_as(&mut cluster, "a", "alice", "a");
    assert_eq!(
        cluster.subscribe(alice, &[("alice/#", QoS::AtMostOnce)]),
        vec![SubackCode::Granted(QoS::AtMostOnce)]
    );
    // bob's password changes (he is not connected); alice loses read access to alice/private.
    let acl = format!("{ACL}\nuser alice\ntopic deny alice/private\n");
    let closed = cluster.reload_auth(tables(
        &[("alice", "a"), ("watcher", "w"), ("bob", "new")],
        Some(&acl),
        2,
    ));
    assert_eq!(closed, vec![0]);
    assert_eq!(cluster.ended(alice), None, "the reload keeps an unchanged user's connection");
    assert_eq!(
        code(&mut cluster, login("b2", Some("bob"), Some("b"))),
        ConnectReturnCode::BadUsernameOrPassword
    );
    let writer = connect_as(&mut cluster, "a3", "alice", "a");
    cluster.publish(writer, "alice/open", b"1", QoS::AtMostOnce, false);
    cluster.publish(writer, "alice/private", b"2", QoS::AtMostOnce, false);
    let got: Vec<String> =
        cluster.recv_publishes(alice).iter().map(|p| p.topic.as_str().to_owned()).collect();
    assert_eq!(got, vec!["alice/open"], "the subscription granted before the reload is checked");
}

#[test]
fn without_files_nothing_is_checked() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let (client, connack) =
        cluster.connect_from(0, addr("192.0.2.9:9"), login("x", Some("anyone"), Some("any")));
    assert_eq!(connack.code, ConnectReturnCode::Accepted);
    assert_eq!(
        cluster.subscribe(client, &[("#", QoS::AtMostOnce)]),
        vec![SubackCode::Granted(QoS::AtMostOnce)]
    );
    cluster.publish(client, "a", b"1", QoS::AtMostOnce, false);
    assert_eq!(cluster.recv_publishes(client).len(), 1);
}

/// As Mosquitto on a reload: a connected client whose user the new password file deletes, or
/// whose password it changes, is disconnected (will published, counted); an unchanged user, an
/// anonymous client and one whose user name came from its certificate stay.
#[test]
fn a_reload_disconnects_deleted_users_and_changed_passwords_only() {
    let mut cluster = acl_cluster();
    let alice = connect_as(&mut cluster, "a", "alice", "a");
    let (bob, connack) = cluster.connect_from(
        0,
        addr("192.0.2.5:2"),
        Connect {
            will: Some(will("devices/b/state", b"gone", QoS::AtMostOnce, false)),
            ..login("b", Some("bob"), Some("b"))
        },
    );
    assert_eq!(connack.code, ConnectReturnCode::Accepted);
    let watcher = connect_as(&mut cluster, "w", "watcher", "w");
    cluster.subscribe(watcher, &[("devices/b/state", QoS::AtMostOnce)]);
    let (anonymous, _) = cluster.connect_from(0, addr("192.0.2.5:3"), login("n", None, None));
    let (carol, connack) =
        cluster.connect_with_certificate(0, addr("192.0.2.5:4"), login("c", Some("carol"), None));
    assert_eq!(connack.code, ConnectReturnCode::Accepted);
    // alice is deleted, bob's password changes, watcher's stays; carol was never listed.
    let closed = cluster.reload_auth(tables(&[("watcher", "w"), ("bob", "new")], Some(ACL), 2));
    assert_eq!(closed, vec![2]);
    let revoked = Some(Ended::ByBroker(CloseReason::CredentialsRevoked));
    assert_eq!((cluster.ended(alice), cluster.ended(bob)), (revoked, revoked));
    for client in [watcher, anonymous, carol] {
        assert_eq!(cluster.ended(client), None, "{client:?} stays");
    }
    assert_eq!(topics(cluster.recv_publishes(watcher)), vec!["devices/b/state"], "bob's will");
    assert_eq!(cluster.broker(0).stats().closes.credentials_revoked, 2);
    // Reloading the same file again changes nothing; no password file disconnects nobody.
    assert_eq!(cluster.reload_auth(tables(&[("watcher", "w")], Some(ACL), 3)), vec![0]);
    let no_file = AuthTables { passwords: None, acl: None, generation: 4 };
    assert_eq!(cluster.reload_auth(no_file), vec![0]);
    assert_eq!(cluster.ended(watcher), None);
}

/// `use_identity_as_username`: the certificate is the credential, so the password file is not
/// consulted (a name it does not list gets in, and no password is needed); the ACL still
/// applies to that name; without a certificate (no name) the CONNECT is refused 0x04.
#[test]
fn a_certificate_identity_skips_the_password_file_but_not_the_acl() {
    let mut cluster = acl_cluster();
    let (client, connack) =
        cluster.connect_with_certificate(0, addr("192.0.2.6:1"), login("c", Some("alice2"), None));
    assert_eq!(connack.code, ConnectReturnCode::Accepted);
    assert_eq!(
        cluster.subscribe(client, &[("alice/#", QoS::AtMostOnce)]),
        vec![SubackCode::Failure],
        "alice2 has no ACL rules of her own"
    );
    let (alice, connack) =
        cluster.connect_with_certificate(0, addr("192.0.2.6:1"), login("a", Some("alice"), None));
    assert_eq!(connack.code, ConnectReturnCode::Accepted, "listed, yet no password needed");
    assert_eq!(
        cluster.subscribe(alice, &[("alice/#", QoS::AtMostOnce)]),
        vec![SubackCode::Granted(QoS::AtMostOnce)]
    );
    let (_, connack) =
        cluster.connect_with_certificate(0, addr("192.0.2.6:1"), login("x", None, None));
    assert_eq!(connack.code, ConnectReturnCode::BadUsernameOrPassword, "no certificate");
    let stats = cluster.broker(0).stats();
    assert_eq!((stats.connects_refused_credentials, stats.connects_rate_limited), (1, 0));
}

/// The runtime gives every worker one limiter: failures whose sessions live on different
/// workers add up to one limit per address. Without sharing, each worker would allow
/// `auth_failures_max` (checked too, so the test can tell the two apart).
#[test]
fn failed_logins_spread_over_workers_add_up_to_one_limit_when_shared() {
    let config =
        BrokerConfig { auth_failures_max: 4, auth_failure_window_secs: 60, ..Default::default() };
    let guesser = addr("198.51.100.9:4000");
    for shared in [true, false] {
        let mut cluster = Cluster::new(2, config.clone());
        cluster.set_auth(tables(&[("alice", "secret")], None, 1));
        if shared {
            let limiter =
                std::sync::Arc::new(crate::auth::FailureLimiter::new(config.limiter_config(), 5));
            for worker in 0..2 {
                cluster.broker_mut(worker).share_failure_limiter(std::sync::Arc::clone(&limiter));
            }
        }
        // Two failures homed on each worker (the CONNECT is handed to its home worker).
        for worker in [0, 1, 0, 1] {
            let id = client_id_on(worker, 2, &format!("guess-{worker}"));
            let (_, connack) =
                cluster.connect_from(0, guesser, login(&id, Some("alice"), Some("wrong")));
            assert_eq!(connack.code, ConnectReturnCode::BadUsernameOrPassword);
        }
        let id = client_id_on(1, 2, "right");
        let (_, connack) =
            cluster.connect_from(0, guesser, login(&id, Some("alice"), Some("secret")));
        let expected =
            if shared { ConnectReturnCode::NotAuthorized } else { ConnectReturnCode::Accepted };
        assert_eq!(connack.code, expected, "shared: {shared}");
    }
}
