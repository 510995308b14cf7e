//! Command rewriting: what the proxy forwards in place of what the client sent.
//!
//! Owns the per-namespace treatment of every data command: resolving each namespace a command touches to the
//! rule that governs it ([`Target`]), and, for `field` rules, injecting the tenant condition into every filter and
//! pipeline, stamping inserts and refusing anything that could change or remove the tenant value. Each scope
//! point follows its own rule's style: `enforce` rewrites, `verify` only checks that the client pinned the tenant
//! itself, `audit` leaves the command alone and records what enforce would have done.
//!
//! Everything here is a pure function of (command, tenant, policy): no sockets, no clocks, no shared state, so
//! unit tests assert exact outputs. It must never forward a part of a command it did not understand: unknown
//! stages, operators in sensitive places and unknown command shapes are denials, not pass-throughs. One file
//! per command family: [`read`] (find, count, distinct), [`pipeline`] (aggregate stages), [`write`] (insert,
//! update, delete, findAndModify), [`bulk`] (bulkWrite), [`ddl`] (catalog commands); [`filter`] and [`raw`] are
//! the shared building blocks.

pub mod bulk;
pub mod ddl;
pub mod filter;
pub mod pipeline;
pub mod raw;
pub mod read;
pub mod write;

use bson::{RawBson, RawDocument};
use tenantwall_protocol::OpMsg;

use crate::command::Command;
use crate::config::validate::RESERVED_DATABASES;
use crate::config::{Mode, Style};
use crate::error::ErrorCode;
use crate::policy::{Policy, Rule, Tenant};

/// Why a command is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub code: ErrorCode,
    pub reason: String,
}

impl Denial {
    pub fn new(code: ErrorCode, reason: impl Into<String>) -> Self {
        Self { code, reason: reason.into() }
    }
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Self::new(ErrorCode::UNAUTHORIZED, reason)
    }
}

pub type Result<T> = std::result::Result<T, Denial>;

/// How one namespace is governed for the connection's tenant.
#[derive(Debug, Clone, Copy)]
pub enum Target<'p> {
    /// Shared collection scoped by the tenant field.
    Field(&'p Rule),
    /// Reference data: reads pass, writes are refused.
    Shared(&'p Rule),
    /// The tenant's own backend, same names: forwarded as is.
    Dedicated(&'p Rule),
}

impl<'p> Target<'p> {
    pub fn rule(&self) -> &'p Rule {
        match self {
            Self::Field(r) | Self::Shared(r) | Self::Dedicated(r) => r,
        }
    }
}

/// Resolves `db.collection` (as the tenant names it). `collection` is `None` for database-level commands.
pub fn resolve<'p>(policy: &'p Policy, db: &str, collection: Option<&str>) -> Result<Target<'p>> {
    if RESERVED_DATABASES.contains(&db) {
        return Err(Denial::unauthorized(format!("database {db} is not reachable through tenantwall")));
    }
    if let Some(coll) = collection {
        if coll.starts_with("system.") || coll.contains('$') || coll.is_empty() {
            return Err(Denial::new(ErrorCode::INVALID_NAMESPACE, format!("collection {coll:?} is not reachable")));
        }
    }
    let rule = match collection {
        Some(coll) => policy.rule_for(db, coll),
        None => policy.database_rule(db),
    };
    let shown = collection.map_or_else(|| db.to_owned(), |c| format!("{db}.{c}"));
    let rule = rule.ok_or_else(|| Denial::unauthorized(format!("no rule allows {shown}")))?;
    match rule.mode {
        Mode::Field => Ok(Target::Field(rule)),
        Mode::Shared => Ok(Target::Shared(rule)),
        Mode::Database if rule.template.as_ref().is_some_and(|t| t.is_identity()) => Ok(Target::Dedicated(rule)),
        _ => Err(Denial::new(
            ErrorCode::COMMAND_NOT_SUPPORTED,
            format!(
                "{shown} falls under {}, whose isolation mode this tenantwall version does not enforce yet",
                rule.describe()
            ),
        )),
    }
}

/// What the reply to a forwarded command needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplyPlan {
    /// Record a cursor id in the reply as the tenant's.
    pub record_cursor: bool,
    /// Redact duplicate-key details (they can carry other tenants' values).
    pub redact_duplicate_keys: bool,
}

/// The outcome of rewriting one command.
#[derive(Debug)]
pub struct Plan {
    /// The command to forward instead of the original; `None` forwards the original unchanged.
    pub forward: Option<OpMsg>,
    pub reply: ReplyPlan,
    /// What `audit`-style rules would have changed or refused.
    pub audit: Vec<String>,
}

impl Plan {
    /// Forward the command as it is, with no reply handling.
    pub fn unchanged() -> Self {
        Self { forward: None, reply: ReplyPlan::default(), audit: Vec::new() }
    }
}

/// The per-command rewriting context: the tenant, and what has been noted for audit.
pub struct Scope<'a> {
    pub tenant: &'a Tenant,
    pub policy: &'a Policy,
    /// The command's database (every namespace it names lives there unless it says otherwise).
    pub db: &'a str,
    /// The tenant value as raw BSON, for building conditions and stamps.
    pub value: RawBson,
    pub audit: Vec<String>,
    /// Whether any namespace touched is a field-mode one (duplicate-key details are then redacted).
    pub touched_field: bool,
}

