//! CI load run: 120 tenants through one proxy process, a mixed workload over field, collection and database
//! mode at once, then an isolation audit through the proxy and directly on the backend.
//!
//! One nx-27017 backend (the real MongoDB-compatible test server, from the project virtualenv) sits behind one
//! tenantwall process (the release binary) whose policy has a rule of each mode: `app.items` shared in field mode,
//! `app.orders` one collection per tenant (`<tenant>__orders`), database `crm` one database per tenant
//! (`<tenant>_crm`). Each of the 120 tenants has its own SCRAM user (verifiers generated here with the proxy's own
//! code, at the lowest iteration count the policy accepts) and its own official Rust driver client, and runs, for
//! `RUN_SECS` (30 s), rounds of inserts, finds, updates, deletes, small-batch cursors and aggregates on all
//! three namespaces, keeping the set of documents it expects to exist.
//!
//! Afterwards every tenant reads every namespace back through the proxy and must see exactly its own documents,
//! and a direct connection to the backend checks that every document sits where its tenant's placement says:
//! in `app.items` with the right `tenantId`, in that tenant's own collection or database, nowhere else.
//!
//! Prints a table (commands/s, p50/p99 per mode, peak backend connections, proxy RSS; a command there is one
//! driver operation, so a cursor read with its getMores counts once and its latency is the whole read) and writes it as JSON to
//! `$CARGO_TARGET_DIR/load-ci.json` (default `target/load-ci.json`). Exits non-zero on any command error or
//! isolation violation, never on speed: CI machines vary too much for a speed threshold to mean anything.
//!
//! Run: `cargo bench --bench load_ci` (release build, about 35 s once built) for numbers worth comparing;
//! `cargo test --workspace --bench load_ci -- --bench` runs the debug build, which is what scripts/test does.
//! `LOAD_CI_SECS=5` shortens the workload. The table and the JSON say which build ran.
//!
//! Why scripts/test runs the debug build: the step exists to fail on isolation violations and command errors under
//! concurrent load, which the debug build checks as well (with overflow checks and debug assertions on top), and
//! scripts/test has already compiled it (`cargo test --workspace --all-targets --no-run` builds this target and the
//! debug proxy), so the step costs only its run, about 35 s. The release build would cost a second compile of the
//! whole dependency graph, dev-dependencies included: 15 min 48 s from a clean clone on the 2-core machine with
//! other builds running (2026-11-27), against a CI run of about 6 min today. The price is numbers from a debug
//! proxy and a debug driver: 294 commands/s and 28 MiB RSS against 448 and 15 MiB for the release build in the
//! same conditions, so the debug table tracks trends between CI runs, not speed.
//!
//! Results (2026-11-27, 2-core x86_64 VM with other builds running, load average 6-10; the proxy with its
//! backend pool of 64):
//!
//! | build   | mode       | commands/s | p50    | p99     | backend connections (gauge / TCP) | proxy RSS (end / peak) |
//! |---------|------------|------------|--------|---------|-----------------------------------|------------------------|
//! | release | field      | 149        | 332 ms | 1.56 s  | 64 / 65 (all modes)               | 15 / 17 MiB            |
//! | release | collection | 149        | 127 ms | 1.11 s  |                                   |                        |
//! | release | database   | 149        | 88 ms  | 0.85 s  |                                   |                        |
//! | debug   | field      | 98         | 373 ms | 5.43 s  | 64 / 65                           | 28 / 29 MiB            |
//! | debug   | collection | 98         | 225 ms | 1.16 s  |                                   |                        |
//! | debug   | database   | 98         | 204 ms | 0.96 s  |                                   |                        |
//!
//! nx-27017 (single-threaded Python on SQLite) bounds the run: 120 clients keep it saturated, so latencies are its
//! queue. Field mode is slowest because its one shared collection holds every tenant's documents and nx-27017
//! evaluates the proxy's `$and` filter about 3× slower than the equivalent flat filter. The 65th established
//! connection is the admin listener's periodic health check.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Collection;
use tenantwall::auth::{ScramVerifier, MIN_ITERATIONS};

#[path = "../tests/common/mod.rs"]
mod common;
mod harness;

use harness::{Latencies, ProxyProcess, Scratch};

const TENANTS: usize = 120;
/// Seconds of workload; with startup and the audit the whole run stays well under two minutes on 2 cores.
/// `LOAD_CI_SECS` overrides it (e.g. a few seconds while working on the harness).
const RUN_SECS: u64 = 30;
/// Which build of the proxy and of this harness ran: their numbers differ by about 1.5× (see the module docs).
const BUILD: &str = if cfg!(debug_assertions) { "debug" } else { "release" };

