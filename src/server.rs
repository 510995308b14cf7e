//! Listeners, connection tasks, identity at accept, and policy generations.
//!
//! The server binds every listener of the policy, accepts connections up to `limits.max_connections`, completes
//! TLS, resolves what the listener, the SNI name and the client certificate say about the tenant (they must
//! agree), and runs each connection in its own task under a tracing span with `client.addr` and `conn.id`: on
//! one of the worker threads when the server was given them ([`crate::workers`], what `tenantwall run` does),
//! else on the runtime the server runs on (tests, embedding).
//! A reload builds a new [`Generation`] and swaps it in whole; connections read the current generation for each
//! command, and are told about swaps so that connections of removed tenants end.
//!
//! Admission (per source address, and before authentication) is decided at accept by [`crate::admission`], with
//! refusals logged once per window. On shutdown the server drains: listeners close, idle connections end at once,
//! connections with a command in flight end after answering it, and whatever is left after
//! `limits.shutdown_grace_secs` is closed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{info, info_span, warn, Instrument};

use crate::admin::audit::AuditLog;
use crate::admin::health::Health;
use crate::admin::metrics::Metrics;
use crate::admission::{Admission, Refusal};
use crate::backend::{BackendTarget, BoxStream};
use crate::codec::Budget;
use crate::connection::ClientConnection;
use crate::names::NameMap;
use crate::policy::{Listener, Policy};
use crate::ratelimit::RateLimiter;
use crate::session::Cursors;
use crate::stats::Stats;
use crate::tls::subject_string;
use crate::workers::Workers;

/// One policy and the backend targets built from it.
pub(crate) struct Generation {
    pub number: u64,
    pub policy: Arc<Policy>,
    pub backends: NameMap<String, Arc<BackendTarget>>,
}

impl Generation {
    fn new(number: u64, policy: Policy, previous: Option<&Generation>, metrics: &Metrics) -> Self {
        let mut backends = NameMap::default();
        for spec in &policy.backends {
            let target_metrics = metrics.backend_target(&spec.name);
            let target = match previous.and_then(|p| p.backends.get(&spec.name)) {
                Some(old) => BackendTarget::reloaded(spec.clone(), old, target_metrics),
                None => BackendTarget::new(spec.clone(), target_metrics),
            };
            backends.insert(spec.name.clone(), Arc::new(target));
        }
        Self { number, policy: Arc::new(policy), backends }
    }

    /// The wire version to advertise: the given tenant's backend, or the lowest among all backends when the
    /// tenant is not known yet (a client must not be promised commands some backend lacks).
    pub fn max_wire_version(&self, tenant_backend: Option<&str>) -> i32 {
        let chosen = tenant_backend.and_then(|b| self.backends.get(b));
        match chosen {
            Some(target) => target.advertised_max_wire_version(),
            None => self
                .backends
                .values()
                .map(|b| b.advertised_max_wire_version())
                .min()
                .unwrap_or(crate::handshake::FALLBACK_MAX_WIRE_VERSION),
        }
    }
}

/// State shared by all connections of a server.
pub(crate) struct Shared {
    current: RwLock<Arc<Generation>>,
    /// The number of the generation in `current`, stored after it is swapped in: a connection holding a
    /// generation finds out whether it is still current with one load, without taking the lock that every
    /// worker's connections would otherwise take, and count the `Arc` for, at each read ([`Shared::refresh`]).
    number: AtomicU64,
    pub stats: Arc<Stats>,
    /// Which tenant owns each open cursor.
    pub cursors: Cursors,
    /// Bytes of client messages buffered at once, across all connections.
    pub budget: Budget,
    /// Connection slots per source and before authentication; SCRAM failure throttling.
    pub admission: Admission,
    /// Large messages decoded at once on the blocking pool: half the cores, so the rest keep serving.
    pub heavy: Arc<Semaphore>,
    /// Prometheus metrics (served by the admin listener).
    pub metrics: Arc<Metrics>,
    /// The JSON-lines audit log (a no-op without `[audit]`).
    pub audit: AuditLog,
    /// Each backend's last health check, for `/readyz`.
    pub health: Health,
    /// Per-tenant command rate limits.
    pub rate: RateLimiter,
    /// Per-tenant holds (tenant moves) and commands in flight.
    pub gate: crate::gate::Gate,
    next_conn_id: AtomicU64,
    generations: watch::Sender<u64>,
    /// Set once when the server starts draining: connections end at their next idle moment.
    draining: watch::Sender<bool>,
}

