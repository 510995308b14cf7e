//! Backend connections: connect, handshake, send one request, read its replies.
//!
//! A [`BackendTarget`] is a configured deployment and what the proxy has learnt about it (its wire version);
//! a [`BackendConn`] is one TCP connection to it, owned by exactly one client connection at a time. Replies are
//! parsed and validated like client messages before anything is relayed; a backend that sends garbage or
//! vanishes costs the client that was using it one error reply, nothing more. Error text sent to clients never
//! names a backend host.

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use bson::{rawdoc, RawBsonRef};
use tenantwall_protocol::{decode, Message, MsgFlags, MsgHeader, OpMsg, MAX_MESSAGE_SIZE};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::codec::FrameReader;
use crate::config::{BackendConfig, BackendUri};
use crate::error::ProxyError;
use crate::handshake::FALLBACK_MAX_WIRE_VERSION;

/// A configured backend deployment.
#[derive(Debug)]
pub struct BackendTarget {
    pub name: String,
    hosts: Vec<String>,
    max_wire_override: Option<i32>,
    /// Last `maxWireVersion` the backend reported; 0 until one handshake succeeded.
    observed_wire: AtomicI32,
}

impl BackendTarget {
    /// Builds a target from validated configuration.
    pub fn from_config(config: &BackendConfig) -> Result<Self, String> {
        let uri = BackendUri::parse(&config.uri)?;
        Ok(Self {
            name: config.name.clone(),
            hosts: uri.hosts,
            max_wire_override: config.max_wire_version,
            observed_wire: AtomicI32::new(0),
        })
    }

    /// The wire version to advertise: what the backend reported (or a conservative fallback before it has been
    /// reached), capped by the configured override.
    pub fn advertised_max_wire_version(&self) -> i32 {
        let observed = match self.observed_wire.load(Ordering::Relaxed) {
            0 => FALLBACK_MAX_WIRE_VERSION,
            v => v,
        };
        self.max_wire_override.map_or(observed, |cap| observed.min(cap))
    }

    /// Opens a connection and performs the handshake, trying the seed hosts in order.
    pub async fn connect(&self, timeout: Duration) -> Result<BackendConn, ProxyError> {
        let mut last = String::from("no hosts");
        for host in &self.hosts {
            match tokio::time::timeout(timeout, TcpStream::connect(host.as_str())).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    let mut conn = BackendConn::new(stream);
                    let wire = tokio::time::timeout(timeout, conn.handshake())
                        .await
                        .map_err(|_| unavailable(&self.name, host, "handshake timed out"))??;
                    self.observed_wire.store(wire, Ordering::Relaxed);
                    return Ok(conn);
                }
                Ok(Err(e)) => last = format!("{host}: {e}"),
                Err(_) => last = format!("{host}: connect timed out"),
            }
        }
        Err(ProxyError::BackendUnavailable { detail: format!("backend {}: {last}", self.name) })
    }
}

fn unavailable(backend: &str, host: &str, what: &str) -> ProxyError {
    ProxyError::BackendUnavailable { detail: format!("backend {backend} ({host}): {what}") }
}

/// One connection to a backend.
pub struct BackendConn {
    reader: FrameReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_request_id: i32,
}

impl BackendConn {
    fn new(stream: TcpStream) -> Self {
        let (read, write) = stream.into_split();
        Self { reader: FrameReader::new(read, MAX_MESSAGE_SIZE, None), writer: write, next_request_id: 1 }
    }

    /// Sends the proxy's own hello and returns the backend's `maxWireVersion`.
    async fn handshake(&mut self) -> Result<i32, ProxyError> {
        let hello = rawdoc! {
            "hello": 1,
            "$db": "admin",
            "client": {
                "driver": { "name": "tenantwall", "version": env!("CARGO_PKG_VERSION") },
                "os": { "type": std::env::consts::OS },
            },
        };
        let request_id = self.send(&OpMsg::new(MsgFlags::default(), hello)).await?;
        let (_, reply) = self.read_reply(request_id).await?;
        let body = reply.body();
        if !matches!(body.get("ok"), Ok(Some(RawBsonRef::Double(v))) if v == 1.0)
            && !matches!(body.get("ok"), Ok(Some(RawBsonRef::Int32(1))))
        {
            return Err(ProxyError::BackendProtocol { detail: "backend refused hello".into() });
        }
        match body.get("maxWireVersion") {
            Ok(Some(RawBsonRef::Int32(v))) if v > 0 => Ok(v),
            Ok(Some(RawBsonRef::Int64(v))) if v > 0 && v < 1000 => Ok(v as i32),
            _ => Err(ProxyError::BackendProtocol { detail: "backend hello lacks maxWireVersion".into() }),
        }
    }

    /// Sends `msg` with a fresh request id and returns that id.
    pub async fn send(&mut self, msg: &OpMsg) -> Result<i32, ProxyError> {
        let request_id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1).max(1);
        let frame = msg.encode(request_id, 0)?;
        self.writer
            .write_all(&frame)
            .await
            .map_err(|e| ProxyError::BackendUnavailable { detail: format!("write to backend: {e}") })?;
        Ok(request_id)
    }

    /// Reads one reply, which must answer `response_to`.
    pub async fn read_reply(&mut self, response_to: i32) -> Result<(MsgHeader, OpMsg), ProxyError> {
        let frame = match self.reader.next_frame().await {
            Ok(Some(frame)) => frame,
            Ok(None) => return Err(ProxyError::BackendUnavailable { detail: "backend closed the connection".into() }),
            Err(e) => return Err(ProxyError::BackendUnavailable { detail: format!("read from backend: {e}") }),
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