impl<'a> Scope<'a> {
    pub fn new(tenant: &'a Tenant, policy: &'a Policy, db: &'a str) -> Result<Self> {
        let value = RawBson::try_from(tenant.value.clone())
            .map_err(|_| Denial::new(ErrorCode::BAD_VALUE, "tenant value cannot be encoded"))?;
        Ok(Self { tenant, policy, db, value, audit: Vec::new(), touched_field: false })
    }

    /// A rule violation: refused under enforce and verify, noted under audit.
    pub fn violation(&mut self, rule: &Rule, reason: impl Into<String>) -> Result<()> {
        let reason = reason.into();
        match rule.style {
            Style::Audit => {
                self.audit.push(format!("{}: would refuse: {reason}", rule.describe()));
                Ok(())
            }
            _ => Err(Denial::unauthorized(format!("{}: {reason}", rule.describe()))),
        }
    }

    /// Resolves a namespace in the command's database.
    pub fn resolve(&mut self, collection: &str) -> Result<Target<'a>> {
        let target = resolve(self.policy, self.db, Some(collection))?;
        if matches!(target, Target::Field(_)) {
            self.touched_field = true;
        }
        Ok(target)
    }
}

/// The first key of a document, or "".
pub fn first_key(doc: &RawDocument) -> &str {
    doc.iter_elements().next().and_then(|e| e.ok()).map(|e| e.key().as_str()).unwrap_or_default()
}

/// Rewrites an authenticated data command (already past the generic checks) for `tenant`.
pub fn plan(msg: &OpMsg, command: Command, db: &str, tenant: &Tenant, policy: &Policy) -> Result<Plan> {
    let mut scope = Scope::new(tenant, policy, db)?;
    let (forward, reply) = match command {
        Command::Find | Command::Count | Command::Distinct => read::rewrite(msg, command, &mut scope)?,
        Command::Aggregate => pipeline::rewrite_aggregate(msg, &mut scope)?,
        Command::Insert | Command::Update | Command::Delete | Command::FindAndModify => {
            write::rewrite(msg, command, &mut scope)?
        }
        Command::BulkWrite => bulk::rewrite(msg, &mut scope)?,
        Command::Explain => explain(msg, &mut scope)?,
        Command::GetMore => {
            let coll = msg
                .body()
                .get_str("collection")
                .map_err(|_| Denial::new(ErrorCode::FAILED_TO_PARSE, "getMore needs a collection"))?;
            let target = scope.resolve(coll)?;
            (None, ReplyPlan { record_cursor: true, redact_duplicate_keys: matches!(target, Target::Field(_)) })
        }
        Command::KillCursors => {
            let coll = msg
                .body()
                .get_str("killCursors")
                .map_err(|_| Denial::new(ErrorCode::FAILED_TO_PARSE, "killCursors needs a collection"))?;
            scope.resolve(coll)?;
            (None, ReplyPlan::default())
        }
        _ => ddl::rewrite(msg, command, &mut scope)?,
    };
    Ok(Plan {
        forward,
        reply: ReplyPlan { redact_duplicate_keys: reply.redact_duplicate_keys || scope.touched_field, ..reply },
        audit: scope.audit,
    })
}

/// `explain` of a command: the inner command gets exactly the rewrite it would get on its own.
fn explain(msg: &OpMsg, scope: &mut Scope<'_>) -> Result<(Option<OpMsg>, ReplyPlan)> {
    let body = msg.body();
    let inner = body
        .get_document("explain")
        .map_err(|_| Denial::new(ErrorCode::FAILED_TO_PARSE, "explain needs a command document"))?;
    let inner_name = first_key(inner);
    let inner_command = Command::from_name(inner_name);
    if !matches!(
        inner_command,
        Command::Find
            | Command::Count
            | Command::Distinct
            | Command::Aggregate
            | Command::Update
            | Command::Delete
            | Command::FindAndModify
    ) {
        return Err(Denial::unauthorized(format!("explain of {inner_name} is not allowed")));
    }
    if inner.get_str("$db").is_ok_and(|d| d != scope.db) {
        return Err(Denial::new(ErrorCode::INVALID_NAMESPACE, "explain's inner $db must equal its own"));
    }
    let inner_msg = OpMsg::new(msg.flags, inner.to_owned());
    let (rewritten, _) = match inner_command {
        Command::Aggregate => pipeline::rewrite_aggregate(&inner_msg, scope)?,
        Command::Find | Command::Count | Command::Distinct => read::rewrite(&inner_msg, inner_command, scope)?,
        _ => write::rewrite(&inner_msg, inner_command, scope)?,
    };
    let Some(rewritten) = rewritten else { return Ok((None, ReplyPlan::default())) };
    let new_body = raw::replace_fields(body, &[("explain", Some(RawBson::Document(rewritten.body().to_owned())))]);
    Ok((Some(OpMsg::new(msg.flags, new_body)), ReplyPlan::default()))
}
