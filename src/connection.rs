//! One client connection: read a frame, decide, answer locally or relay, reply in the client's framing.
//!
//! Owns the per-connection state: the tenant (once known), the SASL conversation and reply ids; a backend
//! connection is checked out of the tenant's backend pool for each forwarded command. It must never forward a
//! frame it has not parsed, never use a backend connection before the tenant is known, never reveal backend
//! details in a reply, and never let one client's failure reach another: every error ends in a MongoDB-shaped
//! reply to this client or in closing it.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bson::{rawdoc, RawDocument, RawDocumentBuf};
use bytes::{Buf, Bytes};
use tenantwall_protocol::compression::{compress_frame, compressed_prefix};
use tenantwall_protocol::{
    decode_limited, Compressor, Decoded, Message, MsgFlags, MsgHeader, OpCode, OpMsg, OpQuery, OpReply, ProtocolError,
};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::admission::{Admitted, Verdict};
use crate::backend::{BackendConn, BoxStream};
use crate::codec::{self, FrameReader, ReadError};
use crate::command::Command;
use crate::engine::decide::{prepare_forward, Decision, Local};
use crate::engine::reply;
use crate::engine::ReplyPlan;
use crate::error::{error_document, ErrorCode, ProxyError, Side};
use crate::handshake::{build_info_reply, hello_reply, negotiate_compression, HelloContext};
use crate::policy::{Policy, Tenant};
use crate::pool::Pooled;
use crate::sasl::{self, Outcome, SaslState};
use crate::server::{Generation, Shared};
use crate::session;
use crate::stats::Stats;

mod deadline;
mod observe;
mod woken;

use crate::timer::LazyTimer;
use deadline::BackendDeadline;

/// A forwarded command after cursor ownership was checked.
struct BoundCursors {
    forward: OpMsg,
    reply_plan: ReplyPlan,
    get_more: Option<(i64, Arc<session::CursorPlan>)>,
    /// killCursors ids the tenant owns: released once the backend answered.
    killed: Vec<i64>,
    not_found: Vec<i64>,
}

/// What to do with the replies of one forwarded command.
struct ReplyPost {
    plan: ReplyPlan,
    /// The cursor a getMore continued (released when the reply says it is exhausted), with its plan.
    get_more: Option<(i64, Arc<session::CursorPlan>)>,
    /// killCursors ids the tenant does not own: reported as not found, like ids that do not exist.
    not_found: Vec<i64>,
    tenant: Arc<Tenant>,
    policy: Arc<Policy>,
}

/// How [`ClientConnection::write_now`] left a reply.
enum Written {
    /// Written whole (or failed): the id it was sent with.
    Done(std::io::Result<i32>),
    /// What the client's socket did not take at once (`rest`, after the `sent` bytes it took), for
    /// [`ClientConnection::write_rest`].
    Rest { id: i32, rest: bytes::buf::Chain<Bytes, Bytes>, sent: usize },
}

/// A frame as [`ClientConnection::arrive`] left it.
enum Arrival {
    /// A command to handle.
    Msg(Incoming),
    /// A compressed or heavy message, for [`ClientConnection::settle`] to inflate or decode.
    Wait { header: MsgHeader, frame: Bytes, started: Instant },
    /// A legacy query to serve, with the buffer budget it holds when it arrived compressed.
    Query(Arc<Generation>, MsgHeader, OpQuery, Option<OwnedSemaphorePermit>),
    /// A frame that did not parse, to answer or close on.
    Refused(MsgHeader, ProtocolError),
    /// Nothing more to do with the frame.
    Done(Flow),
}

/// A command as it arrived, with the generation it is decided with.
struct Incoming {
    generation: Arc<Generation>,
    header: MsgHeader,
    msg: OpMsg,
    command: Command,
    compressor: Option<Compressor>,
    started: Instant,
    /// The buffer budget an inflated message holds until its command is done.
    _budget: Option<OwnedSemaphorePermit>,
}

/// Messages (as received or once inflated) at least this large are decoded off the async workers.
const HEAVY_MESSAGE: usize = 256 * 1024;

/// Runs one backend operation (an expression yielding `Result<_, E>` with `E: From<ProxyError>`) until the
/// [`BackendDeadline`] `$deadline` passes, as the connection's kept [`LazyTimer`] `$timer` tells. The operation is
/// polled first, so one that is ready at once never touches the timer. A macro rather than a function taking
/// the operation: the operation's future (a checkout's is most of a kilobyte) is built where it is polled
/// instead of being moved into a wrapper future and again into a `Timeout`.
macro_rules! within {
    ($timer:expr, $deadline:expr, $op:expr) => {
        tokio::select! {
            biased;
            result = $op => result,
            // Outside the task's cooperative budget, as `Timeout` polls its own timer: an operation that used
            // the budget up (many ready reads of a large reply) must not keep an elapsed timer from firing.
            expired = tokio::task::unconstrained(std::future::poll_fn(|cx| deadline::poll_expired(&mut $timer, cx, &$deadline))) => {
                Err(expired.into())
            }
        }
    };
}

/// What the server told a connection between two of its commands.
enum Control {
    /// The policy was reloaded.
    Reloaded,
    /// The server drains.
    Draining,
    /// The server is gone.
    Closed,
}

/// The next of the server's events for a connection, handing its receivers back for the next wait; the drain
/// is waited for only until the connection knows of it.
async fn next_control(
    mut generations: watch::Receiver<u64>,
    mut drain: watch::Receiver<bool>,
    draining: bool,
) -> (Control, watch::Receiver<u64>, watch::Receiver<bool>) {
    let event = tokio::select! {
        biased;
        changed = generations.changed() => if changed.is_ok() { Control::Reloaded } else { Control::Closed },
        _ = drain.wait_for(|d| *d), if !draining => Control::Draining,
    };
    (event, generations, drain)
}

/// A connection to the tenant's backend from its pool. A backend that restarted closed its idle connections;
/// they are found there, before a command is lost on one.
async fn checkout(
    shared: &Shared,
    generation: &Generation,
    tenant: &Tenant,
) -> Result<Pooled<BackendConn>, ProxyError> {
    let target = target(generation, tenant)?;
    let limits = &generation.policy.limits;
    let checked_out = target.checkout(&tenant.id, limits.pool_wait_timeout(), limits.backend_connect_timeout()).await;
    if let Err(ProxyError::PoolTimeout { .. }) = &checked_out {
        shared.metrics.pool_timeout(&tenant.backend);
    }
    checked_out
}

