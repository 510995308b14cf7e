//! `tenantwall audit` over a real nx-27017 backend, run as the binary: a healthy layout in every mode is clean
//! and its per-tenant counts and sizes are what was inserted; gaps planted straight into the backend are each
//! found and fail the audit; an unreachable backend makes the report incomplete. No document value beyond `_id`
//! (and no service password) ever reaches the output.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Backend, TempDir};
use mongodb::bson::{doc, Document, RawDocumentBuf};
use mongodb::options::IndexOptions;
use mongodb::IndexModel;
use serde_json::Value;

/// A value planted in documents (and as a foreign tenant value) that the report must never show.
const SECRET: &str = "SECRET-9f2c41";

fn policy(backend_uri: &str) -> String {
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n\
         [[backends]]\nname = \"main\"\nuri = \"{backend_uri}\"\n\n\
         [[tenants]]\nid = \"acme\"\nbackend = \"main\"\n\n\
         [[tenants]]\nid = \"globex\"\nbackend = \"main\"\n\n\
         [[rules]]\ndatabase = \"app\"\ncollection = \"orders\"\nmode = \"field\"\n\n\
         [[rules]]\ndatabase = \"app\"\ncollection = \"countries\"\nmode = \"shared\"\n\n\
         [[rules]]\ndatabase = \"shop\"\ncollection = \"orders\"\nmode = \"collection\"\n\n\
         [[rules]]\ndatabase = \"crm\"\ncollection = \"*\"\nmode = \"database\"\n"
    )
}

async fn client(backend: &Backend) -> mongodb::Client {
    let mut options = mongodb::options::ClientOptions::parse(backend.uri()).await.expect("options");
    options.server_selection_timeout = Some(Duration::from_secs(5));
    mongodb::Client::with_options(options).expect("client")
}

fn bson_size(doc: &Document) -> u64 {
    RawDocumentBuf::try_from(doc).expect("encode").as_bytes().len() as u64
}

/// Inserts `docs` into `db.coll` and returns their BSON bytes.
async fn insert(client: &mongodb::Client, db: &str, coll: &str, docs: Vec<Document>) -> u64 {
    let bytes = docs.iter().map(bson_size).sum();
    client.database(db).collection::<Document>(coll).insert_many(docs).await.expect("insert");
    bytes
}

/// What the healthy layout holds: BSON bytes of acme's and globex's documents in the field-mode collection.
struct Seeded {
    acme_orders_bytes: u64,
    globex_orders_bytes: u64,
}

/// A healthy layout: a field-mode collection with a tenant-prefixed unique index, reference data, per-tenant
/// collections and a per-tenant database.
async fn seed_healthy(client: &mongodb::Client) -> Seeded {
    let order = |id: &str, tenant: &str, sku: &str| doc! { "_id": id, "tenantId": tenant, "sku": sku, "qty": 1 };
    let acme_orders_bytes = insert(
        client,
        "app",
        "orders",
        vec![order("a1", "acme", "s1"), order("a2", "acme", "s2"), order("a3", "acme", "s3")],
    )
    .await;
    let globex_orders_bytes =
        insert(client, "app", "orders", vec![order("g1", "globex", "s4"), order("g2", "globex", "s5")]).await;
    let orders = client.database("app").collection::<Document>("orders");
    let prefixed = IndexOptions::builder().unique(true).build();
    orders
        .create_index(IndexModel::builder().keys(doc! { "tenantId": 1, "sku": 1 }).options(prefixed).build())
        .await
        .expect("prefixed unique index");
    insert(client, "app", "countries", vec![doc! { "_id": "fr", "name": "France" }]).await;
    insert(client, "shop", "acme__orders", (0..4).map(|i| doc! { "_id": i, "total": i * 10 }).collect()).await;
    insert(client, "shop", "globex__orders", vec![doc! { "_id": 1, "total": 5 }]).await;
    insert(client, "acme_crm", "contacts", vec![doc! { "_id": 1, "n": "x" }, doc! { "_id": 2, "n": "y" }]).await;
    Seeded { acme_orders_bytes, globex_orders_bytes }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn audit(policy: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tenantwall"));
    command.arg("audit").arg("--policy").arg(policy).args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("run tenantwall audit");
    Run {
        code: out.status.code().expect("exit status"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", run.stdout, run.stderr))
}

fn usage<'a>(report: &'a Value, tenant: &str, namespace: &str) -> &'a Value {
    report["usage"]
        .as_array()
        .and_then(|rows| rows.iter().find(|u| u["tenant"] == tenant && u["namespace"] == namespace))
        .unwrap_or_else(|| panic!("no usage row for {tenant} {namespace}: {report:#}"))
}

fn findings<'a>(report: &'a Value, kind: &str, namespace: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .map(|all| all.iter().filter(|f| f["kind"] == kind && f["namespace"] == namespace).collect())
        .unwrap_or_default()
}

