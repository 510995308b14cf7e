//! Tenant identity end to end: SCRAM at the proxy, mTLS subjects, SNI, listener-bound tenants, per-tenant
//! backends, backend service credentials, and hot reload — with the Rust driver and raw frames against nx-27017.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bson::spec::BinarySubtype;
use bson::{rawdoc, Binary, RawDocumentBuf};
use common::{policy, scram_entry, start_proxy_text, Backend, Pki, TempDir};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};
use tenantwall::auth::ScramClient;
use tenantwall::codec::FrameReader;
use tenantwall_protocol::{decode, Message, MsgFlags, OpMsg};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Two tenants, each on its own nx-27017, with SCRAM users; `extra_listener` is spliced into the listener table.
fn two_tenant_policy(b1: &Backend, b2: &Backend, extra_listener: &str, extra: &str) -> String {
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
{extra_listener}

[[backends]]
name = "one"
uri = "{}"

[[backends]]
name = "two"
uri = "{}"

[[tenants]]
id = "acme"
backend = "one"
users = [{{ name = "acme-app", scram = "{}" }}]
cert_subjects = ["CN=acme-app,O=Acme"]
sni = ["acme.tenants.test"]

[[tenants]]
id = "globex"
backend = "two"
users = [{{ name = "globex-app", scram = "{}" }}]
sni = ["globex.tenants.test"]

[[rules]]
database = "*"
mode = "database"
template = "{{db}}"
{extra}
"#,
        b1.uri(),
        b2.uri(),
        scram_entry("acme-secret"),
        scram_entry("globex-secret"),
    )
}

async fn driver(uri: &str) -> mongodb::Client {
    let mut options = mongodb::options::ClientOptions::parse(uri).await.expect("options");
    options.server_selection_timeout = Some(Duration::from_secs(5));
    mongodb::Client::with_options(options).expect("client")
}

fn code_of(error: &mongodb::error::Error) -> Option<i32> {
    match error.kind.as_ref() {
        mongodb::error::ErrorKind::Command(c) => Some(c.code),
        mongodb::error::ErrorKind::Authentication { .. } => Some(18),
        _ => None,
    }
}

