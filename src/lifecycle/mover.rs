//! `tenantwall move`: one tenant's data to another placement while the proxy holds only that tenant.
//!
//! The order is what keeps every acknowledged write: the new policy is computed and compiled first (a policy
//! that does not compile, or that changes any other tenant, stops the move before anything happens); the
//! tenant's documents and indexes are checked against what the proxy itself would do (its tenant condition with
//! simple collation, no array tenant fields, no collation that could loosen the condition, every index passed
//! through the proxy's own `createIndexes` decision), and anything it could not do exactly stops the move before
//! the hold; partial copies of an earlier attempt are removed; then the running proxy holds the tenant and waits
//! for its commands in flight, and only then are the tenant's documents copied (ids kept, the tenant field
//! dropped or added as the destination needs), its indexes created for the destination, and the copy verified — counts and a digest of every document's bytes with the
//! tenant field removed. Then the new policy is written atomically and loaded through the admin listener, which
//! applies it only while the hold is still in force and ends the hold once it is in force: the held commands are
//! decided with the new placement. Any failure before that switch ends the hold and leaves the source and the
//! policy as they were. The source copy is removed only with `--delete-source`, after the switch, and only while
//! it is still exactly the set that was copied and verified.
//!
//! What it owns: planning, copying, verifying and switching one tenant. What it must never do: write while the
//! tenant is not held, switch after the hold's bound has passed, touch another tenant's documents, or print
//! document values (ids, counts and digests only) or a credential.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bson::{RawBson, RawDocument, RawDocumentBuf};
use ring::digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::{ClientError, ServiceClient, Timeouts, DEFAULT_BATCH_SIZE};
use super::placement::{self, Destination, EditError};
use crate::backend::BackendTarget;
use crate::command::Command;
use crate::engine::decide::Decision;
use crate::engine::filter::tenant_condition;
use crate::engine::raw::replace_fields;
use crate::engine::{resolve, Target};
use crate::policy::compile::RESERVED_DATABASES;
use crate::policy::{FieldName, Placement, Policy, Tenant};

/// Test-only failpoint: seconds to pause after the copy is verified and before the policy is switched, so a
/// test can kill the mover at its worst moment.
pub const PAUSE_ENV: &str = "TENANTWALL_MOVE_PAUSE_AFTER_COPY";

/// Time the hold must still have left when the switch starts; less, and the move is abandoned. More than the
/// proxy's file watcher needs to apply a changed file (2 s settle, polled twice a second): a mover that dies
/// between writing the policy and asking for the reload leaves a file the watcher applies while the tenant is
/// still held, so no command of the tenant runs on the old placement after the copy.
const SWITCH_MARGIN: Duration = Duration::from_secs(5);

/// What `tenantwall move` was asked to do.
#[derive(Debug, Clone)]
pub struct MoveOptions {
    pub policy: PathBuf,
    pub tenant: String,
    pub to: Destination,
    /// Longest the tenant may be held; the proxy ends the hold by itself after it.
    pub max_hold: Duration,
    pub delete_source: bool,
    /// The admin listener, when not the policy's `[admin] address` (e.g. a proxy started on port 0).
    pub admin: Option<SocketAddr>,
}

/// What a move did.
#[derive(Debug, Clone, Default)]
pub struct MoveReport {
    pub namespaces: usize,
    pub documents: u64,
    /// How long the tenant was held, as the proxy measured it (`None` when nothing needed holding).
    pub held: Option<Duration>,
    /// The policy generation in force after the switch.
    pub generation: Option<u64>,
    /// The placement was already the destination: nothing was done.
    pub unchanged: bool,
}

/// Why a move stopped.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("{0}")]
    Edit(Box<EditError>),
    #[error("the policy in force does not compile here: {0}")]
    CurrentPolicy(String),
    #[error("the policy this move would write does not compile: {0}")]
    NewPolicy(String),
    #[error("{0}")]
    Backend(Box<ClientError>),
    #[error("admin listener: {0}")]
    Admin(String),
    #[error("{0}")]
    Plan(String),
    #[error("verification failed for {namespace}: {detail}")]
    Verify { namespace: String, detail: String },
    #[error("the hold ends in less than {}s: abandoned before the switch (raise --max-hold-secs)", SWITCH_MARGIN.as_secs())]
    OutOfTime,
    #[error("cannot write the policy: {0}")]
    Io(#[from] std::io::Error),
    /// After the switch: the tenant lives at its new placement, but its old copy is still there.
    #[error("the tenant was moved, but its source copy was not removed: {0}")]
    SourceNotRemoved(String),
}

impl From<EditError> for MoveError {
    fn from(e: EditError) -> Self {
        Self::Edit(Box::new(e))
    }
}

impl From<ClientError> for MoveError {
    fn from(e: ClientError) -> Self {
        Self::Backend(Box::new(e))
    }
}

impl MoveError {
    /// Whether the failure came after the switch (the new placement is in force).
    pub fn after_switch(&self) -> bool {
        matches!(self, Self::SourceNotRemoved(_))
    }
}

/// Where one namespace of the tenant lives.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Place {
    backend: String,
    db: String,
    coll: String,
    /// Field mode: the tenant field, whose value selects the tenant's documents.
    field: Option<String>,
}

impl Place {
    fn of(target: &Target<'_>, backend: &str, db: &str, coll: &str) -> Option<Self> {
        match target {
            Target::Field(rule) => Some(Self {
                backend: backend.to_owned(),
                db: db.to_owned(),
                coll: coll.to_owned(),
                field: Some(rule.field.as_str().to_owned()),
            }),
            Target::Mapped { db: real_db, coll: real_coll, .. } => Some(Self {
                backend: backend.to_owned(),
                db: real_db.clone(),
                coll: real_coll.clone().unwrap_or_else(|| coll.to_owned()),
                field: None,
            }),
            Target::Shared(_) => None,
        }
    }