impl Shared {
    /// The policy generation in force now.
    pub fn current(&self) -> Arc<Generation> {
        // A poisoned lock only means a panic elsewhere while swapping; the Arc inside is still whole.
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces `held` with the generation in force when a newer one has been swapped in.
    ///
    /// What `held` then holds is as current as anything the caller has synchronised with: the number is stored
    /// (under the swap's lock) before anything that follows a swap, such as a mover releasing its hold, can
    /// happen, so whoever learns of that event through a lock or a channel (the gate's, for a command let in
    /// after a move) also sees the new number here. A load racing a swap nobody has told the caller of may see
    /// either number, as a read of the lock just before or just after the swap would.
    pub fn refresh(&self, held: &mut Arc<Generation>) {
        if self.number.load(Ordering::Acquire) != held.number {
            *held = self.current();
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generations.subscribe()
    }

    /// Becomes `true` when the server drains.
    pub fn draining(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    fn swap(&self, policy: Policy) {
        let mut slot = self.current.write().unwrap_or_else(|e| e.into_inner());
        let next = Generation::new(slot.number + 1, policy, Some(&slot), &self.metrics);
        let number = next.number;
        *slot = Arc::new(next);
        self.number.store(number, Ordering::Release);
        drop(slot);
        self.generations.send_replace(number);
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {address}: {source}")]
    Bind { address: String, source: std::io::Error },
    #[error("cannot open the audit log: {0}")]
    Audit(std::io::Error),
}

/// A bound, not yet running server.
pub struct Server {
    listeners: Vec<(TcpListener, Listener)>,
    /// The admin HTTP listener, when `[admin]` is configured.
    admin: Option<TcpListener>,
    shared: Arc<Shared>,
    /// Where connections are served: the worker threads, or (without them) the runtime the server runs on.
    workers: Option<Arc<Workers>>,
}

/// Swaps policies into a running server.
#[derive(Clone)]
pub struct Reloader {
    shared: Arc<Shared>,
}

impl Reloader {
    pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Swaps `policy` in for new commands and new connections. Connections whose tenant it no longer has end.
    pub fn apply(&self, policy: Policy) {
        for warning in &policy.warnings {
            warn!(%warning, "policy warning");
        }
        let before = self.shared.current();
        let (old, new) = (&before.policy.limits, &policy.limits);
        // Sized once at start; say so rather than silently keep the old value.
        for (key, old, new) in [
            ("max_connections", old.max_connections, new.max_connections),
            ("max_buffered_bytes", old.max_buffered_bytes, new.max_buffered_bytes),
            (
                "max_unauthenticated_connections",
                old.max_unauthenticated_connections,
                new.max_unauthenticated_connections,
            ),
            ("max_cursors", old.max_cursors, new.max_cursors),
            ("max_cursors_per_tenant", old.max_cursors_per_tenant, new.max_cursors_per_tenant),
        ] {
            if old != new {
                warn!(key, old, new, "limits.{key} changed; it takes effect at the next restart");
            }
        }
        let old_admin = before.policy.admin.as_ref().map(|a| (a.address, a.health_interval));
        if old_admin != policy.admin.as_ref().map(|a| (a.address, a.health_interval)) {
            warn!("[admin] address or health_interval_secs changed; it takes effect at the next restart");
        }
        if before.policy.audit != policy.audit {
            warn!("[audit] changed; it takes effect at the next restart");
        }
        self.shared.swap(policy);
        let generation = self.shared.current().number;
        self.shared.metrics.policy_reload(true, generation);
        info!(generation, "policy swapped in");
    }

    /// Counts a reload that was refused because the new policy is invalid (the old one stays in force).
    pub fn rejected(&self) {
        self.shared.metrics.policy_reload(false, self.shared.current().number);
    }

    /// Reopens the audit log file (SIGUSR1, after rotation).
    pub fn reopen_audit_log(&self) {
        self.shared.audit.reopen();
    }

    /// The generation number in force (starts at 1).
    pub fn generation(&self) -> u64 {
        self.shared.current().number
    }
}

impl Server {
    /// Binds the policy's listeners; `listen` replaces the first listener's address.
    pub async fn bind(policy: Policy, listen: Option<SocketAddr>) -> Result<Server, StartError> {
        let mut configured = policy.listeners.clone();
        if let (Some(addr), Some(first)) = (listen, configured.first_mut()) {
            first.address = addr.to_string();
        }
        let mut listeners = Vec::new();
        for config in configured {
            let listener = TcpListener::bind(config.address.as_str())
                .await
                .map_err(|source| StartError::Bind { address: config.address.clone(), source })?;
            listeners.push((listener, config));
        }
        let admin = match &policy.admin {
            Some(settings) => Some(
                TcpListener::bind(settings.address)
                    .await
                    .map_err(|source| StartError::Bind { address: settings.address.to_string(), source })?,
            ),
            None => None,
        };
        let metrics = Arc::new(Metrics::new());
        let audit = match &policy.audit {
            Some(settings) => AuditLog::start(settings, metrics.clone()).map_err(StartError::Audit)?,
            None => AuditLog::default(),
        };
        for warning in &policy.warnings {
            warn!(%warning, "policy warning");
        }
        let generation = Generation::new(1, policy, None, &metrics);
        // Learn every backend's wire version before the first client asks, so hellos are consistent; the
        // connection opened for it stays in the pool for the first command.
        let timeout = generation.policy.limits.backend_connect_timeout();
        let mut probes = JoinSet::new();
        for target in generation.backends.values() {
            let target = target.clone();
            probes.spawn(async move {
                match target.checkout("-", timeout, timeout).await {
                    Ok(conn) => conn.release(),
                    Err(e) => {
                        warn!(detail = e.log_detail(), "backend not reachable at startup; connections will retry")
                    }
                }
            });
        }
        while probes.join_next().await.is_some() {}
        let limits = &generation.policy.limits;
        let budget = Budget::new(limits.max_buffered_bytes);
        let admission = Admission::new(limits);
        let cursors = Cursors::new(limits.max_cursors, limits.max_cursors_per_tenant);
        let shared = Arc::new(Shared {
            number: AtomicU64::new(generation.number),
            current: RwLock::new(Arc::new(generation)),
            stats: Arc::new(Stats::default()),
            cursors,
            budget,
            admission,
            heavy: Arc::new(Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get() / 2).max(1))),
            metrics,
            audit,
            health: Health::default(),
            rate: RateLimiter::default(),
            gate: crate::gate::Gate::default(),
            next_conn_id: AtomicU64::new(1),
            generations: watch::channel(1).0,
            draining: watch::channel(false).0,
        });
        Ok(Server { listeners, admin, shared, workers: None })
    }

    /// Serves each accepted connection on one of `workers` ([`Workers::pick`]), rather than on the runtime the
    /// server itself runs on, which then only accepts, answers the admin listener and handles signals.
    #[must_use]
    pub fn with_workers(mut self, workers: Arc<Workers>) -> Self {
        self.workers = Some(workers);
        self
    }

    /// Starts `count` workers whose working connections are reported in this server's metrics
    /// (`tenantwall_worker_working_connections`), and serves connections on them ([`Self::with_workers`]).
    pub fn start_workers(self, count: usize) -> std::io::Result<Self> {
        let workers = Workers::start_counted(count, |index| self.shared.metrics.worker_connections(index))?;
        Ok(self.with_workers(Arc::new(workers)))
    }

    /// The bound addresses (with the real port when the policy asked for port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|(l, _)| l.local_addr().ok()).collect()
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    /// The admin listener's address, when `[admin]` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn reloader(&self) -> Reloader {
        Reloader { shared: self.shared.clone() }
    }

    /// Serves until `shutdown` completes, then drains: stops accepting, closes idle connections, lets commands
    /// in flight finish and be answered for up to `limits.shutdown_grace_secs`, then ends what is left.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        let limit = Arc::new(Semaphore::new(self.shared.current().policy.limits.max_connections));
        let mut tasks = JoinSet::new();
        let (stop_tx, stop_rx) = watch::channel(false);
        for (listener, config) in self.listeners {
            let serve = Serve { config: Arc::new(config), shared: self.shared.clone(), workers: self.workers.clone() };
            tasks.spawn(accept_loop(listener, serve, limit.clone(), stop_rx.clone()));
        }
        let mut operator = JoinSet::new();
        if let Some(admin) = self.admin {
            operator.spawn(crate::admin::serve(admin, self.shared.clone()));
            let interval = self.shared.current().policy.admin.as_ref().map(|a| a.health_interval);
            let interval = interval.unwrap_or(Duration::from_secs(5));
            operator.spawn(crate::admin::health::check_backends(Arc::downgrade(&self.shared), interval));
        }
        shutdown.await;
        let grace = self.shared.current().policy.limits.shutdown_grace();
        let open = Stats::get(&self.shared.stats.connections_open);
        info!(
            connections = open,
            grace_secs = grace.as_secs(),
            "draining: no new connections, finishing commands in flight"
        );
        let started = tokio::time::Instant::now();
        self.shared.draining.send_replace(true);
        let _ = stop_tx.send(true);
        while tasks.join_next().await.is_some() {}
        // The admin listener answered (`/readyz`: draining) until now.
        operator.abort_all();
        info!(elapsed_ms = started.elapsed().as_millis() as u64, "drained");
    }