/// The modes every tenant's workload covers, in the order a round runs them.
const MODES: [Mode; 3] = [Mode::Field, Mode::Collection, Mode::Database];

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Mode {
    Field,
    Collection,
    Database,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Field => "field",
            Mode::Collection => "collection",
            Mode::Database => "database",
        }
    }

    /// The namespace a client names for this mode.
    fn visible(self) -> (&'static str, &'static str) {
        match self {
            Mode::Field => ("app", "items"),
            Mode::Collection => ("app", "orders"),
            Mode::Database => ("crm", "contacts"),
        }
    }

    /// Where the tenant's documents really are on the backend (the policy's templates).
    fn real(self, tenant: &str) -> (String, String) {
        match self {
            Mode::Field => ("app".into(), "items".into()),
            Mode::Collection => ("app".into(), format!("{tenant}__orders")),
            Mode::Database => (format!("{tenant}_crm"), "contacts".into()),
        }
    }
}

fn tenant_id(t: usize) -> String {
    format!("t{t:03}")
}

/// The password of tenant `t`'s user: different per tenant so that one tenant's credentials cannot open another's
/// data; made up for this run on loopback, nothing to protect.
fn password(t: usize) -> String {
    format!("load-ci-password-{t}")
}

fn policy_text(backend: SocketAddr, verifiers: &[ScramVerifier]) -> String {
    // A slow CI machine may keep all 64 pooled connections busy with nx-27017's slowest commands for a while;
    // the run fails on errors, never on speed, so a pool wait must not turn into an error (default 10 s).
    let mut policy = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n\
         [limits]\npool_wait_timeout_ms = 60000\n\n\
         [[backends]]\nname = \"nx\"\nuri = \"mongodb://{backend}/\"\n\n"
    );
    for (t, verifier) in verifiers.iter().enumerate() {
        let id = tenant_id(t);
        policy.push_str(&format!(
            "[[tenants]]\nid = \"{id}\"\nbackend = \"nx\"\nusers = [{{ name = \"u{id}\", scram = \"{verifier}\" }}]\n\n"
        ));
    }
    policy.push_str(
        "[[rules]]\ndatabase = \"app\"\ncollection = \"items\"\nmode = \"field\"\n\n\
         [[rules]]\ndatabase = \"app\"\ncollection = \"orders\"\nmode = \"collection\"\ntemplate = \"{tenant}__{collection}\"\n\n\
         [[rules]]\ndatabase = \"crm\"\nmode = \"database\"\ntemplate = \"{tenant}_{db}\"\n",
    );
    policy
}

/// What one tenant's workload saw.
#[derive(Default)]
struct TenantRun {
    latencies: BTreeMap<Mode, Vec<Duration>>,
    /// The `n` of every document the tenant should have, per mode.
    expected: BTreeMap<Mode, BTreeSet<i32>>,
    errors: Vec<String>,
    violations: Vec<String>,
}

impl TenantRun {
    /// Times one command of `mode`; a failure is recorded (the run goes on, so the table still shows).
    async fn timed<T, F>(&mut self, mode: Mode, what: &str, command: F) -> Option<T>
    where
        F: std::future::IntoFuture<Output = mongodb::error::Result<T>>,
    {
        let sent = Instant::now();
        match command.await {
            Ok(value) => {
                self.latencies.entry(mode).or_default().push(sent.elapsed());
                Some(value)
            }
            Err(e) => {
                self.errors.push(format!("{} {what}: {e}", mode.name()));
                None
            }
        }
    }
}

/// Every document the collection returns, read with a small batch size so cursors (getMore) take part.
async fn read_all(coll: &Collection<Document>) -> mongodb::error::Result<Vec<Document>> {
    coll.find(doc! {}).batch_size(7).await?.try_collect().await
}

