//! Backend connections: connect (TLS when the URI asks), handshake, authenticate, send, read replies.
//!
//! A [`BackendTarget`] is a configured deployment plus what the proxy has learnt about it (its wire version,
//! its service user's SCRAM keys) and its bounded pool of connections ([`crate::pool`]); a [`BackendConn`] is one
//! connection to it, checked out by one command at a time, for one exchange, and only ever for a tenant whose
//! data lives there. Replies are parsed and validated like client messages before anything is relayed; a backend
//! that sends garbage or vanishes costs the command using it one error reply and the connection. An idle
//! connection the backend closed (a restart) is found before use by a non-blocking read, and a send that fails
//! before any byte left says so, so the caller may retry it on a fresh connection.
//! Error text sent to clients never names a backend host; service passwords never leave this module.

use std::io::IoSlice;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bson::spec::BinarySubtype;
use bson::{rawdoc, Binary, RawBsonRef, RawDocument, RawDocumentBuf};
use bytes::Buf;
use tenantwall_protocol::{decode, Message, MsgFlags, MsgHeader, OpMsg, MAX_MESSAGE_SIZE};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::{ClientKeys, ScramClient};
use crate::codec::{self, FrameReader};
use crate::error::ProxyError;
use crate::handshake::FALLBACK_MAX_WIRE_VERSION;
use crate::policy::{BackendSpec, Credentials};
use crate::pool::{CheckoutError, Pool, Pooled};

/// Any byte stream a connection can run over (plain TCP or TLS).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A boxed stream.
pub type BoxStream = Box<dyn Stream>;

/// A configured backend deployment.
pub struct BackendTarget {
    pub spec: BackendSpec,
    /// Last `maxWireVersion` the backend reported; 0 until one handshake succeeded.
    observed_wire: AtomicI32,
    pool: Arc<Pool<BackendConn>>,
    /// The service user's SCRAM keys for the salt and iteration count the backend last sent: deriving them
    /// (PBKDF2) costs milliseconds, and they only change when the user's password does.
    keys: Arc<KeyCache>,
    /// The host the last connection was opened to.
    current_host: Arc<Mutex<Option<String>>>,
}

/// Where a target's pool reports: connections open, and SCRAM key derivations (PBKDF2 runs). The default reports
/// nowhere (operator tools that open a connection or two).
#[derive(Default)]
pub struct TargetMetrics {
    pub open: prometheus_client::metrics::gauge::Gauge,
    pub key_derivations: prometheus_client::metrics::counter::Counter,
}

/// The service user's SCRAM keys for the salt and iteration count the backend last sent.
struct KeyCache {
    entry: Mutex<Option<CachedKeys>>,
    derivations: prometheus_client::metrics::counter::Counter,
}

struct CachedKeys {
    salt: Vec<u8>,
    iterations: u32,
    keys: ClientKeys,
}

impl std::fmt::Debug for BackendTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTarget").field("spec", &self.spec).finish_non_exhaustive()
    }
}

fn unavailable(detail: String) -> ProxyError {
    ProxyError::BackendUnavailable { detail }
}

impl BackendTarget {
    /// A target with an empty pool; `open` hears how many connections it holds.
    pub fn new(spec: BackendSpec, metrics: TargetMetrics) -> Self {
        let TargetMetrics { open, key_derivations } = metrics;
        let pool = Pool::new(spec.max_connections, move |n| {
            open.set(i64::try_from(n).unwrap_or(i64::MAX));
        });
        let keys = Arc::new(KeyCache { entry: Mutex::new(None), derivations: key_derivations });
        Self { spec, observed_wire: AtomicI32::new(0), pool, keys, current_host: Arc::default() }
    }