    /// Runs the server on the current runtime and returns a handle that stops it when dropped.
    pub fn spawn(self) -> ServerHandle {
        let addrs = self.local_addrs();
        let admin = self.admin_addr();
        let stats = self.stats();
        let reloader = self.reloader();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(self.run_until(async move {
            let _ = rx.await;
        }));
        ServerHandle { addrs, admin, stats, reloader, stop: Some(tx), task }
    }
}

/// What an accept loop hands its connections: the listener's settings, the server's state, and where to run them.
struct Serve {
    config: Arc<Listener>,
    shared: Arc<Shared>,
    workers: Option<Arc<Workers>>,
}

async fn accept_loop(listener: TcpListener, serve: Serve, limit: Arc<Semaphore>, mut stop: watch::Receiver<bool>) {
    let Serve { config, shared, workers } = serve;
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => break,
            // Reap finished connection tasks so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning, keep serving existing connections.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        Stats::incr(&shared.stats.connections_accepted);
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            shared.admission.log_refusal(peer.ip(), Refusal::TooManyConnections);
            Stats::incr(&shared.stats.connections_refused);
            continue;
        };
        let admitted = match shared.admission.admit(peer.ip(), &shared.current().policy.limits, config.tenant.is_some())
        {
            Ok(admitted) => admitted,
            Err(why) => {
                shared.admission.log_refusal(peer.ip(), why);
                Stats::incr(&shared.stats.connections_refused);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let span = info_span!("conn", client.addr = %peer, conn.id = id, tenant = tracing::field::Empty);
        let shared = shared.clone();
        let config = config.clone();
        // Violations are counted on connections that must authenticate, and held there: a listener bound to a
        // tenant serves only that tenant's own clients.
        let hold = match config.tenant {
            None => shared.admission.hold_for(peer.ip(), &shared.current().policy.limits),
            Some(_) => None,
        };
        // The connection's whole life, wherever it runs.
        let run = move |stream: TcpStream| {
            async move {
                Stats::incr(&shared.stats.connections_open);
                let ready = match hold {
                    Some(hold) => held(&shared, hold).await,
                    None => true,
                };
                let established = if ready { establish(stream, &config, &shared).await } else { None };
                if let Some((stream, claim)) = established {
                    let mut admitted = admitted;
                    if claim.is_some() {
                        // SNI or a client certificate named the tenant.
                        admitted.unauthenticated = None;
                    }
                    ClientConnection::new(id, shared.clone(), stream, claim, peer.ip(), admitted)
                        .with_face(config.face.clone())
                        .serve()
                        .await;
                }
                shared.stats.connections_open.fetch_sub(1, Ordering::Relaxed);
                drop(permit);
            }
            .instrument(span)
        };
        let Some(workers) = &workers else {
            connections.spawn(run(stream));
            continue;
        };
        // The socket leaves this runtime's event loop for the worker's, where the connection's task registers
        // it again.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                warn!(error = %e, "cannot hand the connection to a worker");
                continue;
            }
        };
        let worker = workers.pick();
        connections.spawn_on(
            async move {
                match TcpStream::from_std(stream) {
                    Ok(stream) => run(stream).await,
                    Err(e) => warn!(error = %e, "the worker cannot take the connection"),
                }
            },
            worker.handle(),
        );
    }
    // Listening stops here (the listener is dropped); open connections close themselves once idle.
    drop(listener);
    let deadline = tokio::time::Instant::now() + shared.current().policy.limits.shutdown_grace();
    while !connections.is_empty() {
        if tokio::time::timeout_at(deadline, connections.join_next()).await.is_err() {
            warn!(
                connections = connections.len(),
                "shutdown grace period over; closing connections with commands in flight"
            );
            break;
        }
    }
    connections.shutdown().await;
}