/// Checks that `docs` are exactly the tenant's own documents with the expected `n`s; returns the problems.
fn audit_view(tenant: &str, mode: Mode, docs: &[Document], expected: &BTreeSet<i32>, seen_from: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for d in docs {
        if d.get_str("who").ok() != Some(tenant) {
            problems.push(format!("{seen_from}: {tenant} {} saw a document of {:?}", mode.name(), d.get("who")));
        }
        // Field mode stamps the tenant's value; the other placements carry no tenant field.
        let stamped = d.get("tenantId");
        match mode {
            Mode::Field if stamped != Some(&Bson::String(tenant.into())) => {
                problems.push(format!("{seen_from}: {tenant} field-mode document stamped {stamped:?}"));
            }
            Mode::Collection | Mode::Database if stamped.is_some() => {
                problems.push(format!("{seen_from}: {tenant} {} document carries tenantId", mode.name()));
            }
            _ => {}
        }
        if let Ok(n) = d.get_i32("n") {
            if !seen.insert(n) {
                problems.push(format!("{seen_from}: {tenant} {} has n = {n} twice", mode.name()));
            }
        }
    }
    if &seen != expected {
        let missing = expected.difference(&seen).count();
        let extra = seen.difference(expected).count();
        problems.push(format!(
            "{seen_from}: {tenant} {}: {missing} expected document(s) missing, {extra} unexpected",
            mode.name()
        ));
    }
    problems
}

/// One tenant's workload until `stop`, then its view through the proxy.
async fn tenant_workload(t: usize, proxy: SocketAddr, stop: Instant) -> TenantRun {
    let me = tenant_id(t);
    let mut run = TenantRun::default();
    let uri = format!("mongodb://u{me}:{}@{proxy}/?authSource=admin&maxPoolSize=2", password(t));
    let client = match mongodb::options::ClientOptions::parse(uri).await {
        Ok(mut options) => {
            options.server_selection_timeout = Some(Duration::from_secs(30));
            mongodb::Client::with_options(options).expect("driver client")
        }
        Err(e) => {
            run.errors.push(format!("connection string: {e}"));
            return run;
        }
    };
    let colls: Vec<(Mode, Collection<Document>)> = MODES
        .iter()
        .map(|&m| {
            let (db, coll) = m.visible();
            (m, client.database(db).collection::<Document>(coll))
        })
        .collect();
    let mut round = 0i32;
    while Instant::now() < stop && run.errors.len() < 5 {
        for (mode, coll) in &colls {
            let mode = *mode;
            if run.timed(mode, "insert", coll.insert_one(doc! { "who": &me, "n": round, "v": 0 })).await.is_some() {
                run.expected.entry(mode).or_default().insert(round);
            }
            match run.timed(mode, "find", coll.find_one(doc! { "n": round })).await {
                Some(Some(d)) if d.get_str("who").ok() == Some(me.as_str()) => {}
                Some(found) => run.violations.push(format!(
                    "{me} {}: find of its own n={round} returned {:?}",
                    mode.name(),
                    found.map(|d| d.get("who").cloned())
                )),
                None => {}
            }
            if round % 3 == 2 {
                run.timed(
                    mode,
                    "update",
                    coll.update_many(doc! { "n": { "$lt": round } }, doc! { "$inc": { "v": 1 } }),
                )
                .await;
            }
            if round % 5 == 4 {
                let gone = run.timed(mode, "delete", coll.delete_one(doc! { "n": round - 1 })).await;
                if gone.is_some_and(|r| r.deleted_count == 1) {
                    run.expected.entry(mode).or_default().remove(&(round - 1));
                }
            }
            if round % 4 == 3 {
                let expected = run.expected.get(&mode).cloned().unwrap_or_default();
                if let Some(docs) = run.timed(mode, "cursor", read_all(coll)).await {
                    let problems = audit_view(&me, mode, &docs, &expected, "during the run");
                    run.violations.extend(problems);
                }
            }
            if round % 6 == 5 {
                let pipeline = vec![
                    doc! { "$match": { "v": { "$gte": 0 } } },
                    doc! { "$group": { "_id": "$who", "c": { "$sum": 1 } } },
                ];
                let agg = async { coll.aggregate(pipeline).await?.try_collect::<Vec<Document>>().await };
                if let Some(groups) = run.timed(mode, "aggregate", agg).await {
                    if groups.len() > 1 || groups.iter().any(|g| g.get_str("_id").ok() != Some(me.as_str())) {
                        run.violations
                            .push(format!("{me} {}: aggregate grouped other tenants' documents", mode.name()));
                    }
                }
            }
        }
        round += 1;
    }
    // The final view through the proxy.
    for (mode, coll) in &colls {
        let expected = run.expected.get(mode).cloned().unwrap_or_default();
        match read_all(coll).await {
            Ok(docs) => {
                let problems = audit_view(&me, *mode, &docs, &expected, "through the proxy");
                run.violations.extend(problems);
            }
            Err(e) => run.errors.push(format!("{} final read: {e}", mode.name())),
        }
    }
    run
}

