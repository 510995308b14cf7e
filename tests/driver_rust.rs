//! End to end with the official Rust driver: driver → tenantwall → nx-27017.

mod common;

use common::{client, start_proxy, Backend};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::options::Compressor as DriverCompressor;
use tenantwall_protocol::Compressor;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_presents_a_mongos_and_hides_the_backend() {
    let backend = Backend::start();
    let proxy = start_proxy(&backend.uri()).await;
    let client = client(proxy.addr(), None).await;
    let hello = client.database("admin").run_command(doc! { "hello": 1 }).await.unwrap();
    assert_eq!(hello.get_str("msg").unwrap(), "isdbgrid");
    for key in ["hosts", "setName", "me", "primary", "topologyVersion"] {
        assert!(!hello.contains_key(key), "hello reveals {key}: {hello}");
    }
    // The proxy advertises what the backend reported (nx-27017 says 25).
    let direct = client_direct(&backend).await;
    let backend_hello = direct.database("admin").run_command(doc! { "hello": 1 }).await.unwrap();
    assert_eq!(hello.get_i32("maxWireVersion").unwrap(), backend_hello.get_i32("maxWireVersion").unwrap());
    assert!(!hello.to_string().contains(&backend.port.to_string()));
}

async fn client_direct(backend: &Backend) -> mongodb::Client {
    client(format!("127.0.0.1:{}", backend.port).parse().unwrap(), None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_cursor_and_aggregate_through_the_proxy() {
    let backend = Backend::start();
    let proxy = start_proxy(&backend.uri()).await;
    let coll = client(proxy.addr(), None).await.database("app").collection::<Document>("items");

    coll.insert_one(doc! { "_id": 1, "seq": 1, "name": "one", "n": 1 }).await.unwrap();
    coll.insert_many((2..=1000).map(|i| doc! { "_id": i, "seq": i, "name": format!("item{i}"), "n": i % 10 }))
        .await
        .unwrap();
    let one = coll.find_one(doc! { "_id": 1 }).await.unwrap().unwrap();
    assert_eq!(one.get_str("name").unwrap(), "one");

    let updated = coll.update_many(doc! { "n": 3 }, doc! { "$set": { "three": true } }).await.unwrap();
    assert_eq!(updated.modified_count, 100);
    assert_eq!(coll.count_documents(doc! { "three": true }).await.unwrap(), 100);
    let deleted = coll.delete_many(doc! { "n": 9 }).await.unwrap();
    assert_eq!(deleted.deleted_count, 100);

    // A cursor drained over many getMore batches comes back complete and in order.
    let ids: Vec<i32> = coll
        .find(doc! {})
        // nx-27017 orders integer _id values as text, so order by another integer field.
        .sort(doc! { "seq": 1 })
        .batch_size(7)
        .await
        .unwrap()
        .map_ok(|d| d.get_i32("_id").unwrap())
        .try_collect()
        .await
        .unwrap();
    let expected: Vec<i32> = (1..=1000).filter(|i| i % 10 != 9).collect();
    assert_eq!(ids, expected);

    let groups: Vec<Document> = coll
        .aggregate(vec![
            doc! { "$match": { "n": { "$lt": 3 } } },
            doc! { "$group": { "_id": "$n", "count": { "$sum": 1 } } },
            doc! { "$sort": { "_id": 1 } },
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let counts: Vec<(i32, i32)> =
        groups.iter().map(|g| (g.get_i32("_id").unwrap(), g.get_i32("count").unwrap())).collect();
    assert_eq!(counts, vec![(0, 100), (1, 100), (2, 100)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_many_of_ten_thousand_documents() {
    let backend = Backend::start();
    let proxy = start_proxy(&backend.uri()).await;
    let coll = client(proxy.addr(), None).await.database("app").collection::<Document>("bulk");
    let docs: Vec<Document> = (0..10_000).map(|i| doc! { "_id": i, "payload": "x".repeat(200) }).collect();
    let result = coll.insert_many(docs).await.unwrap();
    assert_eq!(result.inserted_ids.len(), 10_000);
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 10_000);
    let last = coll.find_one(doc! { "_id": 9_999 }).await.unwrap().unwrap();
    assert_eq!(last.get_str("payload").unwrap().len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_compressor_is_negotiated_and_used() {
    let backend = Backend::start();
    let cases = [
        (DriverCompressor::Zstd { level: None }, Compressor::Zstd),
        (DriverCompressor::Snappy, Compressor::Snappy),
        (DriverCompressor::Zlib { level: None }, Compressor::Zlib),
    ];
    for (driver_compressor, ours) in cases {
        let proxy = start_proxy(&backend.uri()).await;
        let client = client(proxy.addr(), Some(vec![driver_compressor])).await;
        let coll = client.database("app").collection::<Document>(ours.name());
        coll.insert_many((0..50).map(|i| doc! { "i": i, "text": "compress me ".repeat(20) })).await.unwrap();
        let back: Vec<Document> = coll.find(doc! {}).batch_size(10).await.unwrap().try_collect().await.unwrap();
        assert_eq!(back.len(), 50);
        let stats = proxy.stats();
        assert!(stats.compressed(ours) >= 3, "{ours:?} not used: {}", stats.compressed(ours));
        for other in Compressor::ALL.into_iter().filter(|c| *c != ours) {
            assert_eq!(stats.compressed(other), 0, "{other:?} used unexpectedly");
        }
        proxy.shutdown().await;
    }
}

/// Runs one deterministic workload and returns everything it observed.
async fn workload(client: &mongodb::Client, db: &str) -> Vec<Document> {
    let coll = client.database(db).collection::<Document>("cmp");
    let mut seen = Vec::new();
    coll.insert_many((0..300).map(|i| doc! { "_id": i, "k": i % 7, "s": format!("v{}", i % 13) })).await.unwrap();
    coll.update_many(doc! { "k": 2 }, doc! { "$inc": { "bumped": 1 } }).await.unwrap();
    coll.delete_many(doc! { "k": 5 }).await.unwrap();
    let found: Vec<Document> = coll
        .find(doc! { "k": { "$in": [1, 2, 3] } })
        .sort(doc! { "s": 1, "_id": -1 })
        .skip(5)
        .limit(40)
        .projection(doc! { "s": 1, "bumped": 1 })
        .batch_size(9)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    seen.extend(found);
    let agg: Vec<Document> = coll
        .aggregate(vec![doc! { "$group": { "_id": "$k", "n": { "$sum": 1 } } }, doc! { "$sort": { "_id": 1 } }])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    seen.extend(agg);
    seen.push(doc! { "count": coll.count_documents(doc! { "k": { "$gt": 2 } }).await.unwrap() as i64 });
    let mut distinct = coll.distinct("s", doc! {}).await.unwrap();
    distinct.sort_by_key(|v| v.to_string());
    seen.push(doc! { "distinct": distinct });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_match_the_backend_queried_directly() {
    let backend = Backend::start();
    let proxy = start_proxy(&backend.uri()).await;
    let direct = workload(&client_direct(&backend).await, "direct_cmp").await;
    let proxied = workload(&client(proxy.addr(), None).await, "proxy_cmp").await;
    assert!(direct.len() > 40, "workload observed too little: {}", direct.len());
    assert_eq!(direct, proxied);
}
