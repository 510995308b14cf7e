//! Listeners and connection tasks.
//!
//! The server binds every listener of the policy, accepts connections up to `limits.max_connections`, and runs
//! each in its own task under a tracing span carrying `client.addr` and `conn.id`. It owns no per-connection
//! state; a connection that fails ends alone.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{info, info_span, warn, Instrument};

use crate::backend::BackendTarget;
use crate::config::Policy;
use crate::connection::ClientConnection;
use crate::stats::Stats;

/// State shared by all connections of a server.
pub(crate) struct Shared {
    pub policy: Arc<Policy>,
    pub backend: BackendTarget,
    pub stats: Arc<Stats>,
    next_conn_id: AtomicU64,
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {address}: {source}")]
    Bind { address: String, source: std::io::Error },
    #[error("policy: {0}")]
    Policy(String),
}

/// A bound, not yet running server.
pub struct Server {
    listeners: Vec<TcpListener>,
    shared: Arc<Shared>,
}

impl Server {
    /// Binds the policy's listeners, or `listen` instead when given.
    pub async fn bind(policy: Policy, listen: Option<SocketAddr>) -> Result<Server, StartError> {
        let backend_config = policy.default_backend().ok_or_else(|| StartError::Policy("no backend".into()))?;
        let backend = BackendTarget::from_config(backend_config).map_err(StartError::Policy)?;
        let addresses: Vec<String> = match listen {
            Some(addr) => vec![addr.to_string()],
            None => policy.listeners.iter().map(|l| l.address.clone()).collect(),
        };
        let mut listeners = Vec::new();
        for address in addresses {
            let listener = TcpListener::bind(address.as_str())
                .await
                .map_err(|source| StartError::Bind { address: address.clone(), source })?;
            listeners.push(listener);
        }
        // Learn the backend's wire version before the first client asks, so every hello advertises the same.
        if let Err(e) = backend.connect(policy.limits.backend_connect_timeout()).await {
            warn!(detail = e.log_detail(), "backend not reachable at startup; connections will retry");
        }
        let shared = Arc::new(Shared {
            policy: Arc::new(policy),
            backend,
            stats: Arc::new(Stats::default()),
            next_conn_id: AtomicU64::new(1),
        });
        Ok(Server { listeners, shared })
    }

    /// The bound addresses (with the real port when the policy asked for port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    /// Serves until `shutdown` completes; then stops accepting and ends open connections.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        let limit = Arc::new(Semaphore::new(self.shared.policy.limits.max_connections));
        let mut tasks = JoinSet::new();
        let (stop_tx, stop_rx) = watch::channel(false);
        for listener in self.listeners {
            tasks.spawn(accept_loop(listener, self.shared.clone(), limit.clone(), stop_rx.clone()));
        }
        shutdown.await;
        let _ = stop_tx.send(true);
        while tasks.join_next().await.is_some() {}
    }

    /// Runs the server on the current runtime and returns a handle that stops it when dropped.
    pub fn spawn(self) -> ServerHandle {
        let addrs = self.local_addrs();
        let stats = self.stats();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(self.run_until(async move {
            let _ = rx.await;
        }));
        ServerHandle { addrs, stats, stop: Some(tx), task }
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
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
            warn!(client.addr = %peer, "connection limit reached; closing new connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let span = info_span!("conn", client.addr = %peer, conn.id = id);
        let shared = shared.clone();
        connections.spawn(
            async move {
                Stats::incr(&shared.stats.connections_open);
                info!("accepted");
                let (read, write) = stream.into_split();
                ClientConnection::new(id, shared.clone(), read, write).serve().await;
                shared.stats.connections_open.fetch_sub(1, Ordering::Relaxed);
                drop(permit);
            }
            .instrument(span),
        );
    }
    connections.shutdown().await;
}

/// A running server. Dropping it stops the server.
pub struct ServerHandle {
    addrs: Vec<SocketAddr>,
    stats: Arc<Stats>,
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

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Stops accepting, closes connections, and waits for the server task.
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