    fn namespace(&self) -> String {
        format!("{}:{}.{}", self.backend, self.db, self.coll)
    }
}

/// One namespace to move, by its visible name.
#[derive(Debug, Clone)]
struct Step {
    visible: String,
    /// The visible database and collection (`visible` is `vdb.vcoll`).
    vdb: String,
    vcoll: String,
    from: Place,
    to: Place,
}

/// The tenant's clients: one connection to the source backend and one to the destination (even when they are
/// the same deployment, so a cursor on one never waits for a write on the other).
struct Clients {
    source: ServiceClient,
    dest: ServiceClient,
}

/// Runs a move; `progress` receives one line per step for the operator.
pub async fn run(options: &MoveOptions, progress: &mut dyn FnMut(String)) -> Result<MoveReport, MoveError> {
    let old_text = std::fs::read_to_string(&options.policy)?;
    let old = Policy::from_toml(&old_text, &options.policy).map_err(|e| MoveError::CurrentPolicy(e.to_string()))?;
    let tenant = old.tenant(&options.tenant).ok_or_else(|| EditError::NoTenant(options.tenant.clone()))?.clone();
    let new_text = placement::edit(&old_text, &options.policy, &tenant.id, &options.to)?;
    if new_text == old_text {
        progress(format!("tenant {} already has that placement; nothing to do", tenant.id));
        return Ok(MoveReport { unchanged: true, ..MoveReport::default() });
    }
    let new = Policy::from_toml(&new_text, &options.policy).map_err(|e| MoveError::NewPolicy(e.to_string()))?;
    // Whatever the text edit did, only this tenant's placement may differ.
    placement::others_unchanged(&old, &new, &tenant.id)?;
    let new_backend = new.tenant(&tenant.id).map(|t| t.backend.clone()).unwrap_or_default();
    let timeouts = Timeouts::from_limits(&old.limits);
    let mut clients = Clients {
        source: connect(&old, &tenant.backend, timeouts).await?,
        dest: connect(&new, &new_backend, timeouts).await?,
    };
    let steps = plan(&old, &new, &tenant.id, &mut clients.source, &new_backend).await?;
    for step in &steps {
        progress(format!("plan: {} from {} to {}", step.visible, step.from.namespace(), step.to.namespace()));
    }
    // The tenant's documents must be selectable exactly as the proxy selects them, at both ends, and every
    // index must be one the proxy would create for the tenant at the destination.
    let new_tenant = new.tenant(&tenant.id).cloned().ok_or_else(|| EditError::NoTenant(tenant.id.clone()))?;
    for step in &steps {
        check_shared(&mut clients.source, &step.from, &tenant.value, old.collation_safe).await?;
        check_shared(&mut clients.dest, &step.to, &tenant.value, new.collation_safe).await?;
        planned_indexes(step, &mut clients.source, &new, &new_tenant).await?;
    }
    // Left over from an attempt that stopped before its switch: the destination is nobody's yet.
    for step in &steps {
        remove_copy(&mut clients.dest, &step.to, &tenant.value).await?;
    }
    let admin = Admin::new(&old, options.admin)?;
    let asked = Instant::now();
    let hold = admin.post(&format!("/tenants/{}/hold?max_secs={}", tenant.id, options.max_hold.as_secs())).await?;
    let hold_id = hold.get("hold").and_then(serde_json::Value::as_u64).ok_or_else(|| {
        MoveError::Admin(format!("hold not granted: {}", hold.get("error").cloned().unwrap_or_default()))
    })?;
    // Measured from before the request: the proxy's own deadline is no earlier than this one.
    let deadline = asked + options.max_hold;
    progress(format!(
        "tenant {} held (commands in flight drained in {} ms)",
        tenant.id,
        hold.get("drained_ms").and_then(serde_json::Value::as_u64).unwrap_or(0)
    ));
    let copied = copy_all(&steps, &mut clients, (&new, &new_tenant), progress).await;
    let copied = match copied {
        Ok(copied) if Instant::now() + SWITCH_MARGIN <= deadline => Ok(copied),
        Ok(_) => Err(MoveError::OutOfTime),
        Err(e) => Err(e),
    };
    let verified = match copied {
        Ok(verified) => verified,
        Err(e) => return Err(abandon(e, &admin, &tenant.id, hold_id, &steps, &mut clients, &tenant.value).await),
    };
    if let Some(pause) = std::env::var(PAUSE_ENV).ok().and_then(|s| s.parse::<u64>().ok()) {
        progress(format!("pausing {pause}s before the switch ({PAUSE_ENV})"));
        tokio::time::sleep(Duration::from_secs(pause)).await;
    }
    if Instant::now() + SWITCH_MARGIN > deadline {
        return Err(
            abandon(MoveError::OutOfTime, &admin, &tenant.id, hold_id, &steps, &mut clients, &tenant.value).await
        );
    }
    // Someone else's edit of the file since the move began would be lost by writing ours.
    if std::fs::read_to_string(&options.policy).ok().as_deref() != Some(old_text.as_str()) {
        let changed = MoveError::Plan("the policy file changed while the move ran; not overwriting it".into());
        return Err(abandon(changed, &admin, &tenant.id, hold_id, &steps, &mut clients, &tenant.value).await);
    }
    // The switch: the new file, then the proxy loads it under the hold and ends the hold.
    if let Err(e) = placement::write_atomically(&options.policy, &new_text) {
        return Err(abandon(e.into(), &admin, &tenant.id, hold_id, &steps, &mut clients, &tenant.value).await);
    }
    let switched = admin.post(&format!("/reload?tenant={}&hold={hold_id}", tenant.id)).await;
    let switched = match switched {
        Ok(reply) if reply.get("generation").is_some() => reply,
        failed => {
            // The proxy did not take the new policy: the old file goes back before its watcher could read the new.
            let restored = placement::write_atomically(&options.policy, &old_text);
            let why = match failed {
                Ok(reply) => {
                    MoveError::Admin(format!("reload refused: {}", reply.get("error").cloned().unwrap_or_default()))
                }
                Err(e) => e,
            };
            restored?;
            return Err(abandon(why, &admin, &tenant.id, hold_id, &steps, &mut clients, &tenant.value).await);
        }
    };
    let held = switched.get("held_ms").and_then(serde_json::Value::as_u64).map(Duration::from_millis);
    let generation = switched.get("generation").and_then(serde_json::Value::as_u64);
    progress(format!(
        "policy switched (generation {}); tenant {} released after {} ms",
        generation.unwrap_or(0),
        tenant.id,
        held.map_or(0, |h| h.as_millis())
    ));
    if options.delete_source {
        for (step, copied) in steps.iter().zip(&verified) {
            delete_source(&mut clients.source, &step.from, &tenant.value, *copied)
                .await
                .map_err(|e| MoveError::SourceNotRemoved(format!("{}: {e}", step.from.namespace())))?;
            progress(format!("removed the source copy {}", step.from.namespace()));
        }
    }
    let documents = verified.iter().map(|(count, _)| count).sum();
    Ok(MoveReport { namespaces: steps.len(), documents, held, generation, unchanged: false })
}

