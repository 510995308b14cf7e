//! Command rewriting: what the proxy forwards in place of what the client sent.
//!
//! Owns the per-namespace treatment of every data command: resolving each namespace a command touches to the
//! rule that governs it ([`Target`]); for `field` rules, injecting the tenant condition into every filter and
//! pipeline, stamping inserts and refusing anything that could change or remove the tenant value; for
//! `collection` and `database` rules, renaming every namespace-bearing field to the tenant's real names (and
//! recording them, [`Names`], so the reply can be mapped back); for `shared` rules, refusing writes. Each field
//! scope point follows its own rule's style: `enforce` rewrites, `verify` only checks that the client pinned the
//! tenant itself, `audit` leaves the command alone and records what enforce would have done. Tenant resource
//! limits (`maxTimeMS`, `allowDiskUse`) are applied last.
//!
//! Everything here is a pure function of (command, tenant, policy): no sockets, no clocks, no shared state, so
//! unit tests assert exact outputs. It must never forward a part of a command it did not understand: unknown
//! stages, operators in sensitive places and unknown command shapes are denials, not pass-throughs. One file
//! per command family: [`read`] (find, count, distinct), [`pipeline`] (aggregate stages), [`write`] (insert,
//! update, delete, findAndModify), [`bulk`] (bulkWrite), [`ddl`] (catalog commands); [`filter`] and [`raw`] are
//! the shared building blocks.

pub mod arguments;
pub mod bulk;
pub mod ddl;
pub mod decide;
pub mod filter;
pub mod pipeline;
pub mod raw;
pub mod read;
pub mod reply;
pub mod tools;
pub mod withhold;
pub mod write;

use bson::{RawBson, RawBsonRef, RawDocument};
use tenantwall_protocol::OpMsg;

use crate::command::{Command, CommandSpec};
use crate::config::Style;
use crate::error::ErrorCode;
pub use crate::policy::compile::RESERVED_DATABASES;
use crate::policy::{FieldRule, Placement, Policy, Rule, Tenant};
pub use withhold::Withhold;

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
#[derive(Debug, Clone)]
pub enum Target<'p> {
    /// Shared collection scoped by the tenant field.
    Field(FieldRule<'p>),
    /// Reference data: reads pass, writes are refused.
    Shared(&'p Rule),
    /// The tenant's own namespace, under its real name: collection mode (`acme__orders`), database mode
    /// (`acme_app`), or the tenant's own backend (same names).
    Mapped { rule: &'p Rule, db: String, coll: Option<String> },
}

impl<'p> Target<'p> {
    pub fn rule(&self) -> &'p Rule {
        match self {
            Self::Field(r) => r.rule,
            Self::Shared(r) | Self::Mapped { rule: r, .. } => r,
        }
    }

    /// The real collection name for `visible`.
    pub fn real_coll<'a>(&'a self, visible: &'a str) -> &'a str {
        match self {
            Self::Mapped { coll: Some(c), .. } => c,
            _ => visible,
        }
    }

    /// Whether the namespace is the tenant's own (writable, no scoping needed).
    pub fn is_mapped(&self) -> bool {
        matches!(self, Self::Mapped { .. })
    }
}

/// Resolves `db.collection` (as tenant `tenant` names it). `collection` is `None` for database-level commands.
pub fn resolve<'p>(policy: &'p Policy, tenant: &str, db: &str, collection: Option<&str>) -> Result<Target<'p>> {
    if RESERVED_DATABASES.contains(&db) {
        return Err(Denial::unauthorized(format!("database {db} is not reachable through tenantwall")));
    }
    if let Some(coll) = collection {
        // One pass for both bytes: names are short, and two `memchr` calls cost more than reading them once.
        if coll.is_empty() || coll.starts_with("system.") || coll.bytes().any(|b| b == b'$' || b == 0) {
            return Err(Denial::new(ErrorCode::INVALID_NAMESPACE, format!("collection {coll:?} is not reachable")));
        }
    }
    let shown = || collection.map_or_else(|| db.to_owned(), |c| format!("{db}.{c}"));
    // Worded like a name no rule covers, so it tells nothing about whether that tenant exists.
    let unreachable = || Denial::unauthorized(format!("no rule allows {}", shown()));
    let rule = match collection {
        Some(coll) => policy.rule_for(tenant, db, coll),
        None => policy.database_rule(tenant, db),
    };
    let rule = rule.ok_or_else(unreachable)?;
    // Visible and real names are different kinds of name: a rule that keeps a name as it is must never let a
    // tenant name another tenant's real database or collection (`app.*` in field mode next to collection-mode
    // `app.invoices` would otherwise reach `globex__invoices`). A rule that renames gives the tenant its own
    // name whatever it asks for, so only the part it keeps is checked.
    let (renames_db, renames_coll) = match &rule.placement {
        Placement::Database(t) => (t.has_tenant(), false),
        Placement::Collection(t) => (false, t.has_tenant()),
        Placement::Field { .. } | Placement::Shared => (false, false),
    };
    if !renames_db
        && (policy.is_real_database(db)
            || (!renames_coll && collection.is_some_and(|c| policy.is_real_collection(db, c))))
    {
        return Err(unreachable());
    }
    // And a rule that renames must never render another tenant's real name: two rules with different templates
    // (a tenant's own placement next to the general one) can map two tenants' visible names onto one real name
    // (`{tenant}_{db}` gives acme's `app_globex` the name `{db}_{tenant}` gives globex's `acme_app`).
    let target = match &rule.placement {
        Placement::Field { field, style } => Target::Field(FieldRule { rule, field, style: *style }),
        Placement::Shared => Target::Shared(rule),
        Placement::Collection(template) => {
            let coll = collection.map(|c| template.render(tenant, c));
            if coll.as_deref().is_some_and(|real| policy.real_collection_owner(db, real, Some(tenant))) {
                return Err(unreachable());
            }
            Target::Mapped { rule, db: db.to_owned(), coll }
        }
        Placement::Database(template) => {
            let real = template.render(tenant, db);
            if policy.real_database_owner(&real, Some(tenant)) {
                return Err(unreachable());
            }
            Target::Mapped { rule, db: real, coll: collection.map(str::to_owned) }
        }
    };
    Ok(target)
}

