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
use crate::config::Mode;
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
    /// `endSessions` before authentication: there is nothing to end.
    EndSessions,
}

/// What to do with a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Local(Local),
    /// Forward unchanged to the tenant's backend.
    Allow,
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

/// Aggregation stages that show other clients' activity or server internals.
const DIAGNOSTIC_STAGES: &[&str] =
    &["$currentOp", "$listSessions", "$listLocalSessions", "$planCacheStats", "$queryStats", "$listSampledQueries"];

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
    if contains_javascript(body, 0) || msg.sequences().iter().any(|s| s.documents().any(|d| contains_javascript(d, 0)))
    {
        return deny(
            ErrorCode::UNAUTHORIZED,
            "server-side JavaScript ($where, $function, $accumulator) is not allowed",
        );
    }
    decide_data(body, command, db, tenant, policy)
}

/// The namespace rules for an authenticated data command.
fn decide_data(body: &RawDocument, command: Command, db: &str, tenant: &Tenant, policy: &Policy) -> Decision {
    match command {
        // Session commands run on admin; binding lsids to tenants is the session layer's job.
        Command::EndSessions | Command::CommitTransaction | Command::AbortTransaction => {
            return if db == "admin" {
                Decision::Allow
            } else {
                deny(ErrorCode::UNAUTHORIZED, "session commands run on admin")
            };
        }
        Command::BuildInfo | Command::Logout => return Decision::Allow,
        Command::ListDatabases | Command::BulkWrite | Command::RenameCollection => {
            let name = body.iter_elements().next().and_then(Result::ok).map(|e| e.key().as_str()).unwrap_or_default();
            return deny(
                ErrorCode::COMMAND_NOT_SUPPORTED,
                format!("{name} is not supported by this tenantwall version"),
            );
        }
        _ => {}
    }
    if RESERVED_DATABASES.contains(&db) {
        return deny(ErrorCode::UNAUTHORIZED, format!("database {db} is not reachable through tenantwall"));
    }
    if command == Command::Explain {
        let Ok(inner) = body.get_document("explain") else {
            return deny(ErrorCode::FAILED_TO_PARSE, "explain needs a command document");
        };
        let inner_name =
            inner.iter_elements().next().and_then(Result::ok).map(|e| e.key().as_str()).unwrap_or_default();
        let inner_command = Command::from_name(inner_name);
        if matches!(inner_command, Command::Explain | Command::Unknown | Command::Forbidden(_))
            || inner_command.is_hello()
        {
            return deny(ErrorCode::UNAUTHORIZED, format!("explain of {inner_name} is not allowed"));
        }
        if inner.get_str("$db").is_ok_and(|inner_db| inner_db != db) {
            return deny(ErrorCode::INVALID_NAMESPACE, "explain's inner $db must equal its own");
        }
        return decide_data(inner, inner_command, db, tenant, policy);
    }
    let collection = match primary_collection(body, command) {
        Ok(c) => c,
        Err(reason) => return deny(ErrorCode::INVALID_NAMESPACE, reason),
    };
    let rule = match collection {
        Some(coll) => policy.rule_for(db, coll),
        None => policy.database_rule(db),
    };
    let shown = collection.map_or_else(|| db.to_owned(), |c| format!("{db}.{c}"));
    let Some(rule) = rule else {
        return deny(ErrorCode::UNAUTHORIZED, format!("no rule allows {shown}"));
    };
    let dedicated = rule.mode == Mode::Database && rule.template.as_ref().is_some_and(|t| t.is_identity());
    if !dedicated {
        return deny(
            ErrorCode::COMMAND_NOT_SUPPORTED,
            format!(
                "{shown} falls under {}, whose isolation mode this tenantwall version does not enforce yet",
                rule.describe()
            ),
        );
    }
    if command == Command::Aggregate {
        if let Some(reason) = pipeline_problem(body, db, policy) {
            return deny(ErrorCode::UNAUTHORIZED, reason);
        }
    }
    let _ = tenant;
    Decision::Allow
}

/// The collection a command targets: `Ok(None)` for database-level commands.
fn primary_collection(body: &RawDocument, command: Command) -> Result<Option<&str>, String> {
    let first = body.iter_elements().next().and_then(Result::ok);
    let value = first.as_ref().and_then(|e| e.value().ok());
    let name = first.as_ref().map(|e| e.key().as_str()).unwrap_or_default();
    match command {
        Command::GetMore => body.get_str("collection").map(Some).map_err(|_| "getMore needs a collection".to_owned()),
        Command::ListCollections | Command::DropDatabase => Ok(None),
        Command::Aggregate => match value {
            Some(RawBsonRef::String(c)) => Ok(Some(c)),
            Some(RawBsonRef::Int32(1)) | Some(RawBsonRef::Int64(1)) | Some(RawBsonRef::Double(1.0)) => Ok(None),
            _ => Err("aggregate needs a collection name or 1".into()),
        },
        _ => match value {
            Some(RawBsonRef::String(c)) if !c.is_empty() => Ok(Some(c)),
            _ => Err(format!("{name} needs a collection name")),
        },
    }
}

/// Why a pipeline may not run, if it may not: diagnostics, and stages that reach a database no rule opens.
fn pipeline_problem(body: &RawDocument, db: &str, policy: &Policy) -> Option<String> {
    let pipeline = body.get_array("pipeline").ok()?;
    for stage in pipeline.into_iter() {
        let Ok(RawBsonRef::Document(stage)) = stage else { return Some("pipeline stages must be documents".into()) };
        let Some(Ok(element)) = stage.iter_elements().next() else { return Some("empty pipeline stage".into()) };
        let stage_name = element.key().as_str();
        if DIAGNOSTIC_STAGES.contains(&stage_name) {
            return Some(format!("stage {stage_name} is not allowed"));
        }
        let target = match (stage_name, element.value()) {
            ("$out", Ok(RawBsonRef::Document(d))) => Some((d.get_str("db").ok(), d.get_str("coll").ok())),
            ("$merge", Ok(RawBsonRef::Document(d))) => match d.get("into") {
                Ok(Some(RawBsonRef::Document(into))) => Some((into.get_str("db").ok(), into.get_str("coll").ok())),
                _ => None,
            },
            ("$lookup", Ok(RawBsonRef::Document(d))) if d.get_document("from").is_ok() => {
                return Some("$lookup from another database is not allowed".into())
            }
            ("$changeStream", Ok(RawBsonRef::Document(d))) if d.get_bool("allChangesForCluster").unwrap_or(false) => {
                return Some("cluster-wide change streams are not allowed".into())
            }
            _ => None,
        };
        if let Some((Some(target_db), coll)) = target {
            if target_db != db {
                let allowed = !RESERVED_DATABASES.contains(&target_db)
                    && policy.rule_for(target_db, coll.unwrap_or("*")).is_some_and(|r| {
                        r.mode == Mode::Database && r.template.as_ref().is_some_and(|t| t.is_identity())
                    });
                if !allowed {
                    return Some(format!("{stage_name} into database {target_db} is not allowed"));
                }
            }
        }
    }
    None
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