/// A service connection to backend `name` of `policy`.
async fn connect(policy: &Policy, name: &str, timeouts: Timeouts) -> Result<ServiceClient, MoveError> {
    let spec = policy.backend(name).cloned().ok_or_else(|| MoveError::Plan(format!("no backend {name:?}")))?;
    Ok(ServiceClient::connect(&BackendTarget::new(spec, Default::default()), timeouts).await?)
}

/// Ends the hold after a failure before the switch, removes the partial copy, and returns the failure.
async fn abandon(
    error: MoveError,
    admin: &Admin,
    tenant: &str,
    hold: u64,
    steps: &[Step],
    clients: &mut Clients,
    value: &crate::policy::TenantValue,
) -> MoveError {
    if let Err(e) = admin.post(&format!("/tenants/{tenant}/release?hold={hold}")).await {
        tracing::warn!(error = %e, "could not release the hold; it ends by itself at its bound");
    }
    for step in steps {
        if let Err(e) = remove_copy(&mut clients.dest, &step.to, value).await {
            tracing::warn!(error = %e, namespace = %step.to.namespace(), "partial copy left; a re-run removes it");
        }
    }
    error
}

/// The tenant's namespaces whose placement differs between `old` and `new`, found from the real names on the
/// tenant's current backend.
async fn plan(
    old: &Policy,
    new: &Policy,
    tenant: &str,
    source: &mut ServiceClient,
    new_backend: &str,
) -> Result<Vec<Step>, MoveError> {
    let old_backend = source.backend().to_owned();
    let mut steps: Vec<Step> = Vec::new();
    for real_db in source.list_database_names().await? {
        if RESERVED_DATABASES.contains(&real_db.as_str()) {
            continue;
        }
        let collections = source.list_collections(&real_db).await?;
        for info in collections.iter().filter(|c| c.kind == "collection" && !c.name.starts_with("system.")) {
            let Some((vdb, vcoll, from)) = visible_of(old, tenant, &old_backend, &real_db, &info.name) else {
                continue;
            };
            if from.field.is_some() {
                // A shared collection without the tenant's documents holds nothing of it to move.
                let value = &old.tenant(tenant).ok_or_else(|| MoveError::Plan(format!("no tenant {tenant:?}")))?.value;
                let mut cursor = open(source, &from, value, None, 1).await?;
                let any = cursor.next_batch(source).await?.is_some_and(|b| !b.is_empty());
                cursor.close(source).await?;
                if !any {
                    continue;
                }
            }
            let visible = format!("{vdb}.{vcoll}");
            let to = resolve(new, tenant, &vdb, Some(&vcoll))
                .ok()
                .and_then(|target| Place::of(&target, new_backend, &vdb, &vcoll))
                .ok_or_else(|| {
                    MoveError::Plan(format!("the new policy gives tenant {tenant} no writable placement for {visible}"))
                })?;
            if to == from || steps.iter().any(|s| s.visible == visible) {
                continue;
            }
            if to.backend == from.backend && to.db == from.db && to.coll == from.coll {
                return Err(MoveError::Plan(format!("{visible}: source and destination are one collection")));
            }
            steps.push(Step { visible, vdb, vcoll, from, to });
        }
    }
    Ok(steps)
}

/// The visible namespace through which `tenant` reaches real `db.coll` under `policy`, with its place.
fn visible_of(policy: &Policy, tenant: &str, backend: &str, db: &str, coll: &str) -> Option<(String, String, Place)> {
    let mut dbs = vec![db.to_owned()];
    let mut colls = vec![coll.to_owned()];
    for rule in policy.rules_of(tenant) {
        match &rule.placement {
            Placement::Database(t) => dbs.extend(t.unrender(tenant, db)),
            Placement::Collection(t) => colls.extend(t.unrender(tenant, coll)),
            Placement::Field { .. } | Placement::Shared => {}
        }
    }
    for vdb in &dbs {
        for vcoll in &colls {
            let Ok(target) = resolve(policy, tenant, vdb, Some(vcoll)) else { continue };
            if let Some(place) = Place::of(&target, backend, vdb, vcoll) {
                if place.db == db && place.coll == coll {
                    return Some((vdb.clone(), vcoll.clone(), place));
                }
            }
        }
    }
    None
}