/// What kind of reply needs names filtered, not just mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplyKind {
    #[default]
    Plain,
    /// Keep only the tenant's collections, under their visible names.
    ListCollections,
    /// Keep only the tenant's databases, under their visible names.
    ListDatabases,
    /// Map every namespace string in the reply (explain output).
    Explain,
    /// Indexes of a collection other tenants share: partial filter expressions (which can hold tenant values)
    /// are not shown.
    SharedIndexes,
    /// Documents from `$collStats` / `$indexStats`: the backend host removed, namespaces mapped back.
    Stats,
    /// A `dbStats` / `collStats` reply: backend details removed at every depth, `db` and `ns` mapped back.
    StatsCommand,
}

/// Real names the command was sent with, to be mapped back in its reply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Names {
    pub visible_db: String,
    pub real_db: String,
    /// `(real, visible)` collection names.
    pub colls: Vec<(String, String)>,
}

impl Names {
    pub fn is_identity(&self) -> bool {
        self.visible_db == self.real_db && self.colls.iter().all(|(r, v)| r == v)
    }
}

/// What the reply to a forwarded command needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplyPlan {
    /// Record a cursor id in the reply as the tenant's.
    pub record_cursor: bool,
    /// Withhold what backend errors say about data (the command touched a namespace other tenants share).
    pub withhold: Option<Withhold>,
    /// Names to map back, when any were renamed.
    pub names: Option<Names>,
    pub kind: ReplyKind,
    /// `listIndexes` of an enforce-style field-mode collection: the tenant field, removed from the key of the
    /// per-tenant unique indexes the proxy created from the tenant's own.
    pub index_field: Option<String>,
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
    /// The command's database as the tenant names it.
    pub db: &'a str,
    /// The tenant value as raw BSON, for building conditions and stamps.
    pub value: &'a RawBson,
    pub audit: Vec<String>,
    /// Set when any namespace touched is one other tenants share (field or shared mode): errors are withheld.
    pub shared: Option<Withhold>,
    /// Names renamed so far, to map back in the reply; `None` while nothing is renamed (most commands), so
    /// that nothing is allocated for them.
    names: Option<Names>,
    /// `{collation: ...}` of an aggregate: its joins inherit it, so every field-mode namespace they read is
    /// checked against it too.
    pub inherited_collation: Option<bson::RawDocumentBuf>,
    /// The pipeline has a stage whose output names the backend host (`$collStats`, `$indexStats`).
    pub host_bearing: bool,
}