/// `size` of `collStats` as the backend reports it.
async fn coll_stats_size(client: &mongodb::Client, db: &str, coll: &str) -> u64 {
    let stats = client.database(db).run_command(doc! { "collStats": coll }).await.expect("collStats");
    match stats.get("size") {
        Some(mongodb::bson::Bson::Int32(n)) => *n as u64,
        Some(mongodb::bson::Bson::Int64(n)) => *n as u64,
        Some(mongodb::bson::Bson::Double(n)) => *n as u64,
        other => panic!("collStats size: {other:?}"),
    }
}

#[tokio::test]
async fn a_healthy_layout_is_clean_and_counted_per_tenant() {
    let backend = Backend::start();
    let direct = client(&backend).await;
    let seeded = seed_healthy(&direct).await;
    let dir = TempDir::new("audit-healthy");
    let path = dir.write("policy.toml", &policy(&backend.uri()));

    // Batches of two: the five orders take a find and two getMores; a progress line per batch.
    let run = audit(&path, &["--json", "--batch-size", "2", "--progress-secs", "0"], &[]);
    assert_eq!(run.code, 0, "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    let report = json(&run);
    assert_eq!(report["gaps"], 0, "{report:#}");
    assert_eq!(report["problems"].as_array().map(Vec::len), Some(0), "{report:#}");
    assert!(run.stderr.contains("app.orders: 5 documents scanned"), "{}", run.stderr);

    let acme = usage(&report, "acme", "app.orders");
    assert_eq!((acme["mode"].as_str(), acme["documents"].as_u64()), (Some("field"), Some(3)));
    assert_eq!(acme["data_bytes"].as_u64(), Some(seeded.acme_orders_bytes));
    assert_eq!(acme["index_bytes"], "shared");
    let globex = usage(&report, "globex", "app.orders");
    assert_eq!(globex["documents"].as_u64(), Some(2));
    assert_eq!(globex["data_bytes"].as_u64(), Some(seeded.globex_orders_bytes));

    let own = usage(&report, "acme", "shop.acme__orders");
    assert_eq!((own["mode"].as_str(), own["visible"].as_str()), (Some("collection"), Some("shop.orders")));
    assert_eq!(own["documents"].as_u64(), Some(4));
    assert_eq!(own["data_bytes"].as_u64(), Some(coll_stats_size(&direct, "shop", "acme__orders").await));
    // nx-27017 answers index sizes with an empty indexSizes: not a zero the audit may pass on.
    assert_eq!(own["index_bytes"], "not reported by the backend");
    assert_eq!(usage(&report, "globex", "shop.globex__orders")["documents"].as_u64(), Some(1));
    let database = usage(&report, "acme", "acme_crm.contacts");
    assert_eq!((database["mode"].as_str(), database["visible"].as_str()), (Some("database"), Some("crm.contacts")));
    assert_eq!(database["documents"].as_u64(), Some(2));

    let totals = report["totals"].as_array().expect("totals");
    let total = |tenant: &str| totals.iter().find(|t| t["tenant"] == tenant).map(|t| t["documents"].clone());
    assert_eq!(total("acme"), Some(Value::from(3 + 4 + 2)));
    assert_eq!(total("globex"), Some(Value::from(2 + 1)));

    let text = audit(&path, &[], &[]);
    assert_eq!(text.code, 0, "{}", text.stdout);
    assert!(
        text.stdout.contains("findings: 0 gap(s)") && text.stdout.contains("result: no gap found"),
        "{}",
        text.stdout
    );
}

#[tokio::test]
async fn planted_gaps_are_each_found_without_showing_document_values() {
    let backend = Backend::start();
    let direct = client(&backend).await;
    let seeded = seed_healthy(&direct).await;
    let orders = direct.database("app").collection::<Document>("orders");
    orders
        .insert_many(vec![
            doc! { "_id": "unstamped-1", "sku": "s6", "note": SECRET },
            doc! { "_id": "foreign-1", "sku": "s7", "tenantId": SECRET },
            doc! { "_id": "wrong-1", "sku": "s8", "tenantId": 42, "note": SECRET },
            doc! { "_id": "both-1", "sku": "s9", "tenantId": ["acme", "globex"] },
        ])
        .await
        .expect("plant documents");
    let unique = IndexOptions::builder().unique(true).build();
    orders.create_index(IndexModel::builder().keys(doc! { "sku": 1 }).options(unique).build()).await.expect("index");
    let ttl = IndexOptions::builder().expire_after(Duration::from_secs(3600)).build();
    orders.create_index(IndexModel::builder().keys(doc! { "at": 1 }).options(ttl).build()).await.expect("ttl index");
    insert(&direct, "shop", "ghost__orders", vec![doc! { "_id": 1, "note": SECRET }]).await;
    insert(&direct, "app", "sessions", vec![doc! { "_id": 1, "token": SECRET }]).await;
    insert(&direct, "billing", "ledger", vec![doc! { "_id": 1, "amount": 3 }]).await;
    insert(&direct, "ghost_crm", "contacts", vec![doc! { "_id": 1, "name": SECRET }]).await;
    let dir = TempDir::new("audit-gaps");
    let path = dir.write("policy.toml", &policy(&backend.uri()));

    let run = audit(&path, &["--json"], &[]);
    assert_eq!(run.code, 1, "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    let report = json(&run);
    let one = |kind: &str, namespace: &str| {
        let found = findings(&report, kind, namespace);
        assert_eq!(found.len(), 1, "{kind} on {namespace}: {report:#}");
        found[0].clone()
    };
    let unstamped = one("unstamped-documents", "app.orders");
    assert_eq!((unstamped["severity"].as_str(), unstamped["count"].as_u64()), (Some("gap"), Some(1)));
    assert_eq!(unstamped["ids"], serde_json::json!(["\"unstamped-1\""]));
    assert_eq!(one("foreign-values", "app.orders")["ids"], serde_json::json!(["\"foreign-1\""]));
    let wrong = one("wrong-type-values", "app.orders");
    assert_eq!(wrong["count"].as_u64(), Some(2), "the number and the array: {wrong:#}");
    let orphan = one("orphan-collection", "shop.ghost__orders");
    assert!(orphan["detail"].as_str().is_some_and(|d| d.contains("no tenant ghost")), "{orphan:#}");
    one("uncovered-collection", "app.sessions");
    one("uncovered-database", "billing");
    let orphan_db = one("orphan-database", "ghost_crm");
    assert!(orphan_db["detail"].as_str().is_some_and(|d| d.contains("no tenant ghost")), "{orphan_db:#}");
    let index = one("unique-index", "app.orders");
    assert!(index["detail"]
        .as_str()
        .is_some_and(|d| d.contains("(sku)") && d.contains("does not start with tenantId")));
    assert_eq!(one("ttl-index", "app.orders")["severity"], "note");
    // The tenant-prefixed unique index (checked by `one` above: a single unique-index finding) and the healthy
    // namespaces raise nothing.
    for namespace in ["app.countries", "shop.acme__orders", "shop.globex__orders", "acme_crm.contacts", "acme_crm"] {
        assert!(
            report["findings"].as_array().is_some_and(|all| all.iter().all(|f| f["namespace"] != namespace)),
            "{namespace} reported: {report:#}"
        );
    }
    // Documents that belong to no tenant are not counted as anyone's.
    assert_eq!(usage(&report, "acme", "app.orders")["documents"].as_u64(), Some(3));
    assert_eq!(usage(&report, "acme", "app.orders")["data_bytes"].as_u64(), Some(seeded.acme_orders_bytes));
    assert!(!run.stdout.contains(SECRET) && !run.stderr.contains(SECRET), "{}\n{}", run.stdout, run.stderr);

    let text = audit(&path, &["--progress-secs", "0"], &[]);
    assert_eq!(text.code, 1, "{}", text.stdout);
    for wanted in
        ["unstamped-documents", "orphan-collection", "shop.ghost__orders", "unique-index", "result: 8 gap(s) found"]
    {
        assert!(text.stdout.contains(wanted), "missing {wanted:?}:\n{}", text.stdout);
    }
    assert!(!text.stdout.contains(SECRET) && !text.stderr.contains(SECRET), "{}\n{}", text.stdout, text.stderr);
}

#[test]
fn an_unreachable_backend_makes_the_audit_incomplete_without_showing_its_password() {
    let dir = TempDir::new("audit-down");
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let text = policy(&format!("mongodb://127.0.0.1:{port}/")).replace(
        "name = \"main\"\n",
        "name = \"main\"\nusername = \"svc\"\npassword_env = \"TW_AUDIT_TEST_PASSWORD\"\n",
    );
    let path = dir.write("policy.toml", &text);
    let password = "hunter2-audit-password";
    let run = audit(&path, &["--json"], &[("TW_AUDIT_TEST_PASSWORD", password)]);
    assert_eq!(run.code, 2, "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    let report = json(&run);
    assert_eq!(report["problems"][0]["backend"], "main", "{report:#}");
    assert_eq!(report["problems"][0]["reading"], "connect", "{report:#}");
    assert!(!run.stdout.contains(password) && !run.stderr.contains(password));
    let text = audit(&path, &[], &[("TW_AUDIT_TEST_PASSWORD", password)]);
    assert_eq!(text.code, 2);
    assert!(text.stdout.contains("result: incomplete"), "{}", text.stdout);
}

/// The service client `audit` (and `move`) read with: batches of the requested size through getMore, and a
/// cursor closed early is gone from the server.
#[tokio::test]
async fn the_service_client_reads_in_batches_and_closes_cursors_it_leaves() {
    use tenantwall::backend::BackendTarget;
    use tenantwall::lifecycle::client::{ClientError, ServiceClient, Timeouts};

    let backend = Backend::start();
    let direct = client(&backend).await;
    insert(&direct, "app", "items", (0..5).map(|i| doc! { "_id": i }).collect()).await;
    let dir = TempDir::new("audit-client");
    let loaded = tenantwall::Policy::load(&dir.write("policy.toml", &policy(&backend.uri()))).expect("policy");
    let target = BackendTarget::new(loaded.backends[0].clone(), Default::default());
    let mut service = ServiceClient::connect(&target, Timeouts::from_limits(&loaded.limits)).await.expect("connect");

    let mut cursor = service.find("app", "items", bson::rawdoc! {}, None, 2).await.expect("find");
    let mut sizes = Vec::new();
    while let Some(batch) = cursor.next_batch(&mut service).await.expect("batch") {
        sizes.push(batch.len());
    }
    assert_eq!(sizes, vec![2, 2, 1]);
    assert!(cursor.is_exhausted());

    let mut cursor = service.find("app", "items", bson::rawdoc! {}, None, 2).await.expect("find");
    assert_eq!(cursor.next_batch(&mut service).await.expect("first batch").map(|b| b.len()), Some(2));
    let id = cursor.id();
    assert_ne!(id, 0);
    cursor.close(&mut service).await.expect("killCursors");
    // MongoDB answers CursorNotFound (43); nx-27017 an empty last batch. Either way, none of the three
    // documents left in the cursor comes back.
    match service.command("app", bson::rawdoc! { "getMore": id, "collection": "items" }).await {
        Err(ClientError::Command { code, .. }) => assert_eq!(code, 43, "CursorNotFound"),
        Ok(reply) => {
            let batch = reply.get_document("cursor").and_then(|c| c.get_array("nextBatch")).expect("nextBatch");
            assert_eq!(batch.into_iter().count(), 0, "the cursor was not closed: {reply:?}");
        }
        Err(other) => panic!("getMore on a closed cursor: {other}"),
    }
    // The connection stays usable after a command that failed.
    assert!(service.list_database_names().await.expect("listDatabases").contains(&"app".to_owned()));
}

/// Every backend is read, each with its own tenants: a tenant's documents or collections left on a backend the
/// policy no longer places it on are found, and its data on its own backend is counted there.
#[tokio::test]
async fn every_backend_is_read_and_copies_left_behind_are_found() {
    let (first, second) = (Backend::start(), Backend::start());
    let (one, two) = (client(&first).await, client(&second).await);
    insert(&one, "app", "orders", vec![doc! { "_id": "a1", "tenantId": "acme" }]).await;
    // globex was moved to "second": a document and a collection of its stayed behind on "main".
    insert(&one, "app", "orders", vec![doc! { "_id": "left-1", "tenantId": "globex" }]).await;
    insert(&one, "shop", "globex__orders", vec![doc! { "_id": 1 }]).await;
    insert(&two, "app", "orders", (0..3).map(|i| doc! { "_id": i, "tenantId": "globex" }).collect()).await;
    let second_backend = format!("[[backends]]\nname = \"second\"\nuri = \"{}\"\n\n[[tenants]]", second.uri());
    let text = policy(&first.uri())
        .replacen("[[tenants]]", &second_backend, 1)
        .replace("id = \"globex\"\nbackend = \"main\"", "id = \"globex\"\nbackend = \"second\"");
    let dir = TempDir::new("audit-backends");
    let path = dir.write("policy.toml", &text);

    let run = audit(&path, &["--json"], &[]);
    assert_eq!(run.code, 1, "stdout:\n{}\nstderr:\n{}\npolicy:\n{text}", run.stdout, run.stderr);
    let report = json(&run);
    assert_eq!(report["backends"], serde_json::json!(["main", "second"]), "{report:#}");
    let misplaced = findings(&report, "misplaced-documents", "app.orders");
    assert_eq!(misplaced.len(), 1, "{report:#}");
    assert_eq!((misplaced[0]["backend"].as_str(), misplaced[0]["count"].as_u64()), (Some("main"), Some(1)));
    assert_eq!(misplaced[0]["ids"], serde_json::json!(["\"left-1\""]));
    let orphan = findings(&report, "orphan-collection", "shop.globex__orders");
    assert_eq!(orphan.len(), 1, "{report:#}");
    assert!(orphan[0]["detail"].as_str().is_some_and(|d| d.contains("placed on backend second")), "{orphan:?}");
    let globex = usage(&report, "globex", "app.orders");
    assert_eq!((globex["backend"].as_str(), globex["documents"].as_u64()), (Some("second"), Some(3)));
    assert_eq!(usage(&report, "acme", "app.orders")["documents"].as_u64(), Some(1));
}
