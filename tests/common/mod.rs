//! Test rig: real nx-27017 backends and in-process proxies on free ports, always cleaned up.
//!
//! Backends come from the project virtualenv (`scripts/backend setup`). Each instance gets its own port, pid
//! file, log file and in-memory database, and is killed when its handle drops.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tenantwall::{Policy, Server, ServerHandle};
use tenantwall_protocol::{check_frame, decode, Decoded, Message, MsgFlags, MsgHeader, OpMsg, MAX_MESSAGE_SIZE};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A running nx-27017 instance.
pub struct Backend {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Backend {
    pub fn start() -> Backend {
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!("tenantwall-nx-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("backend dir");
            let child = Self::spawn(port, &dir);
            let mut backend = Backend { child, port, dir };
            if backend.wait_ready() {
                return backend;
            }
            last_log = std::fs::read_to_string(backend.dir.join("nx.log")).unwrap_or_default();
        }
        panic!("nx-27017 did not start; log tail:\n{}", last_log.lines().rev().take(20).collect::<Vec<_>>().join("\n"));
    }

    fn spawn(port: u16, dir: &std::path::Path) -> Child {
        let exe = repo_root().join(".venv/bin/nx-27017");
        assert!(exe.exists(), "{} missing: run scripts/backend setup", exe.display());
        Command::new(&exe)
            .args(["--db", "memory", "--host", "127.0.0.1", "-p", &port.to_string()])
            .arg("--pid-file")
            .arg(dir.join("nx.pid"))
            .arg("--log-file")
            .arg(dir.join("nx.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nx-27017")
    }

    /// Waits until the port accepts TCP; false if the process exited or 30 s passed.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Kills the instance and starts a fresh one (empty database) on the same port.
    pub fn restart(&mut self) {
        self.kill();
        for _attempt in 0..20 {
            self.child = Self::spawn(self.port, &self.dir);
            if self.wait_ready() {
                return;
            }
            // The port may linger for a moment after the old process died.
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("nx-27017 did not restart on port {}", self.port);
    }

    /// Stops the process (SIGSTOP): connections stay open, nothing is answered. Undone by [`Backend::resume`].
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let status = Command::new("kill").arg(which).arg(self.child.id().to_string()).status().expect("kill");
        assert!(status.success(), "kill {which} failed");
    }

    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/", self.port)
    }

