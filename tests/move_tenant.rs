//! `tenantwall move` end to end over three nx-27017 backends: a tenant in field mode on a shared collection moves
//! to its own database on another backend while the proxy holds only that tenant. Its documents read back the
//! same through the proxy before and after, its writes acknowledged during the move are all in the new
//! placement, and the other tenants' writes during the move all succeed and stay where they were. A mover killed
//! before its switch leaves the policy and the source as they were, the proxy releases the tenant by itself at
//! the hold's bound, and running the move again succeeds.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{scram_entry, Backend, TempDir};
use mongodb::bson::{doc, Document};
use tenantwall::{Policy, Server, ServerHandle};
use tokio::io::{AsyncBufReadExt, BufReader};

const TOKEN_ENV: &str = "TW_MOVE_TEST_TOKEN";
const TOKEN: &str = "move-test-token";

struct Rig {
    main: Backend,
    side: Backend,
    east: Backend,
    dir: TempDir,
    policy: std::path::PathBuf,
    proxy: ServerHandle,
}

/// acme and globex share `app` in field mode on `main`; initech is in field mode on `side`; `east` is empty.
async fn rig() -> Rig {
    std::env::set_var(TOKEN_ENV, TOKEN);
    let (main, side, east) = (Backend::start(), Backend::start(), Backend::start());
    let scram = scram_entry("pw");
    let mut text = format!(
        "# Test policy: comments and layout survive a move.\n\
         [[listeners]]\naddress = \"127.0.0.1:0\"\n\n\
         [admin]\naddress = \"127.0.0.1:0\"\ntoken_env = \"{TOKEN_ENV}\"\n\n\
         [[backends]]\nname = \"main\"\nuri = \"{}\"\n\n\
         [[backends]]\nname = \"side\"\nuri = \"{}\"\n\n\
         [[backends]]\nname = \"east\"\nuri = \"{}\"\n\n",
        main.uri(),
        side.uri(),
        east.uri()
    );
    for (tenant, backend) in [("acme", "main"), ("globex", "main"), ("initech", "side")] {
        text.push_str(&format!(
            "[[tenants]]\nid = \"{tenant}\"\nbackend = \"{backend}\"\n\
             users = [{{ name = \"{tenant}-app\", scram = \"{scram}\" }}]\n\n"
        ));
    }
    text.push_str("# Every tenant shares app.\n[[rules]]\ndatabase = \"app\"\ncollection = \"*\"\nmode = \"field\"\n");
    let dir = TempDir::new("move");
    let policy = dir.write("policy.toml", &text);
    let loaded = Policy::load(&policy).expect("policy");
    let proxy = Server::bind(loaded, None).await.expect("bind").spawn();
    Rig { main, side, east, dir, policy, proxy }
}

async fn client(addr: std::net::SocketAddr, tenant: &str) -> mongodb::Client {
    let uri = format!("mongodb://{tenant}-app:pw@{addr}/?authSource=admin");
    let mut options = mongodb::options::ClientOptions::parse(uri).await.unwrap();
    options.server_selection_timeout = Some(Duration::from_secs(5));
    mongodb::Client::with_options(options).unwrap()
}

async fn direct(backend: &Backend) -> mongodb::Client {
    let mut options = mongodb::options::ClientOptions::parse(backend.uri()).await.unwrap();
    options.direct_connection = Some(true);
    mongodb::Client::with_options(options).unwrap()
}

/// Every document of `db.coll` as `client` sees it, by `_id` (string ids: nx-27017 orders integers as text).
async fn docs(client: &mongodb::Client, db: &str, coll: &str, filter: Document) -> Vec<Document> {
    use futures_util::TryStreamExt;
    let cursor = client.database(db).collection::<Document>(coll).find(filter).sort(doc! { "_id": 1 }).await;
    let mut all: Vec<Document> = cursor.unwrap().try_collect().await.unwrap();
    all.sort_by_key(|d| d.get_str("_id").unwrap_or_default().to_owned());
    all
}