/// The backend's own view: every document where its tenant's placement says, nowhere else.
async fn audit_backend(backend: SocketAddr, expected: &[BTreeMap<Mode, BTreeSet<i32>>]) -> Vec<String> {
    let direct = common::client(backend, None).await;
    let mut problems = Vec::new();
    let ids: Vec<String> = (0..TENANTS).map(tenant_id).collect();
    // Field mode: one shared collection, split by the stamp.
    let items = match read_all(&direct.database("app").collection::<Document>("items")).await {
        Ok(docs) => docs,
        Err(e) => return vec![format!("direct read of app.items: {e}")],
    };
    let mut by_tenant: BTreeMap<String, Vec<Document>> = BTreeMap::new();
    for d in items {
        match d.get_str("tenantId") {
            Ok(t) if ids.iter().any(|id| id == t) => by_tenant.entry(t.to_owned()).or_default().push(d),
            _ => problems.push(format!("on the backend: app.items holds a document stamped {:?}", d.get("tenantId"))),
        }
    }
    for (t, id) in ids.iter().enumerate() {
        let want = expected[t].get(&Mode::Field).cloned().unwrap_or_default();
        let docs = by_tenant.remove(id).unwrap_or_default();
        problems.extend(audit_view(id, Mode::Field, &docs, &want, "on the backend"));
        for mode in [Mode::Collection, Mode::Database] {
            let (db, coll) = mode.real(id);
            let want = expected[t].get(&mode).cloned().unwrap_or_default();
            match read_all(&direct.database(&db).collection::<Document>(&coll)).await {
                Ok(docs) => problems.extend(audit_view(id, mode, &docs, &want, "on the backend")),
                Err(e) => problems.push(format!("direct read of {db}.{coll}: {e}")),
            }
        }
    }
    // Nothing may have landed under a visible name: those exist only in the clients' view.
    for (db, coll) in [("app", "orders"), ("crm", "contacts")] {
        match direct.database(db).collection::<Document>(coll).count_documents(doc! {}).await {
            Ok(0) => {}
            Ok(n) => problems.push(format!("on the backend: {n} document(s) under the visible name {db}.{coll}")),
            Err(e) => problems.push(format!("direct count of {db}.{coll}: {e}")),
        }
    }
    match direct.database("app").list_collection_names().await {
        Ok(names) => {
            for name in names {
                let known = name == "items" || name == "orders" || ids.iter().any(|id| name == format!("{id}__orders"));
                if !known {
                    problems.push(format!("on the backend: unexpected collection app.{name}"));
                }
            }
        }
        Err(e) => problems.push(format!("direct listCollections on app: {e}")),
    }
    problems
}