/// Holds a new connection from a source that repeatedly broke the protocol, unread, for `hold`; false when the
/// server began draining meanwhile (nothing was asked yet, so the connection just closes).
async fn held(shared: &Shared, hold: Duration) -> bool {
    Stats::incr(&shared.stats.connections_held);
    let mut drain = shared.draining();
    tokio::select! {
        _ = tokio::time::sleep(hold) => true,
        _ = drain.wait_for(|d| *d) => false,
    }
}

/// Completes TLS and resolves the tenant claimed by the listener, SNI and client certificate. `None` closes the
/// connection (handshake failure, or claims naming different tenants).
async fn establish(tcp: TcpStream, listener: &Listener, shared: &Shared) -> Option<(BoxStream, Option<String>)> {
    let generation = shared.current();
    let policy = &generation.policy;
    let mut claims: Vec<(&str, String)> = Vec::new();
    if let Some(tenant) = &listener.tenant {
        claims.push(("listener", tenant.clone()));
    }
    let stream: BoxStream = match &listener.tls {
        Some(config) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
            let tls = match tokio::time::timeout(policy.limits.auth_timeout(), acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    info!(error = %e, "TLS handshake failed");
                    return None;
                }
                Err(_) => {
                    info!("TLS handshake timed out");
                    return None;
                }
            };
            let (_, session) = tls.get_ref();
            if let Some(tenant) = session.server_name().and_then(|h| policy.tenant_for_sni(h)) {
                claims.push(("sni", tenant.to_owned()));
            }
            if let Some(leaf) = session.peer_certificates().and_then(|c| c.first()) {
                match subject_string(leaf.as_ref()) {
                    Ok(subject) => match policy.tenant_for_subject(&subject) {
                        Some(tenant) => claims.push(("certificate", tenant.to_owned())),
                        None => info!(%subject, "client certificate names no tenant"),
                    },
                    Err(e) => {
                        info!(error = %e, "client certificate unreadable");
                        return None;
                    }
                }
            }
            Box::new(tls)
        }
        None => Box::new(tcp),
    };
    let claim = claims.first().map(|(_, t)| t.clone());
    if let Some((source, other)) = claims.iter().find(|(_, t)| Some(t) != claim.as_ref()) {
        warn!(first = ?claims.first(), conflicting = source, tenant = %other, "identity sources disagree; closing");
        return None;
    }
    info!(tenant = claim.as_deref().unwrap_or("-"), "accepted");
    Some((stream, claim))
}