    /// Kills the instance now (for backend-failure tests).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Policy text: one listener on a free port bound to tenant `t1`, one backend, and a rule giving `t1` every
/// database of that backend (its own cluster). `extra` is appended (e.g. a `[limits]` table).
pub fn policy_text(backend_uri: &str, extra: &str) -> String {
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\ntenant = \"t1\"\n\n[[backends]]\nname = \"main\"\nuri = \"{backend_uri}\"\n\n\
         [[tenants]]\nid = \"t1\"\nbackend = \"main\"\n\n[[rules]]\ndatabase = \"*\"\nmode = \"database\"\ntemplate = \"{{db}}\"\n{extra}"
    )
}

/// Compiles policy text (panics with the problems when it does not validate).
pub fn policy(text: &str) -> Policy {
    Policy::from_toml(text, std::path::Path::new("test-policy.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Starts an in-process proxy for a whole policy text.
pub async fn start_proxy_text(text: &str) -> ServerHandle {
    Server::bind(policy(text), None).await.expect("bind proxy").spawn()
}

/// Starts an in-process proxy in front of `backend_uri`.
pub async fn start_proxy(backend_uri: &str) -> ServerHandle {
    start_proxy_with(backend_uri, "").await
}

/// Starts an in-process proxy with extra policy TOML appended (e.g. a `[limits]` table).
pub async fn start_proxy_with(backend_uri: &str, extra: &str) -> ServerHandle {
    start_proxy_text(&policy_text(backend_uri, extra)).await
}

/// Rust driver client for `addr`, optionally with compressors.
pub async fn client(addr: SocketAddr, compressors: Option<Vec<mongodb::options::Compressor>>) -> mongodb::Client {
    let mut options = mongodb::options::ClientOptions::parse(format!("mongodb://{addr}/")).await.expect("options");
    options.server_selection_timeout = Some(Duration::from_secs(5));
    options.compressors = compressors;
    mongodb::Client::with_options(options).expect("client")
}

/// Every document of `db.coll`, read with `client` (directly from a backend, or through a proxy).
pub async fn all_docs(client: &mongodb::Client, db: &str, coll: &str) -> Vec<mongodb::bson::Document> {
    use futures_util::TryStreamExt;
    let coll = client.database(db).collection::<mongodb::bson::Document>(coll);
    coll.find(mongodb::bson::doc! {}).await.expect("find").try_collect().await.expect("read cursor")
}

/// A blocking raw-socket client for frame-level tests.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    pub fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        RawClient { stream, buf: Vec::new() }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        // The proxy may already have closed; a failed write shows up as a closed connection on read.
        let _ = self.stream.write_all(bytes);
    }

    /// The next frame, or `None` when the proxy closed the connection.
    pub fn recv(&mut self) -> Option<Decoded> {
        loop {
            if let Ok(Some(len)) = check_frame(&self.buf, MAX_MESSAGE_SIZE) {
                let frame: Vec<u8> = self.buf.drain(..len).collect();
                return Some(decode(Bytes::from(frame)).expect("proxy sent a frame that does not parse"));
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Whether the proxy closed the connection (reads EOF or reset within the read timeout).
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        }
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tenantwall-{label}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    /// Writes `contents` to `name` inside the directory and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A SCRAM-SHA-256 policy entry for `password` (low iteration count keeps tests fast).
pub fn scram_entry(password: &str) -> String {
    tenantwall::auth::ScramVerifier::generate(password, 4096).expect("verifier").to_string()
}

/// Test PKI generated at run time: a CA, a server certificate for localhost / 127.0.0.1 and the given SNI
/// names, and client certificates by common name.
pub struct Pki {
    pub dir: TempDir,
    ca_cert: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    pub fn new(server_names: &[&str]) -> Pki {
        let dir = TempDir::new("pki");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, "tenantwall test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        dir.write("ca.pem", &ca_cert.pem());

        let key = rcgen::KeyPair::generate().unwrap();
        let mut names: Vec<String> = vec!["localhost".into()];
        names.extend(server_names.iter().map(|s| s.to_string()));
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.subject_alt_names.push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.distinguished_name.push(rcgen::DnType::CommonName, "tenantwall");
        let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
        dir.write("server.pem", &cert.pem());
        dir.write("server.key", &key.serialize_pem());
        Pki { dir, ca_cert, ca_key }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.0.join(name).display().to_string()
    }

    /// Writes `<cn>.pem` (certificate then key, as drivers want it) and returns its path.
    pub fn client(&self, cn: &str, org: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        // Issuer order (O, then CN), so the RFC 4514 form reads "CN=...,O=...".
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, org);
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        let path = self.dir.write(&format!("{cn}.pem"), &format!("{}{}", cert.pem(), key.serialize_pem()));
        path.display().to_string()
    }
}

/// An OP_MSG frame (request id 100) for `body`.
pub fn msg(body: bson::RawDocumentBuf) -> Vec<u8> {
    OpMsg::new(MsgFlags::default(), body).encode(100, 0).unwrap().to_vec()
}

/// Sends `frame` and returns the reply body, checking that the reply answers it.
pub fn command(client: &mut RawClient, frame: &[u8]) -> bson::RawDocumentBuf {
    client.send(frame);
    let reply = client.recv().expect("proxy closed instead of replying");
    let request = MsgHeader::read(frame).unwrap();
    assert_eq!(reply.header.response_to, request.request_id, "reply answers another request");
    match reply.message {
        Message::Msg(m) => m.body().to_owned(),
        other => panic!("expected OP_MSG, got {other:?}"),
    }
}

/// `ok` as a number, whichever numeric type the server chose.
pub fn ok(reply: &bson::RawDocumentBuf) -> f64 {
    match reply.get("ok").unwrap() {
        Some(bson::RawBsonRef::Double(v)) => v,
        Some(bson::RawBsonRef::Int32(v)) => f64::from(v),
        other => panic!("no numeric ok: {other:?}"),
    }
}

/// A blocking HTTP/1.1 GET; returns the status and the body.
pub fn http_get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect admin");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n{auth}\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read admin response");
    let (head, body) = response.split_once("\r\n\r\n").expect("response head");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.parse().ok())
        .expect("Content-Length");
    assert_eq!(length, body.len(), "Content-Length matches the body");
    (status, body.to_owned())
}

/// The value of the series `series` (name and labels exactly as exported), or 0 when it is absent.
pub fn metric(metrics: &str, series: &str) -> f64 {
    metrics.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}
