//! The backend pool, against a real nx-27017: many client connections share `backends[].max_connections`
//! backend connections; cursors and transactions keep working when their commands land on different pooled
//! connections; a busy pool answers `ExceededTimeLimit` and recovers; waiting commands are served round-robin
//! across tenants, not first come first served. And, before any of that, client connections are spread over the
//! proxy's worker threads by the work they carry, not by how many are open.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bson::rawdoc;
use common::{command, http_get, metric, msg, ok, start_proxy_text, Backend, RawClient};
use futures_util::TryStreamExt;
use mongodb::bson::doc;

const OPEN: &str = "tenantwall_backend_connections{backend=\"main\"}";

/// Two tenants on their own tenant-bound listeners (acme first, globex second) sharing `app.orders` by the tenant
/// field, an admin listener, and `backend` / `limits` keys added to those tables.
fn pool_policy(backend: &Backend, backend_keys: &str, limits: &str) -> String {
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\ntenant = \"acme\"\n\n\
         [[listeners]]\naddress = \"127.0.0.1:0\"\ntenant = \"globex\"\n\n\
         [[backends]]\nname = \"main\"\nuri = \"{}\"\n{backend_keys}\n\n\
         [[tenants]]\nid = \"acme\"\nbackend = \"main\"\n\n\
         [[tenants]]\nid = \"globex\"\nbackend = \"main\"\n\n\
         [[rules]]\ndatabase = \"app\"\ncollection = \"orders\"\nmode = \"field\"\n\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\n[limits]\n{limits}\n",
        backend.uri()
    )
}

async fn driver(addr: SocketAddr) -> mongodb::Client {
    let mut options = mongodb::options::ClientOptions::parse(format!("mongodb://{addr}/")).await.unwrap();
    options.server_selection_timeout = Some(Duration::from_secs(10));
    options.max_pool_size = Some(4);
    mongodb::Client::with_options(options).unwrap()
}

fn open_connections(admin: SocketAddr) -> f64 {
    let (status, text) = http_get(admin, "/metrics", None);
    assert_eq!(status, 200);
    metric(&text, OPEN)
}