/// Peak backend connections (the proxy's gauge when it exports one, and established TCP connections to the
/// backend port) and peak proxy RSS, sampled every 250 ms until `stop`.
fn sample(proxy: Arc<ProxyProcess>, backend_port: u16, stop: Instant) -> tokio::task::JoinHandle<(Option<f64>, usize)> {
    tokio::task::spawn_blocking(move || {
        let (mut gauge, mut tcp): (Option<f64>, usize) = (None, 0);
        loop {
            if let Some(g) = proxy.metric("tenantwall_backend_connections") {
                gauge = Some(gauge.map_or(g, |m| m.max(g)));
            }
            tcp = tcp.max(harness::established_to(backend_port));
            if Instant::now() >= stop {
                return (gauge, tcp);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    })
}

fn main() {
    // `cargo bench` passes --bench; test runners run bench targets as tests, and this one has none to offer.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let failed = runtime.block_on(run());
    std::process::exit(i32::from(failed));
}

/// The whole run; true when anything failed.
async fn run() -> bool {
    let wall = Instant::now();
    let backend = common::Backend::start();
    let backend_addr: SocketAddr = ([127, 0, 0, 1], backend.port).into();
    let verifiers: Vec<ScramVerifier> =
        (0..TENANTS).map(|t| ScramVerifier::generate(&password(t), MIN_ITERATIONS).expect("verifier")).collect();
    let scratch = Scratch::new("load-ci");
    let proxy = Arc::new(ProxyProcess::start(&scratch.write("policy.toml", &policy_text(backend_addr, &verifiers))));
    let proxy_addr = proxy.addrs[0];
    let startup = wall.elapsed();

    let run_for = std::env::var("LOAD_CI_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(RUN_SECS);
    let started = Instant::now();
    let stop = started + Duration::from_secs(run_for);
    let sampler = sample(proxy.clone(), backend.port, stop);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TENANTS {
        tasks.spawn(async move { (t, tenant_workload(t, proxy_addr, stop).await) });
    }
    let mut runs: Vec<Option<TenantRun>> = (0..TENANTS).map(|_| None).collect();
    while let Some(done) = tasks.join_next().await {
        let (t, run) = done.expect("tenant task");
        runs[t] = Some(run);
    }
    let runs: Vec<TenantRun> = runs.into_iter().map(|r| r.expect("every tenant ran")).collect();
    let workload = started.elapsed();
    let (gauge_peak, tcp_peak) = sampler.await.expect("sampler");
    let (rss_end, rss_peak) = (proxy.rss_mib(), proxy.peak_rss_mib());

    let expected: Vec<_> = runs.iter().map(|r| r.expected.clone()).collect();
    let mut violations: Vec<String> = runs.iter().flat_map(|r| r.violations.iter().cloned()).collect();
    violations.extend(audit_backend(backend_addr, &expected).await);
    let errors: Vec<String> = runs.iter().flat_map(|r| r.errors.iter().cloned()).collect();

    let mut per_mode = BTreeMap::new();
    let mut total = 0usize;
    for mode in MODES {
        let all: Vec<Duration> =
            runs.iter().flat_map(|r| r.latencies.get(&mode).cloned().unwrap_or_default()).collect();
        total += all.len();
        per_mode.insert(mode, Latencies::new(all));
    }
    let secs = workload.as_secs_f64();
    let gauge_text = gauge_peak.map_or("n/a".to_owned(), |g| format!("{g:.0}"));

    println!();
    println!(
        "CI load run ({BUILD} build): {TENANTS} tenants, one proxy, nx-27017, {secs:.1} s of workload (startup {:.1} s, \
         whole run {:.1} s)",
        startup.as_secs_f64(),
        wall.elapsed().as_secs_f64()
    );
    println!();
    println!("| mode | commands | commands/s | p50 | p99 |");
    println!("|---|---|---|---|---|");
    for (mode, latencies) in &per_mode {
        println!(
            "| {} | {} | {:.0} | {:.2} ms | {:.2} ms |",
            mode.name(),
            latencies.len(),
            latencies.len() as f64 / secs,
            latencies.p50_us() / 1000.0,
            latencies.p99_us() / 1000.0
        );
    }
    println!("| all | {total} | {:.0} | | |", total as f64 / secs);
    println!();
    println!(
        "backend connections used (peak): {gauge_text} by the proxy's gauge, {tcp_peak} established TCP; proxy RSS \
         {rss_end:.0} MiB at the end, {rss_peak:.0} MiB peak"
    );
    println!("command errors: {}; isolation violations: {}", errors.len(), violations.len());
    for problem in errors.iter().chain(&violations).take(20) {
        println!("  {problem}");
    }

    let modes_json: serde_json::Map<String, serde_json::Value> = per_mode
        .iter()
        .map(|(mode, l)| {
            let value = serde_json::json!({
                "commands": l.len(),
                "commands_per_sec": (l.len() as f64 / secs).round(),
                "p50_ms": (l.p50_us() / 10.0).round() / 100.0,
                "p99_ms": (l.p99_us() / 10.0).round() / 100.0,
            });
            (mode.name().to_owned(), value)
        })
        .collect();
    let report = serde_json::json!({
        "build": BUILD,
        "tenants": TENANTS,
        "workload_secs": (secs * 10.0).round() / 10.0,
        "commands": total,
        "commands_per_sec": (total as f64 / secs).round(),
        "modes": modes_json,
        "backend_connections_peak": { "gauge": gauge_peak, "established_tcp": tcp_peak },
        "proxy_rss_mib": { "end": rss_end.round(), "peak": rss_peak.round() },
        "command_errors": errors.len(),
        "isolation_violations": violations.len(),
        "problems": errors.iter().chain(&violations).take(100).collect::<Vec<_>>(),
    });
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| common::repo_root().join("target"));
    let out = target.join("load-ci.json");
    match std::fs::write(&out, serde_json::to_string_pretty(&report).expect("json") + "\n") {
        Ok(()) => println!("written to {}", out.display()),
        Err(e) => println!("cannot write {}: {e}", out.display()),
    }
    let failed = !errors.is_empty() || !violations.is_empty() || total == 0;
    println!("{}", if failed { "FAILED" } else { "ok: no command errors, no isolation violations" });
    failed
}