/// Documents as the tenant's own collection holds them: field mode shows the tenant field in reads, a collection
/// of one tenant has none.
fn bare(mut docs: Vec<Document>) -> Vec<Document> {
    for d in &mut docs {
        d.remove("tenantId");
    }
    docs
}

/// Asserts two document lists are equal, showing only the first difference.
fn same(left: &[Document], right: &[Document], what: &str) {
    assert_eq!(left.len(), right.len(), "{what}: counts differ");
    if let Some((l, r)) = left.iter().zip(right).find(|(l, r)| l != r) {
        panic!("{what}: {l:?} != {r:?}");
    }
}

/// A tenant writing through the proxy until stopped: every insert it got acknowledged, and every failure.
struct Writer {
    acked: Arc<Mutex<Vec<String>>>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

fn writer(client: mongodb::Client, coll: &'static str, prefix: &'static str) -> Writer {
    let (acked, failed, stop) =
        (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let task = tokio::spawn({
        let (acked, failed, stop) = (acked.clone(), failed.clone(), stop.clone());
        async move {
            let coll = client.database("app").collection::<Document>(coll);
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let id = format!("{prefix}-{i:05}");
                match coll.insert_one(doc! { "_id": &id, "seq": i }).await {
                    Ok(_) => acked.lock().unwrap().push(id),
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    Writer { acked, failed, stop, task }
}

impl Writer {
    async fn finish(self) -> (Vec<String>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let acked = self.acked.lock().unwrap().clone();
        (acked, self.failed.load(Ordering::Relaxed))
    }
}

/// `tenantwall move` of acme to its own database on east, as its own process.
fn mover(rig: &Rig, extra: &[&str], pause: Option<u64>) -> tokio::process::Child {
    mover_to(rig, "database:east", extra, pause)
}

fn mover_to(rig: &Rig, to: &str, extra: &[&str], pause: Option<u64>) -> tokio::process::Child {
    let admin = rig.proxy.admin_addr().expect("admin listener").to_string();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenantwall"));
    command
        .args(["move", "--policy"])
        .arg(&rig.policy)
        .args(["--tenant", "acme", "--to", to, "--admin", &admin])
        .args(extra)
        .env(TOKEN_ENV, TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(pause) = pause {
        command.env(tenantwall::lifecycle::mover::PAUSE_ENV, pause.to_string());
    }
    command.spawn().expect("spawn mover")
}

async fn seed(rig: &Rig) -> (mongodb::Client, mongodb::Client, mongodb::Client) {
    let addr = rig.proxy.addr();
    let (acme, globex, initech) =
        (client(addr, "acme").await, client(addr, "globex").await, client(addr, "initech").await);
    let orders = acme.database("app").collection::<Document>("orders");
    orders
        .insert_many((0..250).map(|i| doc! { "_id": format!("o-{i:04}"), "total": i, "items": ["a", "b"] }))
        .await
        .unwrap();
    acme.database("app")
        .collection::<Document>("invoices")
        .insert_many((0..40).map(|i| doc! { "_id": format!("i-{i:04}"), "paid": i % 2 == 0 }))
        .await
        .unwrap();
    // A per-tenant unique index, stored as {tenantId: 1, sku: 1} in the shared collection.
    orders
        .create_index(
            mongodb::IndexModel::builder()
                .keys(doc! { "sku": 1 })
                .options(mongodb::options::IndexOptions::builder().unique(true).name("sku_unique".to_owned()).build())
                .build(),
        )
        .await
        .unwrap();
    globex
        .database("app")
        .collection::<Document>("orders")
        .insert_many((0..60).map(|i| doc! { "_id": format!("g-{i:04}"), "total": i }))
        .await
        .unwrap();
    initech.database("app").collection::<Document>("orders").insert_one(doc! { "_id": "n-0000" }).await.unwrap();
    (acme, globex, initech)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_moves_to_its_own_database_on_another_backend_while_others_keep_writing() {
    let rig = rig().await;
    let (acme, globex, initech) = seed(&rig).await;
    let before_orders = bare(docs(&acme, "app", "orders", doc! {}).await);
    let before_invoices = bare(docs(&acme, "app", "invoices", doc! {}).await);
    assert_eq!((before_orders.len(), before_invoices.len()), (250, 40));
    let policy_before = std::fs::read_to_string(&rig.policy).unwrap();

    let writers = [
        writer(acme.clone(), "events", "a"),
        writer(globex.clone(), "orders", "gw"),
        writer(initech.clone(), "orders", "nw"),
    ];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = mover(&rig, &[], None).wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "mover failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let [acme_writer, globex_writer, initech_writer] = writers;
    let (acme_acked, acme_failed) = acme_writer.finish().await;
    let (globex_acked, globex_failed) = globex_writer.finish().await;
    let (initech_acked, initech_failed) = initech_writer.finish().await;

    // The mover reports how long the tenant was held, and the proxy measured it.
    let held_ms: u64 = stdout
        .lines()
        .find_map(|l| l.split("held for ").nth(1)?.strip_suffix(" ms")?.parse().ok())
        .unwrap_or_else(|| panic!("no held time in:\n{stdout}"));
    eprintln!("tenant acme held for {held_ms} ms\n{stdout}");
    assert!(held_ms < 30_000, "{held_ms}");
    assert!(!stdout.contains("\"o-0") && !stdout.contains("total"), "no document values in the output:\n{stdout}");

    // acme reads back exactly the same documents, now from its own database on east.
    same(&docs(&acme, "app", "orders", doc! {}).await, &before_orders, "orders");
    same(&docs(&acme, "app", "invoices", doc! {}).await, &before_invoices, "invoices");
    let east = direct(&rig.east).await;
    let moved = docs(&east, "acme_app", "orders", doc! {}).await;
    assert_eq!(moved.len(), 250);
    assert!(moved.iter().all(|d| !d.contains_key("tenantId")), "the tenant field is dropped in its own database");
    assert!(docs(&east, "app", "orders", doc! {}).await.is_empty(), "nothing lands in a shared name on east");
    // Its unique index is the plain one now.
    {
        use futures_util::TryStreamExt;
        let cursor = east.database("acme_app").collection::<Document>("orders").list_indexes().await.unwrap();
        let indexes: Vec<mongodb::IndexModel> = cursor.try_collect().await.unwrap();
        let sku = indexes.iter().find(|i| i.keys == doc! { "sku": 1 });
        let unique = sku.and_then(|i| i.options.as_ref()).and_then(|o| o.unique);
        assert_eq!(unique, Some(true), "the per-tenant unique index is a plain unique one: {indexes:?}");
    }

    // Every acme write acknowledged during the move is in the new placement, none failed.
    assert!(!acme_acked.is_empty());
    assert_eq!(acme_failed, 0);
    let events: Vec<String> =
        docs(&acme, "app", "events", doc! {}).await.iter().map(|d| d.get_str("_id").unwrap().to_owned()).collect();
    assert_eq!(events, acme_acked, "acknowledged writes are all in the final placement");
    assert_eq!(docs(&east, "acme_app", "events", doc! {}).await.len(), acme_acked.len());

    // The other tenants' writes all succeeded and stayed where they were.
    assert_eq!((globex_failed, initech_failed), (0, 0));
    assert!(!globex_acked.is_empty() && !initech_acked.is_empty());
    let main = direct(&rig.main).await;
    let globex_on_main = docs(&main, "app", "orders", doc! { "tenantId": "globex" }).await;
    assert_eq!(globex_on_main.len(), 60 + globex_acked.len());
    let side = direct(&rig.side).await;
    assert_eq!(docs(&side, "app", "orders", doc! { "tenantId": "initech" }).await.len(), 1 + initech_acked.len());
    assert_eq!(docs(&globex, "app", "orders", doc! {}).await.len(), 60 + globex_acked.len());

    // Without --delete-source the old copy stays; the policy kept its comments and gained acme's placement.
    assert_eq!(docs(&main, "app", "orders", doc! { "tenantId": "acme" }).await.len(), 250);
    let policy_after = std::fs::read_to_string(&rig.policy).unwrap();
    assert!(policy_after.starts_with("# Test policy: comments and layout survive a move.\n"));
    assert!(policy_after.contains("# tenantwall move: acme begin\n[[rules]]\ntenants = [\"acme\"]"));
    assert!(policy_after.contains("id = \"acme\"\nbackend = \"east\""));
    assert_eq!(policy_after.lines().count(), policy_before.lines().count() + 8, "{policy_after}");

    // Moving again to the same place does nothing.
    let again = mover(&rig, &[], None).wait_with_output().await.unwrap();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("already has that placement"));
}

/// `tenantwall audit` of the rig's policy: its exit status and report.
async fn audit(rig: &Rig) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenantwall"))
        .args(["audit", "--policy"])
        .arg(&rig.policy)
        .env(TOKEN_ENV, TOKEN)
        .output()
        .await
        .unwrap();
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Lines of the mover's stdout until one contains `needle`.
async fn wait_for_line(child: &mut tokio::process::Child, needle: &str) -> Vec<String> {
    let stdout = child.stdout.as_mut().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let done = line.contains(needle);
            seen.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "no line with {needle:?}: {seen:?}");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mover_killed_before_its_switch_changes_nothing_and_a_rerun_succeeds() {
    let rig = rig().await;
    let (acme, globex, _initech) = seed(&rig).await;
    let (status, report) = audit(&rig).await;
    assert_eq!(status, Some(0), "a healthy layout audits clean before the move:\n{report}");
    let before = docs(&acme, "app", "orders", doc! {}).await;
    let policy_before = std::fs::read(&rig.policy).unwrap();
    let main = direct(&rig.main).await;
    let main_before = docs(&main, "app", "orders", doc! {}).await;

    let mut child = mover(&rig, &["--max-hold-secs", "7"], Some(600));
    let seen = wait_for_line(&mut child, "pausing").await;
    assert!(seen.iter().any(|l| l.starts_with("copied app.orders: 250 documents")), "{seen:?}");
    let held_at = Instant::now();
    // A command of the held tenant waits; another tenant's does not.
    let waiting = tokio::spawn({
        let acme = acme.clone();
        async move {
            acme.database("app").collection::<Document>("orders").insert_one(doc! { "_id": "o-late" }).await.unwrap();
            Instant::now()
        }
    });
    let other = Instant::now();
    globex.database("app").collection::<Document>("orders").insert_one(doc! { "_id": "g-late" }).await.unwrap();
    assert!(other.elapsed() < Duration::from_secs(1), "globex is not held");
    let local = Instant::now();
    acme.database("app").run_command(doc! { "ping": 1 }).await.unwrap();
    assert!(local.elapsed() < Duration::from_secs(1), "what the proxy answers itself is never held");
    assert!(!waiting.is_finished(), "acme's insert is still held");
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    // The proxy ends the hold by itself at its bound (7 s after it began): the waiting insert then runs, on the
    // placement in force, which is still the old one.
    let done = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("released by the bound").unwrap();
    let waited = done.duration_since(held_at);
    assert!(waited > Duration::from_secs(4) && waited < Duration::from_secs(8), "held until the bound: {waited:?}");
    assert_eq!(std::fs::read(&rig.policy).unwrap(), policy_before, "the policy is as it was");
    let mut expected = main_before.clone();
    let main_after = docs(&main, "app", "orders", doc! {}).await;
    assert_eq!(main_after.len(), expected.len() + 2, "only the two late inserts were added at the source");
    expected.retain(|d| main_after.contains(d));
    assert_eq!(expected.len(), main_before.len(), "the source is untouched");
    let mut with_late = before.clone();
    with_late.extend(docs(&acme, "app", "orders", doc! { "_id": "o-late" }).await);
    with_late.sort_by_key(|d| d.get_str("_id").unwrap_or_default().to_owned());
    same(&docs(&acme, "app", "orders", doc! {}).await, &with_late, "orders after the interrupted move");

    // Run again: the partial copy on east is replaced, and the tenant moves.
    let out = mover(&rig, &["--delete-source"], None).wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("copied app.orders: 251 documents"), "{stdout}");
    same(&docs(&acme, "app", "orders", doc! {}).await, &bare(with_late), "orders after the re-run");
    let east = direct(&rig.east).await;
    assert_eq!(docs(&east, "acme_app", "orders", doc! {}).await.len(), 251);
    // --delete-source: acme's documents are gone from main, globex's are all there.
    assert!(docs(&main, "app", "orders", doc! { "tenantId": "acme" }).await.is_empty());
    assert_eq!(docs(&main, "app", "orders", doc! { "tenantId": "globex" }).await.len(), 61);
    let (status, report) = audit(&rig).await;
    assert_eq!(status, Some(0), "and after it, with acme in its own database on east:\n{report}");
    assert!(report.contains("acme_app"), "acme's own database is counted:\n{report}");
    assert!(Path::new(&rig.policy).exists());
    drop(rig.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_moves_back_and_a_destination_the_policy_refuses_changes_nothing() {
    let rig = rig().await;
    let (acme, _globex, _initech) = seed(&rig).await;
    let before = docs(&acme, "app", "orders", doc! {}).await;
    let policy_before = std::fs::read_to_string(&rig.policy).unwrap();

    // Collection mode next to the general `app.*` field rule would let that rule cover acme__orders: the new
    // policy does not compile, and nothing happens.
    let refused = mover_to(&rig, "collection", &[], None).wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("does not compile") && stderr.contains("app.acme__"), "{stderr}");
    assert!(stderr.contains("as they were"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&rig.policy).unwrap(), policy_before);
    let main = direct(&rig.main).await;
    assert!(main.database("app").list_collection_names().await.unwrap().iter().all(|c| !c.contains("acme__")));

    // Its own database on the same backend, and back to the shared collection.
    let out = mover_to(&rig, "database", &[], None).wait_with_output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    same(&docs(&acme, "app", "orders", doc! {}).await, &bare(before.clone()), "in acme_app on main");
    assert_eq!(docs(&main, "acme_app", "orders", doc! {}).await.len(), 250);
    let (status, report) = audit(&rig).await;
    assert_eq!(status, Some(0), "one backend, acme on rules of its own, globex on the general ones:\n{report}");
    acme.database("app").collection::<Document>("orders").insert_one(doc! { "_id": "o-own" }).await.unwrap();

    let out = mover_to(&rig, "field", &["--delete-source"], None).wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("plan: app.orders from main:acme_app.orders to main:app.orders"), "{stdout}");
    assert_eq!(std::fs::read_to_string(&rig.policy).unwrap(), policy_before, "the policy is the original again");
    let mut expected = before.clone();
    expected.push(doc! { "_id": "o-own", "tenantId": "acme" });
    same(&docs(&acme, "app", "orders", doc! {}).await, &expected, "back in the shared collection, stamped");
    assert!(docs(&main, "acme_app", "orders", doc! {}).await.is_empty(), "--delete-source dropped its own copy");
    assert_eq!(docs(&main, "app", "orders", doc! { "tenantId": "acme" }).await.len(), 251, "no duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_begun_before_the_switch_never_commits_after_it() {
    let rig = rig().await;
    let (acme, _globex, _initech) = seed(&rig).await;
    let orders = acme.database("app").collection::<Document>("orders");
    let mut session = acme.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    orders.insert_one(doc! { "_id": "o-txn" }).session(&mut session).await.unwrap();

    // Its own database on the same backend: the same server, so only the session ids keep the old transaction
    // from committing into the shared collection, which is no longer acme's placement.
    let out = mover_to(&rig, "database", &[], None).wait_with_output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let commit = session.commit_transaction().await;
    assert!(commit.is_err(), "a transaction of the old placement committed after the switch");
    // (nx-27017 shows a transaction's writes before it commits, so the copy saw o-txn; on MongoDB it would not
    // have, and the failed commit is what keeps the write from landing at the old placement unacknowledged-lost.)
    let main = direct(&rig.main).await;
    // A new transaction runs on the new placement.
    let mut session = acme.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    orders.insert_one(doc! { "_id": "o-txn2" }).session(&mut session).await.unwrap();
    session.commit_transaction().await.unwrap();
    assert_eq!(docs(&main, "acme_app", "orders", doc! { "_id": "o-txn2" }).await.len(), 1);
}