impl<'a> Scope<'a> {
    pub fn new(tenant: &'a Tenant, policy: &'a Policy, db: &'a str) -> Result<Self> {
        let value = tenant.value.raw();
        Ok(Self {
            tenant,
            policy,
            db,
            value,
            audit: Vec::new(),
            shared: None,
            names: None,
            inherited_collation: None,
            host_bearing: false,
        })
    }

    /// The names renamed so far, to note another.
    pub fn names_mut(&mut self) -> &mut Names {
        let db = self.db;
        self.names.get_or_insert_with(|| Names { visible_db: db.to_owned(), real_db: db.to_owned(), colls: Vec::new() })
    }

    /// The real database of the command so far.
    pub fn real_db(&self) -> &str {
        self.names.as_ref().map_or(self.db, |n| &n.real_db)
    }

    /// The names renamed so far, to map back in the reply.
    pub fn names(&self) -> Names {
        match &self.names {
            Some(names) => names.clone(),
            None => Names { visible_db: self.db.to_owned(), real_db: self.db.to_owned(), colls: Vec::new() },
        }
    }

    /// Whether anything was renamed.
    fn renamed(&self) -> bool {
        self.names.as_ref().is_some_and(|n| !n.is_identity())
    }

    /// A rule violation: refused under enforce and verify, noted under audit.
    pub fn violation(&mut self, rule: FieldRule<'_>, reason: impl Into<String>) -> Result<()> {
        let reason = reason.into();
        match rule.style {
            Style::Audit => {
                self.audit.push(format!("{}: would refuse: {reason}", rule.describe()));
                Ok(())
            }
            _ => Err(Denial::unauthorized(format!("{}: {reason}", rule.describe()))),
        }
    }

