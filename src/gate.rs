//! The decision for one command, as a value computed by a pure function.
//!
//! This is the seam the policy engine grows from: today it refuses unknown and forbidden commands, commands
//! without `$db`, internal generic arguments a client has no business sending, and bodies with duplicate keys.
//! It never looks at sockets and never rewrites anything; it only says `Allow` or `Deny`.

use bson::RawDocument;
use tenantwall_protocol::validate::first_duplicate_key;
use tenantwall_protocol::OpMsg;

use crate::command::Command;
use crate::error::{ErrorCode, ProxyError};

/// What to do with a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Answer locally (handshake).
    Local,
    /// Forward unchanged.
    Allow,
    /// Refuse with this code and reason.
    Deny { code: ErrorCode, reason: String },
}

impl Decision {
    fn deny(code: ErrorCode, reason: impl Into<String>) -> Self {
        Self::Deny { code, reason: reason.into() }
    }

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

/// Decides what to do with an OP_MSG command.
pub fn decide(msg: &OpMsg, command: Command) -> Decision {
    let body = msg.body();
    let name = msg.command_name().unwrap_or_default();
    if let Some(key) = first_duplicate_key(body) {
        return Decision::deny(ErrorCode::BAD_VALUE, format!("duplicate field {key:?} in command"));
    }
    if let Some(field) = internal_field(body) {
        return Decision::deny(ErrorCode::UNAUTHORIZED, format!("field {field:?} is not allowed from clients"));
    }
    if !matches!(body.get("$db"), Ok(Some(bson::RawBsonRef::String(_)))) {
        return Decision::deny(ErrorCode::MISSING_DB, "OP_MSG requests require a $db argument");
    }
    match command {
        Command::Hello | Command::LegacyHello => Decision::Local,
        Command::Unknown => Decision::deny(ErrorCode::COMMAND_NOT_FOUND, format!("no such command: '{name}'")),
        Command::Forbidden(name) => {
            Decision::deny(ErrorCode::UNAUTHORIZED, format!("command {name} is not allowed through tenantwall"))
        }
        _ => Decision::Allow,
    }
}

fn internal_field(body: &RawDocument) -> Option<&str> {
    body.iter_elements().filter_map(Result::ok).map(|e| e.key().as_str()).find(|k| INTERNAL_FIELDS.contains(k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{cstr, rawdoc, RawDocumentBuf};
    use tenantwall_protocol::MsgFlags;

    fn decide_body(body: RawDocumentBuf) -> Decision {
        let msg = OpMsg::new(MsgFlags::default(), body);
        decide(&msg, Command::from_name(msg.command_name().unwrap()))
    }

    #[test]
    fn allows_known_commands_and_answers_hello_locally() {
        assert_eq!(decide_body(rawdoc! { "find": "c", "$db": "app" }), Decision::Allow);
        assert_eq!(decide_body(rawdoc! { "hello": 1, "$db": "admin" }), Decision::Local);
    }

    #[test]
    fn denies_unknown_forbidden_and_malformed() {
        let code = |d: Decision| match d {
            Decision::Deny { code, .. } => code.code,
            other => panic!("allowed: {other:?}"),
        };
        assert_eq!(code(decide_body(rawdoc! { "frobnicate": 1, "$db": "app" })), 59);
        assert_eq!(code(decide_body(rawdoc! { "mapReduce": "c", "$db": "app" })), 13);
        assert_eq!(code(decide_body(rawdoc! { "find": "c" })), 40571);
        assert_eq!(code(decide_body(rawdoc! { "find": "c", "$db": "app", "$tenant": "b" })), 13);
        let mut dup = RawDocumentBuf::new();
        dup.append(cstr!("find"), "c");
        dup.append(cstr!("$db"), "app");
        dup.append(cstr!("$db"), "admin");
        assert_eq!(code(decide_body(dup)), 2);
    }
}
