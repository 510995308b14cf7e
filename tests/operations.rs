//! Operating the proxy: `/metrics` after a known workload, `/readyz` following a backend, the JSON audit log,
//! per-tenant rate limits and connection caps — against a real nx-27017, with raw frames so that every command
//! sent is known.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bson::{rawdoc, RawDocumentBuf};
use common::{http_get as get, metric as value, policy, Backend, RawClient, TempDir};
use tenantwall::Server;
use tenantwall_protocol::{Message, MsgFlags, MsgHeader, OpMsg};

fn msg(request_id: i32, body: RawDocumentBuf) -> Vec<u8> {
    OpMsg::new(MsgFlags::default(), body).encode(request_id, 0).unwrap().to_vec()
}

fn command(client: &mut RawClient, frame: &[u8]) -> RawDocumentBuf {
    client.send(frame);
    let reply = client.recv().expect("proxy closed instead of replying");
    assert_eq!(reply.header.response_to, MsgHeader::read(frame).unwrap().request_id);
    match reply.message {
        Message::Msg(m) => m.body().to_owned(),
        other => panic!("expected OP_MSG, got {other:?}"),
    }
}

fn ok(reply: &RawDocumentBuf) -> bool {
    matches!(reply.get("ok").unwrap(), Some(bson::RawBsonRef::Double(v)) if v == 1.0)
        || matches!(reply.get("ok").unwrap(), Some(bson::RawBsonRef::Int32(1)))
}

/// Two tenants, each on its own tenant-bound listener, sharing `app.orders` by the tenant field; an admin
/// listener; an audit log in `dir`. `acme` and `globex` tables get `acme_extra` / `globex_extra`.
fn ops_policy(backend: &Backend, dir: &TempDir, acme_extra: &str, globex_extra: &str, extra: &str) -> String {
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\ntenant = \"acme\"\n\n\
         [[listeners]]\naddress = \"127.0.0.1:0\"\ntenant = \"globex\"\n\n\
         [[backends]]\nname = \"main\"\nuri = \"{}\"\n\n\
         [[tenants]]\nid = \"acme\"\nbackend = \"main\"\n{acme_extra}\n\n\
         [[tenants]]\nid = \"globex\"\nbackend = \"main\"\n{globex_extra}\n\n\
         [[rules]]\ndatabase = \"app\"\ncollection = \"orders\"\nmode = \"field\"\n\n\
         [audit]\npath = \"{}\"\n\n{extra}",
        backend.uri(),
        dir.0.join("audit.jsonl").display(),
    )
}

/// Scrapes `/metrics` until `series` reaches `want` (a command is counted just after its reply is written, so a
/// scrape may come a moment before the last one is), then returns the whole text.
fn scrape_when(admin: SocketAddr, token: Option<&str>, series: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, metrics) = get(admin, "/metrics", token);
        assert_eq!(status, 200);
        if value(&metrics, series) == want || Instant::now() > deadline {
            return metrics;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn audit_lines(dir: &TempDir) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.0.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each audit line is one JSON object"))
        .collect()
}