    /// Resolves a namespace in the command's database, noting renamed names for the reply.
    pub fn resolve(&mut self, collection: &str) -> Result<Target<'a>> {
        let target = resolve(self.policy, &self.tenant.id, self.db, Some(collection))?;
        self.note(&target, Some(collection))?;
        Ok(target)
    }

    /// Resolves the command's database itself (database-level commands).
    pub fn resolve_db(&mut self) -> Result<Target<'a>> {
        let target = resolve(self.policy, &self.tenant.id, self.db, None)?;
        self.note(&target, None)?;
        Ok(target)
    }

    /// Notes a namespace other tenants share: errors from the backend are then withheld.
    pub fn note_shared(&mut self, target: &Target<'_>) {
        let withhold = match target {
            Target::Field(_) | Target::Shared(_) => self.shared.get_or_insert_with(Withhold::default),
            Target::Mapped { .. } => return,
        };
        if let (Target::Field(rule), None) = (target, &withhold.tenant_field) {
            withhold.tenant_field = Some(rule.field.shared());
        }
    }

    fn note(&mut self, target: &Target<'_>, collection: Option<&str>) -> Result<()> {
        self.note_shared(target);
        match target {
            Target::Field(_) | Target::Shared(_) => {}
            Target::Mapped { db, coll, .. } => {
                if *db != self.real_db() {
                    if self.real_db() != self.db {
                        return Err(Denial::new(
                            ErrorCode::INVALID_NAMESPACE,
                            "one command cannot span two tenant databases",
                        ));
                    }
                    self.names_mut().real_db = db.clone();
                }
                if let (Some(real), Some(visible)) = (coll, collection) {
                    let names = self.names_mut();
                    if !names.colls.iter().any(|(r, _)| r == real) {
                        names.colls.push((real.clone(), visible.to_owned()));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A flag as mongod reads it (`safeBool`): absent or null is false, a bool is itself, and a number is true
/// unless zero (`unique: 1` is a unique index). Anything else is refused, as the server refuses it.
pub fn truthy(doc: &RawDocument, field: &str, place: &str) -> Result<bool> {
    match doc.get(field) {
        Ok(None | Some(RawBsonRef::Null | RawBsonRef::Undefined)) => Ok(false),
        Ok(Some(RawBsonRef::Boolean(b))) => Ok(b),
        Ok(Some(RawBsonRef::Int32(n))) => Ok(n != 0),
        Ok(Some(RawBsonRef::Int64(n))) => Ok(n != 0),
        Ok(Some(RawBsonRef::Double(n))) => Ok(n != 0.0),
        Ok(Some(RawBsonRef::Decimal128(d))) => Ok(!crate::policy::value::decimal_is_zero(&d.to_string())),
        _ => Err(Denial::new(ErrorCode::TYPE_MISMATCH, format!("{place}.{field} must be a boolean or a number"))),
    }
}

/// A strict flag (IDL `bool`): absent is false, only a BSON bool is accepted.
pub fn strict_bool(doc: &RawDocument, field: &str, place: &str) -> Result<bool> {
    match doc.get(field) {
        Ok(None) => Ok(false),
        Ok(Some(RawBsonRef::Boolean(b))) => Ok(b),
        _ => Err(Denial::new(ErrorCode::TYPE_MISMATCH, format!("{place}.{field} must be a boolean"))),
    }
}

/// The first key of a document, or "".
pub fn first_key(doc: &RawDocument) -> &str {
    let first = tenantwall_protocol::validate::Elements::new(doc).next();
    first.and_then(|e| std::str::from_utf8(e.key).ok()).unwrap_or_default()
}

/// Rewrites an authenticated data command (already past the canonical parse and the generic checks) for `tenant`.
pub fn plan(
    msg: &OpMsg,
    command: Command,
    spec: &CommandSpec,
    db: &str,
    tenant: &Tenant,
    policy: &Policy,
) -> Result<Box<Plan>> {
    let mut scope = Scope::new(tenant, policy, db)?;
    let (mut forward, reply) = match command {
        Command::Explain => explain(msg, &mut scope)?,
        _ => dispatch(msg, command, &mut scope)?,
    };
    // Edited in place: the message is moved no more than it must be on the way out (each move is a copy of it).
    set_real_db(&mut forward, msg, scope.names.as_ref());
    let limits = Limits { time: spec.limited || command == Command::Explain, disk: spec.limited };
    apply_resource_limits(&mut forward, msg, limits, command, tenant);
    // Listings are filtered against the visible database even when nothing was renamed.
    let names = (scope.renamed() || reply.kind == ReplyKind::ListCollections).then(|| scope.names());
    let reply = ReplyPlan { withhold: scope.shared.take(), names, ..reply };
    // Boxed where it is made: a plan is large, and boxing it later would copy it once more.
    Ok(Box::new(Plan { forward, reply, audit: scope.audit }))
}

/// Which of the tenant's resource limits to apply to a command.
#[derive(Clone, Copy)]
struct Limits {
    /// Cap `maxTimeMS` (for explain: the outer command's, which is the one the server honours).
    time: bool,
    /// Force `allowDiskUse: false` (find and aggregate; for explain: the inner command's).
    disk: bool,
}

/// The tenant's resource limits applied to the forwarded command (`forward`, or `original` when that is
/// `None`): `maxTimeMS` capped (absent or 0 means no limit to the server, so both become the cap), and
/// `allowDiskUse` forced off where the policy says so.
fn apply_resource_limits(
    forward: &mut Option<OpMsg>,
    original: &OpMsg,
    limits: Limits,
    command: Command,
    tenant: &Tenant,
) {
    // Nothing to apply for a tenant without limits (most of them): the body is not read.
    if tenant.max_time_ms.is_none() && tenant.allow_disk_use != Some(false) {
        return;
    }
    let base = forward.as_ref().unwrap_or(original);
    let edits = limit_edits(base.body(), limits, command, tenant);
    if edits.is_empty() {
        return;
    }
    let limited =
        OpMsg::with_sequences(base.flags, raw::replace_fields(base.body(), &edits), base.sequences().to_vec());
    *forward = Some(limited);
}

fn limit_edits(
    body: &RawDocument,
    limits: Limits,
    command: Command,
    tenant: &Tenant,
) -> Vec<(&'static str, Option<RawBson>)> {
    let mut edits: Vec<(&str, Option<RawBson>)> = Vec::new();
    if let (Some(cap), true) = (tenant.max_time_ms, limits.time) {
        let asked = match raw::get(body, "maxTimeMS") {
            Ok(Some(RawBsonRef::Int32(n))) => u64::try_from(n).ok(),
            Ok(Some(RawBsonRef::Int64(n))) => u64::try_from(n).ok(),
            Ok(Some(RawBsonRef::Double(n))) if n >= 0.0 => Some(n as u64),
            _ => None,
        };
        if asked.is_none_or(|ms| ms == 0 || ms > cap) {
            edits.push(("maxTimeMS", Some(RawBson::Int64(i64::try_from(cap).unwrap_or(i64::MAX)))));
        }
    }
    if tenant.allow_disk_use == Some(false) && limits.disk && matches!(command, Command::Find | Command::Aggregate) {
        edits.push(("allowDiskUse", Some(RawBson::Boolean(false))));
    }
    edits
}

/// The command family's rewrite. Every command is named: a new one does not compile without a decision here.
fn dispatch(msg: &OpMsg, command: Command, scope: &mut Scope<'_>) -> Result<(Option<OpMsg>, ReplyPlan)> {
    match command {
        Command::Find | Command::Count | Command::Distinct => read::rewrite(msg, command, scope),
        Command::Aggregate => pipeline::rewrite_aggregate(msg, scope),
        Command::Insert | Command::Update | Command::Delete | Command::FindAndModify => {
            write::rewrite(msg, command, scope)
        }
        Command::BulkWrite => bulk::rewrite(msg, scope),
        Command::GetMore | Command::KillCursors => cursor_command(msg, command, scope),
        Command::Create
        | Command::Drop
        | Command::DropDatabase
        | Command::CreateIndexes
        | Command::DropIndexes
        | Command::ListIndexes
        | Command::ListCollections
        | Command::ListDatabases
        | Command::CollMod
        | Command::RenameCollection => ddl::rewrite(msg, command, scope),
        Command::DbStats | Command::CollStats => tools::stats(msg, command, scope),
        // Their lsids are bound to the tenant by the session layer; they name no namespace.
        Command::EndSessions | Command::CommitTransaction | Command::AbortTransaction => {
            Ok((None, ReplyPlan::default()))
        }
        Command::Explain => Err(Denial::unauthorized("explain of explain is not allowed")),
        Command::Hello
        | Command::LegacyHello
        | Command::Ping
        | Command::BuildInfo
        | Command::SaslStart
        | Command::SaslContinue
        | Command::Logout
        | Command::ConnectionStatus
        | Command::WhatsMyUri
        | Command::ListCommands
        | Command::Forbidden(_)
        | Command::Unknown => Err(Denial::unauthorized(format!("{} is never forwarded", first_key(msg.body())))),
    }
}

/// `$db` of the forwarded command (`forward`, or `original` when that is `None`) set to the real database,
/// when it differs.
fn set_real_db(forward: &mut Option<OpMsg>, original: &OpMsg, names: Option<&Names>) {
    let Some(names) = names.filter(|n| n.real_db != n.visible_db) else {
        return;
    };
    let base = forward.as_ref().unwrap_or(original);
    let body = raw::replace_fields(base.body(), &[("$db", Some(RawBson::String(names.real_db.clone())))]);
    *forward = Some(OpMsg::with_sequences(base.flags, body, base.sequences().to_vec()));
}

/// `getMore` and `killCursors`: the collection resolved (and renamed); ownership is checked by the session layer.
fn cursor_command(msg: &OpMsg, command: Command, scope: &mut Scope<'_>) -> Result<(Option<OpMsg>, ReplyPlan)> {
    let body = msg.body();
    // Cursor ids are Int64 on the server; another type is refused as mongod refuses it, never coerced (a double
    // would be read as 0 by one reader and as an id by another).
    let wrong_type = |place: &str, value: RawBsonRef<'_>| {
        Denial::new(
            ErrorCode::TYPE_MISMATCH,
            format!("BSON field '{place}' is the wrong type '{:?}', expected type 'long'", value.element_type()),
        )
    };
    if command == Command::GetMore {
        match body.get("getMore") {
            Ok(Some(RawBsonRef::Int64(_))) => {}
            Ok(Some(other)) => return Err(wrong_type("getMore.getMore", other)),
            _ => return Err(Denial::new(ErrorCode::FAILED_TO_PARSE, "getMore needs a cursor id")),
        }
    } else {
        let ids = body
            .get_array("cursors")
            .map_err(|_| Denial::new(ErrorCode::FAILED_TO_PARSE, "killCursors needs cursors"))?;
        for (i, id) in ids.into_iter().enumerate() {
            match id {
                Ok(RawBsonRef::Int64(_)) => {}
                Ok(other) => return Err(wrong_type(&format!("killCursors.cursors.{i}"), other)),
                Err(e) => return Err(Denial::new(ErrorCode::FAILED_TO_PARSE, e.to_string())),
            }
        }
    }
    let field = if command == Command::GetMore { "collection" } else { "killCursors" };
    let coll = body
        .get_str(field)
        .map_err(|_| Denial::new(ErrorCode::FAILED_TO_PARSE, format!("{} needs a collection", first_key(body))))?;
    let reply = ReplyPlan { record_cursor: command == Command::GetMore, ..ReplyPlan::default() };
    // Command cursors (listCollections, collection-less aggregate) continue on `$cmd.<name>`.
    let target = match coll.strip_prefix("$cmd.") {
        Some("aggregate" | "listCollections" | "listIndexes") => scope.resolve_db()?,
        Some(_) => {
            return Err(Denial::new(ErrorCode::INVALID_NAMESPACE, format!("collection {coll:?} is not reachable")))
        }
        None => scope.resolve(coll)?,
    };
    let real = target.real_coll(coll);
    if coll.starts_with("$cmd.") || real == coll {
        return Ok((None, reply));
    }
    let body = raw::replace_fields(body, &[(field, Some(RawBson::String(real.to_owned())))]);
    Ok((Some(OpMsg::with_sequences(msg.flags, body, msg.sequences().to_vec())), reply))
}

/// Generic arguments that name a session or a transaction.
const SESSION_ARGUMENTS: [&str; 4] = ["lsid", "txnNumber", "autocommit", "startTransaction"];

/// `explain` of a command: the inner command gets exactly the rewrite it would get on its own.
fn explain(msg: &OpMsg, scope: &mut Scope<'_>) -> Result<(Option<OpMsg>, ReplyPlan)> {
    let body = msg.body();
    let inner = body
        .get_document("explain")
        .map_err(|_| Denial::new(ErrorCode::FAILED_TO_PARSE, "explain needs a command document"))?;
    let inner_name = first_key(inner);
    let inner_command = Command::from_name(inner_name);
    let inner_spec = match inner_command.spec() {
        Some(spec) if spec.explainable => spec,
        _ => return Err(Denial::unauthorized(format!("explain of {inner_name} is not allowed"))),
    };
    arguments::check(inner.into(), None, inner_spec)?;
    // Sessions and transactions are the outer command's: inside, they would reach the server unvirtualised.
    for field in SESSION_ARGUMENTS {
        if raw::get(inner, field).ok().flatten().is_some() {
            return Err(Denial::new(
                ErrorCode::UNKNOWN_FIELD,
                format!("explain's inner command may not carry {field}; send it with explain itself"),
            ));
        }
    }
    match inner.get("$db") {
        Ok(None) => {}
        Ok(Some(RawBsonRef::String(d))) if d == scope.db => {}
        _ => return Err(Denial::new(ErrorCode::INVALID_NAMESPACE, "explain's inner $db must equal its own")),
    }
    let inner_msg = OpMsg::new(msg.flags, inner.to_owned());
    let (mut rewritten, inner_reply) = dispatch(&inner_msg, inner_command, scope)?;
    // The inner command carries its own allowDiskUse; maxTimeMS is the outer command's.
    let disk_only = Limits { time: false, disk: inner_spec.limited };
    apply_resource_limits(&mut rewritten, &inner_msg, disk_only, inner_command, scope.tenant);
    let reply = ReplyPlan { kind: ReplyKind::Explain, ..inner_reply };
    let renamed_db = scope.real_db() != scope.db;
    let rewritten = match rewritten {
        Some(rewritten) => rewritten,
        // The inner `$db` must follow the outer one even when nothing else in the inner command changed.
        None if renamed_db => inner_msg,
        None => return Ok((None, reply)),
    };
    let mut inner = rewritten.body().to_owned();
    if renamed_db && inner.get("$db").ok().flatten().is_some() {
        inner = raw::replace_fields(&inner, &[("$db", Some(RawBson::String(scope.real_db().to_owned())))]);
    }
    let new_body = raw::replace_fields(body, &[("explain", Some(RawBson::Document(inner)))]);
    Ok((Some(OpMsg::new(msg.flags, new_body)), reply))
}
