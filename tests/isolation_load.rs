//! Isolation under load: 100 tenants, each with its own SCRAM user and client, run a mixed workload on one shared
//! field-mode collection through one proxy for a bounded time. Afterwards every tenant sees exactly the documents
//! it wrote, and a direct scan of the backend shows every document stamped with its writer's tenant.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{start_proxy_text, Backend};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};

const TENANTS: usize = 100;
const MAX_ROUNDS: i32 = 20;
const TIME_BUDGET: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_tenants_never_see_each_other() {
    let backend = Backend::start();
    let mut policy = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[[backends]]\nname = \"shared\"\nuri = \"{}\"\n\n",
        backend.uri()
    );
    // One verifier for every user keeps set-up fast; the user name decides the tenant.
    let scram = common::scram_entry("load-test-password");
    for t in 0..TENANTS {
        policy.push_str(&format!(
            "[[tenants]]\nid = \"t{t:03}\"\nbackend = \"shared\"\nusers = [{{ name = \"u{t:03}\", scram = \"{scram}\" }}]\n\n"
        ));
    }
    policy.push_str("[[rules]]\ndatabase = \"app\"\ncollection = \"items\"\nmode = \"field\"\n");
    let proxy = start_proxy_text(&policy).await;
    let addr = proxy.addr();
    let deadline = Instant::now() + TIME_BUDGET;

    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TENANTS {
        tasks.spawn(async move {
            let me = format!("t{t:03}");
            let uri = format!("mongodb://u{t:03}:load-test-password@{addr}/app?authSource=admin&maxPoolSize=2");
            let mut options = mongodb::options::ClientOptions::parse(uri).await.unwrap();
            options.server_selection_timeout = Some(Duration::from_secs(30));
            let client = mongodb::Client::with_options(options).unwrap();
            let items = client.database("app").collection::<Document>("items");
            let mut expected: BTreeSet<i32> = BTreeSet::new();
            let mut round = 0;
            while round < MAX_ROUNDS && Instant::now() < deadline {
                items.insert_one(doc! { "who": &me, "r": round, "v": 0 }).await.unwrap();
                expected.insert(round);
                if round % 3 == 2 {
                    items.update_many(doc! { "r": { "$lt": round } }, doc! { "$inc": { "v": 1 } }).await.unwrap();
                }
                if round % 5 == 4 {
                    items.delete_one(doc! { "r": round - 1 }).await.unwrap();
                    expected.remove(&(round - 1));
                }
                if round % 4 == 3 {
                    let seen: Vec<Document> =
                        items.find(doc! {}).batch_size(3).await.unwrap().try_collect().await.unwrap();
                    let foreign: Vec<_> = seen.iter().filter(|d| d.get_str("who").ok() != Some(me.as_str())).collect();
                    assert!(foreign.is_empty(), "{me} saw foreign documents: {foreign:?}");
                }
                round += 1;
            }
            let seen: Vec<Document> = items.find(doc! {}).await.unwrap().try_collect().await.unwrap();
            let rounds: BTreeSet<i32> = seen.iter().map(|d| d.get_i32("r").unwrap()).collect();
            assert!(seen.iter().all(|d| d.get_str("who").unwrap() == me), "{me} saw foreign documents");
            assert_eq!(rounds, expected, "{me}'s view differs from what it wrote");
            assert_eq!(items.count_documents(doc! {}).await.unwrap() as usize, expected.len());
            (me, expected.len())
        });
    }
    let mut written = std::collections::HashMap::new();
    while let Some(result) = tasks.join_next().await {
        let (me, n) = result.expect("tenant task failed");
        written.insert(me, n);
    }
    assert_eq!(written.len(), TENANTS);
    let total: usize = written.values().sum();
    assert!(total >= TENANTS, "workload too small to mean anything: {total}");

    // The backend, scanned directly: every document stamped with its writer's tenant, none unstamped.
    let direct = mongodb::Client::with_uri_str(backend.uri()).await.unwrap();
    let all: Vec<Document> = common::all_docs(&direct, "app", "items").await;
    assert_eq!(all.len(), total);
    let unstamped = all.iter().filter(|d| d.get_str("tenantId").is_err()).count();
    let foreign = all.iter().filter(|d| d.get_str("tenantId").ok() != d.get_str("who").ok()).count();
    assert_eq!((unstamped, foreign), (0, 0));
    eprintln!(
        "isolation under load: {TENANTS} tenants, {total} documents, {} commands",
        proxy.stats().commands.load(std::sync::atomic::Ordering::Relaxed)
    );
}