async fn names_in(backend: &Backend, db: &str, coll: &str) -> Vec<String> {
    let direct = driver(&backend.uri()).await;
    let docs: Vec<Document> =
        direct.database(db).collection::<Document>(coll).find(doc! {}).await.unwrap().try_collect().await.unwrap();
    let mut names: Vec<String> = docs.iter().filter_map(|d| d.get_str("who").ok().map(str::to_owned)).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_users_reach_only_their_own_backend() {
    let (b1, b2) = (Backend::start(), Backend::start());
    let proxy = start_proxy_text(&two_tenant_policy(&b1, &b2, "", "")).await;
    let addr = proxy.addr();
    let acme = driver(&format!("mongodb://acme-app:acme-secret@{addr}/app?authSource=admin")).await;
    let globex = driver(&format!("mongodb://globex-app:globex-secret@{addr}/app?authSource=admin")).await;
    for i in 0..3 {
        acme.database("app").collection::<Document>("orders").insert_one(doc! { "who": "acme", "i": i }).await.unwrap();
        globex
            .database("app")
            .collection::<Document>("orders")
            .insert_one(doc! { "who": "globex", "i": i })
            .await
            .unwrap();
    }
    // Same database and collection names, different backends: each sees only its own.
    let seen: Vec<Document> =
        acme.database("app").collection::<Document>("orders").find(doc! {}).await.unwrap().try_collect().await.unwrap();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|d| d.get_str("who").unwrap() == "acme"));
    assert_eq!(names_in(&b1, "app", "orders").await, vec!["acme"; 3]);
    assert_eq!(names_in(&b2, "app", "orders").await, vec!["globex"; 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_and_no_credentials_are_refused_alike() {
    let (b1, b2) = (Backend::start(), Backend::start());
    let proxy = start_proxy_text(&two_tenant_policy(&b1, &b2, "", "")).await;
    let addr = proxy.addr();
    let mut messages = Vec::new();
    for uri in [
        format!("mongodb://acme-app:wrong@{addr}/app?authSource=admin"),
        format!("mongodb://nobody:acme-secret@{addr}/app?authSource=admin"),
    ] {
        let err = driver(&uri).await.database("app").collection::<Document>("c").insert_one(doc! {}).await.unwrap_err();
        assert_eq!(code_of(&err), Some(18), "{err}");
        messages.push(err.to_string().replace("nobody", "USER").replace("acme-app", "USER"));
    }
    assert_eq!(messages[0], messages[1], "wrong password and unknown user must look the same");
    let anonymous = driver(&format!("mongodb://{addr}/app")).await;
    let err = anonymous.database("app").collection::<Document>("c").insert_one(doc! {}).await.unwrap_err();
    assert_eq!(code_of(&err), Some(13), "{err}");
    // Nothing reached either backend.
    assert!(names_in(&b1, "app", "c").await.is_empty());
    // The handshake, ping and buildInfo are served before authentication.
    let admin = anonymous.database("admin");
    assert!(admin.run_command(doc! { "ping": 1 }).await.is_ok());
    assert!(admin.run_command(doc! { "buildInfo": 1 }).await.unwrap().contains_key("version"));
}

/// A raw client over any stream, speaking OP_MSG.
struct Raw<S> {
    reader: FrameReader<tokio::io::ReadHalf<S>>,
    writer: tokio::io::WriteHalf<S>,
    next_id: i32,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    fn new(stream: S) -> Self {
        let (r, w) = tokio::io::split(stream);
        Raw { reader: FrameReader::new(r, 48_000_000, None), writer: w, next_id: 1 }
    }

    /// Sends a command; `None` when the proxy closed the connection instead of answering.
    async fn call(&mut self, body: RawDocumentBuf) -> Option<RawDocumentBuf> {
        self.next_id += 1;
        let frame = OpMsg::new(MsgFlags::default(), body).encode(self.next_id, 0).unwrap();
        self.writer.write_all(&frame).await.ok()?;
        let frame = tokio::time::timeout(Duration::from_secs(10), self.reader.next_frame()).await.ok()?.ok()??;
        match decode(frame).unwrap().message {
            Message::Msg(m) => Some(m.body().to_owned()),
            _ => None,
        }
    }

    async fn closed(&mut self) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.reader.next_frame()).await,
            Ok(Ok(None)) | Ok(Err(_))
        )
    }

    /// Runs SCRAM-SHA-256 as `user`; returns the final reply (or None if the proxy closed).
    async fn scram(&mut self, user: &str, password: &str) -> Option<RawDocumentBuf> {
        let (mut client, first) = ScramClient::new(user, password).unwrap();
        let reply = self
            .call(rawdoc! { "saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": Binary { subtype: BinarySubtype::Generic, bytes: first }, "options": { "skipEmptyExchange": true }, "$db": "admin" })
            .await?;
        let Ok(payload) = reply.get_binary("payload") else { return Some(reply) };
        let last = client.handle_server_first(payload.bytes).unwrap();
        self.call(rawdoc! { "saslContinue": 1, "conversationId": 1, "payload": Binary { subtype: BinarySubtype::Generic, bytes: last }, "$db": "admin" })
            .await
    }
}