/// The tenant's documents at `place`: in a shared collection, the proxy's own tenant condition
/// (`{<field>: {$eq: <value>}}`, see [`tenant_condition`]), always sent with [`simple`] collation; in the
/// tenant's own collection, all of them.
fn filter_of(place: &Place, value: &crate::policy::TenantValue) -> Result<RawDocumentBuf, MoveError> {
    let Some(field) = &place.field else { return Ok(RawDocumentBuf::new()) };
    Ok(tenant_condition(&field_name(field)?, value.raw()))
}

fn field_name(field: &str) -> Result<FieldName, MoveError> {
    FieldName::new(field).map_err(MoveError::Plan)
}

/// `{locale: "simple"}`: sent with every read and delete of a shared collection, so that a collection's default
/// collation can never make another tenant's value equal to this one.
fn simple() -> RawDocumentBuf {
    bson::rawdoc! { "locale": "simple" }
}

/// Opens a cursor on the tenant's documents at `place`.
async fn open(
    client: &mut ServiceClient,
    place: &Place,
    value: &crate::policy::TenantValue,
    filter: Option<RawDocumentBuf>,
    batch_size: i32,
) -> Result<super::client::Cursor, MoveError> {
    let filter = match filter {
        Some(filter) => filter,
        None => filter_of(place, value)?,
    };
    Ok(match place.field {
        Some(_) => client.find_collated(&place.db, &place.coll, filter, simple(), batch_size).await?,
        None => client.find(&place.db, &place.coll, filter, None, batch_size).await?,
    })
}

/// Checks that every tenant field of `doc` (read at `place` with the tenant's condition) is exactly the tenant's
/// value. Anything else — an array holding the value, which the server's `$eq` matches and the proxy then shows
/// to every tenant the array names, or a value equal only under a collation the server applied anyway — is a
/// document the move cannot take or leave without changing what some tenant reads.
fn check_tenant_field(doc: &RawDocument, place: &Place, value: &crate::policy::TenantValue) -> Result<(), MoveError> {
    let Some(field) = &place.field else { return Ok(()) };
    let mut seen = false;
    for element in doc.iter_elements() {
        let Ok(element) = element else { return Err(not_exact(place)) };
        if element.key().as_str() != field.as_str() {
            continue;
        }
        match element.value() {
            Ok(v) if value.matches(v) => seen = true,
            _ => return Err(not_exact(place)),
        }
    }
    if seen {
        Ok(())
    } else {
        Err(not_exact(place))
    }
}

fn not_exact(place: &Place) -> MoveError {
    MoveError::Plan(format!(
        "{}: a document the tenant's condition matches has a {} that is not exactly the tenant's value (an array, \
         or a value equal only under a collation); it may be another tenant's too, so the move copies and deletes \
         nothing: fix the document (tenantwall audit lists it) and run the move again",
        place.namespace(),
        place.field.as_deref().unwrap_or_default()
    ))
}

/// Refuses a shared collection the move cannot select the tenant's documents in exactly as the proxy does: one
/// whose default collation is not simple (unless no collation can make two tenants' values equal), or one where
/// a document the tenant's condition matches has an array for a tenant field (MongoDB's `$eq` matches an array
/// holding the value: that document is read by every tenant it names).
async fn check_shared(
    client: &mut ServiceClient,
    place: &Place,
    value: &crate::policy::TenantValue,
    collation_safe: bool,
) -> Result<(), MoveError> {
    let Some(field) = &place.field else { return Ok(()) };
    if !collation_safe {
        let collections = client.list_collections(&place.db).await?;
        let info = collections.iter().find(|c| c.name == place.coll);
        if let Some(info) = info.filter(|info| !is_simple(&info.options)) {
            return Err(MoveError::Plan(format!(
                "{}: the {} collection has a non-simple default collation, under which the proxy's tenant \
                 condition can match other tenants' values, and this policy's tenant values are not provably \
                 distinct under every collation (collation_safe); the move cannot select the tenant's documents \
                 exactly",
                place.namespace(),
                info.kind
            )));
        }
    }
    let mut clauses = bson::RawArrayBuf::new();
    clauses.push(filter_of(place, value)?);
    clauses.push(replace_fields(
        &RawDocumentBuf::new(),
        &[(field.as_str(), Some(RawBson::Document(bson::rawdoc! { "$type": "array" })))],
    ));
    let arrays = bson::rawdoc! { "$and": clauses };
    let mut cursor = open(client, place, value, Some(arrays), 1).await?;
    let any = cursor.next_batch(client).await?.is_some_and(|b| !b.is_empty());
    cursor.close(client).await?;
    if any {
        return Err(not_exact(place));
    }
    Ok(())
}

/// Whether collection options leave the default collation simple.
fn is_simple(options: &RawDocument) -> bool {
    match options.get("collation") {
        Ok(None) => true,
        Ok(Some(bson::RawBsonRef::Document(c))) => c.get_str("locale").is_ok_and(|l| l == "simple"),
        _ => false,
    }
}

/// Removes the tenant's copy at `place`: its documents in a shared collection, or its own collection.
async fn remove_copy(
    client: &mut ServiceClient,
    place: &Place,
    value: &crate::policy::TenantValue,
) -> Result<(), MoveError> {
    match &place.field {
        Some(_) => {
            // Never delete a document another tenant reads too.
            check_shared(client, place, value, true).await?;
            let filter = filter_of(place, value)?;
            let body = bson::rawdoc! {
                "delete": place.coll.as_str(),
                "deletes": [{ "q": filter, "limit": 0, "collation": simple() }],
            };
            client.command(&place.db, body).await?;
        }
        None => match client.command(&place.db, bson::rawdoc! { "drop": place.coll.as_str() }).await {
            Ok(_) => {}
            // Nothing to drop.
            Err(ClientError::Command { code: 26, .. }) => {}
            Err(ClientError::Command { message, .. }) if message.to_ascii_lowercase().contains("not found") => {}
            Err(e) => return Err(e.into()),
        },
    }
    Ok(())
}