    /// The target of a reloaded policy: keeps what the previous generation learnt about the same deployment and,
    /// when the way to reach it is unchanged (hosts, TLS settings, service user), its pool and keys, so a
    /// reload neither drops busy connections nor opens a second pool beside the first.
    pub fn reloaded(spec: BackendSpec, previous: &BackendTarget, metrics: TargetMetrics) -> Self {
        let same_deployment = previous.spec.hosts == spec.hosts;
        let same_access = same_deployment
            && match (&previous.spec.tls, &spec.tls) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
            && match (&previous.spec.credentials, &spec.credentials) {
                (None, None) => true,
                (Some(a), Some(b)) => {
                    a.username == b.username
                        && a.auth_source == b.auth_source
                        && a.password.expose() == b.password.expose()
                }
                _ => false,
            };
        let target = if same_access {
            previous.pool.set_max(spec.max_connections);
            Self {
                spec,
                observed_wire: AtomicI32::new(0),
                pool: previous.pool.clone(),
                keys: previous.keys.clone(),
                current_host: previous.current_host.clone(),
            }
        } else {
            Self::new(spec, metrics)
        };
        if same_deployment {
            target.observed_wire.store(previous.observed_wire.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        target
    }

    /// Connections open to this backend now.
    pub fn open_connections(&self) -> usize {
        self.pool.open()
    }

    /// A pooled connection for one command of `tenant`: an idle one that is still usable, or a new one while the
    /// pool is below `backends[].max_connections`, or the next one given back (round-robin across tenants),
    /// waiting at most `wait`.
    pub async fn checkout(
        &self,
        tenant: &str,
        wait: Duration,
        connect_timeout: Duration,
    ) -> Result<Pooled<BackendConn>, ProxyError> {
        loop {
            // Boxed: opening a connection (TCP, TLS, handshake, SCRAM) is a large future that nearly every checkout
            // never runs, and unboxed it would be part of, and copied with, every command's checkout.
            let checked_out = self.pool.checkout(tenant, wait, || Box::pin(self.connect(connect_timeout))).await;
            let pooled = match checked_out {
                Ok(pooled) => pooled,
                Err(CheckoutError::Connect(e)) => return Err(e),
                Err(CheckoutError::Timeout { waited, max }) => {
                    return Err(ProxyError::PoolTimeout { waited_ms: waited.as_millis(), max })
                }
            };
            if let Some(pooled) = self.usable(pooled) {
                return Ok(pooled);
            }
        }
    }

    /// [`Self::checkout`] when an idle connection opened on this worker is there and usable (nearly every
    /// command), taken without waiting and without building `checkout`'s future; `None` otherwise.
    pub fn try_checkout(&self) -> Option<Pooled<BackendConn>> {
        loop {
            if let Some(pooled) = self.usable(self.pool.try_idle()?) {
                return Some(pooled);
            }
        }
    }

    /// `pooled`, unless it is an idle connection the backend closed (by restarting, say): such a one is dropped,
    /// which closes it and frees its place. Every dead idle connection is found this way, so a checkout that
    /// tries again ends with a live one or a fresh one.
    fn usable(&self, mut pooled: Pooled<BackendConn>) -> Option<Pooled<BackendConn>> {
        if pooled.is_fresh() || pooled.get().is_some_and(BackendConn::is_usable) {
            return Some(pooled);
        }
        tracing::info!(backend = %self.spec.name, "backend connection closed while idle; discarding");
        None
    }

    /// The wire version to advertise: what the backend reported (or a conservative fallback before it has been
    /// reached), capped by the configured override.
    pub fn advertised_max_wire_version(&self) -> i32 {
        let observed = match self.observed_wire.load(Ordering::Relaxed) {
            0 => FALLBACK_MAX_WIRE_VERSION,
            v => v,
        };
        self.spec.max_wire_version.map_or(observed, |cap| observed.min(cap))
    }

    /// Opens, handshakes and authenticates a connection to the writable member: the seed hosts in order, and
    /// the primary a replica-set member names (a mongos or a standalone is always writable).
    ///
    /// The host the pool's connections already reach is tried first: a mongos keeps cursors and transaction
    /// routing state to itself, so every pooled connection must reach the same one while it is up (a getMore or
    /// the next statement of a transaction may be checked out on any of them).
    pub async fn connect(&self, timeout: Duration) -> Result<BackendConn, ProxyError> {
        let name = &self.spec.name;
        let mut last = String::from("no hosts");
        let mut candidates: Vec<String> = self.spec.hosts.clone();
        let current = self.current_host.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(current) = current {
            candidates.retain(|h| *h != current);
            candidates.insert(0, current);
        }
        let mut tried: Vec<String> = Vec::new();
        while let Some(host) = candidates.first().cloned() {
            candidates.remove(0);
            if tried.contains(&host) || tried.len() > self.spec.hosts.len() + 2 {
                continue;
            }
            tried.push(host.clone());
            match tokio::time::timeout(timeout, self.connect_host(&host)).await {
                Ok(Ok((conn, None))) => {
                    *self.current_host.lock().unwrap_or_else(|e| e.into_inner()) = Some(host);
                    return Ok(conn);
                }
                Ok(Ok((_, Some(primary)))) => {
                    last = format!("{host}: not the primary");
                    if let Some(primary) = primary {
                        candidates.insert(0, primary);
                    }
                }
                Ok(Err(e)) => last = format!("{host}: {}", e.log_detail()),
                Err(_) => last = format!("{host}: timed out"),
            }
        }
        Err(unavailable(format!("backend {name}: {last}")))
    }

    /// Connects to one host. `Ok((conn, Some(primary)))` when the host is a replica-set member that is not
    /// writable (with the primary it names, if any); the connection is then dropped by the caller.
    async fn connect_host(&self, host: &str) -> Result<(BackendConn, Option<Option<String>>), ProxyError> {
        let tcp = TcpStream::connect(host).await.map_err(|e| unavailable(format!("connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let stream: BoxStream = match &self.spec.tls {
            Some(config) => {
                let server = host.rsplit_once(':').map_or(host, |(h, _)| h).trim_matches(['[', ']']).to_owned();
                let name = rustls::pki_types::ServerName::try_from(server)
                    .map_err(|e| unavailable(format!("tls name: {e}")))?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| unavailable(format!("tls: {e}")))?;
                Box::new(tls)
            }
            None => Box::new(tcp),
        };
        let mut conn = BackendConn::new(stream);
        let hello = conn.handshake().await?;
        self.observed_wire.store(hello.max_wire_version, Ordering::Relaxed);
        if !hello.writable {
            return Ok((conn, Some(hello.primary)));
        }
        if let Some(credentials) = &self.spec.credentials {
            conn.authenticate(credentials, &self.keys).await?;
        }
        Ok((conn, None))
    }
}

/// A message that could not be sent.
#[derive(Debug)]
pub struct SendFailure {
    pub error: ProxyError,
    /// The first write of the message failed or took nothing: the command certainly never ran, so it may be sent
    /// again on another connection. Over plain TCP not one byte left; over TLS the first write may have sent
    /// some records before failing, but never the whole message, and the server runs no message it did not
    /// receive whole (this connection is dropped).
    pub nothing_sent: bool,
}

impl From<SendFailure> for ProxyError {
    fn from(failure: SendFailure) -> Self {
        failure.error
    }
}

impl From<ProxyError> for SendFailure {
    fn from(error: ProxyError) -> Self {
        Self { error, nothing_sent: false }
    }
}

/// What the proxy keeps of a backend's hello.
struct BackendHello {
    max_wire_version: i32,
    /// A standalone, a mongos, or a replica-set primary.
    writable: bool,
    /// The primary a replica-set member names.
    primary: Option<String>,
}

/// One connection to a backend.
pub struct BackendConn {
    /// Requests are written to the stream (`get_mut`) and replies read from it in turn, by one owner: no split
    /// (and no split's lock) is needed.
    stream: FrameReader<BoxStream>,
    next_request_id: i32,
}

fn ok_of(body: &RawDocument) -> bool {
    match body.get("ok") {
        Ok(Some(RawBsonRef::Double(v))) => v == 1.0,
        Ok(Some(RawBsonRef::Int32(v))) => v == 1,
        Ok(Some(RawBsonRef::Int64(v))) => v == 1,
        _ => false,
    }
}

impl BackendConn {
    fn new(stream: BoxStream) -> Self {
        Self { stream: FrameReader::new(stream, MAX_MESSAGE_SIZE, None), next_request_id: 1 }
    }

    /// Sends one command and returns its reply body.
    async fn call(&mut self, body: RawDocumentBuf) -> Result<RawDocumentBuf, ProxyError> {
        let request_id = self.send(&OpMsg::new(MsgFlags::default(), body)).await?;
        let (_, reply) = self.read_reply(request_id).await?;
        Ok(reply.body().to_owned())
    }

    /// Runs one command on database `db` (its `$db` is added here) and returns the reply body, whether or not
    /// it says `ok`: for operator tools holding their own service connection (`crate::lifecycle`).
    pub async fn command(&mut self, db: &str, mut body: RawDocumentBuf) -> Result<RawDocumentBuf, ProxyError> {
        // The server would take the last of two `$db` fields; refuse rather than guess.
        if body.get("$db").ok().flatten().is_some() {
            return Err(ProxyError::Internal { detail: "command already names its $db".into() });
        }
        body.append(bson::cstr!("$db"), db);
        self.call(body).await
    }

    /// Sends the proxy's own hello and returns what the proxy needs of the answer.
    async fn handshake(&mut self) -> Result<BackendHello, ProxyError> {
        let hello = rawdoc! {
            "hello": 1,
            "$db": "admin",
            "client": {
                "driver": { "name": "tenantwall", "version": env!("CARGO_PKG_VERSION") },
                "os": { "type": std::env::consts::OS },
            },
        };
        let body = self.call(hello).await?;
        if !ok_of(&body) {
            return Err(ProxyError::BackendProtocol { detail: "backend refused hello".into() });
        }
        let max_wire_version = match body.get("maxWireVersion") {
            Ok(Some(RawBsonRef::Int32(v))) if v > 0 => v,
            Ok(Some(RawBsonRef::Int64(v))) if v > 0 && v < 1000 => v as i32,
            _ => return Err(ProxyError::BackendProtocol { detail: "backend hello lacks maxWireVersion".into() }),
        };
        let flag = |key: &str| body.get_bool(key).unwrap_or(false);
        let writable =
            flag("isWritablePrimary") || flag("ismaster") || body.get_str("msg").is_ok_and(|m| m == "isdbgrid");
        let primary = body.get_str("primary").ok().map(str::to_owned);
        Ok(BackendHello { max_wire_version, writable, primary })
    }

    /// SCRAM-SHA-256 with the backend's service credentials. The keys are derived once per salt and iteration
    /// count, on the blocking pool so the async workers keep serving, and cached in `cache`.
    async fn authenticate(&mut self, credentials: &Credentials, cache: &KeyCache) -> Result<(), ProxyError> {
        let failed = |what: &str| unavailable(format!("authentication as {} failed: {what}", credentials.username));
        let (client, first) = ScramClient::new(&credentials.username, credentials.password.expose())
            .map_err(|e| failed(&e.to_string()))?;
        let start = rawdoc! {
            "saslStart": 1,
            "mechanism": "SCRAM-SHA-256",
            "payload": Binary { subtype: BinarySubtype::Generic, bytes: first },
            "options": { "skipEmptyExchange": true },
            "$db": credentials.auth_source.as_str(),
        };
        let reply = self.call(start).await?;
        if !ok_of(&reply) {
            return Err(failed(reply.get_str("errmsg").unwrap_or("saslStart refused")));
        }
        let conversation: bson::RawBson =
            reply.get("conversationId").ok().flatten().map_or(bson::RawBson::Int32(1), bson::RawBson::from);
        let server_first = reply.get_binary("payload").map_err(|_| failed("no payload"))?.bytes.to_vec();
        let server_first = client.read_server_first(&server_first).map_err(|e| failed(&e.to_string()))?;
        let keys = client_keys(client, &server_first, cache).await.map_err(|e| failed(&e))?;
        let (mut client, keys) = keys;
        let client_final = client.answer(&server_first, &keys).map_err(|e| failed(&e.to_string()))?;
        let sasl_continue = |payload: Vec<u8>| {
            let mut next = RawDocumentBuf::new();
            next.append(bson::cstr!("saslContinue"), 1);
            next.append(bson::cstr!("conversationId"), conversation.clone());
            next.append(bson::cstr!("payload"), Binary { subtype: BinarySubtype::Generic, bytes: payload });
            next.append(bson::cstr!("$db"), credentials.auth_source.as_str());
            next
        };
        let reply = self.call(sasl_continue(client_final)).await?;
        if !ok_of(&reply) {
            // Perhaps the password changed since the keys were cached: derive afresh next time.
            *cache.entry.lock().unwrap_or_else(|e| e.into_inner()) = None;
            return Err(failed(reply.get_str("errmsg").unwrap_or("saslContinue refused")));
        }
        let server_final = reply.get_binary("payload").map_err(|_| failed("no payload"))?.bytes.to_vec();
        client.verify_server_final(&server_final).map_err(|e| failed(&e.to_string()))?;
        if !reply.get_bool("done").unwrap_or(false) {
            // A server without skipEmptyExchange support wants one empty round.
            let reply = self.call(sasl_continue(Vec::new())).await?;
            if !ok_of(&reply) || !reply.get_bool("done").unwrap_or(false) {
                return Err(failed("conversation did not finish"));
            }
        }
        Ok(())
    }

    /// Whether this idle connection can carry a request: the backend has not closed it (e.g. by restarting)
    /// and has sent nothing unasked. Costs one non-blocking read.
    pub fn is_usable(&mut self) -> bool {
        self.stream.idle_and_open()
    }

    /// Sends `msg` with a fresh request id and returns that id.
    pub async fn send(&mut self, msg: &OpMsg) -> Result<i32, SendFailure> {
        let request_id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1).max(1);
        // What is sent stays where it is held and goes out after a head in the same writes: a body that is all
        // of the message (nearly every command), or a large insert's documents. Only other messages are
        // encoded whole.
        let (inline, built);
        let (head, tail): (&[u8], &[u8]) = match msg.head_before_body(request_id, 0) {
            Some(head) => {
                inline = head;
                (&inline, msg.body_bytes())
            }
            None => {
                built =
                    msg.encode_parts(request_id, 0).map_err(|e| SendFailure { error: e.into(), nothing_sent: true })?;
                (&built.0, built.1.as_deref().unwrap_or_default())
            }
        };
        let failed = |e: std::io::Error| unavailable(format!("write to backend: {e}"));
        // The first write is separate so that its failure proves the backend did not receive the whole message.
        // A small message is offered at once as one copy (one `send`, cheaper than a vectored write); a larger
        // one, or one the socket has no room for yet, is written by a write that waits.
        let first = match codec::write_small_once(self.stream.get_mut(), head, tail) {
            Some(Poll::Ready(first)) => first,
            _ => match tail {
                [] => self.stream.get_mut().write(head).await,
                tail => self.stream.get_mut().write_vectored(&[IoSlice::new(head), IoSlice::new(tail)]).await,
            },
        }
        .map_err(|e| SendFailure { error: failed(e), nothing_sent: true })?;
        if first == 0 {
            return Err(SendFailure { error: unavailable("backend stopped accepting".into()), nothing_sent: true });
        }
        let mut rest = head.chain(tail);
        rest.advance(first.min(rest.remaining()));
        if rest.has_remaining() {
            self.stream
                .get_mut()
                .write_all_buf(&mut rest)
                .await
                .map_err(|e| SendFailure { error: failed(e), nothing_sent: false })?;
        }
        // A TLS stream counts bytes as written once they are encrypted; what its socket could not take yet
        // goes out only when the stream is flushed (for plain TCP this does nothing).
        self.stream.get_mut().flush().await.map_err(|e| SendFailure { error: failed(e), nothing_sent: false })?;
        Ok(request_id)
    }

    /// Reads one reply, which must answer `response_to`.
    pub async fn read_reply(&mut self, response_to: i32) -> Result<(MsgHeader, OpMsg), ProxyError> {
        let frame = match self.stream.next_frame().await {
            Ok(Some(frame)) => frame,
            Ok(None) => return Err(unavailable("backend closed the connection".into())),
            Err(e) => return Err(unavailable(format!("read from backend: {e}"))),
        };
        let decoded =
            decode(frame).map_err(|e| ProxyError::BackendProtocol { detail: format!("backend reply: {e}") })?;
        if decoded.header.response_to != response_to {
            return Err(ProxyError::BackendProtocol {
                detail: format!(
                    "backend answered request {} while {response_to} was pending",
                    decoded.header.response_to
                ),
            });
        }
        match decoded.message {
            Message::Msg(msg) => Ok((decoded.header, msg)),
            other => Err(ProxyError::BackendProtocol { detail: format!("backend replied with {other:?}") }),
        }
    }
}

/// The keys for `first`: cached when the salt and iteration count are the ones seen before, else derived on the
/// blocking pool (PBKDF2 at 15,000 iterations is milliseconds of CPU an async worker must not spend) and cached.
async fn client_keys(
    client: ScramClient,
    first: &crate::auth::ServerFirst,
    cache: &KeyCache,
) -> Result<(ScramClient, ClientKeys), String> {
    {
        let cached = cache.entry.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = cached.as_ref().filter(|c| c.salt == first.salt() && c.iterations == first.iterations()) {
            return Ok((client, hit.keys.clone()));
        }
    }
    let (salt, iterations) = (first.salt().to_vec(), first.iterations());
    let job = tokio::task::spawn_blocking(move || {
        let derived = client.derive_keys_for(&salt, iterations);
        (client, derived)
    });
    let (client, derived) = job.await.map_err(|_| "key derivation did not finish".to_owned())?;
    let keys = derived.map_err(|e| e.to_string())?;
    cache.derivations.inc();
    *cache.entry.lock().unwrap_or_else(|e| e.into_inner()) =
        Some(CachedKeys { salt: first.salt().to_vec(), iterations, keys: keys.clone() });
    Ok((client, keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_small_command_whose_first_offer_is_refused_is_sent_whole() {
        // The write offered at once is refused (as tokio's cooperative budget may): the write that waits sends it.
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let mut conn = BackendConn::new(Box::new(crate::codec::testing::Wire::new(ours).balky()));
        let msg = OpMsg::new(MsgFlags::default(), rawdoc! { "ping": 1, "$db": "admin" });
        assert_eq!(conn.send(&msg).await.unwrap(), 1);
        let expected = msg.encode(1, 0).unwrap().to_vec();
        let mut got = vec![0u8; expected.len()];
        let read = tokio::io::AsyncReadExt::read_exact(&mut theirs, &mut got);
        tokio::time::timeout(Duration::from_secs(5), read).await.expect("the command never left").unwrap();
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn a_send_on_a_connection_the_peer_closed_is_known_not_to_have_left() {
        let (ours, theirs) = tokio::io::duplex(1024);
        let mut conn = BackendConn::new(Box::new(ours));
        drop(theirs);
        assert!(!conn.is_usable());
        let failure = conn.send(&OpMsg::new(MsgFlags::default(), rawdoc! { "ping": 1 })).await.unwrap_err();
        assert!(failure.nothing_sent);
    }

    #[tokio::test]
    async fn a_command_leaves_a_stream_that_holds_written_bytes_until_flushed() {
        // As a TLS stream does with what its socket could not take yet.
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let mut conn = BackendConn::new(Box::new(tokio::io::BufWriter::new(ours)));
        let msg = OpMsg::new(MsgFlags::default(), rawdoc! { "ping": 1, "$db": "admin" });
        conn.send(&msg).await.unwrap();
        let expected = msg.encode(1, 0).unwrap().to_vec();
        let mut got = vec![0u8; expected.len()];
        let read = tokio::io::AsyncReadExt::read_exact(&mut theirs, &mut got);
        tokio::time::timeout(Duration::from_secs(5), read).await.expect("the command never left").unwrap();
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn a_large_insert_arrives_whole_however_the_writes_are_cut() {
        // The documents go out after the encoded head, from where they are held; a pipe that takes a few
        // hundred bytes at a time cuts the writes anywhere, the first one included.
        let docs: Vec<RawDocumentBuf> = (0..400).map(|i| rawdoc! { "_id": i, "pad": "x".repeat(100) }).collect();
        let msg = OpMsg::with_sequences(
            MsgFlags::default(),
            rawdoc! { "insert": "c", "$db": "d" },
            vec![tenantwall_protocol::Sequence::new("documents", docs)],
        );
        assert!(msg.encode_parts(1, 0).unwrap().1.is_some(), "large enough to be sent in two parts");
        arrives_whole(&msg, &[7, 300, 1 << 20]).await;
    }

    /// Sends `msg` through a pipe of each capacity (which cuts the writes wherever it fills) and checks that
    /// what arrives is the message's frame, byte for byte.
    async fn arrives_whole(msg: &OpMsg, capacities: &[usize]) {
        for &capacity in capacities {
            let (ours, mut theirs) = tokio::io::duplex(capacity);
            let mut conn = BackendConn::new(Box::new(ours));
            let expected = msg.encode(1, 0).unwrap().to_vec();
            let reader = tokio::spawn(async move {
                let mut got = vec![0u8; expected.len()];
                tokio::io::AsyncReadExt::read_exact(&mut theirs, &mut got).await.unwrap();
                assert_eq!(got, expected);
            });
            assert_eq!(conn.send(msg).await.unwrap(), 1);
            reader.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_body_sent_after_its_head_arrives_whole_however_the_writes_are_cut() {
        // A message that is only a body goes out as its head and then the body from where it is held
        // (`OpMsg::head_before_body`); a pipe taking three bytes at a time cuts the head itself.
        let mut ids = bson::RawArrayBuf::new();
        for id in 0..200_i64 {
            ids.push(id);
        }
        let msg =
            OpMsg::new(MsgFlags::default(), rawdoc! { "find": "c", "filter": { "_id": { "$in": ids } }, "$db": "d" });
        assert!(msg.head_before_body(1, 0).is_some());
        arrives_whole(&msg, &[3, 7, 300, 1 << 20]).await;
    }
}
