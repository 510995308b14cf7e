//! The decision for one command, as a value computed by a pure function.
//!
//! Inputs: the parsed command, its classification, the connection's tenant (if any) and the policy. Output:
//! answer locally, forward, or deny with a MongoDB code and a reason that names the rule or the check, never
//! another tenant. No sockets: the command's spec, the canonical parse and the generic checks happen here, then
//! [`engine::plan`] rewrites per command family.

use bson::{RawBsonRef, RawDocument};
use tenantwall_protocol::validate::first_duplicate_key;
use tenantwall_protocol::OpMsg;

use super::arguments;
use crate::command::spec::{Database, Handling};
use crate::command::{Command, CommandSpec};
use crate::engine::{self, Denial, Plan};
use crate::error::{ErrorCode, ProxyError};
use crate::policy::compile::RESERVED_DATABASES;
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
    /// Answered from the connection's own state ([`crate::engine::tools`]).
    Tool(Command),
}

/// What to do with a command.
#[derive(Debug)]
pub enum Decision {
    Local(Local),
    /// Forward to the tenant's backend: the plan says what (rewritten or unchanged) and what the reply needs.
    /// Boxed: a plan (the message to forward and the reply's needs) is large, and the decision is moved through
    /// every layer above.
    Forward(Box<Plan>),
    /// Refused: one [`Denial`] from the check that found it to the error reply on the wire.
    Deny(Denial),
}

fn deny(code: ErrorCode, reason: impl Into<String>) -> Decision {
    Decision::Deny(Denial::new(code, reason))
}

impl From<Denial> for ProxyError {
    fn from(denial: Denial) -> Self {
        ProxyError::denied(denial.code, denial.reason)
    }
}

/// The whole request path short of the socket, shared by live connections and `tenantwall explain` so that what
/// explain shows is what is forwarded: decide, then bind the command's sessions to the tenant.
pub fn prepare_forward(msg: &OpMsg, command: Command, tenant: Option<&Tenant>, policy: &Policy) -> Decision {
    match decide(msg, command, tenant, policy) {
        Decision::Forward(mut plan) => {
            if let Some(tenant) = tenant {
                if let Err(denial) = crate::session::bind(&mut plan.forward, msg, &tenant.session_key) {
                    return Decision::Deny(denial);
                }
            }
            Decision::Forward(plan)
        }
        other => other,
    }
}

/// Server-side JavaScript operators, refused anywhere in a command.
const JAVASCRIPT: &[&str] = &["$where", "$function", "$accumulator"];

/// Nesting depth the JavaScript scan follows (BSON validation already caps depth at 200).
const SCAN_DEPTH: usize = 200;

/// Decides what to do with an OP_MSG command from a connection whose tenant is `tenant`.
///
/// Order matters: before authentication only the command name is looked at (the local handlers read their own
/// fields, and nothing is forwarded); after it, the canonical parse runs before anything reads the command —
/// duplicate keys at any depth, then the command's argument list — so that no later stage can read a field
/// differently from the server.
pub fn decide(msg: &OpMsg, command: Command, tenant: Option<&Tenant>, policy: &Policy) -> Decision {
    // The command name, for messages only.
    let name = || msg.command_name().unwrap_or_default();
    let Ok(Some(RawBsonRef::String(db))) = super::raw::get(msg.body_fields(), "$db") else {
        return deny(ErrorCode::MISSING_DB, "OP_MSG requests require a $db argument");
    };
    let Some(spec) = command.spec() else {
        return match command {
            Command::Forbidden(name) => deny(ErrorCode::UNAUTHORIZED, forbidden_reason(name)),
            _ => deny(ErrorCode::COMMAND_NOT_FOUND, format!("no such command: '{}'", name())),
        };
    };
    match (spec.handling, tenant) {
        (Handling::Local, _) => return local(command),
        (Handling::LocalAfterAuthentication, Some(_)) => return Decision::Local(Local::Tool(command)),
        (Handling::LocalUntilAuthenticated, None) => return Decision::Local(Local::EndSessions),
        (_, None) => return deny(ErrorCode::UNAUTHORIZED, format!("command {} requires authentication", name())),
        (Handling::Forwarded | Handling::LocalUntilAuthenticated, Some(_)) => {}
    }
    let Some(tenant) = tenant else {
        return deny(ErrorCode::UNAUTHORIZED, format!("command {} requires authentication", name()));
    };
    if let Err(denial) = canonical(msg, command, spec) {
        return Decision::Deny(denial);
    }
    match spec.database {
        Database::Admin if db != "admin" => {
            return deny(ErrorCode::UNAUTHORIZED, format!("{} runs on admin", spec.name));
        }
        Database::Tenant if RESERVED_DATABASES.contains(&db) => {
            // mongosh's db.currentOp() is `aggregate: 1` on admin with a `$currentOp` stage.
            if command == Command::Aggregate && leads_with(msg.body(), "$currentOp") {
                return deny(ErrorCode::UNAUTHORIZED, forbidden_reason("currentOp"));
            }
            return deny(ErrorCode::UNAUTHORIZED, format!("database {db} is not reachable through tenantwall"));
        }
        Database::Admin | Database::Tenant | Database::Any => {}
    }
    match engine::plan(msg, command, spec, db, tenant, policy) {
        Ok(plan) => Decision::Forward(plan),
        Err(denial) => Decision::Deny(denial),
    }
}

