//! MongoDB's SASL commands (`saslStart`, `saslContinue`, and `speculativeAuthenticate` inside hello) on top of
//! the sans-IO SCRAM implementation in [`crate::auth`].
//!
//! Owns one connection's conversation state and turns request documents into reply documents. A wrong password,
//! an unknown user and a malformed exchange all get the same `AuthenticationFailed` reply, so the proxy reveals
//! nothing about which users exist. It never logs payloads.

use bson::spec::BinarySubtype;
use bson::{rawdoc, Binary, RawBsonRef, RawDocument, RawDocumentBuf};

use crate::auth::ScramServer;
use crate::error::{error_document, ErrorCode};
use crate::policy::Policy;

/// The only mechanism served.
pub const MECHANISM: &str = "SCRAM-SHA-256";
/// Failed attempts tolerated on one connection before it is closed.
pub const MAX_FAILURES: u8 = 3;

const AUTH_FAILED: ErrorCode = ErrorCode { code: 18, name: "AuthenticationFailed" };
const MECHANISM_UNAVAILABLE: ErrorCode = ErrorCode { code: 334, name: "MechanismUnavailable" };

/// What a SASL step produced.
#[derive(Debug)]
pub enum Outcome {
    /// Conversation continues; send this reply.
    Continue(RawDocumentBuf),
    /// The user proved its password; send the reply once the tenant is accepted.
    Authenticated { reply: RawDocumentBuf, user: String, tenant: String },
    /// Refused; send this reply. `close` when the connection has failed too often.
    Failed { reply: RawDocumentBuf, close: bool },
}

struct Conversation {
    server: ScramServer,
    /// Tenant of the user, when the user exists.
    tenant: Option<String>,
    skip_empty_exchange: bool,
}

/// SASL state of one connection.
#[derive(Default)]
pub struct SaslState {
    conversation: Option<Conversation>,
    /// Server-final was sent with `done: false`; an empty saslContinue finishes.
    awaiting_empty: Option<(String, String)>,
    failures: u8,
    /// The user name of the latest saslStart that could be read, for failure throttling.
    attempted_user: Option<String>,
}

/// The user name a `saslStart` (or `speculativeAuthenticate`) document names, if it can be read.
pub fn username_of(body: &RawDocument) -> Option<String> {
    let payload = payload_of(body)?;
    ScramServer::parse_client_first(&payload).ok().map(|first| first.username().to_owned())
}

fn payload_of(body: &RawDocument) -> Option<Vec<u8>> {
    match body.get("payload") {
        Ok(Some(RawBsonRef::Binary(bin))) => Some(bin.bytes.to_vec()),
        // Drivers may send the payload as a base64 string.
        Ok(Some(RawBsonRef::String(s))) => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(s).ok()
        }
        _ => None,
    }
}

fn binary(bytes: Vec<u8>) -> Binary {
    Binary { subtype: BinarySubtype::Generic, bytes }
}

impl SaslState {
    /// The user name of the latest conversation, once its first message could be read.
    pub fn attempted_user(&self) -> Option<&str> {
        self.attempted_user.as_deref()
    }

    fn fail(&mut self) -> Outcome {
        self.conversation = None;
        self.awaiting_empty = None;
        self.failures = self.failures.saturating_add(1);
        Outcome::Failed {
            reply: error_document(AUTH_FAILED, "Authentication failed."),
            close: self.failures >= MAX_FAILURES,
        }
    }

    /// Begins a conversation from `saslStart` (or the `speculativeAuthenticate` document of a hello).
    pub fn start(&mut self, body: &RawDocument, policy: &Policy) -> Outcome {
        let mechanism = body.get_str("mechanism").unwrap_or_default();
        if mechanism != MECHANISM {
            let msg = format!("Received authentication for mechanism {mechanism} which is not enabled");
            return Outcome::Failed { reply: error_document(MECHANISM_UNAVAILABLE, &msg), close: false };
        }
        let Some(payload) = payload_of(body) else { return self.fail() };
        let Ok(first) = ScramServer::parse_client_first(&payload) else { return self.fail() };
        self.attempted_user = Some(first.username().to_owned());
        let skip_empty_exchange =
            body.get_document("options").ok().and_then(|o| o.get_bool("skipEmptyExchange").ok()).unwrap_or(false);
        let known = policy.scram_user(first.username());
        let tenant = known.map(|(t, _)| t.to_owned());
        let (server, server_first) = ScramServer::new(first, known.map(|(_, v)| v));
        self.conversation = Some(Conversation { server, tenant, skip_empty_exchange });
        self.awaiting_empty = None;
        Outcome::Continue(rawdoc! { "conversationId": 1, "done": false, "payload": binary(server_first), "ok": 1.0 })
    }

    /// Continues with `saslContinue`.
    pub fn next(&mut self, body: &RawDocument) -> Outcome {
        if let Some((user, tenant)) = self.awaiting_empty.take() {
            let reply = rawdoc! { "conversationId": 1, "done": true, "payload": binary(Vec::new()), "ok": 1.0 };
            return Outcome::Authenticated { reply, user, tenant };
        }
        let Some(conversation) = self.conversation.take() else { return self.fail() };
        let Some(payload) = payload_of(body) else { return self.fail() };
        let user = conversation.server.username().to_owned();
        let Ok(server_final) = conversation.server.finish(&payload) else { return self.fail() };
        // A proof only verifies against a real verifier, so a decoy conversation cannot get here; the check
        // stays so that a logic error fails closed.
        let Some(tenant) = conversation.tenant else { return self.fail() };
        if conversation.skip_empty_exchange {
            let reply = rawdoc! { "conversationId": 1, "done": true, "payload": binary(server_final), "ok": 1.0 };
            Outcome::Authenticated { reply, user, tenant }
        } else {
            self.awaiting_empty = Some((user, tenant));
            Outcome::Continue(
                rawdoc! { "conversationId": 1, "done": false, "payload": binary(server_final), "ok": 1.0 },
            )
        }
    }
}

/// The `speculativeAuthenticate` member of a hello reply for a successful first step, if any.
pub fn speculative_reply(outcome: &Outcome) -> Option<RawDocumentBuf> {
    match outcome {
        Outcome::Continue(reply) => {
            let payload = reply.get("payload").ok().flatten()?;
            let mut doc = RawDocumentBuf::new();
            doc.append(bson::cstr!("conversationId"), 1);
            doc.append(bson::cstr!("done"), false);
            doc.append(bson::cstr!("payload"), payload);
            Some(doc)
        }
        _ => None,
    }
}