/// The tenant's backend in `generation`.
fn target<'a>(generation: &'a Generation, tenant: &Tenant) -> Result<&'a crate::backend::BackendTarget, ProxyError> {
    generation
        .backends
        .get(&tenant.backend)
        .map(|target| &**target)
        .ok_or_else(|| ProxyError::Internal { detail: format!("tenant {} has no backend", tenant.id) })
}

/// The connection inside a checkout (always there until it is released or dropped).
fn connection(pooled: &mut Pooled<BackendConn>) -> Result<&mut BackendConn, ProxyError> {
    pooled.get().ok_or_else(|| ProxyError::Internal { detail: "backend connection missing".into() })
}

/// Whether the connection goes on after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

/// A client connection and its state.
pub struct ClientConnection {
    id: u64,
    shared: Arc<Shared>,
    /// The client's stream: frames are read through it and replies written to it (`get_mut`). Reads and
    /// writes take turns within this one task, so the stream needs no split (and no split's lock).
    stream: FrameReader<BoxStream>,
    /// Tenant named by the listener, SNI or certificate; SCRAM must agree with it.
    claimed: Option<String>,
    /// The tenant, once identified (by claim or SCRAM).
    tenant: Option<Arc<Tenant>>,
    /// The generation whose policy `tenant` was last read from: a command in the same generation finds the
    /// same tenant there, so it is looked up again only after a reload.
    tenant_read_in: Option<u64>,
    /// The policy generation this connection last read, brought up to date ([`Shared::refresh`]) where a command
    /// needs the current one.
    generation: Arc<Generation>,
    sasl: SaslState,
    authenticated_user: Option<String>,
    next_reply_id: i32,
    /// The listener's replica-set face, if it has one.
    face: Option<crate::handshake::ReplicaSetFace>,
    /// A write to the client failed or timed out: the stream may hold half a frame, nothing more may follow.
    write_failed: bool,
    peer: IpAddr,
    /// Connection slots; the unauthenticated one is given back once the tenant is known.
    admitted: Admitted,
    /// Authentication from this source or as this user is refused for now: hello gets no speculative step.
    skip_speculative: bool,
    /// This connection's handles on its tenant's metrics (`-` until the tenant is known).
    usage: crate::admin::metrics::TenantMetrics,
    /// What was seen of the command in flight, for metrics.
    observed: observe::Observed,
    /// The timer for backend deadlines, kept from one forwarded command to the next (made at the first).
    backend_timer: Option<LazyTimer>,
    /// The tenant's gate, kept from its first forwarded command on.
    gate: Option<crate::gate::TenantEntry>,
    /// The timer for waits at the tenant's in-flight cap, kept from one wait to the next (made at the first).
    /// Not `backend_timer`: a cap wait is due sooner than a backend reply, so sharing one timer would arm it
    /// anew for every wait.
    gate_timer: Option<LazyTimer>,
    /// Counts this connection among its worker's working ones from its first forwarded command on, which steers
    /// where new connections go ([`crate::workers`]).
    working: Option<crate::workers::Working>,
}

impl ClientConnection {
    pub(crate) fn new(
        id: u64,
        shared: Arc<Shared>,
        stream: BoxStream,
        claimed: Option<String>,
        peer: IpAddr,
        mut admitted: Admitted,
    ) -> Self {
        let generation = shared.current();
        let limits = &generation.policy.limits;
        let tenant = claimed.as_deref().and_then(|t| generation.policy.tenant(t)).cloned();
        let stream = FrameReader::new(stream, limits.message_limit(tenant.is_some()), Some(limits.frame_timeout()))
            .with_budget(shared.budget.clone());
        if let Some(t) = &tenant {
            tracing::Span::current().record("tenant", t.id.as_str());
            admitted.unauthenticated = None;
        }
        let usage = shared.metrics.connection(crate::admin::metrics::NO_TENANT);
        Self {
            id,
            shared,
            stream,
            claimed,
            tenant_read_in: tenant.as_ref().map(|_| generation.number),
            tenant,
            generation: generation.clone(),
            sasl: SaslState::default(),
            authenticated_user: None,
            next_reply_id: 1,
            face: None,
            write_failed: false,
            peer,
            admitted,
            skip_speculative: false,
            usage,
            observed: observe::Observed::default(),
            backend_timer: None,
            gate: None,
            gate_timer: None,
            working: None,
        }
    }

    /// Presents the proxy on this connection as the listener's replica set (see [`crate::handshake`]).
    pub(crate) fn with_face(mut self, face: Option<crate::handshake::ReplicaSetFace>) -> Self {
        self.face = face;
        self
    }

