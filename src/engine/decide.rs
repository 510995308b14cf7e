//! The decision for one command, as a value computed by a pure function.
//!
//! Inputs: the parsed command, its classification, the connection's tenant (if any) and the policy. Output:
//! answer locally, forward, or deny with a MongoDB code and a reason that names the rule or the check, never
//! another tenant. No sockets, no rewriting: what this function allows is forwarded byte for byte, so anything
//! that would need a rewrite to be safe is denied here until a rewriter for it exists.

use bson::{RawBsonRef, RawDocument};
use tenantwall_protocol::validate::first_duplicate_key;
use tenantwall_protocol::OpMsg;

use crate::command::Command;
use crate::config::validate::RESERVED_DATABASES;
use crate::engine::{self, Denial, Plan};
use crate::error::{ErrorCode, ProxyError};
use crate::policy::{Policy, Tenant};

/// A command answered by the proxy itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    Hello,
    Ping,
    BuildInfo,
    SaslStart,
    SaslContinue,
    /// `endSessions` before authentication (there is nothing to end), and `logout` (a no-op): `{ok: 1}`.
    EndSessions,
}

/// What to do with a command.
#[derive(Debug)]
pub enum Decision {
    Local(Local),
    /// Forward to the tenant's backend: the plan says what (rewritten or unchanged) and what the reply needs.
    Forward(Plan),
    Deny {
        code: ErrorCode,
        reason: String,
    },
}

fn deny(code: ErrorCode, reason: impl Into<String>) -> Decision {
    Decision::Deny { code, reason: reason.into() }
}

impl Decision {
    /// Turns a denial into the error to reply with.
    pub fn into_error(self) -> Option<ProxyError> {
        match self {
            Self::Deny { code, reason } => Some(ProxyError::denied(code, reason)),
            _ => None,
        }
    }
}

/// Generic arguments only servers send each other (generic_argument.idl), plus tenant and security-token
/// fields: a client sending any of them is refused, never forwarded.
const INTERNAL_FIELDS: &[&str] = &[
    "$audit",
    "$client",
    "$configServerState",
    "allowImplicitCollectionCreation",
    "$oplogQueryData",
    "$queryOptions",
    "$replData",
    "databaseVersion",
    "shardVersion",
    "tracking_info",
    "coordinator",
    "maxTimeMSOpOnly",
    "$configTime",
    "$topologyTime",
    "txnRetryCounter",
    "mayBypassWriteBlocking",
    "$tenant",
    "expectPrefix",
    "securityToken",
];

/// Server-side JavaScript operators, refused anywhere in a command.
const JAVASCRIPT: &[&str] = &["$where", "$function", "$accumulator"];

/// Nesting depth the JavaScript scan follows (BSON validation already caps depth at 200).
const SCAN_DEPTH: usize = 200;

/// Decides what to do with an OP_MSG command from a connection whose tenant is `tenant`.
pub fn decide(msg: &OpMsg, command: Command, tenant: Option<&Tenant>, policy: &Policy) -> Decision {
    let body = msg.body();
    let name = msg.command_name().unwrap_or_default();
    if let Some(key) = first_duplicate_key(body) {
        return deny(ErrorCode::BAD_VALUE, format!("duplicate field {key:?} in command"));
    }
    if let Some(field) = internal_field(body) {
        return deny(ErrorCode::UNAUTHORIZED, format!("field {field:?} is not allowed from clients"));
    }
    let Ok(db) = body.get_str("$db") else {
        return deny(ErrorCode::MISSING_DB, "OP_MSG requests require a $db argument");
    };
    match command {
        Command::Hello | Command::LegacyHello => return Decision::Local(Local::Hello),
        Command::Ping => return Decision::Local(Local::Ping),
        Command::SaslStart => return Decision::Local(Local::SaslStart),
        Command::SaslContinue => return Decision::Local(Local::SaslContinue),
        Command::BuildInfo if tenant.is_none() => return Decision::Local(Local::BuildInfo),
        Command::EndSessions if tenant.is_none() => return Decision::Local(Local::EndSessions),
        Command::Unknown => return deny(ErrorCode::COMMAND_NOT_FOUND, format!("no such command: '{name}'")),
        Command::Forbidden(name) => {
            return deny(ErrorCode::UNAUTHORIZED, format!("command {name} is not allowed through tenantwall"))
        }
        _ => {}
    }
    let Some(tenant) = tenant else {
        return deny(ErrorCode::UNAUTHORIZED, format!("command {name} requires authentication"));
    };
    // Documents being inserted are data, not code: a "$where" key or a JavaScript value stored in them never
    // runs. Everything else (filters, pipelines, updates, bulkWrite ops) is scanned.
    let mut code_sequences =
        msg.sequences().iter().filter(|s| !(command == Command::Insert && s.identifier() == "documents"));
    if contains_javascript(body, 0) || code_sequences.any(|s| s.documents().any(|d| contains_javascript(d, 0))) {
        return deny(
            ErrorCode::UNAUTHORIZED,
            "server-side JavaScript ($where, $function, $accumulator) is not allowed",
        );
    }
    decide_data(msg, command, db, tenant, policy)
}

/// The namespace rules for an authenticated data command.
fn decide_data(msg: &OpMsg, command: Command, db: &str, tenant: &Tenant, policy: &Policy) -> Decision {
    match command {
        // Session commands run on admin; their lsids are bound to the tenant by the session layer.
        Command::EndSessions | Command::CommitTransaction | Command::AbortTransaction => {
            return if db == "admin" {
                Decision::Forward(Plan::unchanged())
            } else {
                deny(ErrorCode::UNAUTHORIZED, "session commands run on admin")
            };
        }
        Command::BuildInfo => return Decision::Forward(Plan::unchanged()),
        // Forwarded, it would log the proxy's service user out of the backend connection; the tenant's
        // identity belongs to the client connection and lasts as long as it does.
        Command::Logout => return Decision::Local(Local::EndSessions),
        _ => {}
    }
    let on_admin = matches!(command, Command::BulkWrite | Command::ListDatabases | Command::RenameCollection);
    if !on_admin && RESERVED_DATABASES.contains(&db) {
        return deny(ErrorCode::UNAUTHORIZED, format!("database {db} is not reachable through tenantwall"));
    }
    match engine::plan(msg, command, db, tenant, policy) {
        Ok(plan) => Decision::Forward(plan),
        Err(Denial { code, reason }) => Decision::Deny { code, reason },
    }
}

fn internal_field(body: &RawDocument) -> Option<&str> {
    body.iter_elements().filter_map(Result::ok).map(|e| e.key().as_str()).find(|k| INTERNAL_FIELDS.contains(k))
}

/// Whether any key at any depth is a JavaScript operator.
fn contains_javascript(doc: &RawDocument, depth: usize) -> bool {
    if depth > SCAN_DEPTH {
        return true;
    }
    doc.iter_elements().filter_map(Result::ok).any(|e| {
        JAVASCRIPT.contains(&e.key().as_str())
            || match e.value() {
                Ok(RawBsonRef::Document(d)) => contains_javascript(d, depth + 1),
                Ok(RawBsonRef::Array(a)) => {
                    RawDocument::from_bytes(a.as_bytes()).is_ok_and(|d| contains_javascript(d, depth + 1))
                }
                Ok(RawBsonRef::JavaScriptCode(_) | RawBsonRef::JavaScriptCodeWithScope(_)) => true,
                _ => false,
            }
    })
}