/// Copies, indexes and verifies every step; for each, the number of documents copied and their digest.
async fn copy_all(
    steps: &[Step],
    clients: &mut Clients,
    (new, tenant): (&Policy, &Tenant),
    progress: &mut dyn FnMut(String),
) -> Result<Vec<(u64, [u8; 32])>, MoveError> {
    let value = &tenant.value;
    let mut verified = Vec::with_capacity(steps.len());
    for step in steps {
        let copied = copy(step, clients, value).await?;
        let indexes = planned_indexes(step, &mut clients.source, new, tenant).await?;
        if !indexes.is_empty() {
            let mut create = bson::RawArrayBuf::new();
            for index in indexes {
                create.push(index);
            }
            let body = bson::rawdoc! { "createIndexes": step.to.coll.as_str(), "indexes": create };
            clients.dest.command(&step.to.db, body).await?;
        }
        let (source_count, source_digest) = digest_of(&mut clients.source, &step.from, value).await?;
        let (dest_count, dest_digest) = digest_of(&mut clients.dest, &step.to, value).await?;
        if source_count != copied || dest_count != source_count {
            return Err(MoveError::Verify {
                namespace: step.visible.clone(),
                detail: format!(
                    "{source_count} documents at the source, {copied} copied, {dest_count} at the destination"
                ),
            });
        }
        if source_digest != dest_digest {
            return Err(MoveError::Verify {
                namespace: step.visible.clone(),
                detail: "the documents at the destination differ from the source".into(),
            });
        }
        progress(format!("copied {}: {copied} documents, digest {}", step.visible, hex(&source_digest)));
        verified.push((copied, source_digest));
    }
    Ok(verified)
}

/// `--delete-source`, after the switch: removes the tenant's copy at `place` only while it is exactly the set
/// that was copied and verified (same count, same digest, every tenant field exactly the tenant's value), and
/// checks that the delete removed exactly that many documents. After the switch the proxy sends none of the
/// tenant's writes here and stamps every other tenant's writes with their own value, so only a writer that
/// bypasses the proxy could change the set between this check and the delete; the count tells if one did.
async fn delete_source(
    client: &mut ServiceClient,
    place: &Place,
    value: &crate::policy::TenantValue,
    (copied, copied_digest): (u64, [u8; 32]),
) -> Result<(), MoveError> {
    check_shared(client, place, value, true).await?;
    let (count, digest) = digest_of(client, place, value).await?;
    if count != copied || digest != copied_digest {
        return Err(MoveError::Verify {
            namespace: place.namespace(),
            detail: format!(
                "the source changed since it was copied ({count} documents now, {copied} copied); nothing deleted"
            ),
        });
    }
    if place.field.is_none() {
        return remove_copy(client, place, value).await;
    }
    let body = bson::rawdoc! {
        "delete": place.coll.as_str(),
        "deletes": [{ "q": filter_of(place, value)?, "limit": 0, "collation": simple() }],
    };
    let reply = client.command(&place.db, body).await?;
    let deleted = match reply.get("n") {
        Ok(Some(bson::RawBsonRef::Int32(n))) => u64::try_from(n).ok(),
        Ok(Some(bson::RawBsonRef::Int64(n))) => u64::try_from(n).ok(),
        _ => None,
    };
    if deleted != Some(copied) || reply.get("writeErrors").ok().flatten().is_some() {
        return Err(MoveError::Verify {
            namespace: place.namespace(),
            detail: format!(
                "{} documents deleted where {copied} were copied: a writer outside the proxy changed the source",
                deleted.map_or_else(|| "an unknown number of".to_owned(), |n| n.to_string())
            ),
        });
    }
    Ok(())
}

/// `doc` as it is stored at `to`: the tenant field removed, then stamped again when `to` is field mode.
fn reshape(
    doc: &RawDocument,
    from: &Place,
    to: &Place,
    value: &crate::policy::TenantValue,
) -> Result<RawDocumentBuf, MoveError> {
    let mut out = match &from.field {
        Some(field) => replace_fields(doc, &[(field.as_str(), None)]),
        None => doc.to_owned(),
    };
    if let Some(field) = &to.field {
        let value = RawBson::try_from(value.bson().clone()).map_err(|e| MoveError::Plan(e.to_string()))?;
        out = replace_fields(&out, &[(field.as_str(), Some(value))]);
    }
    Ok(out)
}

/// Copies the tenant's documents of one step in batches, ids kept; the number copied.
async fn copy(step: &Step, clients: &mut Clients, value: &crate::policy::TenantValue) -> Result<u64, MoveError> {
    let mut cursor = open(&mut clients.source, &step.from, value, None, DEFAULT_BATCH_SIZE).await?;
    let mut copied = 0u64;
    while let Some(batch) = cursor.next_batch(&mut clients.source).await? {
        if batch.is_empty() {
            continue;
        }
        let mut documents = bson::RawArrayBuf::new();
        for doc in &batch {
            check_tenant_field(doc, &step.from, value)?;
            documents.push(reshape(doc, &step.from, &step.to, value)?);
        }
        let body = bson::rawdoc! { "insert": step.to.coll.as_str(), "documents": documents, "ordered": true };
        let reply = clients.dest.command(&step.to.db, body).await?;
        let inserted = match reply.get("n") {
            Ok(Some(bson::RawBsonRef::Int32(n))) => u64::try_from(n).unwrap_or(0),
            Ok(Some(bson::RawBsonRef::Int64(n))) => u64::try_from(n).unwrap_or(0),
            _ => 0,
        };
        if reply.get("writeErrors").ok().flatten().is_some() || inserted != batch.len() as u64 {
            return Err(MoveError::Verify {
                namespace: step.visible.clone(),
                detail: format!("{} of {} documents of a batch were inserted", inserted, batch.len()),
            });
        }
        copied += inserted;
    }
    Ok(copied)
}

