//! The proxy's error type and MongoDB error codes.
//!
//! Every failure the proxy reports to a client is a [`ProxyError`]; [`ProxyError::reply_document`] renders the
//! exact shape drivers expect (`{ok: 0.0, errmsg, code, codeName}`). Messages never name a backend host, a
//! credential, or another tenant: they describe what the client sent and which rule refused it.

use bson::{rawdoc, RawDocumentBuf};
use tenantwall_protocol::ProtocolError;

/// A MongoDB error code with its code name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode {
    pub code: i32,
    pub name: &'static str,
}

impl ErrorCode {
    pub const BAD_VALUE: Self = Self { code: 2, name: "BadValue" };
    pub const HOST_UNREACHABLE: Self = Self { code: 6, name: "HostUnreachable" };
    pub const FAILED_TO_PARSE: Self = Self { code: 9, name: "FailedToParse" };
    pub const UNAUTHORIZED: Self = Self { code: 13, name: "Unauthorized" };
    pub const TYPE_MISMATCH: Self = Self { code: 14, name: "TypeMismatch" };
    pub const PROTOCOL_ERROR: Self = Self { code: 17, name: "ProtocolError" };
    pub const AUTHENTICATION_FAILED: Self = Self { code: 18, name: "AuthenticationFailed" };
    pub const COMMAND_NOT_FOUND: Self = Self { code: 59, name: "CommandNotFound" };
    pub const COMMAND_NOT_SUPPORTED: Self = Self { code: 115, name: "CommandNotSupported" };
    pub const INVALID_NAMESPACE: Self = Self { code: 73, name: "InvalidNamespace" };
    pub const CURSOR_NOT_FOUND: Self = Self { code: 43, name: "CursorNotFound" };
    pub const MAX_TIME_MS_EXPIRED: Self = Self { code: 50, name: "MaxTimeMSExpired" };
    pub const NETWORK_TIMEOUT: Self = Self { code: 89, name: "NetworkTimeout" };
    /// Drivers retry reads and retryable writes on it.
    pub const EXCEEDED_TIME_LIMIT: Self = Self { code: 262, name: "ExceededTimeLimit" };
    pub const UNSUPPORTED_OP_QUERY_COMMAND: Self = Self { code: 352, name: "UnsupportedOpQueryCommand" };
    /// mongod's IDL parsers refuse an unknown field with this code.
    pub const UNKNOWN_FIELD: Self = Self { code: 40415, name: "Location40415" };
    /// "OP_MSG requests require a $db argument".
    pub const MISSING_DB: Self = Self { code: 40571, name: "Location40571" };
    /// What a 5.1+ server answers to OP_QUERY outside `$cmd` and to OP_GET_MORE.
    pub const LEGACY_OPCODE_REMOVED: Self = Self { code: 5739101, name: "Location5739101" };
}

/// Which side caused a failure; decides logging level and whether the client is told about the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
    Internal,
}

/// Everything that can go wrong while serving one command.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The client's bytes do not parse.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The command is refused by the proxy's rules.
    #[error("{reason}")]
    Denied { code: ErrorCode, reason: String },
    /// The backend could not be reached or broke mid-command. `detail` is logged, never sent to the client.
    #[error("backend unavailable")]
    BackendUnavailable { detail: String },
    /// The backend sent something the proxy will not relay. `detail` is logged, never sent.
    #[error("backend sent an invalid reply")]
    BackendProtocol { detail: String },
    /// The backend did not answer in time. `max_time` when the deadline came from the command's own
    /// `maxTimeMS` (then the client sees MaxTimeMSExpired, as from a server), else NetworkTimeout.
    #[error("{}", if *max_time { "operation exceeded time limit" } else { "backend did not answer in time" })]
    BackendTimeout { max_time: bool, detail: String },
    /// Every connection of the backend's pool stayed busy for the whole wait; the command was never sent.
    #[error("timed out after {waited_ms} ms waiting for one of the {max} backend connections")]
    PoolTimeout { waited_ms: u128, max: usize },
    /// A bug or resource failure inside the proxy.
    #[error("internal error")]
    Internal { detail: String },
}

impl ProxyError {
    pub fn denied(code: ErrorCode, reason: impl Into<String>) -> Self {
        Self::Denied { code, reason: reason.into() }
    }

    pub fn side(&self) -> Side {
        match self {
            Self::Protocol(_) | Self::Denied { .. } => Side::Client,
            Self::BackendUnavailable { .. }
            | Self::BackendProtocol { .. }
            | Self::BackendTimeout { .. }
            | Self::PoolTimeout { .. } => Side::Backend,
            Self::Internal { .. } => Side::Internal,
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Protocol(e) => {
                let (code, name) = e.code();
                ErrorCode { code, name }
            }
            Self::Denied { code, .. } => *code,
            Self::BackendUnavailable { .. } | Self::BackendProtocol { .. } => ErrorCode::HOST_UNREACHABLE,
            Self::BackendTimeout { max_time: true, .. } => ErrorCode::MAX_TIME_MS_EXPIRED,
            Self::BackendTimeout { max_time: false, .. } => ErrorCode::NETWORK_TIMEOUT,
            Self::PoolTimeout { .. } => ErrorCode::EXCEEDED_TIME_LIMIT,
            Self::Internal { .. } => ErrorCode { code: 1, name: "InternalError" },
        }
    }

    /// Detail for logs (may name the backend; never sent to clients).
    pub fn log_detail(&self) -> &str {
        match self {
            Self::BackendUnavailable { detail }
            | Self::BackendProtocol { detail }
            | Self::BackendTimeout { detail, .. }
            | Self::Internal { detail } => detail,
            _ => "",
        }
    }

    /// The MongoDB-shaped error reply.
    pub fn reply_document(&self) -> RawDocumentBuf {
        error_document(self.code(), &self.to_string())
    }
}

/// `{ok: 0.0, errmsg, code, codeName}`.
pub fn error_document(code: ErrorCode, errmsg: &str) -> RawDocumentBuf {
    rawdoc! { "ok": 0.0, "errmsg": errmsg, "code": code.code, "codeName": code.name }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_errors_do_not_leak_detail() {
        let err = ProxyError::BackendUnavailable { detail: "connect to 10.1.2.3:27017 refused".into() };
        let doc = err.reply_document();
        assert_eq!(doc.get_str("errmsg").unwrap(), "backend unavailable");
        assert_eq!(doc.get_i32("code").unwrap(), 6);
        assert_eq!(doc.get_str("codeName").unwrap(), "HostUnreachable");
        assert_eq!(doc.get_f64("ok").unwrap(), 0.0);
        assert!(err.log_detail().contains("10.1.2.3"));
    }

    #[test]
    fn protocol_errors_keep_server_codes() {
        let doc = ProxyError::from(ProtocolError::MultipleBodies).reply_document();
        assert_eq!(doc.get_i32("code").unwrap(), 40430);
    }
}