fn code(reply: &RawDocumentBuf) -> i32 {
    reply.get_i32("code").unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_authentication_per_connection_and_only_handshake_before_it() {
    let (b1, b2) = (Backend::start(), Backend::start());
    let proxy = start_proxy_text(&two_tenant_policy(&b1, &b2, "", "")).await;
    let mut raw = Raw::new(tokio::net::TcpStream::connect(proxy.addr()).await.unwrap());
    assert_eq!(code(&raw.call(rawdoc! { "find": "orders", "$db": "app" }).await.unwrap()), 13);
    assert_eq!(code(&raw.call(rawdoc! { "listCollections": 1, "$db": "app" }).await.unwrap()), 13);
    assert!(raw.call(rawdoc! { "endSessions": [], "$db": "admin" }).await.unwrap().get_f64("ok").unwrap() == 1.0);
    let done = raw.scram("acme-app", "acme-secret").await.unwrap();
    assert!(done.get_bool("done").unwrap(), "{done:?}");
    let inserted =
        raw.call(rawdoc! { "insert": "orders", "documents": [{ "who": "acme" }], "$db": "app" }).await.unwrap();
    assert_eq!(inserted.get_i32("n").unwrap(), 1, "{inserted:?}");
    // A second saslStart, as anyone, is refused and changes nothing.
    let again = raw.scram("globex-app", "globex-secret").await.unwrap();
    assert_eq!(code(&again), 13, "{again:?}");
    raw.call(rawdoc! { "insert": "orders", "documents": [{ "who": "acme" }], "$db": "app" }).await.unwrap();
    assert_eq!(names_in(&b1, "app", "orders").await, vec!["acme"; 2]);
    assert!(names_in(&b2, "app", "orders").await.is_empty());
    // logout is answered by the proxy: the backend connection keeps its service login and the tenant stays bound.
    assert_eq!(raw.call(rawdoc! { "logout": 1, "$db": "admin" }).await.unwrap().get_f64("ok").unwrap(), 1.0);
    let after = raw.call(rawdoc! { "insert": "orders", "documents": [{ "who": "acme" }], "$db": "app" }).await.unwrap();
    assert_eq!(after.get_i32("n").unwrap(), 1, "{after:?}");
    assert_eq!(names_in(&b1, "app", "orders").await, vec!["acme"; 3]);
    // admin, config and local stay closed after authentication.
    for db in ["admin", "config", "local"] {
        let reply = raw.call(rawdoc! { "find": "system.users", "$db": db }).await.unwrap();
        assert_eq!(code(&reply), 13, "{db}: {reply:?}");
    }
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    pki: &Pki,
    sni: &str,
    client_cert: Option<&str>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(pki.path("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client_cert {
        Some(path) => {
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(path).unwrap().map(Result::unwrap).collect();
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(path).unwrap();
            builder.with_client_auth_cert(certs, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_names_the_tenant_and_credentials_must_agree() {
    let (b1, b2) = (Backend::start(), Backend::start());
    let pki = Pki::new(&["acme.tenants.test", "globex.tenants.test"]);
    let tls = format!("tls = {{ cert = \"{}\", key = \"{}\" }}", pki.path("server.pem"), pki.path("server.key"));
    let proxy = start_proxy_text(&two_tenant_policy(&b1, &b2, &tls, "")).await;

    let mut globex = Raw::new(tls_connect(proxy.addr(), &pki, "globex.tenants.test", None).await.unwrap());
    let reply =
        globex.call(rawdoc! { "insert": "orders", "documents": [{ "who": "globex" }], "$db": "app" }).await.unwrap();
    assert_eq!(reply.get_i32("n").unwrap(), 1, "{reply:?}");
    assert_eq!(names_in(&b2, "app", "orders").await, vec!["globex"]);

    // SNI says acme, credentials say globex: refused and closed.
    let mut mixed = Raw::new(tls_connect(proxy.addr(), &pki, "acme.tenants.test", None).await.unwrap());
    let reply = mixed.scram("globex-app", "globex-secret").await;
    assert!(reply.as_ref().is_none_or(|r| code(r) == 18), "{reply:?}");
    assert!(mixed.closed().await);
    // SNI and credentials agreeing is fine.
    let mut agreed = Raw::new(tls_connect(proxy.addr(), &pki, "acme.tenants.test", None).await.unwrap());
    assert!(agreed.scram("acme-app", "acme-secret").await.unwrap().get_bool("done").unwrap());
    assert!(names_in(&b1, "app", "orders").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_subject_identifies_the_tenant() {
    let (b1, b2) = (Backend::start(), Backend::start());
    let pki = Pki::new(&[]);
    let tls = format!(
        "tls = {{ cert = \"{}\", key = \"{}\", client_ca = \"{}\" }}",
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem")
    );
    let proxy = start_proxy_text(&two_tenant_policy(&b1, &b2, &tls, "")).await;
    let client_pem = pki.client("acme-app", "Acme");
    let uri = format!(
        "mongodb://localhost:{}/app?tls=true&tlsCAFile={}&tlsCertificateKeyFile={}",
        proxy.addr().port(),
        pki.path("ca.pem"),
        client_pem
    );
    let acme = driver(&uri).await;
    acme.database("app").collection::<Document>("orders").insert_one(doc! { "who": "acme" }).await.unwrap();
    assert_eq!(names_in(&b1, "app", "orders").await, vec!["acme"]);
    assert!(names_in(&b2, "app", "orders").await.is_empty());

    // A certificate the policy does not know may still authenticate with SCRAM, but not skip it.
    let stranger = pki.client("stranger", "Elsewhere");
    let mut raw = Raw::new(tls_connect(proxy.addr(), &pki, "localhost", Some(&stranger)).await.unwrap());
    assert_eq!(code(&raw.call(rawdoc! { "find": "orders", "$db": "app" }).await.unwrap()), 13);
    // Without a client certificate the TLS handshake itself fails.
    let refused = match tls_connect(proxy.addr(), &pki, "localhost", None).await {
        Err(_) => true,
        Ok(stream) => Raw::new(stream).call(rawdoc! { "ping": 1, "$db": "admin" }).await.is_none(),
    };
    assert!(refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_service_credentials_authenticate_with_scram() {
    // The backend here is a second tenantwall that knows the service user: the proxy's SCRAM client is tested
    // against the proxy's own SCRAM server, in front of nx-27017.
    let nx = Backend::start();
    let inner_text = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[backends]]\nname = \"nx\"\nuri = \"{}\"\n\
         [[tenants]]\nid = \"svc\"\nbackend = \"nx\"\nusers = [{{ name = \"tw-service\", scram = \"{}\" }}]\n\
         [[rules]]\ndatabase = \"*\"\nmode = \"database\"\ntemplate = \"{{db}}\"\n",
        nx.uri(),
        scram_entry("service-secret")
    );
    let inner = start_proxy_text(&inner_text).await;
    let secrets = TempDir::new("secrets");
    let password_file = secrets.write("svc-password", "service-secret\n");
    let outer_text = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\ntenant = \"acme\"\n[[backends]]\nname = \"inner\"\nuri = \"mongodb://{}/\"\n\
         username = \"tw-service\"\npassword_file = \"{}\"\n[[tenants]]\nid = \"acme\"\nbackend = \"inner\"\n\
         [[rules]]\ndatabase = \"*\"\nmode = \"database\"\ntemplate = \"{{db}}\"\n",
        inner.addr(),
        password_file.display()
    );
    let outer = start_proxy_text(&format!("{outer_text}[admin]\naddress = \"127.0.0.1:0\"\n")).await;
    let client = driver(&format!("mongodb://{}/", outer.addr())).await;
    client.database("app").collection::<Document>("orders").insert_one(doc! { "who": "acme" }).await.unwrap();
    assert_eq!(names_in(&nx, "app", "orders").await, vec!["acme"]);

    // Concurrent commands open more backend connections; the service user's keys are derived once, not per
    // connection.
    let writes = (0..8).map(|_| {
        let orders = client.database("app").collection::<Document>("counts");
        tokio::spawn(async move { orders.insert_one(doc! { "n": 1 }).await.unwrap() })
    });
    for write in writes.collect::<Vec<_>>() {
        write.await.unwrap();
    }
    let admin = outer.admin_addr().unwrap();
    let metrics = tokio::task::spawn_blocking(move || common::http_get(admin, "/metrics", None).1).await.unwrap();
    let open = common::metric(&metrics, "tenantwall_backend_connections{backend=\"inner\"}");
    assert!(open >= 2.0, "the writes ran on {open} backend connection(s)");
    assert_eq!(common::metric(&metrics, "tenantwall_backend_key_derivations_total{backend=\"inner\"}"), 1.0);

    // With a wrong service password the client gets an error and nothing is written.
    let bad_file = secrets.write("bad-password", "nope\n");
    let bad_text = outer_text.replace(&password_file.display().to_string(), &bad_file.display().to_string());
    let bad = start_proxy_text(&bad_text).await;
    let err = driver(&format!("mongodb://{}/", bad.addr()))
        .await
        .database("app")
        .collection::<Document>("orders")
        .insert_one(doc! { "who": "intruder" })
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), Some(6), "{err}");
    assert!(!err.to_string().contains("nope"));
    assert_eq!(names_in(&nx, "app", "orders").await, vec!["acme"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_adds_and_removes_tenants() {
    let (b1, b2) = (Backend::start(), Backend::start());
    let initial = two_tenant_policy(&b1, &b2, "", "");
    let proxy = start_proxy_text(&initial).await;
    let addr = proxy.addr();

    // Before: initech is unknown.
    let mut early = Raw::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    assert_eq!(code(&early.scram("initech-app", "initech-secret").await.unwrap()), 18);

    let mut globex = Raw::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    assert!(globex.scram("globex-app", "globex-secret").await.unwrap().get_bool("done").unwrap());
    let mut acme = Raw::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    assert!(acme.scram("acme-app", "acme-secret").await.unwrap().get_bool("done").unwrap());

    // Reload: initech added on backend two's place, globex removed.
    let b3 = Backend::start();
    let without_globex = initial
        .split("[[tenants]]\nid = \"globex\"")
        .next()
        .unwrap()
        .to_owned()
        + &format!(
            "[[backends]]\nname = \"three\"\nuri = \"{}\"\n\n[[tenants]]\nid = \"initech\"\nbackend = \"three\"\nusers = [{{ name = \"initech-app\", scram = \"{}\" }}]\n\n[[rules]]\ndatabase = \"*\"\nmode = \"database\"\ntemplate = \"{{db}}\"\n",
            b3.uri(),
            scram_entry("initech-secret")
        );
    proxy.reloader().apply(policy(&without_globex));
    assert_eq!(proxy.reloader().generation(), 2);

    // globex's open connection is closed, acme's goes on, initech can now connect.
    assert!(globex.closed().await, "removed tenant kept its connection");
    let reply =
        acme.call(rawdoc! { "insert": "orders", "documents": [{ "who": "acme" }], "$db": "app" }).await.unwrap();
    assert_eq!(reply.get_i32("n").unwrap(), 1);
    let mut initech = Raw::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    assert!(initech.scram("initech-app", "initech-secret").await.unwrap().get_bool("done").unwrap());
    initech.call(rawdoc! { "insert": "orders", "documents": [{ "who": "initech" }], "$db": "app" }).await.unwrap();
    assert_eq!(names_in(&b3, "app", "orders").await, vec!["initech"]);
    let mut late = Raw::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    assert_eq!(code(&late.scram("globex-app", "globex-secret").await.unwrap()), 18);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_behind_tls_are_reached_over_tls_with_the_configured_ca() {
    // The backend is a second tenantwall serving TLS (nx-27017 speaks only plaintext) in front of nx-27017.
    let nx = Backend::start();
    let pki = Pki::new(&[]);
    let inner_text = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\ntenant = \"svc\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n\
         [[backends]]\nname = \"nx\"\nuri = \"{}\"\n[[tenants]]\nid = \"svc\"\nbackend = \"nx\"\n\
         [[rules]]\ndatabase = \"*\"\nmode = \"database\"\ntemplate = \"{{db}}\"\n",
        pki.path("server.pem"),
        pki.path("server.key"),
        nx.uri()
    );
    let inner = start_proxy_text(&inner_text).await;
    let outer_text = |ca: &str| {
        format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\ntenant = \"acme\"\n[[backends]]\nname = \"inner\"\n\
             uri = \"mongodb://localhost:{}/?tls=true\"\ntls_ca_file = \"{ca}\"\n[[tenants]]\nid = \"acme\"\nbackend = \"inner\"\n\
             [[rules]]\ndatabase = \"*\"\nmode = \"database\"\ntemplate = \"{{db}}\"\n",
            inner.addr().port()
        )
    };
    let outer = start_proxy_text(&outer_text(&pki.path("ca.pem"))).await;
    let client = driver(&format!("mongodb://{}/", outer.addr())).await;
    client.database("app").collection::<Document>("orders").insert_one(doc! { "who": "acme" }).await.unwrap();
    assert_eq!(names_in(&nx, "app", "orders").await, vec!["acme"]);

    // A CA that did not sign the backend's certificate: the proxy refuses to talk to it.
    let other = Pki::new(&[]);
    let distrustful = start_proxy_text(&outer_text(&other.path("ca.pem"))).await;
    let err = driver(&format!("mongodb://{}/", distrustful.addr()))
        .await
        .database("app")
        .collection::<Document>("orders")
        .insert_one(doc! { "who": "mitm" })
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), Some(6), "{err}");
    assert_eq!(names_in(&nx, "app", "orders").await, vec!["acme"]);
}