/// Why a command that no policy allows is refused, in words an app team can act on.
fn forbidden_reason(name: &str) -> String {
    match name {
        "currentOp" | "killOp" | "top" | "serverStatus" | "getLog" => format!(
            "{name} is not available through tenantwall: it shows every client's operations on the server, \
             other tenants' included"
        ),
        "hostInfo" | "getCmdLineOpts" | "getParameter" | "setParameter" => {
            format!(
                "{name} is not available through tenantwall: it describes the backend server, not the tenant's data"
            )
        }
        "mapReduce" | "mapreduce" | "$eval" | "eval" => {
            format!("{name} is not allowed through tenantwall: server-side JavaScript is refused")
        }
        _ => format!("command {name} is not allowed through tenantwall"),
    }
}

/// Whether an aggregate's pipeline starts with `stage`.
fn leads_with(body: &RawDocument, stage: &str) -> bool {
    let first = body.get_array("pipeline").ok().and_then(|p| p.into_iter().next()).and_then(Result::ok);
    matches!(first, Some(RawBsonRef::Document(d)) if super::first_key(d) == stage)
}

/// What the proxy answers itself for a [`Handling::Local`] command.
fn local(command: Command) -> Decision {
    // Every command is named: one marked local in its spec without an answer here is refused, never answered
    // with a success it did not earn.
    let local = match command {
        Command::Hello | Command::LegacyHello => Local::Hello,
        Command::Ping => Local::Ping,
        Command::SaslStart => Local::SaslStart,
        Command::SaslContinue => Local::SaslContinue,
        Command::BuildInfo => Local::BuildInfo,
        // Forwarded, logout would log the proxy's service user out of the backend connection; the tenant's
        // identity belongs to the client connection and lasts as long as it does.
        Command::Logout => Local::EndSessions,
        Command::Find
        | Command::Insert
        | Command::Update
        | Command::Delete
        | Command::FindAndModify
        | Command::Aggregate
        | Command::Count
        | Command::Distinct
        | Command::GetMore
        | Command::KillCursors
        | Command::BulkWrite
        | Command::Explain
        | Command::EndSessions
        | Command::CommitTransaction
        | Command::AbortTransaction
        | Command::Create
        | Command::Drop
        | Command::DropDatabase
        | Command::CreateIndexes
        | Command::DropIndexes
        | Command::ListIndexes
        | Command::ListCollections
        | Command::ListDatabases
        | Command::CollMod
        | Command::RenameCollection
        | Command::DbStats
        | Command::CollStats
        | Command::ConnectionStatus
        | Command::WhatsMyUri
        | Command::ListCommands
        | Command::Forbidden(_)
        | Command::Unknown => {
            return deny(ErrorCode::COMMAND_NOT_SUPPORTED, "the proxy has no local answer for this command")
        }
    };
    Decision::Local(local)
}