/// A running server. Dropping it stops the server.
pub struct ServerHandle {
    addrs: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
    stats: Arc<Stats>,
    reloader: Reloader,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// The first listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The admin listener's address, when `[admin]` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn reloader(&self) -> &Reloader {
        &self.reloader
    }

    /// Stops accepting, drains (idle connections close at once, commands in flight finish within
    /// `limits.shutdown_grace_secs`), and waits for the server task.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::codec::testing::{Wire, WireCounts};

    /// One tenant on a backend nothing listens on (the start-up probe fails at once; nothing here reaches it).
    const POLICY: &str = "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[backends]]\nname = \"b\"\n\
                          uri = \"mongodb://127.0.0.1:1/\"\n[[tenants]]\nid = \"acme\"\nbackend = \"b\"\n";

    /// A server for [`POLICY`] (not running) and one connection of tenant acme over `stream`, being served.
    async fn serving(stream: BoxStream) -> (Server, tokio::task::JoinHandle<()>) {
        let policy = crate::Policy::from_toml(POLICY, std::path::Path::new("test.toml")).unwrap();
        let server = Server::bind(policy, None).await.unwrap();
        let shared = server.shared.clone();
        let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let admitted = shared.admission.admit(ip, &shared.current().policy.limits, true).unwrap();
        let connection = ClientConnection::new(1, shared, stream, Some("acme".into()), ip, admitted);
        let served = tokio::spawn(connection.serve());
        (server, served)
    }

    #[tokio::test]
    async fn a_reply_leaves_a_stream_that_holds_written_bytes_until_flushed() {
        // As a TLS stream does with what its socket could not take yet: the reply must be flushed out of it.
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let (_server, served) = serving(Box::new(tokio::io::BufWriter::new(ours))).await;
        let hello = tenantwall_protocol::OpMsg::new(
            tenantwall_protocol::MsgFlags::default(),
            bson::rawdoc! { "hello": 1, "$db": "admin" },
        );
        tokio::io::AsyncWriteExt::write_all(&mut theirs, &hello.encode(1, 0).unwrap()).await.unwrap();
        let mut header = [0u8; 16];
        let read = tokio::io::AsyncReadExt::read_exact(&mut theirs, &mut header);
        tokio::time::timeout(Duration::from_secs(5), read).await.expect("the reply never left").unwrap();
        let header = tenantwall_protocol::MsgHeader::read(&header).unwrap();
        assert_eq!(header.response_to, 1);
        drop(theirs);
        served.await.unwrap();
    }

    #[tokio::test]
    async fn replies_written_in_pieces_arrive_whole_and_are_counted_once() {
        // Every write takes three bytes at most: each reply's head and body arrive in pieces that split the head.
        replies_in_pieces(1 << 20, |inner| Box::new(Wire::new(inner).most(3))).await;
    }

    #[tokio::test]
    async fn replies_whose_first_write_takes_nothing_arrive_whole_and_are_counted_once() {
        // The write offered at once with a waker that does nothing is refused: every reply goes out by the path
        // that waits, from its first byte.
        let counts = Arc::default();
        replies_in_pieces(1 << 20, |inner| Box::new(Wire::new(inner).balky().counted(&counts))).await;
        assert_eq!(WireCounts::get(&counts.plain), 0, "a first offer was taken");
    }

    #[tokio::test]
    async fn small_replies_go_out_in_one_plain_write_and_a_long_one_in_one_vectored_write_of_two_slices() {
        // A vectored write on a socket is a `writev`, dearer than the `send` of a plain write.
        let counts = Arc::default();
        replies_in_pieces(1 << 20, |inner| Box::new(Wire::new(inner).counted(&counts))).await;
        assert_eq!(WireCounts::get(&counts.plain), 3, "three small replies");
        assert_eq!(WireCounts::get(&counts.vectored), 1, "one long reply");
        assert_eq!(WireCounts::get(&counts.slices), 2, "its head and its body");
    }

    #[tokio::test]
    async fn replies_the_client_takes_only_in_part_arrive_whole_and_are_counted_once() {
        // Room for 20 bytes at a time: a reply's first write stops inside its 21-byte head, and the rest is
        // written once the client reads, by the path that waits. With room for 40, it stops inside the body.
        // Both for small replies (one copy of head and body) and the large one (head and body as two slices).
        for capacity in [20, 40] {
            replies_in_pieces(capacity, |inner| Box::new(inner)).await;
        }
    }

    #[tokio::test]
    async fn a_reply_taken_whole_whose_flush_has_to_wait_arrives_whole_and_is_counted_once() {
        // As a TLS stream does: every byte is taken into its buffer at once, and the flush has to wait for the
        // client to read.
        replies_in_pieces(20, |inner| Box::new(tokio::io::BufWriter::new(inner))).await;
    }

    /// Sends three commands through the stream `wrap` makes of a duplex whose peer takes `capacity` bytes at a
    /// time, checks each reply arrives whole and every byte is counted once, and returns the bytes received.
    async fn replies_in_pieces(capacity: usize, wrap: impl FnOnce(tokio::io::DuplexStream) -> BoxStream) -> usize {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let within = Duration::from_secs(5);
        let (ours, mut theirs) = tokio::io::duplex(capacity);
        let (server, served) = serving(wrap(ours)).await;
        // The last is refused with an error that names the command: a reply longer than one copied write takes
        // (`codec::SMALL_WRITE`).
        let long_name = "x".repeat(crate::codec::SMALL_WRITE);
        let mut unknown = bson::RawDocumentBuf::new();
        unknown.append(<&bson::raw::CStr>::try_from(long_name.as_str()).unwrap(), 1);
        unknown.append(bson::raw::cstr!("$db"), "admin");
        let requests = [
            (bson::rawdoc! { "hello": 1, "$db": "admin" }, true),
            (bson::rawdoc! { "ping": 1, "$db": "admin" }, true),
            (bson::rawdoc! { "buildInfo": 1, "$db": "admin" }, true),
            (unknown, false),
        ];
        let mut received = 0;
        let mut longest = 0;
        for (id, (body, ok)) in (1..).zip(requests) {
            let request = tenantwall_protocol::OpMsg::new(tenantwall_protocol::MsgFlags::default(), body);
            theirs.write_all(&request.encode(id, 0).unwrap()).await.unwrap();
            let mut frame = vec![0u8; 16];
            tokio::time::timeout(within, theirs.read_exact(&mut frame)).await.expect("no reply").unwrap();
            let header = tenantwall_protocol::MsgHeader::read(&frame).unwrap();
            frame.resize(usize::try_from(header.message_length).unwrap(), 0);
            let rest = theirs.read_exact(&mut frame[16..]);
            tokio::time::timeout(within, rest).await.expect("the reply stopped short").unwrap();
            received += frame.len();
            longest = longest.max(frame.len());
            // The frame as a whole: its length, its answer, and a body that parses and says ok.
            let decoded = tenantwall_protocol::decode(bytes::Bytes::from(frame)).unwrap();
            assert_eq!(decoded.header.response_to, id);
            let tenantwall_protocol::Message::Msg(reply) = decoded.message else { panic!("not an OP_MSG") };
            let expected = if ok { 1.0 } else { 0.0 };
            let answered = reply.body().get_f64("ok").ok().or(reply.body().get_i32("ok").ok().map(f64::from));
            assert_eq!(answered, Some(expected), "{:?}", reply.body());
            assert!(reply.sequences().is_empty());
        }
        drop(theirs);
        tokio::time::timeout(within, served).await.expect("the connection did not end").unwrap();
        let metrics = server.shared.metrics.encode();
        let sent = metrics
            .lines()
            .find(|l| l.starts_with("tenantwall_bytes_sent_total{") && l.contains("\"acme\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<usize>().ok());
        assert_eq!(sent, Some(received), "{metrics}");
        assert!(longest > crate::codec::SMALL_WRITE, "no reply was long enough to be written as two slices");
        received
    }
}
