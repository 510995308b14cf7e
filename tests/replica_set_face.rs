//! A listener with a replica-set face: drivers given `replicaSet=rs0` find the proxy as the one-member set's
//! primary at its advertised address, and never a backend address. Rust driver → tenantwall → nx-27017.

mod common;

use std::time::Duration;

use common::{start_proxy_text, Backend};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_set_uris_reach_the_proxy_as_primary() {
    let backend = Backend::start();
    let port = free_port();
    let text = format!(
        r#"
[[listeners]]
address = "127.0.0.1:{port}"
tenant = "acme"
face = {{ replica_set = "rs0", host = "127.0.0.1:{port}" }}

[[backends]]
name = "b"
uri = "{}"

[[tenants]]
id = "acme"
backend = "b"

[[rules]]
database = "app"
collection = "orders"
mode = "field"
"#,
        backend.uri()
    );
    let _proxy = start_proxy_text(&text).await;
    let mut options =
        mongodb::options::ClientOptions::parse(format!("mongodb://127.0.0.1:{port}/app?replicaSet=rs0")).await.unwrap();
    options.server_selection_timeout = Some(Duration::from_secs(5));
    let client = mongodb::Client::with_options(options).unwrap();
    let orders = client.database("app").collection::<Document>("orders");
    orders.insert_one(doc! { "_id": 1, "total": 10 }).await.unwrap();
    let found: Vec<Document> = orders.find(doc! {}).await.unwrap().try_collect().await.unwrap();
    assert_eq!(found, vec![doc! { "_id": 1, "total": 10, "tenantId": "acme" }]);

    let hello = client.database("admin").run_command(doc! { "hello": 1 }).await.unwrap();
    assert_eq!(hello.get_str("setName").unwrap(), "rs0");
    assert_eq!(hello.get_str("me").unwrap(), format!("127.0.0.1:{port}"));
    assert_eq!(hello.get_array("hosts").unwrap().len(), 1);
    assert!(!hello.contains_key("msg"));
    assert!(!hello.to_string().contains(&backend.port.to_string()), "{hello}");

    // A wrong set name is a server-selection failure, as against a real replica set.
    let mut wrong = mongodb::options::ClientOptions::parse(format!("mongodb://127.0.0.1:{port}/app?replicaSet=other"))
        .await
        .unwrap();
    wrong.server_selection_timeout = Some(Duration::from_millis(500));
    let err = mongodb::Client::with_options(wrong).unwrap().database("app").run_command(doc! { "ping": 1 }).await;
    assert!(err.is_err());
}