/// Sixteen driver clients (up to 64 client connections) of two tenants insert, read back through several
/// getMores, and commit transactions while the proxy holds at most two backend connections: cursors and
/// transactions are not bound to a connection, and each tenant still sees exactly its own documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_share_two_backend_connections() {
    let backend = Backend::start();
    let proxy = start_proxy_text(&pool_policy(&backend, "max_connections = 2", "")).await;
    let admin = proxy.admin_addr().unwrap();
    let (acme, globex) = (proxy.addrs()[0], proxy.addrs()[1]);

    let most = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (most, done) = (most.clone(), done.clone());
        tokio::task::spawn_blocking(move || {
            while !done.load(Ordering::Relaxed) {
                most.fetch_max(open_connections(admin) as usize, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    let mut clients = Vec::new();
    for i in 0..16 {
        let (addr, tenant) = if i % 2 == 0 { (acme, "acme") } else { (globex, "globex") };
        clients.push(tokio::spawn(async move {
            let client = driver(addr).await;
            let orders = client.database("app").collection::<mongodb::bson::Document>("orders");
            let docs: Vec<_> = (0..10).map(|n| doc! { "client": i, "n": n, "owner": tenant }).collect();
            orders.insert_many(docs).await.unwrap();
            // Batches of 3: the first batch and three getMores, each checked out on its own.
            let mine: Vec<_> =
                orders.find(doc! { "client": i }).batch_size(3).await.unwrap().try_collect().await.unwrap();
            assert_eq!(mine.len(), 10, "client {i}");
            client
        }));
    }
    let mut connected = Vec::new();
    for task in clients {
        connected.push(task.await.unwrap());
    }
    // Transactions one at a time (nx-27017 runs one transaction per database at once), while the other clients
    // keep both backend connections busy, so a transaction's statements are checked out on either of them.
    let busy = Arc::new(AtomicBool::new(true));
    let mut background = Vec::new();
    for client in &connected[1..] {
        let (client, busy) = (client.clone(), busy.clone());
        background.push(tokio::spawn(async move {
            let orders = client.database("app").collection::<mongodb::bson::Document>("orders");
            while busy.load(Ordering::Relaxed) {
                orders.count_documents(doc! {}).await.unwrap();
            }
        }));
    }
    for (i, client) in connected.iter().enumerate() {
        let tenant = if i % 2 == 0 { "acme" } else { "globex" };
        let orders = client.database("app").collection::<mongodb::bson::Document>("orders");
        let mut session = client.start_session().await.unwrap();
        session.start_transaction().await.unwrap();
        orders.insert_one(doc! { "client": i as i32, "n": 100, "owner": tenant }).session(&mut session).await.unwrap();
        orders.insert_one(doc! { "client": i as i32, "n": 101, "owner": tenant }).session(&mut session).await.unwrap();
        session.commit_transaction().await.unwrap();
    }
    busy.store(false, Ordering::Relaxed);
    for task in background {
        task.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();

    for (addr, tenant) in [(acme, "acme"), (globex, "globex")] {
        let client = driver(addr).await;
        let all = common::all_docs(&client, "app", "orders").await;
        assert_eq!(all.len(), 8 * 12, "{tenant} sees its 8 clients' 12 documents");
        assert!(all.iter().all(|d| d.get_str("owner").unwrap() == tenant), "{tenant} saw another tenant's document");
    }
    let most = most.load(Ordering::Relaxed);
    assert!((1..=2).contains(&most), "at most 2 backend connections, saw {most}");
    assert!(open_connections(admin) <= 2.0);
    proxy.shutdown().await;
}

fn working_on(admin: SocketAddr) -> [f64; 2] {
    let (status, text) = http_get(admin, "/metrics", None);
    assert_eq!(status, 200);
    [0, 1].map(|w| metric(&text, &format!("tenantwall_worker_working_connections{{worker=\"{w}\"}}")))
}

/// Sixteen driver clients, one after another, each with one application connection (as the load harness and an
/// app with one client per tenant have): every client also opens monitoring connections that only send `hello`.
/// Placed by open connections, the two kinds alternated between the two workers and every application connection
/// landed on one of them; placed by working connections, each worker carries about half.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_connections_are_spread_over_the_workers_whatever_the_monitoring_connections() {
    let backend = Backend::start();
    let server = tenantwall::server::Server::bind(common::policy(&pool_policy(&backend, "", "")), None)
        .await
        .expect("bind")
        .start_workers(2)
        .expect("workers");
    let proxy = server.spawn();
    let admin = proxy.admin_addr().unwrap();
    let acme = proxy.addrs()[0];
    let mut clients = Vec::new();
    for i in 0..16 {
        let mut options = mongodb::options::ClientOptions::parse(format!("mongodb://{acme}/")).await.unwrap();
        options.server_selection_timeout = Some(Duration::from_secs(10));
        options.max_pool_size = Some(1);
        let client = mongodb::Client::with_options(options).unwrap();
        let orders = client.database("app").collection::<mongodb::bson::Document>("orders");
        orders.insert_one(doc! { "client": i }).await.unwrap();
        clients.push(client);
    }
    let [first, second] = working_on(admin);
    assert_eq!(first + second, 16.0, "each client's one application connection counts as working");
    assert!((first - second).abs() <= 2.0, "working connections per worker: {first} and {second}");
    // They stop counting when they close.
    for client in clients {
        client.shutdown().await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while working_on(admin) != [0.0, 0.0] {
        assert!(std::time::Instant::now() < deadline, "still counted after closing: {:?}", working_on(admin));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.shutdown().await;
}

/// With the only backend connection busy (the backend is stopped mid-command), another command waits
/// `limits.pool_wait_timeout_ms` and gets `ExceededTimeLimit` (262, which drivers retry), never reaching the
/// backend; once the backend resumes, both tenants are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_pool_answers_exceeded_time_limit_and_recovers() {
    let backend = Backend::start();
    let proxy = start_proxy_text(&pool_policy(&backend, "max_connections = 1", "pool_wait_timeout_ms = 300")).await;
    let (acme, globex, admin) = (proxy.addrs()[0], proxy.addrs()[1], proxy.admin_addr().unwrap());
    let find = || msg(rawdoc! { "find": "orders", "filter": {}, "$db": "app" });
    tokio::task::spawn_blocking(move || {
        let mut warm = RawClient::connect(acme);
        assert_eq!(ok(&command(&mut warm, &find())), 1.0);

        backend.pause();
        let mut stuck = RawClient::connect(acme);
        stuck.send(&find());
        std::thread::sleep(Duration::from_millis(200));
        let mut waiting = RawClient::connect(globex);
        let reply = command(&mut waiting, &find());
        assert_eq!(reply.get_i32("code").unwrap(), 262, "{reply:?}");
        assert_eq!(reply.get_str("codeName").unwrap(), "ExceededTimeLimit");
        assert!(!reply.get_str("errmsg").unwrap().contains(&backend.uri()[10..]), "no backend address in errors");

        backend.resume();
        let reply = stuck.recv().expect("the stuck command is answered once the backend resumes");
        assert!(matches!(reply.message, tenantwall_protocol::Message::Msg(_)));
        assert_eq!(ok(&command(&mut waiting, &find())), 1.0);
        let (_, text) = http_get(admin, "/metrics", None);
        assert_eq!(metric(&text, "tenantwall_backend_pool_timeouts_total{backend=\"main\"}"), 1.0);
    })
    .await
    .unwrap();
    proxy.shutdown().await;
}

/// One backend connection; acme has it busy and four more commands waiting when globex's one arrives. Served
/// first come first served, globex would be answered last of the waiting commands; round-robin across tenants
/// answers it second (after acme's first waiter).
///
/// The order is read from the backend, not from when the replies reach the clients: with one backend connection
/// the backend runs the commands one after the other in the order the pool hands the connection out, and its
/// `_id`s grow in that order. The replies follow each other within milliseconds, so threads recording them could
/// be scheduled in any order on a loaded machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_commands_are_served_round_robin_across_tenants() {
    let backend = Backend::start();
    let proxy = start_proxy_text(&pool_policy(&backend, "max_connections = 1", "pool_wait_timeout_ms = 20000")).await;
    let (acme, globex) = (proxy.addrs()[0], proxy.addrs()[1]);
    tokio::task::spawn_blocking(move || {
        let insert = |name: &str| msg(rawdoc! { "insert": "orders", "documents": [{ "name": name }], "$db": "app" });
        let mut warm = RawClient::connect(acme);
        assert_eq!(ok(&command(&mut warm, &msg(rawdoc! { "find": "orders", "filter": {}, "$db": "app" }))), 1.0);
        backend.pause();
        let mut waiters = Vec::new();
        for (name, addr) in [("a1", acme), ("a2", acme), ("a3", acme), ("a4", acme), ("a5", acme), ("g1", globex)] {
            let mut client = RawClient::connect(addr);
            client.send(&insert(name));
            waiters.push(client);
            // Each command is queued before the next is sent, so the arrival order is the order above.
            std::thread::sleep(Duration::from_millis(150));
        }
        backend.resume();
        for mut client in waiters {
            let reply = client.recv().expect("answered");
            match reply.message {
                tenantwall_protocol::Message::Msg(m) => assert_eq!(ok(&m.body().to_owned()), 1.0),
                other => panic!("{other:?}"),
            }
        }
        // Straight from the backend: every tenant's documents, in the order they were written.
        let mut direct = RawClient::connect(SocketAddr::from(([127, 0, 0, 1], backend.port)));
        let reply = command(&mut direct, &msg(rawdoc! { "find": "orders", "sort": { "_id": 1 }, "$db": "app" }));
        let order: Vec<String> = reply
            .get_document("cursor")
            .unwrap()
            .get_array("firstBatch")
            .unwrap()
            .into_iter()
            .map(|d| d.unwrap().as_document().unwrap().get_str("name").unwrap().to_owned())
            .collect();
        // One acme command took the connection and stuck on the paused backend (a1, unless the proxy was slow
        // enough for a2 to get there first: which of acme's is not the point). Of the five that waited, first
        // come first served would put g1 last; round-robin puts it second: acme queued first, so its turn came
        // first, and acme then goes to the back of the line.
        assert_eq!(order.len(), 6, "{order:?}");
        let position = order.iter().position(|n| n == "g1").unwrap();
        assert_eq!(position, 2, "globex waited behind acme's queue: {order:?}");
        drop(backend);
    })
    .await
    .unwrap();
    proxy.shutdown().await;
}

/// `tenants[].max_in_flight`: acme (cap 1) has a command stuck on a stopped backend; its next command waits
/// `pool_wait_timeout_ms` and is refused with the overload error drivers back off on, while globex's command in
/// the same moment is queued normally and answered once the backend resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_at_its_in_flight_cap_waits_then_gets_the_overload_error() {
    let backend = Backend::start();
    let text = pool_policy(&backend, "", "pool_wait_timeout_ms = 300")
        .replace("id = \"acme\"\nbackend = \"main\"\n", "id = \"acme\"\nbackend = \"main\"\nmax_in_flight = 1\n");
    let proxy = start_proxy_text(&text).await;
    let (acme, globex) = (proxy.addrs()[0], proxy.addrs()[1]);
    tokio::task::spawn_blocking(move || {
        let find = || msg(rawdoc! { "find": "orders", "filter": {}, "$db": "app" });
        let mut warm = RawClient::connect(acme);
        assert_eq!(ok(&command(&mut warm, &find())), 1.0);
        backend.pause();
        let mut stuck = RawClient::connect(acme);
        stuck.send(&find());
        std::thread::sleep(Duration::from_millis(100));
        let mut other = RawClient::connect(globex);
        other.send(&find());
        let reply = command(&mut warm, &find());
        assert_eq!(reply.get_i32("code").unwrap(), 462, "{reply:?}");
        let labels: Vec<_> = reply
            .get_array("errorLabels")
            .unwrap()
            .into_iter()
            .map(|l| l.unwrap().as_str().unwrap().to_owned())
            .collect();
        assert!(labels.contains(&"RetryableError".to_owned()), "{labels:?}");
        backend.resume();
        for client in [&mut stuck, &mut other] {
            let reply = client.recv().expect("answered once the backend resumes");
            match reply.message {
                tenantwall_protocol::Message::Msg(m) => assert_eq!(ok(&m.body().to_owned()), 1.0),
                other => panic!("{other:?}"),
            }
        }
    })
    .await
    .unwrap();
    proxy.shutdown().await;
}