/// The canonical parse of a command about to be forwarded: one reading, the server's.
fn canonical(msg: &OpMsg, command: Command, spec: &CommandSpec) -> Result<(), Denial> {
    // Documents being inserted are data, not code: a "$where" key or a JavaScript value stored in them never
    // runs, so they are walked for duplicates only. Everything else (filters, pipelines, updates, bulkWrite
    // ops) is also scanned for server-side JavaScript, in the same walk.
    let inserting = command == Command::Insert;
    if nothing_to_find(msg, inserting) {
        return arguments::check(msg.body_fields(), Some(msg), spec);
    }
    let body = walk(msg.body(), 0, Code::Scan { data: inserting.then_some("documents") });
    let found = body.map(|f| (String::new(), f)).or_else(|| {
        msg.sequences().iter().find_map(|s| {
            let code = if inserting && s.identifier() == "documents" { Code::Skip } else { Code::Scan { data: None } };
            s.documents()
                .enumerate()
                .find_map(|(i, d)| walk(d, 0, code).map(|f| (format!("{}[{i}].", s.identifier()), f)))
        })
    });
    match found {
        Some((place, Finding::Duplicate(key))) => {
            return Err(Denial::new(ErrorCode::BAD_VALUE, format!("duplicate field {place}{key} in command")))
        }
        Some((_, Finding::JavaScript)) => {
            return Err(Denial::unauthorized("server-side JavaScript ($where, $function, $accumulator) is not allowed"))
        }
        None => {}
    }
    arguments::check(msg.body_fields(), Some(msg), spec)
}

/// Whether validation already proved that the walk below would find nothing: no document in the message may
/// repeat a key, and none may hold JavaScript where it would be looked for (inserted documents are data). The
/// findings are "maybe"s computed while the frame was validated; any doubt sends the message down the precise
/// walk, which also names what it finds.
fn nothing_to_find(msg: &OpMsg, inserting: bool) -> bool {
    let body = msg.body_findings();
    !body.duplicate_keys()
        && !body.javascript()
        && msg.sequences().iter().all(|s| {
            let found = s.findings();
            !found.duplicate_keys() && (!found.javascript() || (inserting && s.identifier() == "documents"))
        })
}

/// What the canonical walk found first.
enum Finding {
    /// A key repeated within one document, as `path.key`.
    Duplicate(String),
    JavaScript,
}

/// Whether the walk also looks for server-side JavaScript.
#[derive(Clone, Copy)]
enum Code<'a> {
    /// Scan, except inside the top-level field `data` (inserted documents).
    Scan {
        data: Option<&'a str>,
    },
    Skip,
}

/// One walk over a document at every depth: duplicate keys in any document (mongod reads the last of them, a
/// proxy that reads the first would understand the command differently), and JavaScript operators or values.
fn walk(doc: &RawDocument, depth: usize, code: Code<'_>) -> Option<Finding> {
    if depth > SCAN_DEPTH {
        return Some(Finding::Duplicate("(nesting too deep)".into()));
    }
    if let Some(key) = first_duplicate_key(doc) {
        return Some(Finding::Duplicate(key));
    }
    for element in doc.iter_elements().filter_map(Result::ok) {
        let key = element.key().as_str();
        let inner_code = match code {
            Code::Scan { data } if data == Some(key) => Code::Skip,
            Code::Scan { .. } if JAVASCRIPT.contains(&key) => return Some(Finding::JavaScript),
            Code::Scan { .. } => Code::Scan { data: None },
            Code::Skip => Code::Skip,
        };
        let inner = match element.value() {
            Ok(RawBsonRef::Document(d)) => walk(d, depth + 1, inner_code),
            // Arrays are walked as the documents they are; their index keys never repeat in a valid one.
            Ok(RawBsonRef::Array(a)) => {
                RawDocument::from_bytes(a.as_bytes()).ok().and_then(|d| walk(d, depth + 1, inner_code))
            }
            Ok(RawBsonRef::JavaScriptCode(_) | RawBsonRef::JavaScriptCodeWithScope(_))
                if matches!(inner_code, Code::Scan { .. }) =>
            {
                return Some(Finding::JavaScript)
            }
            _ => None,
        };
        match inner {
            Some(Finding::Duplicate(path)) => return Some(Finding::Duplicate(format!("{key}.{path}"))),
            Some(found) => return Some(found),
            None => {}
        }
    }
    None
}
