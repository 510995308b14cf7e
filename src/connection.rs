//! One client connection: read a frame, decide, answer locally or relay, reply in the client's framing.
//!
//! This module owns the per-connection state (its backend connection and reply ids) and the mapping of request
//! ids between the two sides. It must never forward a frame it has not parsed, never reveal backend details in a
//! reply, and never let one client's failure reach another: every error ends in a MongoDB-shaped reply to this
//! client or in closing this connection.

use std::sync::Arc;

use bson::rawdoc;
use bytes::Bytes;
use tenantwall_protocol::compression::compress_frame;
use tenantwall_protocol::{
    decode, Compressor, Message, MsgFlags, MsgHeader, OpCode, OpMsg, OpQuery, OpReply, ProtocolError,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info, warn};

use crate::backend::BackendConn;
use crate::codec::{FrameReader, ReadError};
use crate::command::Command;
use crate::error::{error_document, ErrorCode, ProxyError, Side};
use crate::gate::{decide, Decision};
use crate::handshake::{hello_reply, negotiate_compression, HelloContext};
use crate::server::Shared;
use crate::stats::Stats;

/// Whether the connection goes on after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

/// A client connection and its state.
pub struct ClientConnection<R, W> {
    id: u64,
    shared: Arc<Shared>,
    reader: FrameReader<R>,
    writer: W,
    backend: Option<BackendConn>,
    next_reply_id: i32,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> ClientConnection<R, W> {
    pub(crate) fn new(id: u64, shared: Arc<Shared>, reader: R, writer: W) -> Self {
        let limits = &shared.policy.limits;
        let reader = FrameReader::new(reader, limits.max_message_bytes, Some(limits.frame_timeout()));
        Self { id, shared, reader, writer, backend: None, next_reply_id: 1 }
    }

    /// Serves the connection until the client leaves, breaks the protocol, or a write fails.
    pub async fn serve(mut self) {
        loop {
            let frame = match self.reader.next_frame().await {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    if !matches!(e, ReadError::Io(_)) {
                        Stats::incr(&self.shared.stats.protocol_errors);
                    }
                    info!(error = %e, "closing connection");
                    break;
                }
            };
            match self.handle_frame(frame).await {
                Ok(Flow::Continue) => {}
                Ok(Flow::Close) => break,
                Err(e) => {
                    debug!(error = %e, "client write failed");
                    break;
                }
            }
        }
        debug!("connection closed");
    }

    async fn handle_frame(&mut self, frame: Bytes) -> std::io::Result<Flow> {
        // check_frame guaranteed at least a whole header.
        let Ok(raw_header) = MsgHeader::read(&frame) else { return Ok(Flow::Close) };
        let decoded = match decode(frame) {
            Ok(decoded) => decoded,
            Err(e) => return self.refuse_frame(raw_header, e).await,
        };
        if let Some(compressor) = decoded.compressor {
            self.shared.stats.count_compressed(compressor);
        }
        match decoded.message {
            Message::Msg(msg) => self.handle_msg(decoded.header, msg, decoded.compressor).await,
            Message::Query(query) => self.handle_query(decoded.header, query).await,
            Message::Reply(_) => {
                warn!("client sent OP_REPLY");
                Ok(Flow::Close)
            }
        }
    }