    /// Serves the connection until the client leaves, breaks the protocol, fails to identify in time, its
    /// tenant is removed from the policy, or a write fails.
    pub async fn serve(mut self) {
        if self.claimed.is_some() && self.tenant.is_none() {
            info!("claimed tenant is not in the policy; closing");
            return;
        }
        if let Some(tenant) = self.tenant.clone() {
            if !self.claim_tenant_slot(&tenant) {
                return;
            }
        }
        // The server's own events (a reload, the drain) and the authentication deadline are futures that live
        // across commands: made anew on each pass through the select below, each would register with its
        // channel or the timer wheel and deregister again for every command.
        let drain = self.shared.draining();
        // Polled only once the channels woke it: a wait with nothing new would still lock each channel's
        // list of waiters at every pass.
        let mut control = woken::Woken::new(next_control(self.shared.subscribe(), drain.clone(), false));
        let mut draining = false;
        let auth_deadline =
            tokio::time::sleep_until(Instant::now() + self.shared.current().policy.limits.auth_timeout());
        tokio::pin!(auth_deadline);
        loop {
            {
                // Limits follow reloads, and the pre-authentication cap lifts once the tenant is known.
                self.shared.refresh(&mut self.generation);
                let limits = &self.generation.policy.limits;
                self.stream.set_max_len(limits.message_limit(self.tenant.is_some()));
                self.stream.set_frame_timeout(Some(limits.frame_timeout()));
            }
            // Polled in this order, the reader last: a client that always has a frame queued must not keep
            // the authentication deadline or the server's events from being seen (that would let a client that
            // never authenticates outlive `auth_timeout` by flooding pings).
            let next = tokio::select! {
                biased;
                _ = &mut auth_deadline, if self.tenant.is_none() => {
                    info!("no tenant identified in time; closing");
                    break;
                }
                (event, generations, drain) = &mut control => {
                    match event {
                        Control::Closed => break,
                        Control::Reloaded => {
                            if !self.refresh_tenant(&self.shared.current()) {
                                break;
                            }
                        }
                        Control::Draining => {
                            // Idle: close now. A message already arriving is read, answered, and then the
                            // connection ends.
                            draining = true;
                            if !self.stream.in_message() {
                                debug!("server draining; closing idle connection");
                                break;
                            }
                        }
                    }
                    control.set(next_control(generations, drain, draining));
                    continue;
                }
                next = self.stream.next_frame() => next,
            };
            let frame = match next {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    if matches!(e, ReadError::Io(_)) {
                        debug!(error = %e, "closing connection");
                    } else {
                        // Oversized or stalled frames: what a flood sends, so logged once per window.
                        Stats::incr(&self.shared.stats.protocol_errors);
                        self.shared.admission.log_refused_frame(self.peer, &"-", &e);
                        // Waiting for the shared buffer budget is the server's pressure, not the client's doing.
                        if !matches!(e, ReadError::Budget(_)) {
                            self.count_violation();
                        }
                    }
                    break;
                }
            };
            let incoming = match self.arrive(frame) {
                Arrival::Msg(incoming) => Ok(incoming),
                other => self.settle(other).await,
            };
            let handled = match incoming {
                // Awaited here rather than inside a frame-handling future: see `arrive`.
                Ok(Incoming { generation, header, msg, command, compressor, started, _budget }) => {
                    let flow = self.handle_msg(&generation, header, msg, command, compressor).await;
                    self.done(command, started);
                    flow
                }
                Err(handled) => handled,
            };
            if self.tenant.is_some() {
                self.admitted.unauthenticated = None;
            }
            match handled {
                Ok(Flow::Continue) if draining || *drain.borrow() => {
                    debug!("server draining; closing after the command in flight");
                    break;
                }
                Ok(Flow::Continue) => {}
                Ok(Flow::Close) => break,
                Err(e) => {
                    debug!(error = %e, "client write failed");
                    break;
                }
            }
        }
        if !self.write_failed {
            // A TLS close_notify is a write too: bounded like every other.
            let limit = self.shared.current().policy.limits.client_write_timeout();
            let _ = tokio::time::timeout(limit, self.stream.get_mut().shutdown()).await;
        }
        debug!("connection closed");
    }

    /// Re-reads the tenant from `generation`. False when the tenant was removed: the connection must end.
    fn refresh_tenant(&mut self, generation: &Generation) -> bool {
        let Some(current) = &self.tenant else { return true };
        if self.tenant_read_in == Some(generation.number) {
            return true;
        }
        match generation.policy.tenant(&current.id) {
            None => {
                info!(tenant = %current.id, "tenant removed from the policy; closing");
                false
            }
            Some(fresh) => {
                // A tenant moved to another backend reaches it from its next command: connections are checked
                // out per command from the pool of the tenant's backend in the current generation.
                self.tenant = Some(fresh.clone());
                self.tenant_read_in = Some(generation.number);
                true
            }
        }
    }

    /// A frame's first steps, taken without waiting: counted, and an uncompressed message of ordinary size (nearly
    /// every one) decoded and read as a command. What has to wait (inflating a compressed message, decoding a heavy
    /// one off the workers, answering a frame that did not parse) is left to [`Self::settle`]. Kept apart from it
    /// so that the common command awaits no frame-handling future: an awaited future is built and then moved into
    /// its caller's state, kilobytes for each level of the command's path.
    fn arrive(&mut self, frame: Bytes) -> Arrival {
        // check_frame guaranteed at least a whole header.
        let Ok(header) = MsgHeader::read(&frame) else { return Arrival::Done(Flow::Close) };
        let started = Instant::now();
        self.usage.bytes_received.inc_by(frame.len() as u64);
        self.shared.refresh(&mut self.generation);
        if header.op_code == OpCode::COMPRESSED || frame.len() >= HEAVY_MESSAGE {
            return Arrival::Wait { header, frame, started };
        }
        let limit = self.generation.policy.limits.message_limit(self.tenant.is_some());
        match decode_limited(frame, limit) {
            Ok(decoded) => self.decoded(decoded, started, None),
            Err(e) => Arrival::Refused(header, e),
        }
    }

    /// A decoded message, with the generation it is decided with and the tenant read again from it. `budget` is
    /// what the inflated message holds of the buffer budget, until its command is done.
    fn decoded(&mut self, decoded: Decoded, started: Instant, budget: Option<OwnedSemaphorePermit>) -> Arrival {
        if let Some(compressor) = decoded.compressor {
            self.shared.stats.count_compressed(compressor);
        }
        // Decoding a heavy message waits: what it is decided with is read again.
        self.shared.refresh(&mut self.generation);
        let generation = self.generation.clone();
        if !self.refresh_tenant(&generation) {
            return Arrival::Done(Flow::Close);
        }
        let header = decoded.header;
        match decoded.message {
            Message::Msg(msg) => {
                let command = Command::of(&msg);
                let compressor = decoded.compressor;
                Arrival::Msg(Incoming { generation, header, msg, command, compressor, started, _budget: budget })
            }
            Message::Query(query) => Arrival::Query(generation, header, query, budget),
            Message::Reply(_) => {
                warn!("client sent OP_REPLY");
                Arrival::Done(Flow::Close)
            }
        }
    }

    /// What [`Self::arrive`] left: inflates or decodes a message where that waits, answers a frame that did not
    /// parse, serves a legacy query. The command a message carries is returned, to be handled as any other.
    async fn settle(&mut self, arrival: Arrival) -> Result<Incoming, std::io::Result<Flow>> {
        let (header, frame, started) = match arrival {
            Arrival::Msg(incoming) => return Ok(incoming),
            Arrival::Wait { header, frame, started } => (header, frame, started),
            Arrival::Query(generation, header, query, _budget) => {
                return Err(self.handle_query(&generation, header, query).await)
            }
            Arrival::Refused(header, e) => return Err(self.refuse_frame(header, e).await),
            Arrival::Done(flow) => return Err(Ok(flow)),
        };
        let generation = self.generation.clone();
        let limits = &generation.policy.limits;
        let limit = limits.message_limit(self.tenant.is_some());
        // The inflated message is paid for out of the buffer budget before it exists, like a received frame.
        let mut work = frame.len();
        let inflated = match header.op_code {
            OpCode::COMPRESSED => match compressed_prefix(&frame, limit) {
                Ok(prefix) => {
                    work = work.max(prefix.message_len);
                    let paid =
                        tokio::time::timeout(limits.frame_timeout(), self.shared.budget.acquire(prefix.message_len));
                    match paid.await {
                        Ok(Ok(permit)) => permit,
                        _ => {
                            info!(
                                len = prefix.message_len,
                                "no buffer budget to decompress the message in time; closing"
                            );
                            return Err(Ok(Flow::Close));
                        }
                    }
                }
                Err(e) => return Err(self.refuse_frame(header, e).await),
            },
            _ => None,
        };
        let decoded = if work < HEAVY_MESSAGE {
            decode_limited(frame, limit)
        } else {
            // Inflating and validating megabytes takes milliseconds of CPU: do it on the blocking pool, a few at
            // a time, so the async workers keep serving every other connection meanwhile.
            let Ok(permit) = self.shared.heavy.clone().acquire_owned().await else { return Err(Ok(Flow::Close)) };
            let job = tokio::task::spawn_blocking(move || {
                let decoded = decode_limited(frame, limit);
                drop(permit);
                decoded
            });
            job.await.unwrap_or(Err(ProtocolError::Malformed("message could not be decoded")))
        };
        match decoded {
            Ok(decoded) => match self.decoded(decoded, started, inflated) {
                Arrival::Msg(incoming) => Ok(incoming),
                Arrival::Query(generation, header, query, _budget) => {
                    Err(self.handle_query(&generation, header, query).await)
                }
                _ => Err(Ok(Flow::Close)),
            },
            Err(e) => Err(self.refuse_frame(header, e).await),
        }
    }

    /// Counts a refused frame against the source while the connection has no tenant: repeated ones hold the
    /// source's next connections at accept. A tenant's own client is not a stranger flooding the listener.
    fn count_violation(&self) {
        if self.tenant.is_none() {
            self.shared.admission.violation(self.peer, &self.shared.current().policy.limits);
        }
    }

    /// A frame that did not parse: reply like a server would, or close when the stream cannot be trusted.
    async fn refuse_frame(&mut self, header: MsgHeader, error: ProtocolError) -> std::io::Result<Flow> {
        Stats::incr(&self.shared.stats.protocol_errors);
        self.shared.admission.log_refused_frame(self.peer, &header.op_code, &error);
        self.count_violation();
        match error {
            ProtocolError::UnsupportedOpCode(op) if OpCode(op) == OpCode::GET_MORE => {
                self.legacy_failure(header.request_id).await?;
                Ok(Flow::Continue)
            }
            // Legacy fire-and-forget writes have no reply to carry an error, and unknown opcodes no framing.
            ProtocolError::UnsupportedOpCode(_) => Ok(Flow::Close),
            e if e.closes_connection() => Ok(Flow::Close),
            e => {
                let doc = ProxyError::from(e).reply_document();
                if header.op_code == OpCode::QUERY {
                    self.write_reply(header.request_id, OpReply::single(doc)).await?;
                } else {
                    self.write_doc(doc, header.request_id, None).await?;
                }
                Ok(Flow::Continue)
            }
        }
    }

    async fn handle_msg(
        &mut self,
        generation: &Generation,
        header: MsgHeader,
        msg: OpMsg,
        command: Command,
        compressor: Option<Compressor>,
    ) -> std::io::Result<Flow> {
        Stats::incr(&self.shared.stats.commands);
        // For the logs only (`command` is what was made of it): read where a log line is written, which most
        // commands never reach.
        let name = || msg.command_name().unwrap_or_default();
        debug!(command = %name(), compressor = compressor.map(Compressor::name), more_to_come = msg.flags.more_to_come(), "command");
        let respond = !msg.flags.more_to_come();
        // Waits here while the tenant is held for a move, before the command is decided, so that it is decided
        // with the policy the move switched to.
        let cap_wait = generation.policy.limits.pool_wait_timeout();
        let entry = gate_entry(&self.shared, &mut self.gate, self.tenant.as_deref(), command);
        if entry.is_some() && self.working.is_none() {
            // Its first forwarded command: from now on the connection counts as work on its worker.
            self.working = crate::workers::working_here();
        }
        let passed = match entry {
            None => Ok(None),
            // Passed at once (nearly every command) without building the gate's future.
            Some((entry, cap)) => match entry.try_enter(cap) {
                Some(in_flight) => Ok(Some(in_flight)),
                None => entry.enter(cap, cap_wait, &mut self.gate_timer).await.map(Some),
            },
        };
        let in_flight = match passed {
            Ok(in_flight) => in_flight,
            Err(refusal) => {
                if respond {
                    self.write_doc(refusal, header.request_id, compressor).await?;
                }
                return Ok(Flow::Continue);
            }
        };
        // Whatever held it up (a hold, the in-flight cap), the command is decided with the policy in force now:
        // even one that did not wait, as a whole move (hold, drain, switch, release) may have happened since the
        // generation was read. `fresh` is the newer generation when there is one.
        let fresh = match in_flight {
            Some(_) => {
                self.shared.refresh(&mut self.generation);
                (self.generation.number != generation.number).then(|| self.generation.clone())
            }
            None => None,
        };
        if fresh.as_ref().is_some_and(|fresh| !self.refresh_tenant(fresh)) {
            return Ok(Flow::Close);
        }
        // A transaction statement held across a switch of the tenant's placement must not go on there.
        let waited = in_flight.as_ref().is_some_and(|guard| guard.waited);
        if waited && fresh.is_some() {
            if let Some(refusal) = crate::gate::interrupted_transaction(msg.body()) {
                if respond {
                    self.write_doc(refusal, header.request_id, compressor).await?;
                }
                return Ok(Flow::Continue);
            }
        }
        let generation = fresh.as_deref().unwrap_or(generation);
        let decision = prepare_forward(&msg, command, self.tenant.as_deref(), &generation.policy);
        if let Some(refusal) = self.decided(generation, &decision, command, msg.body(), header.request_id) {
            if respond {
                self.write_doc(refusal, header.request_id, compressor).await?;
            }
            return Ok(Flow::Continue);
        }
        match decision {
            Decision::Local(local) => {
                if let Some(refusal) = self.throttle_authentication(generation, local, msg.body()).await {
                    if respond {
                        self.write_doc(refusal, header.request_id, compressor).await?;
                    }
                    return Ok(Flow::Continue);
                }
                let (reply, flow) = self.local(generation, local, msg.body(), command);
                if respond {
                    self.write_doc(reply, header.request_id, compressor).await?;
                }
                Ok(flow)
            }
            Decision::Deny(denial) => {
                Stats::incr(&self.shared.stats.denied);
                let error = ProxyError::from(denial);
                let tenant = self.tenant.as_ref().map_or("-", |t| t.id.as_str());
                info!(target: "tenantwall::audit", tenant, command = %name(), reason = %error, "denied");
                if respond {
                    self.write_doc(error.reply_document(), header.request_id, compressor).await?;
                }
                Ok(Flow::Continue)
            }
            Decision::Forward(plan) => {
                let Some(tenant) = self.tenant.clone() else { return Ok(Flow::Close) };
                for note in &plan.audit {
                    info!(target: "tenantwall::audit", tenant = %tenant.id, command = %name(), note = %note, "audit");
                }
                let bound = match self.bind_cursors(command, &tenant, plan.forward.unwrap_or(msg), plan.reply) {
                    Ok(bound) => bound,
                    Err(answer) => {
                        if respond {
                            self.write_doc(answer, header.request_id, compressor).await?;
                        }
                        return Ok(Flow::Continue);
                    }
                };
                let (forward, killed) = (bound.forward, bound.killed);
                let post = ReplyPost {
                    plan: bound.reply_plan,
                    get_more: bound.get_more,
                    not_found: bound.not_found,
                    tenant: tenant.clone(),
                    policy: generation.policy.clone(),
                };
                match self.relay(generation, header.request_id, forward, compressor, &post).await {
                    Ok(()) => {
                        for id in killed {
                            self.shared.cursors.release(&tenant.backend, id);
                        }
                    }
                    Err(_) if self.write_failed => {
                        return Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client write failed"));
                    }
                    Err(error) => {
                        self.report(&error);
                        if respond {
                            self.write_doc(error.reply_document(), header.request_id, compressor).await?;
                        }
                    }
                }
                Ok(Flow::Continue)
            }
        }
    }

    /// Cursor ownership for getMore and killCursors: the command to send and how its replies are treated, or
    /// the answer to give instead. A cursor the tenant does not own gets the answer of one that does not exist;
    /// every reply of a cursor follows the plan of the command that opened it, and a getMore must name the
    /// cursor's namespace, as mongod requires.
    fn bind_cursors(
        &self,
        command: Command,
        tenant: &Tenant,
        mut forward: OpMsg,
        reply_plan: ReplyPlan,
    ) -> Result<BoundCursors, RawDocumentBuf> {
        let (mut reply_plan, mut get_more, mut killed, mut not_found) = (reply_plan, None, Vec::new(), Vec::new());
        match command {
            Command::GetMore => {
                let id = forward.body().get_i64("getMore").unwrap_or(0);
                let Some(cursor) = self.shared.cursors.plan(&tenant.backend, id, &tenant.id) else {
                    info!(target: "tenantwall::audit", tenant = %tenant.id, cursor = id, "getMore on a cursor the tenant does not own");
                    return Err(error_document(ErrorCode::CURSOR_NOT_FOUND, &format!("cursor id {id} not found")));
                };
                session::get_more_namespace(forward.body(), &cursor)
                    .map_err(|message| error_document(ErrorCode::UNAUTHORIZED, &message))?;
                reply_plan = cursor.reply.clone();
                get_more = Some((id, cursor));
            }
            Command::KillCursors => {
                let ids = session::kill_cursor_ids(forward.body());
                let (owned, foreign): (Vec<i64>, Vec<i64>) =
                    ids.iter().partition(|id| self.shared.cursors.owned(&tenant.backend, **id, &tenant.id));
                if owned.is_empty() {
                    return Err(session::cursors_not_found(&foreign));
                }
                if !foreign.is_empty() {
                    let body = session::kill_cursors_with(forward.body(), &owned);
                    forward = OpMsg::with_sequences(forward.flags, body, forward.sequences().to_vec());
                }
                killed = owned;
                not_found = foreign;
            }
            _ => {}
        }
        Ok(BoundCursors { forward, reply_plan, get_more, killed, not_found })
    }

    /// Applies failure throttling to an authentication attempt (saslStart, or a hello carrying a speculative
    /// one): waits as long as the source's and user's recent failures require, or returns the refusal to send
    /// without running SCRAM.
    async fn throttle_authentication(
        &mut self,
        generation: &Generation,
        local: Local,
        body: &RawDocument,
    ) -> Option<RawDocumentBuf> {
        if self.authenticated_user.is_some() {
            return None;
        }
        let attempt = match local {
            Local::SaslStart => body,
            Local::Hello => body.get_document("speculativeAuthenticate").ok()?,
            _ => return None,
        };
        let user = sasl::username_of(attempt);
        let limits = &generation.policy.limits;
        match self.shared.admission.auth.check(self.peer, user.as_deref(), limits) {
            Verdict::Allow => None,
            Verdict::Delay(delay) => {
                tokio::time::sleep(delay).await;
                None
            }
            Verdict::Refuse if local == Local::Hello => {
                self.skip_speculative = true;
                None
            }
            Verdict::Refuse => {
                debug!("authentication attempt refused: too many recent failures");
                Some(error_document(ErrorCode::AUTHENTICATION_FAILED, "Authentication failed."))
            }
        }
    }

    /// Answers a command the proxy serves itself.
    fn local(
        &mut self,
        generation: &Generation,
        local: Local,
        body: &RawDocument,
        command: Command,
    ) -> (RawDocumentBuf, Flow) {
        match local {
            Local::Hello => (self.hello(generation, body, command), Flow::Continue),
            Local::Ping | Local::EndSessions => (rawdoc! { "ok": 1.0 }, Flow::Continue),
            Local::BuildInfo => (build_info_reply(generation.max_wire_version(None)), Flow::Continue),
            Local::Tool(tool) => {
                let user = self.authenticated_user.as_deref().or(self.tenant.as_deref().map(|t| t.id.as_str()));
                (crate::engine::tools::answer(tool, user), Flow::Continue)
            }
            Local::SaslStart if self.authenticated_user.is_some() => {
                let reply = error_document(ErrorCode::UNAUTHORIZED, "this connection is already authenticated");
                (reply, Flow::Continue)
            }
            Local::SaslStart => {
                let outcome = self.sasl.start(body, &generation.policy);
                self.sasl_outcome(generation, outcome)
            }
            Local::SaslContinue => {
                let outcome = self.sasl.next(body);
                self.sasl_outcome(generation, outcome)
            }
        }
    }

    fn sasl_outcome(&mut self, generation: &Generation, outcome: Outcome) -> (RawDocumentBuf, Flow) {
        match outcome {
            Outcome::Continue(reply) => (reply, Flow::Continue),
            Outcome::Failed { reply, close } => {
                info!("authentication failed");
                if reply.get_i32("code").is_ok_and(|code| code == ErrorCode::AUTHENTICATION_FAILED.code) {
                    self.shared.metrics.auth_failure();
                    self.shared.admission.auth.failed(self.peer, self.sasl.attempted_user(), &generation.policy.limits);
                }
                (reply, if close { Flow::Close } else { Flow::Continue })
            }
            Outcome::Authenticated { reply, user, tenant } => {
                let agrees = self.claimed.as_ref().is_none_or(|claimed| *claimed == tenant);
                match generation.policy.tenant(&tenant) {
                    Some(t) if agrees && !self.claim_tenant_slot(t) => {
                        (crate::ratelimit::connection_refusal(&tenant), Flow::Close)
                    }
                    Some(t) if agrees => {
                        info!(user = %user, tenant = %tenant, "authenticated");
                        self.shared.admission.auth.succeeded(&user);
                        tracing::Span::current().record("tenant", tenant.as_str());
                        self.tenant = Some(t.clone());
                        self.tenant_read_in = Some(generation.number);
                        self.authenticated_user = Some(user);
                        (reply, Flow::Continue)
                    }
                    _ => {
                        warn!(user = %user, tenant = %tenant, claimed = ?self.claimed, "credentials name another tenant than the connection; closing");
                        (error_document(ErrorCode::AUTHENTICATION_FAILED, "Authentication failed."), Flow::Close)
                    }
                }
            }
        }
    }

    /// The proxy's hello, with speculative authentication and mechanism negotiation.
    fn hello(&mut self, generation: &Generation, request: &RawDocument, command: Command) -> RawDocumentBuf {
        let compression = negotiate_compression(request);
        let ctx = HelloContext {
            connection_id: i64::try_from(self.id).unwrap_or(i64::MAX),
            max_wire_version: generation.max_wire_version(self.tenant.as_ref().map(|t| t.backend.as_str())),
            face: self.face.as_ref(),
        };
        let mut reply = hello_reply(request, command, &compression, ctx);
        if request.get("saslSupportedMechs").ok().flatten().is_some() {
            // The same answer for every user name, so hello cannot be used to find out which users exist.
            let mut mechs = bson::RawArrayBuf::new();
            mechs.push(sasl::MECHANISM);
            reply.append(bson::cstr!("saslSupportedMechs"), mechs);
        }
        if let Ok(speculative) = request.get_document("speculativeAuthenticate") {
            if self.authenticated_user.is_none() && !std::mem::take(&mut self.skip_speculative) {
                let outcome = self.sasl.start(speculative, &generation.policy);
                if let Some(doc) = sasl::speculative_reply(&outcome) {
                    reply.append(bson::cstr!("speculativeAuthenticate"), doc);
                }
            }
        }
        reply
    }

    /// Forwards `msg` to the tenant's backend on a pooled connection and relays its replies, applying `post` to
    /// each. The connection is given back to the pool as soon as the last reply is read, before the client is
    /// written to, so a client that reads slowly holds no backend connection.
    async fn relay(
        &mut self,
        generation: &Generation,
        client_request_id: i32,
        mut forward: OpMsg,
        compressor: Option<Compressor>,
        post: &ReplyPost,
    ) -> Result<(), ProxyError> {
        let Some(tenant) = self.tenant.clone() else {
            return Err(ProxyError::Internal { detail: "relay without a tenant".into() });
        };
        // The checksum was verified on the way in and the backend link is the proxy's own. exhaustAllowed is
        // dropped so every reply is solicited: the proxy inspects each batch, and a server may always ignore it.
        // moreToCome is dropped too, as mongos does for w:0 writes: the backend answers, the proxy reads and
        // discards that answer, so the exchange ends with one reply and the pooled connection is in lock-step.
        let strip = MsgFlags::CHECKSUM_PRESENT | MsgFlags::EXHAUST_ALLOWED | MsgFlags::MORE_TO_COME;
        let more_to_come = forward.flags.more_to_come();
        forward.flags = forward.flags.without(strip);
        // The deadline covers the wait for a pooled connection and opening one too: like mongos, a command's
        // maxTimeMS is the whole operation as the client sees it.
        let deadline = BackendDeadline::for_command(&generation.policy.limits, forward.body_fields());
        // Taken for the command and put back after it, so that it is not borrowed from `self` meanwhile; a
        // command that ends early (an error) leaves the next one to make a new timer.
        let mut timer = match self.backend_timer.take() {
            Some(mut timer) => {
                timer.arm(deadline.at);
                timer
            }
            None => LazyTimer::new(deadline.at),
        };
        // An idle connection of this worker is taken at once (nearly always), without building the checkout's
        // future; otherwise the checkout waits, within the deadline.
        let mut pooled = match target(generation, &tenant)?.try_checkout() {
            Some(pooled) => pooled,
            None => within!(timer, deadline, checkout(&self.shared, generation, &tenant))?,
        };
        self.sending();
        let backend_request_id = match within!(timer, deadline, connection(&mut pooled)?.send(&forward)) {
            Ok(id) => id,
            // The connection broke before one byte of the command left: the backend never saw it, so it is
            // safe to send it once more on another connection.
            Err(failure) if failure.nothing_sent => {
                info!(detail = failure.error.log_detail(), "backend connection failed before sending; retrying once");
                drop(pooled);
                pooled = within!(timer, deadline, checkout(&self.shared, generation, &tenant))?;
                within!(timer, deadline, connection(&mut pooled)?.send(&forward))?
            }
            Err(failure) => return Err(failure.error),
        };
        if more_to_come {
            let (_, reply) = within!(timer, deadline, connection(&mut pooled)?.read_reply(backend_request_id))?;
            pooled.release();
            self.answered(&session::ReplyCursor::of(reply.body_fields()));
            if let Ok(errmsg) = reply.body().get_str("errmsg") {
                info!(errmsg, "unacknowledged command failed on the backend");
            }
            self.backend_timer = Some(timer);
            return Ok(());
        }
        let mut pooled = Some(pooled);
        let mut expect = backend_request_id;
        let mut answer_to = client_request_id;
        loop {
            let Some(conn) = pooled.as_mut() else {
                return Err(ProxyError::Internal { detail: "backend connection missing".into() });
            };
            let (reply_header, reply) = within!(timer, deadline, connection(conn)?.read_reply(expect))?;
            let cursor = session::ReplyCursor::of(reply.body_fields());
            self.answered(&cursor);
            let more = reply.flags.more_to_come();
            if !more {
                if let Some(done) = pooled.take() {
                    done.release();
                }
            }
            let reply = self.post_process(reply, post, &cursor);
            // Written at once where the client's socket takes it (see `write_now`), not through `write_msg`'s
            // future.
            let sent = match self.write_now(&reply, answer_to, compressor) {
                Written::Done(written) => written,
                Written::Rest { id, rest, sent } => self.write_rest(id, rest, sent).await,
            };
            let sent_id = sent.map_err(|e| ProxyError::Internal { detail: format!("write to client: {e}") })?;
            if !more {
                self.backend_timer = Some(timer);
                return Ok(());
            }
            expect = reply_header.request_id;
            answer_to = sent_id;
        }
    }

    /// Applies what the plan asked of the reply: cursor ownership, and withholding other tenants' values.
    fn post_process(&self, reply: OpMsg, post: &ReplyPost, cursor: &session::ReplyCursor) -> OpMsg {
        let flags = reply.flags.without(MsgFlags::CHECKSUM_PRESENT);
        let body = reply.body_fields();
        if post.plan.record_cursor {
            let tenant = &post.tenant;
            match (cursor.id, &post.get_more) {
                (Some(0), Some((requested, _))) => self.shared.cursors.release(&tenant.backend, *requested),
                (Some(0), None) | (None, _) => {}
                (Some(id), Some((_, plan))) => {
                    self.shared.cursors.record(&tenant.backend, id, &tenant.id, plan.clone())
                }
                (Some(id), None) => {
                    let plan =
                        session::CursorPlan { reply: post.plan.clone(), ns: session::reply_cursor_ns(body.doc()) };
                    self.shared.cursors.record(&tenant.backend, id, &tenant.id, Arc::new(plan));
                }
            }
        }
        if !post.not_found.is_empty() {
            if let Some(merged) = session::add_not_found(body.doc(), &post.not_found) {
                return OpMsg::with_sequences(flags, merged, reply.sequences().to_vec());
            }
        }
        if let Some(rewritten) = reply::rewrite_reply(body, &post.plan, &post.policy, &post.tenant) {
            return OpMsg::with_sequences(flags, rewritten, reply.sequences().to_vec());
        }
        let mut reply = reply;
        reply.flags = flags;
        reply
    }

    /// Legacy OP_QUERY: only the handshake on `<db>.$cmd` is served, as servers since 5.1 do.
    async fn handle_query(
        &mut self,
        generation: &Generation,
        header: MsgHeader,
        query: OpQuery,
    ) -> std::io::Result<Flow> {
        if !query.full_collection_name.ends_with(".$cmd") {
            self.legacy_failure(header.request_id).await?;
            return Ok(Flow::Continue);
        }
        let command_doc = query.command();
        let name =
            command_doc.iter_elements().next().and_then(Result::ok).map(|e| e.key().as_str()).unwrap_or_default();
        let command = Command::from_name(name);
        debug!(command = %name, "legacy command");
        let reply = if command.is_hello() {
            self.hello(generation, command_doc, command)
        } else {
            Stats::incr(&self.shared.stats.denied);
            error_document(
                ErrorCode::UNSUPPORTED_OP_QUERY_COMMAND,
                &format!("Unsupported OP_QUERY command: {name}. The client driver may require an upgrade."),
            )
        };
        self.write_reply(header.request_id, OpReply::single(reply)).await?;
        Ok(Flow::Continue)
    }

    /// The OP_REPLY a 5.1+ server sends for OP_QUERY outside `$cmd` and for OP_GET_MORE.
    async fn legacy_failure(&mut self, response_to: i32) -> std::io::Result<()> {
        let code = ErrorCode::LEGACY_OPCODE_REMOVED;
        let doc = rawdoc! {
            "$err": "Unsupported OP_QUERY command or legacy opcode: use OP_MSG",
            "code": code.code,
            "ok": 0.0,
        };
        let mut reply = OpReply::single(doc);
        reply.response_flags = OpReply::QUERY_FAILURE;
        self.write_reply(response_to, reply).await
    }

    fn report(&self, error: &ProxyError) {
        match error.side() {
            Side::Backend => {
                Stats::incr(&self.shared.stats.backend_errors);
                if let Some(tenant) = &self.tenant {
                    self.shared.metrics.backend_error(&tenant.backend);
                }
                warn!(detail = error.log_detail(), "backend failure");
            }
            Side::Internal => warn!(detail = error.log_detail(), "internal failure"),
            Side::Client => info!(error = %error, "client error"),
        }
    }

    fn reply_id(&mut self) -> i32 {
        let id = self.next_reply_id;
        self.next_reply_id = self.next_reply_id.wrapping_add(1).max(1);
        id
    }

    async fn write_doc(
        &mut self,
        doc: RawDocumentBuf,
        response_to: i32,
        compressor: Option<Compressor>,
    ) -> std::io::Result<i32> {
        self.write_msg(&OpMsg::new(MsgFlags::default(), doc), response_to, compressor).await
    }

    /// Writes an OP_MSG answering `response_to`, compressed when the request was. Returns the id it was sent with.
    async fn write_msg(
        &mut self,
        msg: &OpMsg,
        response_to: i32,
        compressor: Option<Compressor>,
    ) -> std::io::Result<i32> {
        match self.write_now(msg, response_to, compressor) {
            Written::Done(written) => written,
            Written::Rest { id, rest, sent } => self.write_rest(id, rest, sent).await,
        }
    }

    /// Starts writing an OP_MSG answering `response_to` without waiting. A reply that is only a body (nearly all)
    /// is written after its head without building a frame: a small one as one copy of both in one write
    /// ([`codec::write_small_once`], a `send` on a socket, cheaper than a vectored write), a larger one from where
    /// its body is held, in one vectored write (over plain TCP nothing is then allocated and a large batch is not
    /// copied; a TLS stream copies both into its records, as it copied the frame). The client's socket nearly
    /// always takes the whole reply at once: the write is then done here, where no future is built and moved into
    /// the caller's state; what it did not take is returned for [`Self::write_rest`], as is every other reply
    /// (compressed, with sequences).
    fn write_now(&mut self, msg: &OpMsg, response_to: i32, compressor: Option<Compressor>) -> Written {
        let id = self.reply_id();
        if compressor.is_none() && !self.write_failed {
            if let Some(head) = msg.head_before_body(id, response_to) {
                let body = msg.body_bytes();
                let len = head.len() + body.len();
                let writer = self.stream.get_mut();
                // Polled once with a waker that does nothing: when the socket cannot take it all, the rest is
                // polled again by `write_frame` with the task's own waker, which registers it then.
                let mut cx = Context::from_waker(Waker::noop());
                let sent = match codec::write_small_once(writer, &head, body) {
                    Some(Poll::Ready(Ok(taken))) if taken < len => taken,
                    Some(Poll::Ready(Ok(_))) => match std::pin::Pin::new(writer).poll_flush(&mut cx) {
                        Poll::Ready(flushed) => return Written::Done(self.written(len, flushed).map(|()| id)),
                        Poll::Pending => len,
                    },
                    Some(Poll::Ready(Err(e))) => return Written::Done(self.written(len, Err(e)).map(|()| id)),
                    Some(Poll::Pending) => 0,
                    None if writer.is_write_vectored() => {
                        let mut frame = head.as_slice().chain(body.as_ref());
                        let polled = {
                            let mut write = std::pin::pin!(async {
                                writer.write_all_buf(&mut frame).await?;
                                writer.flush().await
                            });
                            write.as_mut().poll(&mut cx)
                        };
                        match polled {
                            Poll::Ready(outcome) => return Written::Done(self.written(len, outcome).map(|()| id)),
                            Poll::Pending => len - frame.remaining(),
                        }
                    }
                    None => return Self::encode_reply(msg, id, response_to, None),
                };
                // What the socket did not take: the rest of the head, copied, and the rest of the body, a slice.
                let head_rest = Bytes::copy_from_slice(&head[sent.min(head.len())..]);
                let rest = head_rest.chain(body.slice(sent.saturating_sub(head.len())..));
                return Written::Rest { id, rest, sent };
            }
        }
        Self::encode_reply(msg, id, response_to, compressor)
    }

    /// A reply encoded as a whole frame (compressed when `compressor` says so), for [`Self::write_rest`].
    fn encode_reply(msg: &OpMsg, id: i32, response_to: i32, compressor: Option<Compressor>) -> Written {
        let frame = match msg.encode(id, response_to) {
            Ok(frame) => frame,
            Err(e) => return Written::Done(Err(std::io::Error::other(e))),
        };
        let frame = match compressor {
            Some(c) => match compress_frame(&frame, c) {
                Ok(wrapped) => wrapped,
                Err(e) => return Written::Done(Err(std::io::Error::other(e))),
            },
            None => frame,
        };
        Written::Rest { id, rest: Bytes::from(frame).chain(Bytes::new()), sent: 0 }
    }

    /// Writes what [`Self::write_now`] left, `rest`, after the `sent` bytes of the reply already written: a reply
    /// is counted in the metrics once all of it is.
    async fn write_rest(
        &mut self,
        id: i32,
        rest: bytes::buf::Chain<Bytes, Bytes>,
        sent: usize,
    ) -> std::io::Result<i32> {
        self.write_frame(rest).await?;
        self.usage.bytes_sent.inc_by(sent as u64);
        Ok(id)
    }

    /// Writes one whole frame within `limits.client_write_timeout_secs`. A client that does not read its replies
    /// in time, or whose connection failed, gets nothing more: the connection is closing.
    async fn write_frame(&mut self, mut frame: impl Buf + Send) -> std::io::Result<()> {
        if self.write_failed {
            return Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "an earlier write failed"));
        }
        let len = frame.remaining();
        let writer = self.stream.get_mut();
        // Flushed too: a TLS stream counts bytes as written once they are encrypted, and sends what its socket
        // could not take yet only when flushed (for plain TCP the flush does nothing).
        let mut write = std::pin::pin!(async move {
            writer.write_all_buf(&mut frame).await?;
            writer.flush().await
        });
        // A reply nearly always fits the socket's buffer at once: only a write that has to wait reads the clock
        // and arms the timeout.
        let outcome = match std::future::poll_fn(|cx| Poll::Ready(Future::poll(write.as_mut(), cx))).await {
            Poll::Ready(written) => written,
            Poll::Pending => {
                let limit = self.shared.current().policy.limits.client_write_timeout();
                match tokio::time::timeout(limit, write).await {
                    Ok(written) => written,
                    Err(_) => {
                        info!(timeout = ?limit, "client does not read its replies; closing");
                        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "client write timed out"))
                    }
                }
            }
        };
        self.written(len, outcome)
    }

    /// Notes how a write of `len` bytes ended: a failed one leaves the stream unusable.
    fn written(&mut self, len: usize, outcome: std::io::Result<()>) -> std::io::Result<()> {
        self.write_failed = outcome.is_err();
        if outcome.is_ok() {
            self.usage.bytes_sent.inc_by(len as u64);
        }
        outcome
    }

    async fn write_reply(&mut self, response_to: i32, reply: OpReply) -> std::io::Result<()> {
        let id = self.reply_id();
        let frame = reply.encode(id, response_to).map_err(std::io::Error::other)?;
        self.write_frame(&frame[..]).await
    }
}

/// The tenant's gate ([`crate::gate`]) a command passes, with the tenant's cap on commands in flight; the
/// guard it gives is held until the reply is written. Commands the proxy answers itself (handshake, `ping`,
/// SASL) and commands before authentication pass no gate.
fn gate_entry<'a>(
    shared: &Shared,
    kept: &'a mut Option<crate::gate::TenantEntry>,
    tenant: Option<&Tenant>,
    command: Command,
) -> Option<(&'a crate::gate::TenantEntry, Option<usize>)> {
    use crate::command::spec::Handling;
    let tenant = tenant?;
    let forwarded = command
        .spec()
        .is_some_and(|spec| matches!(spec.handling, Handling::Forwarded | Handling::LocalUntilAuthenticated));
    if !forwarded {
        return None;
    }
    // A tenant at its cap waits as long as a command may wait for a pooled connection (`cap_wait`): the cap is
    // the tenant's share of the pools, so that is what it stands for.
    if !kept.as_ref().is_some_and(|entry| entry.is_for(&tenant.id)) {
        *kept = Some(shared.gate.entry(&tenant.id));
    }
    Some((kept.as_ref()?, Some(tenant.max_in_flight)))
}