/// The source's indexes as the destination needs them, each exactly as the proxy would create it if the tenant
/// sent `createIndexes` for it on its visible namespace under the new policy (the same checks, the same
/// rewrite: on a shared collection no TTL or partial index, a unique index made per tenant as
/// `{<field>: 1, ...key}`, unique on the tenant field alone refused, a collation checked). From a shared
/// collection into the tenant's own, the tenant field leaves the key (a per-tenant unique index
/// `{<field>: 1, sku: 1}` is the plain unique `{sku: 1}`; an index on the tenant field alone means nothing
/// there). Every option is carried; an index that cannot be carried stops the move, naming it.
async fn planned_indexes(
    step: &Step,
    source: &mut ServiceClient,
    new: &Policy,
    tenant: &Tenant,
) -> Result<Vec<RawDocumentBuf>, MoveError> {
    let specs = match source.list_indexes(&step.from.db, &step.from.coll).await {
        Ok(specs) => specs,
        Err(e) if e.is_unsupported() => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for spec in &specs {
        if let Some(index) = index_for(step, spec, new, tenant)? {
            out.push(index);
        }
    }
    Ok(out)
}

/// One source index as it is to be created at the destination; `None` when it is not carried (`_id`, a
/// clustered collection's key, an index on the tenant field alone leaving a shared collection).
fn index_for(
    step: &Step,
    spec: &RawDocument,
    new: &Policy,
    tenant: &Tenant,
) -> Result<Option<RawDocumentBuf>, MoveError> {
    let ns = step.from.namespace();
    let name = spec.get_str("name").map_err(|_| MoveError::Plan(format!("{ns}: an index without a name")))?;
    let refuse = |why: String| MoveError::Plan(format!("{ns}: index {name} {why}; the move stops before the hold"));
    let key = spec.get_document("key").map_err(|_| refuse("has no key document".into()))?;
    if name == "_id_" || matches!(spec.get("clustered"), Ok(Some(bson::RawBsonRef::Boolean(true)))) {
        return Ok(None);
    }
    let mut edits: Vec<(&str, Option<RawBson>)> = vec![("ns", None)];
    if let (Some(field), None) = (&step.from.field, &step.to.field) {
        if spec.get("partialFilterExpression").ok().flatten().is_some() {
            // Written for a collection of every tenant (the proxy never lets a tenant create one there, and never
            // shows one to a tenant): its values may be other tenants'.
            return Err(refuse(
                "of the shared collection has a partialFilterExpression, which may name other tenants and which \
                 the proxy never shows a tenant: it cannot follow the tenant into its own collection (create the \
                 index there after the move, or drop it)"
                    .into(),
            ));
        }
        if crate::engine::first_key(key) == field.as_str() {
            let rest = replace_fields(key, &[(field.as_str(), None)]);
            if rest.is_empty() {
                return Ok(None);
            }
            // A name that was the default name of the whole key becomes that of the key left.
            if name == crate::engine::ddl::default_index_name(key) {
                edits.push(("name", Some(RawBson::String(crate::engine::ddl::default_index_name(&rest)))));
            }
            edits.push(("key", Some(RawBson::Document(rest))));
        }
    }
    let index = replace_fields(spec, &edits);
    // The proxy's decision for the tenant's own `createIndexes` of this index at the destination.
    let mut indexes = bson::RawArrayBuf::new();
    indexes.push(index);
    let body = bson::rawdoc! { "createIndexes": step.vcoll.as_str(), "indexes": indexes, "$db": step.vdb.as_str() };
    let msg = tenantwall_protocol::OpMsg::new(tenantwall_protocol::MsgFlags::default(), body);
    let plan = match crate::engine::decide::decide(&msg, Command::CreateIndexes, Some(tenant), new) {
        Decision::Forward(plan) => *plan,
        Decision::Deny(denial) => {
            return Err(refuse(format!("would be refused by the proxy at {}: {}", step.visible, denial.reason)))
        }
        Decision::Local(_) => return Err(refuse("is not a command the proxy forwards".into())),
    };
    if !plan.audit.is_empty() {
        return Err(refuse(format!("would be refused under enforce at {}: {}", step.visible, plan.audit.join("; "))));
    }
    let forwarded = plan.forward.as_ref().unwrap_or(&msg).body();
    let at = (forwarded.get_str("$db").unwrap_or(&step.vdb), forwarded.get_str("createIndexes").unwrap_or_default());
    if at != (step.to.db.as_str(), step.to.coll.as_str()) {
        return Err(refuse(format!("would be created elsewhere than {} by the proxy", step.to.namespace())));
    }
    let index = forwarded
        .get_array("indexes")
        .ok()
        .and_then(|a| a.into_iter().next())
        .and_then(|i| i.ok())
        .and_then(|i| i.as_document())
        .ok_or_else(|| refuse("has no forwarded form".into()))?;
    Ok(Some(index.to_owned()))
}

/// The number of the tenant's documents at `place` and their digest: SHA-256 of each document's bytes with
/// the tenant field removed, summed modulo 2^256. The sum does not depend on the order documents come in, so
/// it needs no sort that two servers might order differently (mixed-type ids), and it reads one batch at a
/// time.
async fn digest_of(
    client: &mut ServiceClient,
    place: &Place,
    value: &crate::policy::TenantValue,
) -> Result<(u64, [u8; 32]), MoveError> {
    let mut cursor = open(client, place, value, None, DEFAULT_BATCH_SIZE).await?;
    let (mut count, mut sum) = (0u64, [0u8; 32]);
    while let Some(batch) = cursor.next_batch(client).await? {
        for doc in &batch {
            check_tenant_field(doc, place, value)?;
            let bare = match &place.field {
                Some(field) => replace_fields(doc, &[(field.as_str(), None)]),
                None => doc.clone(),
            };
            let hash = digest::digest(&digest::SHA256, bare.as_bytes());
            add_into(&mut sum, hash.as_ref());
            count += 1;
        }
    }
    Ok((count, sum))
}

/// `sum += term` as 256-bit big-endian numbers, modulo 2^256.
fn add_into(sum: &mut [u8; 32], term: &[u8]) {
    let mut carry = 0u16;
    for (s, t) in sum.iter_mut().rev().zip(term.iter().rev()) {
        let total = u16::from(*s) + u16::from(*t) + carry;
        *s = (total & 0xff) as u8;
        carry = total >> 8;
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The proxy's admin listener, with the policy's bearer token.
struct Admin {
    address: SocketAddr,
    token: Option<crate::policy::Secret>,
}

impl Admin {
    fn new(policy: &Policy, address: Option<SocketAddr>) -> Result<Self, MoveError> {
        let settings = policy.admin.as_ref();
        let mut address = address
            .or(settings.map(|a| a.address))
            .ok_or_else(|| MoveError::Admin("the policy has no [admin] listener; pass --admin".into()))?;
        if address.ip().is_unspecified() {
            address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let token = settings.and_then(|a| a.token.clone());
        if token.is_none() {
            return Err(MoveError::Admin("admin actions need [admin] token_env set here and in the proxy".into()));
        }
        Ok(Self { address, token })
    }

    /// One `POST`; the JSON body of a reply, whatever its status (the body says what went wrong).
    async fn post(&self, path: &str) -> Result<serde_json::Value, MoveError> {
        let token = self.token.as_ref().map(|t| t.expose()).unwrap_or_default();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.address
        );
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(self.address).await?;
            stream.write_all(request.as_bytes()).await?;
            let mut reply = Vec::new();
            stream.take(64 * 1024).read_to_end(&mut reply).await?;
            Ok::<_, std::io::Error>(reply)
        };
        // A hold may wait up to its bound for commands in flight.
        let reply = tokio::time::timeout(crate::gate::MAX_HOLD + Duration::from_secs(10), exchange)
            .await
            .map_err(|_| MoveError::Admin("no answer".into()))?
            .map_err(|e| MoveError::Admin(format!("{}: {e}", self.address)))?;
        let text = String::from_utf8_lossy(&reply);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.split(' ').nth(1).unwrap_or("?");
        match serde_json::from_str::<serde_json::Value>(body.trim()) {
            Ok(json) => Ok(json),
            Err(_) => Err(MoveError::Admin(format!("{path}: HTTP {status}: {}", body.trim()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_is_a_sum_that_ignores_order() {
        let (a, b) = (digest::digest(&digest::SHA256, b"a"), digest::digest(&digest::SHA256, b"b"));
        let (mut ab, mut ba) = ([0u8; 32], [0u8; 32]);
        add_into(&mut ab, a.as_ref());
        add_into(&mut ab, b.as_ref());
        add_into(&mut ba, b.as_ref());
        add_into(&mut ba, a.as_ref());
        assert_eq!(ab, ba);
        let mut wrap = [0xff; 32];
        let mut one = [0u8; 32];
        one[31] = 1;
        add_into(&mut wrap, &one);
        assert_eq!(wrap, [0u8; 32], "modulo 2^256");
    }

    #[test]
    fn the_mover_selects_with_the_proxys_condition_and_takes_only_exact_tenant_fields() {
        let value = crate::policy::TenantValue::new(bson::Bson::String("acme".into())).unwrap();
        let shared =
            Place { backend: "a".into(), db: "app".into(), coll: "orders".into(), field: Some("tenantId".into()) };
        assert_eq!(filter_of(&shared, &value).unwrap(), bson::rawdoc! { "tenantId": { "$eq": "acme" } });
        assert!(check_tenant_field(&bson::rawdoc! { "_id": 1, "tenantId": "acme" }, &shared, &value).is_ok());
        for doc in [
            bson::rawdoc! { "_id": 1, "tenantId": ["acme", "globex"] },
            bson::rawdoc! { "_id": 1, "tenantId": ["acme"] },
            bson::rawdoc! { "_id": 1, "tenantId": "ACME" },
            bson::rawdoc! { "_id": 1 },
            bson::rawdoc! { "_id": 1, "tenantId": "acme", "tenantId": "globex" },
        ] {
            let refused = check_tenant_field(&doc, &shared, &value).unwrap_err().to_string();
            assert!(!refused.contains("globex") && !refused.contains("ACME"), "no value printed: {refused}");
        }
        // Numeric tenant values compare as the server compares them.
        let five = crate::policy::TenantValue::new(bson::Bson::Int64(5)).unwrap();
        assert!(check_tenant_field(&bson::rawdoc! { "tenantId": 5 }, &shared, &five).is_ok());
        assert!(check_tenant_field(&bson::rawdoc! { "tenantId": [5] }, &shared, &five).is_err());
        // A collection's default collation.
        assert!(is_simple(&bson::rawdoc! {}));
        assert!(is_simple(&bson::rawdoc! { "collation": { "locale": "simple" } }));
        assert!(!is_simple(&bson::rawdoc! { "collation": { "locale": "en", "strength": 2 } }));
        assert!(!is_simple(&bson::rawdoc! { "collation": "en" }));
    }

    const POLICY: &str = "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n\
        [[backends]]\nname = \"main\"\nuri = \"mongodb://127.0.0.1:1\"\n\n\
        [[tenants]]\nid = \"acme\"\nbackend = \"main\"\n\n\
        [[tenants]]\nid = \"globex\"\nbackend = \"main\"\n\n\
        [[rules]]\ndatabase = \"app\"\ncollection = \"*\"\nmode = \"field\"\n";

    fn places() -> (Place, Place) {
        let shared =
            Place { backend: "main".into(), db: "app".into(), coll: "orders".into(), field: Some("tenantId".into()) };
        let own = Place { backend: "main".into(), db: "acme_app".into(), coll: "orders".into(), field: None };
        (shared, own)
    }

    fn step(from: Place, to: Place) -> Step {
        Step { visible: "app.orders".into(), vdb: "app".into(), vcoll: "orders".into(), from, to }
    }

    #[test]
    fn indexes_created_in_a_shared_collection_pass_the_proxys_own_checks() {
        let policy = Policy::from_toml(POLICY, std::path::Path::new("p.toml")).unwrap();
        let acme = policy.tenant("acme").unwrap().clone();
        let (shared, own) = places();
        let back = step(own, shared);
        let index = |spec: RawDocumentBuf| index_for(&back, &spec, &policy, &acme);
        // Unique: made per tenant, as the proxy makes it; other options carried.
        let unique = index(bson::rawdoc! { "v": 2, "key": { "sku": 1 }, "name": "sku_u", "unique": true, "ns": "x" });
        assert_eq!(
            unique.unwrap().unwrap(),
            bson::rawdoc! { "v": 2, "key": { "tenantId": 1, "sku": 1 }, "name": "sku_u", "unique": true }
        );
        let plain = index(bson::rawdoc! { "key": { "at": -1 }, "name": "at", "hidden": true });
        assert_eq!(plain.unwrap().unwrap(), bson::rawdoc! { "key": { "at": -1 }, "name": "at", "hidden": true });
        let text = bson::rawdoc! { "key": { "_fts": "text", "_ftsx": 1 }, "name": "t", "weights": { "a": 3 } };
        assert_eq!(index(text.clone()).unwrap().unwrap(), text);
        // Refused, naming the index: TTL, partial, unique on the tenant field alone, unknown options.
        for (spec, name) in [
            (bson::rawdoc! { "key": { "at": 1 }, "name": "ttl", "expireAfterSeconds": 0 }, "ttl"),
            (bson::rawdoc! { "key": { "at": 1 }, "name": "part", "partialFilterExpression": { "a": 1 } }, "part"),
            (bson::rawdoc! { "key": { "tenantId": 1 }, "name": "one", "unique": true }, "one"),
            (bson::rawdoc! { "key": { "at": 1 }, "name": "odd", "storageEngine": {} }, "odd"),
        ] {
            let refused = index(spec).unwrap_err().to_string();
            assert!(refused.contains(&format!("index {name} ")), "{refused}");
        }
    }

    #[test]
    fn indexes_leaving_a_shared_collection_lose_the_tenant_field_and_keep_their_options() {
        let to = placement::Destination::parse("database").unwrap();
        let moved = placement::edit(POLICY, std::path::Path::new("p.toml"), "acme", &to).unwrap();
        let policy = Policy::from_toml(&moved, std::path::Path::new("p.toml")).unwrap();
        let acme = policy.tenant("acme").unwrap().clone();
        let (shared, own) = places();
        let out = step(shared, own);
        let index = |spec: RawDocumentBuf| index_for(&out, &spec, &policy, &acme);
        let unique = bson::rawdoc! { "key": { "tenantId": 1, "sku": 1 }, "name": "sku_u", "unique": true };
        assert_eq!(
            index(unique).unwrap().unwrap(),
            bson::rawdoc! { "key": { "sku": 1 }, "name": "sku_u", "unique": true }
        );
        let default_named = bson::rawdoc! { "key": { "tenantId": 1, "at": 1 }, "name": "tenantId_1_at_1" };
        assert_eq!(index(default_named).unwrap().unwrap(), bson::rawdoc! { "key": { "at": 1 }, "name": "at_1" });
        assert_eq!(index(bson::rawdoc! { "key": { "tenantId": 1 }, "name": "tenantId_1" }).unwrap(), None);
        assert_eq!(index(bson::rawdoc! { "key": { "_id": 1 }, "name": "_id_" }).unwrap(), None);
        let ttl = bson::rawdoc! { "key": { "at": 1 }, "name": "ttl", "expireAfterSeconds": 60, "collation": { "locale": "fr" } };
        assert_eq!(index(ttl.clone()).unwrap().unwrap(), ttl, "its own collection: carried whole");
        let partial =
            bson::rawdoc! { "key": { "at": 1 }, "name": "p", "partialFilterExpression": { "tenantId": "globex" } };
        let refused = index(partial).unwrap_err().to_string();
        assert!(refused.contains("index p ") && !refused.contains("globex"), "{refused}");
    }

    #[test]
    fn documents_lose_or_gain_the_tenant_field() {
        let value = crate::policy::TenantValue::new(bson::Bson::String("acme".into())).unwrap();
        let shared =
            Place { backend: "a".into(), db: "app".into(), coll: "orders".into(), field: Some("tenantId".into()) };
        let own = Place { backend: "b".into(), db: "acme_app".into(), coll: "orders".into(), field: None };
        let doc = bson::rawdoc! { "_id": 1, "tenantId": "acme", "total": 5 };
        let moved = reshape(&doc, &shared, &own, &value).unwrap();
        assert_eq!(moved, bson::rawdoc! { "_id": 1, "total": 5 });
        let back = reshape(&moved, &own, &shared, &value).unwrap();
        assert_eq!(back, bson::rawdoc! { "_id": 1, "total": 5, "tenantId": "acme" });
    }
}
