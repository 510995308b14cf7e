//! What `tenantwall move` must never do to anyone but the tenant it moves: edit another tenant's placement
//! through a damaged block of the policy file or name its databases in a second per-tenant scheme, delete or
//! copy a document another tenant reads, delete anything but the set it copied and verified, or create
//! collection-wide DDL (a TTL index) on a shared collection on the tenant's behalf.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{scram_entry, Backend, TempDir};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};
use tenantwall::lifecycle::placement::{edit, Destination, EditError};
use tenantwall::{Policy, Server, ServerHandle};

const TOKEN_ENV: &str = "TW_MOVE_SAFETY_TOKEN";
const TOKEN: &str = "move-safety-token";

const POLICY: &str = "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n\
    [[backends]]\nname = \"main\"\nuri = \"mongodb://127.0.0.1:1\"\n\n\
    [[tenants]]\nid = \"acme\"\nbackend = \"main\"\n\n\
    [[tenants]]\nid = \"globex\"\nbackend = \"main\"\n\n\
    [[rules]]\ndatabase = \"app\"\ncollection = \"*\"\nmode = \"field\"\n\n\
    [[rules]]\ndatabase = \"ref\"\ncollection = \"*\"\nmode = \"shared\"\n";

fn compiled(text: &str) -> tenantwall::Policy {
    tenantwall::Policy::from_toml(text, Path::new("p.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn a_block_whose_end_marker_is_gone_is_refused_and_never_takes_the_general_rules_with_it() {
    let path = Path::new("p.toml");
    let moved = edit(POLICY, path, "acme", &Destination::parse("database").unwrap()).unwrap();
    compiled(&moved);
    // An operator tidying the file drops the end marker line (or a merge loses it).
    let damaged = moved.replace("# tenantwall move: acme end\n", "");
    match edit(&damaged, path, "acme", &Destination::parse("field").unwrap()) {
        Err(EditError::DamagedBlock(tenant, _)) => assert_eq!(tenant, "acme"),
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(text) => {
            let globex_rules = compiled(&text).rules_of("globex").count();
            panic!("a damaged block was edited ({globex_rules} rules left for globex):\n{text}");
        }
    }
}

#[test]
fn a_tenant_moved_to_its_own_database_is_named_with_the_general_rules_template() {
    use tenantwall::engine::{resolve, Target};
    let path = Path::new("p.toml");
    let real_db = |policy: &tenantwall::Policy, tenant: &str, db: &str| match resolve(policy, tenant, db, Some("o")) {
        Ok(Target::Mapped { db, .. }) => Some(db),
        _ => None,
    };
    // Every tenant's databases are named {db}_{tenant}: acme already has its own, nothing to write.
    let general = POLICY.replace(
        "database = \"app\"\ncollection = \"*\"\nmode = \"field\"\n",
        "database = \"*\"\nmode = \"database\"\ntemplate = \"{db}_{tenant}\"\n",
    );
    let general = general.replace("[[rules]]\ndatabase = \"ref\"\ncollection = \"*\"\nmode = \"shared\"\n", "");
    compiled(&general);
    assert_eq!(edit(&general, path, "acme", &Destination::parse("database").unwrap()).unwrap(), general);
    // app in field mode, crm per tenant as {db}_{tenant}: acme's app is named in that one per-tenant scheme
    // (app_acme), not in a second one ({tenant}_{db}) under which two tenants' names could meet.
    let mixed =
        format!("{POLICY}\n[[rules]]\ndatabase = \"crm\"\nmode = \"database\"\ntemplate = \"{{db}}_{{tenant}}\"\n");
    let moved = edit(&mixed, path, "acme", &Destination::parse("database").unwrap()).unwrap();
    let policy = compiled(&moved);
    assert_eq!(real_db(&policy, "acme", "app").as_deref(), Some("app_acme"), "{moved}");
    assert_eq!(real_db(&policy, "acme", "crm").as_deref(), Some("crm_acme"));
    assert_eq!(real_db(&policy, "globex", "crm").as_deref(), Some("crm_globex"));
}

/// acme and globex share `app` in field mode on one backend, behind a proxy with an admin listener.
struct Rig {
    main: Backend,
    _dir: TempDir,
    policy: std::path::PathBuf,
    proxy: ServerHandle,
}

async fn rig(label: &str) -> Rig {
    std::env::set_var(TOKEN_ENV, TOKEN);
    let main = Backend::start();
    let scram = scram_entry("pw");
    let mut text = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n\
         [admin]\naddress = \"127.0.0.1:0\"\ntoken_env = \"{TOKEN_ENV}\"\n\n\
         [[backends]]\nname = \"main\"\nuri = \"{}\"\n\n",
        main.uri()
    );
    for tenant in ["acme", "globex"] {
        text.push_str(&format!(
            "[[tenants]]\nid = \"{tenant}\"\nbackend = \"main\"\n\
             users = [{{ name = \"{tenant}-app\", scram = \"{scram}\" }}]\n\n"
        ));
    }
    text.push_str("[[rules]]\ndatabase = \"app\"\ncollection = \"*\"\nmode = \"field\"\n");
    let dir = TempDir::new(label);
    let policy = dir.write("policy.toml", &text);
    let proxy = Server::bind(Policy::load(&policy).expect("policy"), None).await.expect("bind").spawn();
    Rig { main, _dir: dir, policy, proxy }
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

/// The `_id`s of `db.coll` as `client` sees them, sorted.
async fn ids(client: &mongodb::Client, db: &str, coll: &str) -> Vec<String> {
    let cursor = client.database(db).collection::<Document>(coll).find(doc! {}).await.unwrap();
    let all: Vec<Document> = cursor.try_collect().await.unwrap();
    let mut out: Vec<String> = all.iter().map(|d| d.get_str("_id").unwrap_or_default().to_owned()).collect();
    out.sort();
    out
}

/// `tenantwall move` of acme, as its own process.
async fn mover(rig: &Rig, to: &str, extra: &[&str]) -> (bool, String, String) {
    let admin = rig.proxy.admin_addr().expect("admin listener").to_string();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenantwall"))
        .args(["move", "--policy"])
        .arg(&rig.policy)
        .args(["--tenant", "acme", "--to", to, "--admin", &admin])
        .args(extra)
        .env(TOKEN_ENV, TOKEN)
        .output()
        .await
        .expect("mover");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("mover to {to}: {:?}\n{stdout}\n{stderr}", out.status);
    (out.status.success(), stdout.into_owned(), stderr.into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_never_copies_or_deletes_a_document_whose_tenant_field_also_names_another_tenant() {
    let rig = rig("move-safety-array").await;
    let (acme, globex) = (client(rig.proxy.addr(), "acme").await, client(rig.proxy.addr(), "globex").await);
    acme.database("app").collection::<Document>("orders").insert_one(doc! { "_id": "a-1" }).await.unwrap();
    globex.database("app").collection::<Document>("orders").insert_one(doc! { "_id": "g-1" }).await.unwrap();
    // A document written before the proxy (or by hand) whose tenant field names both tenants: on MongoDB the
    // proxy's `{tenantId: {$eq: v}}` matches it for each of them, so both read it.
    let direct = direct(&rig.main).await;
    let orders = direct.database("app").collection::<Document>("orders");
    orders.insert_one(doc! { "_id": "both-1", "tenantId": ["acme", "globex"] }).await.unwrap();
    let policy_before = std::fs::read_to_string(&rig.policy).unwrap();

    // The move is refused before the hold, naming the problem and no value; nothing is copied or deleted.
    let (ok, stdout, stderr) = mover(&rig, "database", &["--delete-source"]).await;
    assert!(!ok, "a move over a document two tenants read went ahead:\n{stdout}");
    assert!(stderr.contains("app.orders") && stderr.contains("not exactly the tenant's value"), "{stderr}");
    assert!(!stderr.contains("globex") && !stdout.contains("globex"), "another tenant's value was printed");
    assert!(!stdout.contains("held"), "refused before the hold:\n{stdout}");
    assert_eq!(std::fs::read_to_string(&rig.policy).unwrap(), policy_before);
    assert_eq!(ids(&direct, "app", "orders").await, ["a-1", "both-1", "g-1"]);
    assert!(ids(&direct, "acme_app", "orders").await.is_empty());

    // Once the document is globex's alone, acme moves, and --delete-source removes acme's documents only.
    orders.update_one(doc! { "_id": "both-1" }, doc! { "$set": { "tenantId": "globex" } }).await.unwrap();
    let (ok, stdout, stderr) = mover(&rig, "database", &["--delete-source"]).await;
    assert!(ok, "{stdout}\n{stderr}");
    assert_eq!(ids(&direct, "app", "orders").await, ["both-1", "g-1"]);
    assert_eq!(ids(&direct, "acme_app", "orders").await, ["a-1"]);
    assert_eq!(ids(&globex, "app", "orders").await, ["both-1", "g-1"]);
    assert_eq!(ids(&acme, "app", "orders").await, ["a-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_back_to_a_shared_collection_never_creates_a_ttl_index_there_and_stops_before_the_hold() {
    let rig = rig("move-safety-ttl").await;
    let (acme, globex) = (client(rig.proxy.addr(), "acme").await, client(rig.proxy.addr(), "globex").await);
    acme.database("app").collection::<Document>("orders").insert_one(doc! { "_id": "a-1" }).await.unwrap();
    globex.database("app").collection::<Document>("orders").insert_one(doc! { "_id": "g-1" }).await.unwrap();
    let ttl = mongodb::IndexModel::builder()
        .keys(doc! { "createdAt": 1 })
        .options(
            mongodb::options::IndexOptions::builder()
                .expire_after(Duration::from_secs(0))
                .name("created_ttl".to_owned())
                .build(),
        )
        .build();
    // On the shared collection the proxy refuses a TTL index: it would delete every tenant's documents.
    let refused = acme.database("app").collection::<Document>("orders").create_index(ttl.clone()).await;
    assert!(refused.is_err(), "the proxy created a TTL index on a shared collection");

    let (ok, stdout, stderr) = mover(&rig, "database", &[]).await;
    assert!(ok, "{stdout}\n{stderr}");
    // In its own database it is acme's business.
    acme.database("app").collection::<Document>("orders").create_index(ttl).await.expect("own database: allowed");
    let direct = direct(&rig.main).await;
    let names = |indexes: &[mongodb::IndexModel]| -> Vec<String> {
        indexes.iter().filter_map(|i| i.options.as_ref()?.name.clone()).collect()
    };
    let own: Vec<mongodb::IndexModel> = direct
        .database("acme_app")
        .collection::<Document>("orders")
        .list_indexes()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let ttl_name = own
        .iter()
        .find(|i| i.options.as_ref().is_some_and(|o| o.expire_after.is_some()))
        .and_then(|i| i.options.as_ref()?.name.clone())
        .unwrap_or_else(|| panic!("no TTL index in acme's own collection: {:?}", names(&own)));
    let policy_before = std::fs::read_to_string(&rig.policy).unwrap();

    // Back to the shared collection: refused in the plan, naming the index; nothing held, copied or changed.
    let (ok, stdout, stderr) = mover(&rig, "field", &[]).await;
    assert!(!ok, "moved back with a TTL index:\n{stdout}");
    assert!(stderr.contains(&format!("index {ttl_name}")) && stderr.contains("TTL"), "{stderr}");
    assert!(!stdout.contains("held"), "refused before the hold:\n{stdout}");
    assert_eq!(std::fs::read_to_string(&rig.policy).unwrap(), policy_before);
    let shared: Vec<mongodb::IndexModel> = direct
        .database("app")
        .collection::<Document>("orders")
        .list_indexes()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(
        !shared.iter().any(|i| i.options.as_ref().is_some_and(|o| o.expire_after.is_some())),
        "a TTL index on the shared collection: {:?}",
        names(&shared)
    );
    assert_eq!(ids(&direct, "app", "orders").await, ["a-1", "g-1"], "acme's old copy and globex's, untouched");
    assert_eq!(ids(&acme, "app", "orders").await, ["a-1"], "acme still reads its own database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_source_deletes_nothing_when_the_source_changed_after_the_copy_was_verified() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let rig = rig("move-safety-changed").await;
    let (acme, globex) = (client(rig.proxy.addr(), "acme").await, client(rig.proxy.addr(), "globex").await);
    acme.database("app").collection::<Document>("orders").insert_one(doc! { "_id": "a-1" }).await.unwrap();
    globex.database("app").collection::<Document>("orders").insert_one(doc! { "_id": "g-1" }).await.unwrap();
    let admin = rig.proxy.admin_addr().expect("admin listener").to_string();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenantwall"))
        .args(["move", "--policy"])
        .arg(&rig.policy)
        .args(["--tenant", "acme", "--to", "database", "--admin", &admin, "--delete-source"])
        .env(TOKEN_ENV, TOKEN)
        .env(tenantwall::lifecycle::mover::PAUSE_ENV, "2")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mover");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let paused = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("pausing") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(paused, Ok(true), "the mover never reached its pause");
    // After the copy was verified, a writer that bypasses the proxy adds a document with acme's value.
    let direct = direct(&rig.main).await;
    direct
        .database("app")
        .collection::<Document>("orders")
        .insert_one(doc! { "_id": "a-direct", "tenantId": "acme" })
        .await
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the mover reported success");
    assert!(stderr.contains("source copy was not removed") && stderr.contains("nothing deleted"), "{stderr}");
    // The switch happened; nothing was deleted at the source.
    assert_eq!(ids(&acme, "app", "orders").await, ["a-1"], "acme reads its own database");
    assert_eq!(ids(&direct, "app", "orders").await, ["a-1", "a-direct", "g-1"]);
}