    /// A frame that did not parse: reply like a server would, or close when the stream cannot be trusted.
    async fn refuse_frame(&mut self, header: MsgHeader, error: ProtocolError) -> std::io::Result<Flow> {
        Stats::incr(&self.shared.stats.protocol_errors);
        warn!(error = %error, opcode = %header.op_code, "refusing frame");
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
                    self.write_msg(&OpMsg::new(MsgFlags::default(), doc), header.request_id, None).await?;
                }
                Ok(Flow::Continue)
            }
        }
    }

    async fn handle_msg(
        &mut self,
        header: MsgHeader,
        msg: OpMsg,
        compressor: Option<Compressor>,
    ) -> std::io::Result<Flow> {
        Stats::incr(&self.shared.stats.commands);
        let name = msg.command_name().unwrap_or_default().to_owned();
        let command = Command::from_name(&name);
        debug!(command = %name, compressor = compressor.map(Compressor::name), more_to_come = msg.flags.more_to_come(), "command");
        match decide(&msg, command) {
            Decision::Local => {
                let compression = negotiate_compression(msg.body());
                let ctx = HelloContext {
                    connection_id: i64::try_from(self.id).unwrap_or(i64::MAX),
                    max_wire_version: self.shared.backend.advertised_max_wire_version(),
                };
                let reply = hello_reply(msg.body(), command, &compression, ctx);
                self.write_msg(&OpMsg::new(MsgFlags::default(), reply), header.request_id, compressor).await?;
                Ok(Flow::Continue)
            }
            deny @ Decision::Deny { .. } => {
                Stats::incr(&self.shared.stats.denied);
                let error = deny.into_error().unwrap_or(ProxyError::Internal { detail: "denial without error".into() });
                info!(command = %name, reason = %error, "denied");
                if !msg.flags.more_to_come() {
                    self.write_msg(
                        &OpMsg::new(MsgFlags::default(), error.reply_document()),
                        header.request_id,
                        compressor,
                    )
                    .await?;
                }
                Ok(Flow::Continue)
            }
            Decision::Allow => {
                if let Err(error) = self.relay(header.request_id, &msg, compressor).await {
                    self.report(&error);
                    self.backend = None;
                    if !msg.flags.more_to_come() {
                        let reply = OpMsg::new(MsgFlags::default(), error.reply_document());
                        self.write_msg(&reply, header.request_id, compressor).await?;
                    }
                }
                Ok(Flow::Continue)
            }
        }
    }

    /// Forwards `msg` and relays its replies. Returns an error only for backend failures; failures writing to the
    /// client surface as `ProxyError::Internal` and end the connection through the next read.
    async fn relay(
        &mut self,
        client_request_id: i32,
        msg: &OpMsg,
        compressor: Option<Compressor>,
    ) -> Result<(), ProxyError> {
        if self.backend.is_none() {
            let timeout = self.shared.policy.limits.backend_connect_timeout();
            self.backend = Some(self.shared.backend.connect(timeout).await?);
        }
        let Some(backend) = self.backend.as_mut() else {
            return Err(ProxyError::Internal { detail: "backend connection missing".into() });
        };
        // The checksum was verified on the way in and the backend link is the proxy's own. exhaustAllowed is
        // dropped so every reply is solicited: the proxy inspects each batch, and a server may always ignore it.
        // moreToCome is dropped too, as mongos does for w:0 writes: the backend answers, the proxy reads and
        // discards that answer, so the link stays in lock-step and failed unacknowledged writes are logged.
        let strip = MsgFlags::CHECKSUM_PRESENT | MsgFlags::EXHAUST_ALLOWED | MsgFlags::MORE_TO_COME;
        let forward = msg.with_flags(msg.flags.without(strip));
        let backend_request_id = backend.send(&forward).await?;
        if msg.flags.more_to_come() {
            let (_, reply) = backend.read_reply(backend_request_id).await?;
            if let Ok(errmsg) = reply.body().get_str("errmsg") {
                info!(errmsg, "unacknowledged command failed on the backend");
            }
            return Ok(());
        }
        let mut expect = backend_request_id;
        let mut answer_to = client_request_id;
        loop {
            let Some(backend) = self.backend.as_mut() else {
                return Err(ProxyError::Internal { detail: "backend connection missing".into() });
            };
            let (reply_header, reply) = backend.read_reply(expect).await?;
            let more = reply.flags.more_to_come();
            let reply = reply.with_flags(reply.flags.without(MsgFlags::CHECKSUM_PRESENT));
            let sent_id = self
                .write_msg(&reply, answer_to, compressor)
                .await
                .map_err(|e| ProxyError::Internal { detail: format!("write to client: {e}") })?;
            if !more {
                return Ok(());
            }
            expect = reply_header.request_id;
            answer_to = sent_id;
        }
    }

    /// Legacy OP_QUERY: only the handshake on `<db>.$cmd` is served, as servers since 5.1 do.
    async fn handle_query(&mut self, header: MsgHeader, query: OpQuery) -> std::io::Result<Flow> {
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
            let compression = negotiate_compression(command_doc);
            let ctx = HelloContext {
                connection_id: i64::try_from(self.id).unwrap_or(i64::MAX),
                max_wire_version: self.shared.backend.advertised_max_wire_version(),
            };
            hello_reply(command_doc, command, &compression, ctx)
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

    /// Writes an OP_MSG answering `response_to`, compressed when the request was. Returns the id it was sent with.
    async fn write_msg(
        &mut self,
        msg: &OpMsg,
        response_to: i32,
        compressor: Option<Compressor>,
    ) -> std::io::Result<i32> {
        let id = self.reply_id();
        let frame = msg.encode(id, response_to).map_err(std::io::Error::other)?;
        match compressor {
            Some(c) => {
                let wrapped = compress_frame(&frame, c).map_err(std::io::Error::other)?;
                self.writer.write_all(&wrapped).await?;
            }
            None => self.writer.write_all(&frame).await?,
        }
        Ok(id)
    }

    async fn write_reply(&mut self, response_to: i32, reply: OpReply) -> std::io::Result<()> {
        let id = self.reply_id();
        let frame = reply.encode(id, response_to).map_err(std::io::Error::other)?;
        self.writer.write_all(&frame).await
    }
}