/// Waits until the audit log holds `n` lines (the writer runs off the data path).
fn wait_for_audit(dir: &TempDir, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = audit_lines(dir);
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_workload_per_tenant() {
    let backend = Backend::start();
    let dir = TempDir::new("ops-metrics");
    let var = format!("TENANTWALL_TEST_ADMIN_TOKEN_{}", std::process::id());
    std::env::set_var(&var, "t0ken-for-tests");
    let admin = format!("[admin]\naddress = \"127.0.0.1:0\"\ntoken_env = \"{var}\"\n");
    let text = ops_policy(&backend, &dir, "", "", &admin);
    let server = Server::bind(policy(&text), None).await.expect("bind");
    let admin = server.admin_addr().expect("admin listener");
    let proxy = server.spawn();
    let (acme_addr, globex_addr) = (proxy.addrs()[0], proxy.addrs()[1]);

    let mut acme = RawClient::connect(acme_addr);
    let docs = rawdoc! { "insert": "orders", "documents": [{"n": 1}, {"n": 2}, {"n": 3}], "$db": "app" };
    assert!(ok(&command(&mut acme, &msg(1, docs))));
    let find = command(&mut acme, &msg(2, rawdoc! { "find": "orders", "filter": {}, "$db": "app" }));
    assert!(ok(&find), "{find:?}");
    let denied = command(&mut acme, &msg(3, rawdoc! { "find": "secrets", "filter": {}, "$db": "app" }));
    assert!(!ok(&denied));
    assert!(ok(&command(&mut acme, &msg(4, rawdoc! { "ping": 1, "$db": "admin" }))));
    let mut globex = RawClient::connect(globex_addr);
    assert!(ok(&command(&mut globex, &msg(1, rawdoc! { "find": "orders", "filter": {}, "$db": "app" }))));
    proxy.reloader().apply(policy(&text));

    assert_eq!(get(admin, "/metrics", None).0, 401, "the token is required");
    assert_eq!(get(admin, "/metrics", Some("wrong")).0, 401);
    let last = r#"tenantwall_commands_total{tenant="globex",command="find",outcome="forwarded"}"#;
    let metrics = scrape_when(admin, Some("t0ken-for-tests"), last, 1.0);
    let count = |tenant: &str, command: &str, outcome: &str| {
        value(
            &metrics,
            &format!(r#"tenantwall_commands_total{{tenant="{tenant}",command="{command}",outcome="{outcome}"}}"#),
        )
    };
    assert_eq!(count("acme", "insert", "forwarded"), 1.0, "{metrics}");
    assert_eq!(count("acme", "find", "forwarded"), 1.0);
    assert_eq!(count("acme", "find", "denied"), 1.0);
    assert_eq!(count("acme", "ping", "local"), 1.0);
    assert_eq!(count("globex", "find", "forwarded"), 1.0);
    assert_eq!(count("globex", "insert", "forwarded"), 0.0);
    assert_eq!(value(&metrics, r#"tenantwall_documents_returned_total{tenant="acme"}"#), 3.0);
    assert_eq!(value(&metrics, r#"tenantwall_documents_returned_total{tenant="globex"}"#), 0.0, "isolated");
    assert_eq!(value(&metrics, r#"tenantwall_command_duration_seconds_count{tenant="acme"}"#), 4.0);
    assert_eq!(value(&metrics, r#"tenantwall_backend_duration_seconds_count{backend="main"}"#), 3.0);
    assert!(value(&metrics, r#"tenantwall_backend_time_seconds_total{tenant="acme"}"#) > 0.0);
    assert!(value(&metrics, r#"tenantwall_bytes_received_total{tenant="acme"}"#) > 0.0);
    assert!(value(&metrics, r#"tenantwall_bytes_sent_total{tenant="globex"}"#) > 0.0);
    assert_eq!(value(&metrics, r#"tenantwall_connections{tenant="acme"}"#), 1.0);
    assert_eq!(value(&metrics, r#"tenantwall_connections{tenant="globex"}"#), 1.0);
    assert_eq!(value(&metrics, r#"tenantwall_policy_reloads_total{result="ok"}"#), 1.0);
    assert_eq!(value(&metrics, "tenantwall_policy_generation"), 2.0);
    assert!(!metrics.contains("secrets"), "no label from client input");

    drop(acme);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = get(admin, "/metrics", Some("t0ken-for-tests")).1;
        if value(&metrics, r#"tenantwall_connections{tenant="acme"}"#) == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "closed connection still counted:\n{metrics}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(get(admin, "/healthz", Some("t0ken-for-tests")).0, 200);
    drop(globex);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_a_backend_that_stops_and_returns() {
    let mut backend = Backend::start();
    let dir = TempDir::new("ops-ready");
    let admin = "[admin]\naddress = \"127.0.0.1:0\"\nhealth_interval_secs = 1\n";
    let server = Server::bind(policy(&ops_policy(&backend, &dir, "", "", admin)), None).await.expect("bind");
    let admin = server.admin_addr().expect("admin listener");
    let proxy = server.spawn();
    let wait_for = |want: u16| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (status, body) = get(admin, "/readyz", None);
            if status == want {
                return body;
            }
            assert!(Instant::now() < deadline, "/readyz stayed {status}: {body}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for(200);
    backend.kill();
    let body = wait_for(503);
    assert!(body.contains("main"), "names the failing backend: {body}");
    assert!(!body.contains("127.0.0.1"), "never the backend's address: {body}");
    assert_eq!(get(admin, "/healthz", None).0, 200, "the process still serves");
    backend.restart();
    wait_for(200);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_is_audited_once_without_values() {
    let backend = Backend::start();
    let dir = TempDir::new("ops-audit");
    let proxy = common::start_proxy_text(&ops_policy(&backend, &dir, "", "", "")).await;
    let mut acme = RawClient::connect(proxy.addrs()[0]);
    let filter = rawdoc! { "note": "SECRET-FILTER-VALUE-42", "$where": "this.n == 1" };
    let denied = command(&mut acme, &msg(77, rawdoc! { "find": "orders", "filter": filter, "$db": "app" }));
    assert!(!ok(&denied));
    assert!(ok(&command(&mut acme, &msg(78, rawdoc! { "find": "orders", "filter": {"n": 5}, "$db": "app" }))));
    let lines = wait_for_audit(&dir, 1);
    std::thread::sleep(Duration::from_millis(200));
    let lines = if audit_lines(&dir).len() > lines.len() { audit_lines(&dir) } else { lines };
    assert_eq!(lines.len(), 1, "one record, for the denial only: {lines:#?}");
    let record = &lines[0];
    assert_eq!(record["decision"], "denied");
    assert_eq!(record["tenant"], "acme");
    assert_eq!(record["user"], serde_json::Value::Null);
    assert_eq!(record["client"], "127.0.0.1");
    assert!(record["connection_id"].as_u64().is_some_and(|id| id > 0));
    assert_eq!(record["request_id"], 77);
    assert_eq!(record["command"], "find");
    assert_eq!(record["namespace"], "app.orders");
    assert!(record["rule"].as_str().is_some_and(|r| r.contains("app.orders (field)")), "{record}");
    assert!(record["reason"].as_str().is_some_and(|r| r.contains("JavaScript")), "{record}");
    assert!(record["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{record}");
    let raw = std::fs::read_to_string(dir.0.join("audit.jsonl")).unwrap();
    assert!(!raw.contains("SECRET-FILTER-VALUE-42") && !raw.contains("this.n"), "no filter values: {raw}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_tenant_gets_the_overload_error_and_others_do_not() {
    let backend = Backend::start();
    let dir = TempDir::new("ops-rate");
    let acme = "rate_limit = { commands_per_second = 0.01, burst = 2 }";
    let globex = "max_connections = 1";
    let admin = "[admin]\naddress = \"127.0.0.1:0\"\n";
    let server = Server::bind(policy(&ops_policy(&backend, &dir, acme, globex, admin)), None).await.expect("bind");
    let admin = server.admin_addr().expect("admin listener");
    let proxy = server.spawn();
    let find = |id| msg(id, rawdoc! { "find": "orders", "filter": {}, "$db": "app" });

    let mut a = RawClient::connect(proxy.addrs()[0]);
    assert!(ok(&command(&mut a, &find(1))));
    assert!(ok(&command(&mut a, &find(2))));
    let refused = command(&mut a, &find(3));
    assert_eq!(refused.get_i32("code").ok(), Some(462), "{refused:?}");
    assert_eq!(refused.get_str("codeName").ok(), Some("IngressRequestRateLimitExceeded"));
    let labels: Vec<&str> =
        refused.get_array("errorLabels").unwrap().into_iter().filter_map(|l| l.ok()?.as_str()).collect();
    assert_eq!(labels, ["SystemOverloadedError", "RetryableError"]);
    // The bucket is the tenant's, not the connection's.
    let mut a2 = RawClient::connect(proxy.addrs()[0]);
    assert_eq!(command(&mut a2, &find(1)).get_i32("code").ok(), Some(462));
    assert!(ok(&command(&mut a2, &msg(2, rawdoc! { "ping": 1, "$db": "admin" }))), "local commands are not limited");

    let mut g = RawClient::connect(proxy.addrs()[1]);
    for id in 1..=10 {
        assert!(ok(&command(&mut g, &find(id))), "globex is not limited by acme's bucket");
    }
    // globex may hold one connection at once.
    let mut g2 = RawClient::connect(proxy.addrs()[1]);
    g2.send(&find(1));
    assert!(g2.recv().is_none(), "a second globex connection is closed");

    let series = r#"tenantwall_commands_total{tenant="acme",command="find",outcome="rate_limited"}"#;
    let metrics = scrape_when(admin, None, series, 2.0);
    assert_eq!(value(&metrics, series), 2.0);
    assert_eq!(value(&metrics, r#"tenantwall_rate_limited_total{tenant="acme"}"#), 2.0, "{metrics}");
    assert_eq!(value(&metrics, r#"tenantwall_rate_limited_total{tenant="globex"}"#), 0.0);
    assert_eq!(value(&metrics, r#"tenantwall_connections{tenant="globex"}"#), 1.0);
    let lines = wait_for_audit(&dir, 2);
    assert_eq!(lines.iter().filter(|l| l["decision"] == "rate_limited").count(), 2, "{lines:#?}");
    drop(g);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut g3 = RawClient::connect(proxy.addrs()[1]);
        g3.send(&find(1));
        if g3.recv().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "globex's slot was not given back");
        std::thread::sleep(Duration::from_millis(50));
    }
    proxy.shutdown().await;
}

#[test]
fn operations_keys_are_checked_with_their_location() {
    let text = "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[[backends]]\nname = \"main\"\nuri = \"mongodb://127.0.0.1:1/\"\n\n\
                [[tenants]]\nid = \"acme\"\nbackend = \"main\"\nrate_limit = { commands_per_second = 0, burst = 0 }\nmax_connections = 0\n\n\
                [limits]\nrate_limit = { commands_per_second = -1.0, burst = 5 }\n\n\
                [admin]\naddress = \"localhost\"\ntoken_env = \"TENANTWALL_TEST_SURELY_UNSET_VARIABLE\"\n\n\
                [audit]\npath = \"\"\n";
    let error = tenantwall::Policy::from_toml(text, std::path::Path::new("ops.toml")).unwrap_err().to_string();
    for key in [
        "tenants[0].rate_limit.commands_per_second",
        "tenants[0].rate_limit.burst",
        "tenants[0].max_connections",
        "limits.rate_limit.commands_per_second",
        "admin.address",
        "admin.token_env",
        "audit.path",
    ] {
        assert!(error.contains(key), "{key} not reported:\n{error}");
    }
    let unknown = "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[[backends]]\nname = \"main\"\nuri = \"mongodb://127.0.0.1:1/\"\n\n\
                   [admin]\naddress = \"127.0.0.1:0\"\nport = 9\n";
    let error = tenantwall::Policy::from_toml(unknown, std::path::Path::new("ops.toml")).unwrap_err().to_string();
    assert!(error.contains("port"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_draining_while_commands_in_flight_finish() {
    let backend = Backend::start();
    let dir = TempDir::new("ops-drain");
    let admin = "[admin]\naddress = \"127.0.0.1:0\"\nhealth_interval_secs = 60\n\n[limits]\nshutdown_grace_secs = 20\n";
    let server = Server::bind(policy(&ops_policy(&backend, &dir, "", "", admin)), None).await.expect("bind");
    let admin = server.admin_addr().expect("admin listener");
    let proxy = server.spawn();
    let mut busy = RawClient::connect(proxy.addrs()[0]);
    assert!(ok(&command(&mut busy, &msg(1, rawdoc! { "find": "orders", "filter": {}, "$db": "app" }))));
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(admin, "/readyz", None).0 != 200 {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }

    backend.pause();
    busy.send(&msg(2, rawdoc! { "find": "orders", "filter": {}, "$db": "app" }));
    std::thread::sleep(Duration::from_millis(200));
    let drained = tokio::spawn(proxy.shutdown());
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (status, body) = get(admin, "/readyz", None);
        if status == 503 {
            break body;
        }
        assert!(Instant::now() < deadline, "/readyz stayed ready while draining");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(body.contains("draining"), "{body}");
    assert_eq!(get(admin, "/healthz", None).0, 200, "still serving the command in flight");
    backend.resume();
    assert!(busy.recv().is_some(), "the command in flight was answered");
    drained.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(admin).is_ok() {
        assert!(Instant::now() < deadline, "the admin listener stays open after the drain");
        std::thread::sleep(Duration::from_millis(20));
    }
}
