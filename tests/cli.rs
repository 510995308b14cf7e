//! The command line: `check` on broken and example policies, `passwd`, and `run` reloading on SIGHUP.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{policy_text, repo_root, Backend, RawClient, TempDir};

fn tenantwall() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tenantwall"))
}

fn check(path: &Path) -> (bool, String) {
    let out = tenantwall().arg("check").arg(path).output().expect("run check");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn check_reports_every_problem_with_line_and_key() {
    let broken = repo_root().join("tests/policies/broken");
    let expectations: &[(&str, &[&str])] = &[
        ("unknown-key.toml", &["line 7", "unknown field `pasword_env`"]),
        ("wrong-type.toml", &["line 7", "invalid type"]),
        ("bad-mode.toml", &["line 10", "unknown variant `tenant`"]),
        ("duplicate-tenant.toml", &["line 14: tenants[1].id: duplicate tenant id \"acme\""]),
        (
            "many-problems.toml",
            &[
                "line 2: listeners[0].address: \"localhost\" is not an ip:port address",
                "line 3: listeners[0].tenant: no tenant \"ghost\"",
                "line 7: backends[0].uri: must not contain credentials",
                "line 10: tenants[0].id: \"acme_corp\" must be 1-64 ASCII letters, digits or '-'",
                "line 11: tenants[0].backend: no backend \"nowhere\"",
                "tenants[0].users[0].scram:",
                "line 16: tenants[1].value: must be a non-empty string",
                "tenants[1].users[0].name: user \"app\" already identifies tenants[0]",
                "line 21: rules[0].database: the admin database is never reachable through a rule",
                "rules[0].template: template applies only to modes",
                "rules[1].template: {tenant} must be separated",
            ],
        ),
    ];
    for (file, wanted) in expectations {
        let (ok, out) = check(&broken.join(file));
        assert!(!ok, "{file} passed check:\n{out}");
        assert!(out.contains(file), "{file}: output does not name the file:\n{out}");
        for want in *wanted {
            assert!(out.contains(want), "{file}: missing {want:?} in:\n{out}");
        }
        assert!(!out.contains("hunter2"), "{file}: check echoed a secret:\n{out}");
    }
}

#[test]
fn check_warns_about_what_a_reviewer_should_see() {
    let (ok, out) = check(&repo_root().join("tests/policies/warnings.toml"));
    assert!(ok, "{out}");
    assert!(
        out.contains("tenants[0]: tenant \"orphan\" has no identity and no listener") && out.contains("(warning)"),
        "{out}"
    );
    assert!(out.contains("rules[1]: overlaps rules[0]; the first matching rule wins"), "{out}");
    // Inherent to shared collections with client-chosen ids (the threat model in the policy reference).
    assert!(out.contains("rules[0]: a tenant can learn whether another tenant's document"), "{out}");
    assert!(out.contains("ok (3 warning(s))"), "{out}");
}

#[test]
fn example_policies_pass_check() {
    let dir = repo_root().join("policies");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (ok, out) = check(&path);
            assert!(ok, "{}:\n{out}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 3, "expected example policies in {}", dir.display());
}

#[test]
fn passwd_prints_a_verifier_the_policy_accepts() {
    let mut child = tenantwall()
        .args(["passwd", "--iterations", "4096"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"correct horse\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    let entry = line.trim();
    assert!(entry.starts_with("SCRAM-SHA-256$4096:"), "{entry}");
    assert!(!entry.contains("correct horse"));
    let verifier: tenantwall::auth::ScramVerifier = entry.parse().unwrap();
    // A full conversation with the right password succeeds, with the wrong one fails.
    for (password, expect_ok) in [("correct horse", true), ("wrong horse", false)] {
        let (mut client, first) = tenantwall::auth::ScramClient::new("u", password).unwrap();
        let parsed = tenantwall::auth::ScramServer::parse_client_first(&first).unwrap();
        let (server, server_first) = tenantwall::auth::ScramServer::new(parsed, Some(&verifier));
        let last = client.handle_server_first(&server_first).unwrap();
        assert_eq!(server.finish(&last).is_ok(), expect_ok, "{password}");
    }
}

fn wait_for(path: &Path, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if std::fs::read_to_string(path).unwrap_or_default().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn run_reloads_on_sighup_and_keeps_the_old_policy_when_the_new_one_is_broken() {
    let backend = Backend::start();
    let dir = TempDir::new("reload");
    let policy = dir.write("policy.toml", &policy_text(&backend.uri(), ""));
    let log = std::fs::File::create(dir.0.join("stderr.log")).unwrap();
    let mut child = tenantwall()
        .args(["run", "--policy"])
        .arg(&policy)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "tenantwall=info")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let addr: std::net::SocketAddr = line.trim().rsplit(' ').next().unwrap().parse().unwrap();
    let stderr = dir.0.join("stderr.log");
    let pid = child.id().to_string();

    let find = |client: &mut RawClient| {
        let frame = tenantwall_protocol::OpMsg::new(Default::default(), bson::rawdoc! { "find": "c", "$db": "app" })
            .encode(1, 0)
            .unwrap();
        client.send(&frame);
        match client.recv().map(|d| d.message) {
            Some(tenantwall_protocol::Message::Msg(m)) => {
                m.body().get_f64("ok").unwrap_or(0.0) == 1.0 || m.body().get_i32("ok").unwrap_or(0) == 1
            }
            _ => false,
        }
    };
    let mut client = RawClient::connect(addr);
    assert!(find(&mut client));

    std::fs::write(&policy, "[[listeners]]\naddress = 5\n").unwrap();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(wait_for(&stderr, "new policy rejected"), "no rejection logged");
    assert!(find(&mut client), "broken reload disturbed a live client");
    assert!(find(&mut RawClient::connect(addr)), "broken reload disturbed new clients");

    // A valid change is swapped in; the bound tenant t1 is replaced by t2, so t1's connections end.
    std::fs::write(&policy, policy_text(&backend.uri(), "").replace("t1", "t2")).unwrap();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(wait_for(&stderr, "policy swapped in"), "valid policy not applied");
    assert!(client.is_closed(), "connection of a removed tenant stayed open");

    // A change of the file alone (no signal) is picked up too.
    let before = std::fs::read_to_string(&stderr).unwrap().matches("policy swapped in").count();
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(&policy, policy_text(&backend.uri(), "").replace("t1", "t3")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::fs::read_to_string(&stderr).unwrap().matches("policy swapped in").count() == before {
        assert!(Instant::now() < deadline, "file change not picked up");
        std::thread::sleep(Duration::from_millis(100));
    }

    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&stderr).unwrap();
    assert!(!text.contains("panicked"), "{text}");
}

#[test]
fn shipped_policy_test_cases_pass_and_wrong_ones_fail() {
    let dir = repo_root().join("policies/tests");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    assert!(!files.is_empty());
    let out = tenantwall().arg("test").args(&files).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let passed: usize = text.lines().last().unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(passed >= 10, "{text}");
    assert!(text.trim_end().ends_with(", 0 failed"), "{text}");

    let out =
        tenantwall().arg("test").arg(repo_root().join("tests/policies/wrong-expectations.test.toml")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("0 passed, 2 failed"), "{text}");
    assert!(text.contains("denied: 13"), "{text}");
}

#[test]
fn explain_prints_the_rewrite_or_the_denial() {
    let policy = repo_root().join("policies/field.toml");
    let out = tenantwall()
        .args(["explain", "--policy"])
        .arg(&policy)
        .args(["--tenant", "acme", r#"{"delete": "orders", "deletes": [{"q": {}, "limit": 0}]}"#])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"delete":"orders","deletes":[{"q":{"tenantId":{"$eq":"acme"}},"limit":{"$numberInt":"0"}}],"$db":"app"}"#
    );
    let out = tenantwall()
        .args(["explain", "--policy"])
        .arg(&policy)
        .args(["--tenant", "acme", r#"{"drop": "orders"}"#])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("denied: 13 (Unauthorized): app.orders: drop changes"), "{text}");
    assert!(text.contains("(rule app.orders (field))"), "{text}");
}

/// A proxy process, killed when dropped (also when an assertion fails first).
struct Proxy(std::process::Child);

impl std::ops::Deref for Proxy {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proxy {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tenantwall run` on `policy`; returns the process, its address and its log file.
fn run_proxy(policy: &Path, dir: &TempDir) -> (Proxy, std::net::SocketAddr, std::path::PathBuf) {
    let stderr = dir.0.join("stderr.log");
    let mut child = tenantwall()
        .args(["run", "--policy"])
        .arg(policy)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "tenantwall=info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| {
        let _ = child.wait();
        panic!("proxy did not start: {}", std::fs::read_to_string(&stderr).unwrap_or_default())
    });
    (Proxy(child), addr, stderr)
}

/// Waits up to `limit` for the child to exit.
fn exit_within(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn raw_ok(client: &mut RawClient, body: bson::RawDocumentBuf) -> bool {
    let frame = tenantwall_protocol::OpMsg::new(Default::default(), body).encode(1, 0).unwrap();
    client.send(&frame);
    reply_ok(client)
}

fn reply_ok(client: &mut RawClient) -> bool {
    match client.recv().map(|d| d.message) {
        Some(tenantwall_protocol::Message::Msg(m)) => {
            m.body().get_f64("ok").unwrap_or(0.0) == 1.0 || m.body().get_i32("ok").unwrap_or(0) == 1
        }
        _ => false,
    }
}

#[test]
fn sigterm_drains_commands_in_flight_then_exits_zero() {
    let backend = Backend::start();
    let dir = TempDir::new("drain");
    let policy = dir.write("policy.toml", &policy_text(&backend.uri(), "[limits]\nshutdown_grace_secs = 20\n"));
    let (mut child, addr, stderr) = run_proxy(&policy, &dir);
    let mut busy = RawClient::connect(addr);
    assert!(raw_ok(&mut busy, bson::rawdoc! { "insert": "c", "documents": [{ "x": 1 }], "$db": "app" }));
    let mut idle = RawClient::connect(addr);
    assert!(raw_ok(&mut idle, bson::rawdoc! { "ping": 1, "$db": "admin" }));

    // A command is in flight (the backend is stopped, so it stays in flight) when SIGTERM arrives.
    backend.pause();
    let find = tenantwall_protocol::OpMsg::new(Default::default(), bson::rawdoc! { "find": "c", "$db": "app" });
    busy.send(&find.encode(2, 0).unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(wait_for(&stderr, "draining"), "no drain logged");
    assert!(idle.is_closed(), "an idle connection stayed open while draining");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "still accepting connections while draining");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(child.try_wait().unwrap().is_none(), "exited with a command in flight");

    // The backend answers: the client gets its reply, and the proxy exits 0 well inside the grace period.
    std::thread::sleep(Duration::from_millis(500));
    backend.resume();
    assert!(reply_ok(&mut busy), "the command in flight was not answered");
    let status = exit_within(&mut child, Duration::from_secs(10)).expect("did not exit after draining");
    assert!(status.success(), "{status:?}");
    assert!(signalled.elapsed() < Duration::from_secs(10), "{:?}", signalled.elapsed());
    let text = std::fs::read_to_string(&stderr).unwrap();
    assert!(text.contains("drained"), "{text}");
}

#[test]
fn a_second_signal_exits_at_once() {
    let backend = Backend::start();
    let dir = TempDir::new("drain2");
    let policy = dir.write("policy.toml", &policy_text(&backend.uri(), "[limits]\nshutdown_grace_secs = 60\n"));
    let (mut child, addr, stderr) = run_proxy(&policy, &dir);
    let mut busy = RawClient::connect(addr);
    assert!(raw_ok(&mut busy, bson::rawdoc! { "insert": "c", "documents": [{ "x": 1 }], "$db": "app" }));
    backend.pause();
    let find = tenantwall_protocol::OpMsg::new(Default::default(), bson::rawdoc! { "find": "c", "$db": "app" });
    busy.send(&find.encode(2, 0).unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let pid = child.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(wait_for(&stderr, "draining"), "no drain logged");
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = exit_within(&mut child, Duration::from_secs(3)).expect("a second signal did not end the proxy");
    assert!(!status.success(), "{status:?}");
    backend.resume();
}

/// SCRAM-SHA-256 over a raw connection; true when the proxy accepted the password.
fn raw_scram(client: &mut RawClient, user: &str, password: &str) -> bool {
    use bson::spec::BinarySubtype::Generic;
    let call = |client: &mut RawClient, body: bson::RawDocumentBuf| {
        client.send(&tenantwall_protocol::OpMsg::new(Default::default(), body).encode(1, 0).unwrap());
        match client.recv().map(|d| d.message) {
            Some(tenantwall_protocol::Message::Msg(m)) => m.body().to_owned(),
            other => panic!("no reply: {other:?}"),
        }
    };
    let (mut scram, first) = tenantwall::auth::ScramClient::new(user, password).unwrap();
    let reply = call(
        client,
        bson::rawdoc! { "saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": bson::Binary { subtype: Generic, bytes: first }, "options": { "skipEmptyExchange": true }, "$db": "admin" },
    );
    let Ok(payload) = reply.get_binary("payload") else { return false };
    let last = scram.handle_server_first(payload.bytes).unwrap();
    let reply = call(
        client,
        bson::rawdoc! { "saslContinue": 1, "conversationId": 1, "payload": bson::Binary { subtype: Generic, bytes: last }, "$db": "admin" },
    );
    reply.get_bool("done").unwrap_or(false)
}

#[test]
fn a_policy_file_written_in_place_is_applied_only_once_it_settles() {
    let backend = Backend::start();
    let dir = TempDir::new("settle");
    let tenant = |id: &str, user: &str| {
        format!(
            "[[tenants]]\nid = \"{id}\"\nbackend = \"main\"\nusers = [{{ name = \"{user}\", scram = \"{}\" }}]\n\n",
            common::scram_entry("secret")
        )
    };
    // Every prefix that ends before the last tenant is a valid policy without that tenant.
    let head = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[[backends]]\nname = \"main\"\nuri = \"{}\"\n\n\
         [[rules]]\ndatabase = \"*\"\nmode = \"database\"\ntemplate = \"{{tenant}}_{{db}}\"\n\n{}",
        backend.uri(),
        tenant("t1", "one"),
    );
    let whole = format!("{head}{}", tenant("t2", "two"));
    let policy = dir.write("policy.toml", &whole);
    let (mut child, addr, stderr) = run_proxy(&policy, &dir);
    let mut client = RawClient::connect(addr);
    assert!(raw_scram(&mut client, "two", "secret"));

    // Rewrite the same file in place, slowly, as an editor or a copy over the network would: for 3.5 s it
    // holds valid policies without t2, never unchanged for 2 s.
    let mut file = std::fs::OpenOptions::new().write(true).truncate(true).open(&policy).unwrap();
    file.write_all(head.as_bytes()).unwrap();
    for i in 0..7 {
        std::thread::sleep(Duration::from_millis(500));
        file.write_all(format!("# {i}\n").as_bytes()).unwrap();
    }
    file.write_all(tenant("t2", "two").as_bytes()).unwrap();
    drop(file);
    assert!(wait_for(&stderr, "policy swapped in"), "the settled file was not applied");
    let text = std::fs::read_to_string(&stderr).unwrap();
    assert!(!text.contains("tenant removed"), "a half-written policy was applied:\n{text}");
    assert_eq!(text.matches("policy swapped in").count(), 1, "{text}");
    assert!(raw_ok(&mut client, bson::rawdoc! { "find": "c", "$db": "app" }), "t2's connection was disturbed");
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs the proxy under `sh -c "<ulimits>; exec tenantwall run ..."`; returns the child and its log.
fn run_with_ulimits(ulimits: &str, policy: &Path, dir: &TempDir) -> (Proxy, std::path::PathBuf) {
    let stderr = dir.0.join(format!("stderr-{}.log", ulimits.replace(|c: char| !c.is_ascii_digit(), "")));
    let script = format!("{ulimits} && exec \"$0\" run --policy \"$1\" --listen 127.0.0.1:0");
    let mut child = Command::new("sh")
        .args(["-c", &script, env!("CARGO_BIN_EXE_tenantwall")])
        .arg(policy)
        .env("RUST_LOG", "tenantwall=info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let child = Proxy(child);
    assert!(line.contains("listening"), "{}", std::fs::read_to_string(&stderr).unwrap_or_default());
    (child, stderr)
}

fn soft_open_files(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn run_raises_the_open_file_limit_and_warns_when_the_hard_limit_is_too_low() {
    let backend = Backend::start();
    let dir = TempDir::new("nofile");
    let policy = dir.write("policy.toml", &policy_text(&backend.uri(), "[limits]\nmax_connections = 1000\n"));
    // A soft limit of 256 under a higher hard limit is raised to the hard limit.
    let (mut child, stderr) = run_with_ulimits("ulimit -S -n 256 && ulimit -H -n 4000", &policy, &dir);
    assert_eq!(soft_open_files(child.id()), 4000);
    let _ = child.kill();
    let _ = child.wait();
    assert!(!std::fs::read_to_string(&stderr).unwrap().contains("open-file limit"));
    // A hard limit too low for max_connections (each client needs two sockets) is reported.
    let (mut child, stderr) = run_with_ulimits("ulimit -S -n 256 && ulimit -H -n 1024", &policy, &dir);
    assert_eq!(soft_open_files(child.id()), 1024);
    assert!(wait_for(&stderr, "open-file limit cannot hold"), "no warning about the open-file limit");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_reload_says_which_limits_wait_for_a_restart() {
    let backend = Backend::start();
    let dir = TempDir::new("reload-limits");
    let policy = dir.write("policy.toml", &policy_text(&backend.uri(), ""));
    let (mut child, _addr, stderr) = run_proxy(&policy, &dir);
    std::fs::write(&policy, policy_text(&backend.uri(), "[limits]\nmax_connections = 50\nmax_cursors = 10\n")).unwrap();
    Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    assert!(wait_for(&stderr, "policy swapped in"), "reload not applied");
    let text = std::fs::read_to_string(&stderr).unwrap();
    for key in ["limits.max_connections changed", "limits.max_cursors changed"] {
        assert!(text.contains(key), "{key} not reported:\n{text}");
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A blocking HTTP/1.1 GET on the admin listener: the status and the body.
fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).expect("connect admin");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read admin response");
    let (head, body) = response.split_once("\r\n\r\n").expect("response head");
    (head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status"), body.to_owned())
}

#[test]
fn run_serves_the_admin_listener_counts_rejected_reloads_and_reopens_the_audit_log_on_sigusr1() {
    let backend = Backend::start();
    let dir = TempDir::new("operate");
    let extra = "\n[admin]\naddress = \"127.0.0.1:0\"\n\n[audit]\npath = \"audit.jsonl\"\n";
    let policy = dir.write("policy.toml", &policy_text(&backend.uri(), extra));
    let stderr = dir.0.join("stderr.log");
    let mut child = Proxy(
        tenantwall()
            .args(["run", "--policy"])
            .arg(&policy)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "tenantwall=info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut addr_of = |prefix: &str| -> std::net::SocketAddr {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert!(line.starts_with(prefix), "{line:?}");
        line.trim().rsplit(' ').next().unwrap().parse().unwrap()
    };
    let addr = addr_of("tenantwall: listening on ");
    let admin = addr_of("tenantwall: admin listening on ");
    let pid = child.id().to_string();

    let mut client = RawClient::connect(addr);
    assert!(!raw_ok(&mut client, bson::rawdoc! { "frobnicate": 1, "$db": "app" }), "unknown commands are denied");
    let audit = dir.0.join("audit.jsonl");
    assert!(wait_for(&audit, r#""decision":"denied""#), "denial not audited");
    std::fs::rename(&audit, dir.0.join("audit.jsonl.1")).unwrap();
    Command::new("kill").args(["-USR1", &pid]).status().unwrap();
    assert!(wait_for(&stderr, "SIGUSR1"), "SIGUSR1 not handled");
    assert!(!raw_ok(&mut client, bson::rawdoc! { "frobnicate": 2, "$db": "app" }));
    assert!(wait_for(&audit, r#""decision":"denied""#), "no new audit file after SIGUSR1");
    let rotated = std::fs::read_to_string(dir.0.join("audit.jsonl.1")).unwrap();
    assert_eq!(rotated.lines().count(), 1, "{rotated}");

    std::fs::write(&policy, "[[listeners]]\naddress = 5\n").unwrap();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(wait_for(&stderr, "new policy rejected"), "no rejection logged");
    let (status, metrics) = http_get(admin, "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("tenantwall_policy_reloads_total{result=\"invalid\"} 1\n"), "{metrics}");
    assert!(metrics.contains("tenantwall_policy_generation 1\n"), "{metrics}");
    assert!(metrics.contains(r#"tenantwall_commands_total{tenant="t1",command="unknown",outcome="denied"} 2"#));
    assert_eq!(http_get(admin, "/healthz").0, 200);
    assert_eq!(http_get(admin, "/nope").0, 404);
    drop(child);
    assert!(!std::fs::read_to_string(&stderr).unwrap().contains("panicked"));
}

/// A flood of broken frames (a hostile client reconnecting and sending garbage) is logged once per window with a
/// count, not once per frame, so it cannot fill the log; the proxy keeps serving.
#[test]
fn refused_frames_are_logged_once_per_window_not_once_each() {
    let backend = Backend::start();
    let dir = TempDir::new("frame-flood");
    let policy = dir.write("policy.toml", &policy_text(&backend.uri(), ""));
    let (_child, addr, stderr) = run_proxy(&policy, &dir);
    for _ in 0..200 {
        let mut garbage = std::net::TcpStream::connect(addr).unwrap();
        // A header announcing a 1 GB message: refused before anything is buffered.
        let mut frame = (1_000_000_000_i32).to_le_bytes().to_vec();
        frame.extend_from_slice(&[0u8; 12]);
        let _ = garbage.write_all(&frame);
        let _ = std::io::Read::read(&mut garbage, &mut [0u8; 16]);
    }
    let mut client = common::RawClient::connect(addr);
    let reply = common::command(&mut client, &common::msg(bson::rawdoc! { "ping": 1, "$db": "admin" }));
    assert_eq!(common::ok(&reply), 1.0);
    let text = std::fs::read_to_string(&stderr).unwrap();
    let logged = text.lines().filter(|l| l.contains("refusing frame")).count();
    assert!((1..=2).contains(&logged), "{logged} lines for 200 refused frames:\n{text}");
    // Each connection is still logged once at INFO when accepted, as mongod does; nothing at WARN per frame.
    let warnings = text.lines().filter(|l| l.contains(" WARN ")).count();
    assert!(warnings <= 3, "{warnings} warnings for 200 refused frames:\n{text}");
}
