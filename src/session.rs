//! State bound to tenants: logical sessions and cursors.
//!
//! Sessions are virtualised, not tracked: every `lsid` a tenant sends is replaced by one derived from the tenant
//! and the original (`SHA-256("tenantwall lsid\0" ‖ tenant ‖ "\0" ‖ id)`, first 16 bytes, as a UUID). Two tenants
//! presenting the same lsid therefore reach different server sessions, and no tenant can name another's session
//! or transaction; the mapping is the same on every proxy instance, so it survives a client moving between
//! proxies behind a load balancer. For a tenant with rules of its own, the tenant part is its
//! [`crate::policy::Tenant::session_key`], which changes when `tenantwall move` changes those rules: sessions
//! (and transactions) begun on the old placement do not continue on the new one. Each worker thread remembers
//! the ids it derived lately (bounded, least recently used out): a cache of a pure function, so it changes
//! nothing of the above, and a new proxy instance derives the same ids.
//!
//! Cursors are tracked: the server cannot tell tenants apart when the proxy uses one backend user, so the proxy
//! records which tenant each cursor id was returned to and refuses `getMore`/`killCursors` on any other id with
//! the same error as a cursor that does not exist. Records expire with the server's idle cursor timeout, and the
//! table is bounded overall and per tenant (least recently used records go first).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bson::spec::BinarySubtype;
use bson::{cstr, RawArrayBuf, RawBson, RawBsonRef, RawDocument, RawDocumentBuf};
use lru::LruCache;
use ring::digest;
use tenantwall_protocol::fields::Fields;
use tenantwall_protocol::validate::{Element, Elements};
use tenantwall_protocol::OpMsg;

use crate::engine::raw::replace_fields;
use crate::engine::Denial;
use crate::error::ErrorCode;

/// Server-side idle cursors time out after 10 minutes by default; keep records a while longer.
const CURSOR_TTL: Duration = Duration::from_secs(30 * 60);

/// The tenant's own lsid id for `id`.
pub fn virtual_lsid(tenant: &str, id: &[u8]) -> Vec<u8> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"tenantwall lsid\0");
    ctx.update(tenant.as_bytes());
    ctx.update(b"\0");
    ctx.update(id);
    let hash = ctx.finish();
    let mut out = hash.as_ref()[..16].to_vec();
    // Keep it a well-formed version-4 UUID, as drivers generate.
    out[6] = (out[6] & 0x0f) | 0x40;
    out[8] = (out[8] & 0x3f) | 0x80;
    out
}

/// Virtual ids a thread computed lately. Drivers pool their sessions, so the same few lsids come back command
/// after command, and the SHA-256 is most of what virtualising one costs; the mapping is a pure function of the
/// key, so a hit is exactly what computing it again would give. Bounded per thread.
struct RecentLsids {
    /// Key: the tenant part, a NUL, then the 16-byte id (the id's length is fixed, so the split is never in
    /// doubt); value: the virtual id.
    map: LruCache<Box<[u8]>, [u8; 16]>,
    /// The key being looked up, built here so that a hit allocates nothing.
    scratch: Vec<u8>,
}

/// Entries of [`RecentLsids`] per thread: about 64 KiB at most.
const RECENT_LSIDS: usize = 512;

thread_local! {
    static RECENT: std::cell::RefCell<RecentLsids> = std::cell::RefCell::new(RecentLsids {
        map: LruCache::new(std::num::NonZeroUsize::new(RECENT_LSIDS).unwrap_or(std::num::NonZeroUsize::MIN)),
        scratch: Vec::new(),
    });
}

/// [`virtual_lsid`] of a 16-byte id, remembered per thread ([`RecentLsids`]).
fn virtual_uuid(tenant: &str, id: &[u8; 16]) -> [u8; 16] {
    let compute = || {
        let mut out = [0u8; 16];
        // Cannot panic: a virtual id is always the first 16 bytes of a SHA-256.
        out.copy_from_slice(&virtual_lsid(tenant, id));
        out
    };
    // `try_with`: a thread being torn down has no memory left, and computes.
    RECENT
        .try_with(|recent| {
            let Ok(mut recent) = recent.try_borrow_mut() else { return compute() };
            let RecentLsids { map, scratch } = &mut *recent;
            scratch.clear();
            scratch.extend_from_slice(tenant.as_bytes());
            scratch.push(0);
            scratch.extend_from_slice(id);
            if let Some(hit) = map.get(scratch.as_slice()) {
                return *hit;
            }
            let computed = compute();
            map.put(scratch.as_slice().into(), computed);
            computed
        })
        .unwrap_or_else(|_| compute())
}

/// The only session shape forwarded: a document whose one field `id` is a UUID (binary subtype 4, 16 bytes),
/// as every driver sends and as mongod requires. Anything else would be re-derived into a valid id the server
/// would never have accepted (or dropped, turning the command session-less), so it is refused: the proxy must
/// not read a session differently from the server.
fn check_lsid(lsid: RawBsonRef<'_>, place: &str) -> Result<(), Denial> {
    let wrong = |what: &str| Denial::new(ErrorCode::TYPE_MISMATCH, format!("{place} must be {what}"));
    let RawBsonRef::Document(lsid) = lsid else { return Err(wrong("a document")) };
    let mut fields = 0;
    for element in lsid.iter_elements() {
        let element = element.map_err(|e| Denial::new(ErrorCode::FAILED_TO_PARSE, e.to_string()))?;
        fields += 1;
        if element.key().as_str() != "id" {
            return Err(Denial::new(
                ErrorCode::UNKNOWN_FIELD,
                format!(
                    "BSON field '{place}.{}' is an unknown field (a session is {{id: UUID}})",
                    element.key().as_str()
                ),
            ));
        }
        match element.value() {
            Ok(RawBsonRef::Binary(id)) if id.subtype == BinarySubtype::Uuid && id.bytes.len() == 16 => {}
            _ => return Err(wrong("{id: UUID} (binary subtype 4, 16 bytes)")),
        }
    }
    if fields != 1 {
        return Err(wrong("{id: UUID}"));
    }
    Ok(())
}

/// Checks `endSessions`' list: an array of sessions, each as [`check_lsid`] requires.
fn check_end_sessions(list: RawBsonRef<'_>) -> Result<(), Denial> {
    let RawBsonRef::Array(list) = list else {
        return Err(Denial::new(ErrorCode::TYPE_MISMATCH, "endSessions takes an array of sessions"));
    };
    for lsid in list {
        let lsid = lsid.map_err(|e| Denial::new(ErrorCode::FAILED_TO_PARSE, e.to_string()))?;
        check_lsid(lsid, "endSessions")?;
    }
    Ok(())
}

fn virtual_lsid_doc(tenant: &str, lsid: &RawDocument) -> Option<RawDocumentBuf> {
    let id = match lsid.get("id") {
        Ok(Some(RawBsonRef::Binary(bin))) => bin.bytes,
        _ => return None,
    };
    let new_id = bson::Binary { subtype: BinarySubtype::Uuid, bytes: virtual_lsid(tenant, id) };
    Some(replace_fields(lsid, &[("id", Some(RawBson::Binary(new_id)))]))
}

/// How many `lsid` fields `body` has (0, 1, or 2 for more than one) and whether it has an `endSessions` field
/// (2 and "yes" when its keys cannot be read), so that only those present are looked up. A parsed body answers
/// both from the places its validation noted ([`Fields::occurrences`]); a built one in one pass over its keys.
fn session_fields(body: Fields<'_>) -> (u8, bool) {
    if body.is_indexed() {
        return match (body.occurrences(b"lsid"), body.occurrences(b"endSessions")) {
            (Some(lsids), Some(end_sessions)) => (lsids, end_sessions > 0),
            _ => (2, true),
        };
    }
    let (mut lsids, mut end_sessions) = (0u8, false);
    let read = body.all_keys(|key| {
        lsids = (lsids + u8::from(key == b"lsid")).min(2);
        end_sessions |= key == b"endSessions";
        true
    });
    if read.is_none() {
        return (2, true);
    }
    (lsids, end_sessions)
}

/// `msg` with every lsid (the generic `lsid` argument, and the list of `endSessions`) replaced by the tenant's
/// own. `None` when the command carries no session; a denial when a session is not shaped as mongod requires
/// ([`check_lsid`]).
pub fn virtualize(msg: &OpMsg, tenant: &str) -> Result<Option<OpMsg>, Denial> {
    let mut forward = None;
    bind(&mut forward, msg, tenant)?;
    Ok(forward)
}

/// [`virtualize`] for the command about to be forwarded: `forward` when a rewrite made it, else `msg`, whose
/// bound copy is then put in `forward` (left `None` when there is no session to bind). A message in `forward`
/// is the caller's own, so the shape every driver sends on every command is patched in it where it is,
/// without copying its body once more.
pub fn bind(forward: &mut Option<OpMsg>, msg: &OpMsg, tenant: &str) -> Result<(), Denial> {
    let base = forward.as_ref().unwrap_or(msg);
    let found = session_fields(base.body_fields());
    let (lsids, end_sessions) = found;
    if lsids == 0 && !end_sessions {
        return Ok(());
    }
    if let Some(id) = patchable(base, found) {
        let id = virtual_uuid(tenant, &id);
        let rewritten = forward.is_some();
        // Cannot fail: `patchable` read exactly the shape `overwrite_binary` requires. Were it ever to, the
        // message would be as it was and the general path below would rebuild it.
        if forward.get_or_insert_with(|| msg.clone()).overwrite_binary("lsid", "id", &id) {
            return Ok(());
        }
        if !rewritten {
            *forward = None;
        }
    }
    let base = forward.as_ref().unwrap_or(msg);
    let body = base.body_fields();
    let lsid = (lsids > 0).then(|| crate::engine::raw::get(body, "lsid").ok().flatten()).flatten();
    if let Some(value) = lsid {
        check_lsid(value, "lsid")?;
    }
    let end_sessions = end_sessions.then(|| crate::engine::raw::get(body, "endSessions").ok().flatten()).flatten();
    if let Some(value) = end_sessions {
        check_end_sessions(value)?;
    }
    if let Some(bound) = rebuilt(base, found, tenant) {
        *forward = Some(bound);
    }
    Ok(())
}

/// The bytes of an `lsid` value that [`check_lsid`] accepts, up to its id's 16 bytes: the document's length
/// (30), one element `id` that is a binary of 16 bytes of subtype 4 (UUID). After the id, the document's NUL.
const LSID_HEAD: [u8; 13] = [30, 0, 0, 0, 0x05, b'i', b'd', 0, 16, 0, 0, 0, 0x04];

/// The id of the session when `msg` has the shape every driver sends on every command (one `lsid` that is
/// `{id: UUID}`, and no `endSessions`, as [`session_fields`] found them: `found`). Overwriting those 16 bytes
/// where they sit gives the same bytes [`rebuilt`] produces, instead of re-serialising the session document
/// and the body around it: a session that `check_lsid` accepts has exactly these bytes, so only those are
/// compared. `None` for any other shape, which the general path then checks and rebuilds.
fn patchable(msg: &OpMsg, found: (u8, bool)) -> Option<[u8; 16]> {
    if found != (1, false) {
        return None;
    }
    let body = msg.body_fields();
    let span = body.unique_field_span(b"lsid")??;
    // The element: its type byte, `lsid` and its NUL, then the value.
    let element = body.bytes().get(span)?;
    let value = element.get(6..)?;
    let (head, rest) = value.split_first_chunk::<13>()?;
    let (uuid, end) = rest.split_first_chunk::<16>()?;
    if element.first() != Some(&0x03) || *head != LSID_HEAD || end != [0] {
        return None;
    }
    Some(*uuid)
}

/// [`virtualize`] by rebuilding: each lsid document made anew with the tenant's id, and the body around them.
/// `found` is what [`session_fields`] found in `msg`.
fn rebuilt(msg: &OpMsg, found: (u8, bool), tenant: &str) -> Option<OpMsg> {
    let body = msg.body_fields();
    let (lsids, end_sessions) = found;
    let mut edits: Vec<(&str, Option<RawBson>)> = Vec::new();
    if let Some(Ok(Some(RawBsonRef::Document(lsid)))) = (lsids > 0).then(|| crate::engine::raw::get(body, "lsid")) {
        edits.push(("lsid", virtual_lsid_doc(tenant, lsid).map(RawBson::Document)));
    }
    if let Some(Ok(Some(RawBsonRef::Array(list)))) = end_sessions.then(|| crate::engine::raw::get(body, "endSessions"))
    {
        let mut out = RawArrayBuf::new();
        for lsid in list.into_iter().filter_map(|v| v.ok()) {
            if let Some(new) = lsid.as_document().and_then(|d| virtual_lsid_doc(tenant, d)) {
                out.push(new);
            }
        }
        edits.push(("endSessions", Some(RawBson::Array(out))));
    }
    if edits.is_empty() {
        return None;
    }
    // A malformed lsid would be dropped here, never forwarded; [`virtualize`] has refused those already.
    Some(OpMsg::with_sequences(msg.flags, replace_fields(body.doc(), &edits), msg.sequences().to_vec()))
}

/// `(backend, cursor id)`, the backend named by a small number so that lookups do not allocate.
type CursorKey = (u32, i64);

struct CursorRecord {
    tenant: Arc<str>,
    last_used: Instant,
    plan: Arc<CursorPlan>,
}

/// What every reply of a cursor needs: the plan of the command that opened it (a listCollections continued by
/// getMore is filtered like its first batch), and the namespace the server reported for it, which a getMore
/// must name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CursorPlan {
    pub reply: crate::engine::ReplyPlan,
    /// `cursor.ns` of the reply that opened the cursor (real names), when the server sent one.
    pub ns: Option<String>,
}

/// Which tenant each open cursor belongs to, per backend.
///
/// Bounded: at most `max_total` records, and at most `max_per_tenant` per tenant. A new cursor beyond either
/// bound evicts the least recently used record (the tenant's own when the tenant is at its quota), so one
/// tenant opening cursors without end only ever loses its own oldest ones. Every operation is O(1): two LRU
/// lists (all records, and each tenant's) kept in step under one lock, and no sweeps; stale records expire on
/// use and are the first evicted.
pub struct Cursors {
    inner: Mutex<CursorTable>,
}

struct CursorTable {
    backends: HashMap<String, u32>,
    all: LruCache<CursorKey, CursorRecord>,
    per_tenant: HashMap<Arc<str>, LruCache<CursorKey, ()>>,
    max_total: usize,
    max_per_tenant: usize,
    evicted: u64,
}

impl CursorTable {
    fn backend(&mut self, name: &str) -> u32 {
        if let Some(id) = self.backends.get(name) {
            return *id;
        }
        let id = u32::try_from(self.backends.len()).unwrap_or(u32::MAX);
        self.backends.insert(name.to_owned(), id);
        id
    }

    fn remove(&mut self, key: &CursorKey) -> Option<CursorRecord> {
        let record = self.all.pop(key)?;
        if let Some(list) = self.per_tenant.get_mut(&record.tenant) {
            list.pop(key);
            if list.is_empty() {
                self.per_tenant.remove(&record.tenant);
            }
        }
        Some(record)
    }

    fn evict_oldest_of(&mut self, tenant: &str) {
        let oldest = self.per_tenant.get_mut(tenant).and_then(|list| list.peek_lru().map(|(k, _)| *k));
        if let Some(key) = oldest {
            self.remove(&key);
            self.evicted += 1;
        }
    }

    fn evict_oldest(&mut self) {
        if let Some(key) = self.all.peek_lru().map(|(k, _)| *k) {
            self.remove(&key);
            self.evicted += 1;
        }
    }
}

impl Default for Cursors {
    fn default() -> Self {
        let limits = crate::config::Limits::default();
        Self::new(limits.max_cursors, limits.max_cursors_per_tenant)
    }
}

impl Cursors {
    pub fn new(max_total: usize, max_per_tenant: usize) -> Self {
        Self {
            inner: Mutex::new(CursorTable {
                backends: HashMap::new(),
                all: LruCache::unbounded(),
                per_tenant: HashMap::new(),
                max_total: max_total.max(1),
                max_per_tenant: max_per_tenant.max(1),
                evicted: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CursorTable> {
        // A poisoned table only means a panic elsewhere mid-update; its entries are still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `id` (non-zero) on `backend` as `tenant`'s, with the plan its replies follow.
    pub fn record(&self, backend: &str, id: i64, tenant: &str, plan: Arc<CursorPlan>) {
        if id == 0 {
            return;
        }
        let mut table = self.lock();
        let key = (table.backend(backend), id);
        table.remove(&key);
        if table.per_tenant.get(tenant).is_some_and(|list| list.len() >= table.max_per_tenant) {
            table.evict_oldest_of(tenant);
        }
        if table.all.len() >= table.max_total {
            table.evict_oldest();
        }
        let tenant: Arc<str> = match table.per_tenant.get_key_value(tenant) {
            Some((shared, _)) => shared.clone(),
            None => Arc::from(tenant),
        };
        table.per_tenant.entry(tenant.clone()).or_insert_with(LruCache::unbounded).put(key, ());
        table.all.put(key, CursorRecord { tenant, last_used: Instant::now(), plan });
    }

    /// Whether `id` on `backend` belongs to `tenant` (and refreshes it).
    pub fn owned(&self, backend: &str, id: i64, tenant: &str) -> bool {
        self.plan(backend, id, tenant).is_some()
    }

    /// The plan of `id` on `backend` if it belongs to `tenant` (and refreshes it); `None` for a cursor that does
    /// not exist, expired or is another tenant's — the same answer for all three.
    pub fn plan(&self, backend: &str, id: i64, tenant: &str) -> Option<Arc<CursorPlan>> {
        let mut table = self.lock();
        let backend = table.backends.get(backend).copied()?;
        let key = (backend, id);
        let (expired, plan) = match table.all.get_mut(&key) {
            None => return None,
            Some(r) if r.last_used.elapsed() >= CURSOR_TTL => (true, None),
            Some(r) if &*r.tenant != tenant => return None,
            Some(r) => {
                r.last_used = Instant::now();
                (false, Some(r.plan.clone()))
            }
        };
        if expired {
            table.remove(&key);
            return None;
        }
        if let Some(list) = table.per_tenant.get_mut(tenant) {
            list.promote(&key);
        }
        plan
    }

    pub fn release(&self, backend: &str, id: i64) {
        let mut table = self.lock();
        if let Some(backend) = table.backends.get(backend).copied() {
            table.remove(&(backend, id));
        }
    }

    pub fn len(&self) -> usize {
        self.lock().all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records evicted to stay within the bounds, since start.
    pub fn evicted(&self) -> u64 {
        self.lock().evicted
    }
}

/// The namespace of a cursor reply (`cursor.ns`), if it has one.
pub fn reply_cursor_ns(body: &RawDocument) -> Option<String> {
    body.get_document("cursor").ok()?.get_str("ns").ok().map(str::to_owned)
}

/// Checks that a (forwarded, real-named) getMore names the namespace its cursor was opened on. The message names
/// only what the client sent.
pub fn get_more_namespace(body: &RawDocument, cursor: &CursorPlan) -> Result<(), String> {
    let Some(ns) = &cursor.ns else { return Ok(()) };
    let db = body.get_str("$db").unwrap_or_default();
    let collection = body.get_str("collection").unwrap_or_default();
    if format!("{db}.{collection}") == *ns {
        Ok(())
    } else {
        Err("getMore names another namespace than the cursor's".into())
    }
}

/// What the proxy reads of a reply's `cursor` document: its id and how many documents its batch holds. Every
/// forwarded reply is read for both (the cursor table, the documents-returned metric), so they are read in one
/// pass over the cursor's elements; bytes that pass cannot read are read as before ([`ReplyCursor::read_apart`]),
/// and the answer is always what reading each on its own gives.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplyCursor {
    /// `cursor.id` (its first occurrence) when it is an int64, as mongod sends it.
    pub id: Option<i64>,
    /// The items of `cursor.firstBatch`, or else of `cursor.nextBatch` (each the first occurrence of its key,
    /// and an array).
    pub batch_len: Option<u64>,
}

impl ReplyCursor {
    /// The reply body's cursor, read once.
    pub fn of<'a>(body: impl Into<Fields<'a>>) -> Self {
        let Some(cursor) = crate::engine::raw::get_document(body, "cursor") else { return Self::default() };
        let (mut id, mut first, mut next) = (None, None, None);
        let mut elements = Elements::new(cursor);
        for element in elements.by_ref() {
            let slot = match element.key {
                b"id" => &mut id,
                b"firstBatch" => &mut first,
                b"nextBatch" => &mut next,
                _ => continue,
            };
            slot.get_or_insert(element);
        }
        let batch = |found: Option<Element<'_>>| -> Option<Option<usize>> {
            match found {
                None => Some(None),
                Some(e) if e.kind != 0x04 => Some(None),
                Some(e) => {
                    let mut items = Elements::of_bytes(e.value);
                    let n = items.by_ref().count();
                    items.complete().then_some(Some(n))
                }
            }
        };
        let (Some(first), Some(next), true) = (batch(first), batch(next), elements.complete()) else {
            return Self::read_apart(cursor);
        };
        let id = match id {
            Some(e) if e.kind == 0x12 => match crate::engine::raw::view(e) {
                Some(RawBsonRef::Int64(id)) => Some(id),
                _ => return Self::read_apart(cursor),
            },
            _ => None,
        };
        Self { id, batch_len: first.or(next).and_then(|n| u64::try_from(n).ok()) }
    }

    /// [`ReplyCursor::read_apart`] of a whole reply body.
    #[cfg(test)]
    fn read_apart_of(body: &RawDocument) -> Self {
        crate::engine::raw::get_document(body, "cursor").map(Self::read_apart).unwrap_or_default()
    }

    /// Each of the two read on its own, through `bson` where the bytes need it.
    fn read_apart(cursor: &RawDocument) -> Self {
        use crate::engine::raw::{array_len, get};
        let id = match get(cursor, "id") {
            Ok(Some(RawBsonRef::Int64(id))) => Some(id),
            _ => None,
        };
        let batch_len = array_len(cursor, "firstBatch").or_else(|| array_len(cursor, "nextBatch"));
        Self { id, batch_len: batch_len.and_then(|n| u64::try_from(n).ok()) }
    }
}

/// The cursor ids a `killCursors` names.
pub fn kill_cursor_ids(body: &RawDocument) -> Vec<i64> {
    body.get_array("cursors")
        .map(|a| a.into_iter().filter_map(|v| v.ok().and_then(|v| v.as_i64())).collect())
        .unwrap_or_default()
}

/// `killCursors` body keeping only `ids`.
pub fn kill_cursors_with(body: &RawDocument, ids: &[i64]) -> RawDocumentBuf {
    let mut array = RawArrayBuf::new();
    for id in ids {
        array.push(*id);
    }
    replace_fields(body, &[("cursors", Some(RawBson::Array(array)))])
}

/// A `killCursors` reply with `ids` added to `cursorsNotFound`.
pub fn add_not_found(body: &RawDocument, ids: &[i64]) -> Option<RawDocumentBuf> {
    let existing = body.get_array("cursorsNotFound").ok()?;
    let mut all = RawArrayBuf::new();
    for id in existing.into_iter().filter_map(|v| v.ok()) {
        all.push(id);
    }
    for id in ids {
        all.push(*id);
    }
    Some(replace_fields(body, &[("cursorsNotFound", Some(RawBson::Array(all)))]))
}

/// The reply a server gives to `killCursors` for ids it does not know.
pub fn cursors_not_found(ids: &[i64]) -> RawDocumentBuf {
    let mut not_found = RawArrayBuf::new();
    for id in ids {
        not_found.push(*id);
    }
    let mut reply = RawDocumentBuf::new();
    reply.append(cstr!("cursorsKilled"), RawArrayBuf::new());
    reply.append(cstr!("cursorsNotFound"), not_found);
    reply.append(cstr!("cursorsAlive"), RawArrayBuf::new());
    reply.append(cstr!("cursorsUnknown"), RawArrayBuf::new());
    reply.append(cstr!("ok"), 1.0);
    reply
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;
    use tenantwall_protocol::MsgFlags;

    /// `ReplyCursor::of` against `bson`'s own reading of the same reply: the first `cursor`, its first `id` if an
    /// int64, and the items of its first `firstBatch` if an array, or else of its first `nextBatch`.
    #[test]
    fn a_reply_cursor_read_in_one_pass_is_what_bson_reads() {
        fn oracle(body: &RawDocument) -> ReplyCursor {
            let Ok(cursor) = body.get_document("cursor") else { return ReplyCursor::default() };
            let id = cursor.get_i64("id").ok();
            let count = |key| cursor.get_array(key).ok().map(|a| a.into_iter().count() as u64);
            ReplyCursor { id, batch_len: count("firstBatch").or_else(|| count("nextBatch")) }
        }
        let bodies = [
            rawdoc! { "ok": 1.0 },
            rawdoc! { "cursor": 7_i64, "ok": 1.0 },
            rawdoc! { "cursor": { "firstBatch": [{ "a": 1 }, { "a": 2 }], "id": 0_i64, "ns": "app.c" }, "ok": 1.0 },
            rawdoc! { "cursor": { "id": 99_i64, "ns": "app.c", "nextBatch": [] }, "ok": 1.0 },
            rawdoc! { "cursor": { "id": 5_i32, "firstBatch": [1, 2, 3] }, "ok": 1.0 },
            rawdoc! { "cursor": { "id": "x", "firstBatch": "not an array", "nextBatch": [1] }, "ok": 1.0 },
            rawdoc! { "cursor": { "id": 1_i32, "id": 2_i64, "firstBatch": [1], "firstBatch": [1, 2] }, "ok": 1.0 },
            rawdoc! { "cursor": { "id": 3_i64, "id": 4_i64, "nextBatch": [1, 2], "firstBatch": [] }, "ok": 1.0 },
            rawdoc! { "cursor": {}, "ok": 1.0 },
            rawdoc! { "ok": 1.0, "cursor": { "id": i64::MAX, "firstBatch": [[1], { "b": [2] }] }, "cursor": { "id": 1_i64 } },
        ];
        for body in &bodies {
            let expected = oracle(body);
            // Read through a document alone and through a parsed body's index: the same answer.
            assert_eq!(ReplyCursor::of(body.as_ref()), expected, "{body:?}");
            let msg = OpMsg::new(MsgFlags::default(), body.clone()).encode(1, 0).unwrap().freeze();
            let tenantwall_protocol::Message::Msg(parsed) = tenantwall_protocol::decode(msg).unwrap().message else {
                panic!("not an OP_MSG")
            };
            assert_eq!(ReplyCursor::of(parsed.body_fields()), expected, "{body:?}");
            assert_eq!(ReplyCursor::read_apart_of(body), expected, "{body:?}");
        }
        // The ones with a cursor said something.
        assert_eq!(ReplyCursor::of(bodies[2].as_ref()), ReplyCursor { id: Some(0), batch_len: Some(2) });
        assert_eq!(ReplyCursor::of(bodies[5].as_ref()), ReplyCursor { id: None, batch_len: Some(1) });
    }

    #[test]
    fn lsids_differ_per_tenant_and_are_stable() {
        let id = [7u8; 16];
        assert_eq!(virtual_lsid("acme", &id), virtual_lsid("acme", &id));
        assert_ne!(virtual_lsid("acme", &id), virtual_lsid("globex", &id));
        assert_ne!(virtual_lsid("acme", &id), id.to_vec());
        let lsid = bson::Binary { subtype: BinarySubtype::Uuid, bytes: id.to_vec() };
        let msg =
            OpMsg::new(MsgFlags::default(), rawdoc! { "find": "c", "lsid": { "id": lsid.clone() }, "$db": "app" });
        let out = virtualize(&msg, "acme").unwrap().unwrap();
        let new_id = out.body().get_document("lsid").unwrap().get_binary("id").unwrap();
        assert_eq!(new_id.bytes, virtual_lsid("acme", &id).as_slice());
        let end = OpMsg::new(MsgFlags::default(), rawdoc! { "endSessions": [{ "id": lsid }], "$db": "admin" });
        let out = virtualize(&end, "acme").unwrap().unwrap();
        let listed = out.body().get_array("endSessions").unwrap().get_document(0).unwrap().get_binary("id").unwrap();
        assert_eq!(listed.bytes, virtual_lsid("acme", &id).as_slice());
    }

    fn parse(msg: &OpMsg) -> OpMsg {
        let frame = msg.encode(1, 0).unwrap().freeze();
        match tenantwall_protocol::decode(frame).unwrap().message {
            tenantwall_protocol::Message::Msg(parsed) => parsed,
            other => panic!("{other:?}"),
        }
    }

    /// Sessions are counted alike from a parsed body's index and from its keys, repeats included.
    #[test]
    fn sessions_are_counted_alike_with_and_without_an_index() {
        let lsid = rawdoc! { "id": 1 };
        let mut bodies = Vec::new();
        for lsids in 0..4 {
            for end_sessions in 0..3 {
                let mut body = rawdoc! { "find": "c" };
                for _ in 0..lsids {
                    body.append(bson::cstr!("lsid"), lsid.clone());
                }
                for _ in 0..end_sessions {
                    body.append(bson::cstr!("endSessions"), bson::rawdoc! {});
                }
                body.append(bson::cstr!("$db"), "app");
                bodies.push((body, (lsids.min(2), end_sessions > 0)));
            }
        }
        for (body, expected) in bodies {
            let parsed = parse(&OpMsg::new(MsgFlags::default(), body.clone()));
            assert!(parsed.body_fields().is_indexed());
            assert_eq!(session_fields(parsed.body_fields()), expected, "{body:?}");
            assert_eq!(session_fields(Fields::from(&body)), expected, "{body:?}");
        }
    }

    /// The in-place patch makes exactly the bytes the rebuild makes, for every shape that reaches it; shapes
    /// mongod refuses are refused before either path runs.
    #[test]
    fn the_patched_lsid_is_the_rebuilt_one_byte_for_byte() {
        let binary = |subtype: BinarySubtype, len: u8| bson::Binary { subtype, bytes: (1..=len).collect() };
        let uuid = binary(BinarySubtype::Uuid, 16);
        // (body, whether virtualize takes it at all, whether the patch does)
        let bodies = [
            (rawdoc! { "find": "c", "filter": { "k": 1 }, "lsid": { "id": uuid.clone() }, "$db": "app" }, true, true),
            (rawdoc! { "lsid": { "id": uuid.clone() }, "find": "c", "$db": "app" }, true, true),
            (
                rawdoc! { "endSessions": [{ "id": uuid.clone() }], "lsid": { "id": uuid.clone() }, "$db": "admin" },
                true,
                false,
            ),
            (rawdoc! { "endSessions": [{ "id": uuid.clone() }], "$db": "admin" }, true, false),
            (rawdoc! { "find": "c", "$db": "app" }, true, false),
            (
                rawdoc! { "find": "c", "$db": "app", "lsid": { "uid": [1, 2], "id": uuid.clone(), "z": 1 } },
                false,
                false,
            ),
            (rawdoc! { "find": "c", "lsid": { "id": binary(BinarySubtype::UuidOld, 16) }, "$db": "app" }, false, false),
            (rawdoc! { "find": "c", "lsid": { "id": binary(BinarySubtype::Generic, 16) }, "$db": "app" }, false, false),
            (rawdoc! { "find": "c", "lsid": { "id": binary(BinarySubtype::Uuid, 15) }, "$db": "app" }, false, false),
            (rawdoc! { "find": "c", "lsid": { "id": binary(BinarySubtype::Uuid, 17) }, "$db": "app" }, false, false),
            (rawdoc! { "find": "c", "lsid": { "id": "not binary" }, "$db": "app" }, false, false),
            (rawdoc! { "find": "c", "lsid": "not a document", "$db": "app" }, false, false),
            (rawdoc! { "find": "c", "lsid": { "id": uuid.clone(), "id": uuid.clone() }, "$db": "app" }, false, false),
        ];
        // With a document sequence, and without one (a parsed body is then all its frame holds, so a message
        // parsed afresh is patched in place).
        let messages = bodies.iter().flat_map(|(body, takes, patches)| {
            let sequences = [vec![tenantwall_protocol::Sequence::new("documents", vec![rawdoc! { "_id": 1 }])], vec![]];
            sequences.map(|sequences| {
                let msg = OpMsg::with_sequences(MsgFlags(MsgFlags::EXHAUST_ALLOWED), body.clone(), sequences);
                (body.clone(), *takes, *patches, msg)
            })
        });
        for (body, takes, patches, msg) in messages {
            let virtualized = virtualize(&msg, "acme");
            assert_eq!(virtualized.is_ok(), takes, "{body:?}");
            if let Ok(virtualized) = virtualized {
                assert_eq!(virtualized, rebuilt(&msg, session_fields(msg.body_fields()), "acme"), "{body:?}");
            }
            // Parsed as from the wire too, so that the index of top-level fields is what the patch reads.
            let parsed = parse(&msg);
            for msg in [&msg, &parsed] {
                // Counted from the index (parsed) as by a pass over the keys (built).
                assert_eq!(session_fields(msg.body_fields()), session_fields(Fields::from(msg.body())), "{body:?}");
                assert_eq!(patchable(msg, session_fields(msg.body_fields())).is_some(), patches, "{body:?}");
                let Ok(expected) = virtualize(msg, "acme") else { continue };
                let before = msg.body().as_bytes().to_vec();
                // The command as a rewrite hands it over: held by nothing else (a fresh parse), or sharing its
                // bytes with another holder, which must not see them change.
                let shared = msg.clone();
                for (mut forward, alone) in [(Some(parse(msg)), msg.sequences().is_empty()), (Some(shared), false)] {
                    let at = forward.as_ref().map(|f| f.body_bytes().as_ptr());
                    bind(&mut forward, msg, "acme").unwrap();
                    let bound = forward.unwrap();
                    assert_eq!(Some(&bound), expected.as_ref().or(Some(msg)), "{body:?}");
                    // Patched where it was when nothing else held its bytes, not copied.
                    if patches && alone {
                        assert_eq!(Some(bound.body_bytes().as_ptr()), at, "{body:?}");
                    }
                    // The index carried over answers as a fresh scan of the new bytes does.
                    for key in ["find", "filter", "lsid", "endSessions", "$db", "absent"] {
                        let scanned = Fields::from(bound.body()).field(key.as_bytes()).map(|e| e.map(|e| e.bytes));
                        assert_eq!(bound.body_fields().field(key.as_bytes()).map(|e| e.map(|e| e.bytes)), scanned);
                    }
                }
                assert_eq!(msg.body().as_bytes(), before, "{body:?}");
                // A rewrite's message differs from the original: its sessions, and its other fields, are the
                // ones bound and kept.
                let mut edited = msg.body().to_owned();
                edited.append(bson::cstr!("rewritten"), true);
                let rewrite = parse(&OpMsg::with_sequences(msg.flags, edited, msg.sequences().to_vec()));
                let mut forward = Some(rewrite.clone());
                bind(&mut forward, msg, "acme").unwrap();
                let expected = virtualize(&rewrite, "acme").unwrap().unwrap_or(rewrite);
                assert_eq!(forward.as_ref(), Some(&expected), "{body:?}");
                assert!(expected.body().get_bool("rewritten").unwrap());
            }
        }
    }

    /// Remembered virtual ids are the computed ones, per tenant, also once older ones were evicted.
    #[test]
    fn remembered_virtual_ids_are_the_computed_ones() {
        for round in 0..2 {
            for n in 0..(RECENT_LSIDS + 10) {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&(n as u64).to_le_bytes());
                for tenant in ["acme", "globex", "acme\0x"] {
                    assert_eq!(virtual_uuid(tenant, &id).as_slice(), virtual_lsid(tenant, &id), "{round} {n} {tenant}");
                }
            }
        }
    }

    #[test]
    fn cursors_belong_to_their_tenant() {
        let cursors = Cursors::default();
        cursors.record("one", 42, "acme", Default::default());
        assert!(cursors.owned("one", 42, "acme"));
        assert!(!cursors.owned("one", 42, "globex"));
        assert!(!cursors.owned("two", 42, "acme"));
        cursors.release("one", 42);
        assert!(!cursors.owned("one", 42, "acme"));
        cursors.record("one", 0, "acme", Default::default());
        assert!(cursors.is_empty());
    }

    #[test]
    fn the_table_is_bounded_globally_and_per_tenant() {
        let cursors = Cursors::new(5, 3);
        for id in 1..=4 {
            cursors.record("one", id, "acme", Default::default());
        }
        // acme is at its quota of 3: its own oldest cursor went.
        assert!(!cursors.owned("one", 1, "acme"));
        assert!((2..=4).all(|id| cursors.owned("one", id, "acme")));
        // Using a cursor keeps it: 2 was used last-but-two, so after touching it 3 is acme's oldest.
        assert!(cursors.owned("one", 2, "acme"));
        cursors.record("one", 5, "acme", Default::default());
        assert!(!cursors.owned("one", 3, "acme"));
        assert!(cursors.owned("one", 2, "acme"));
        // The global cap evicts the least recently used record of anyone.
        cursors.record("one", 100, "globex", Default::default());
        cursors.record("one", 101, "globex", Default::default());
        assert_eq!(cursors.len(), 5);
        cursors.record("two", 102, "globex", Default::default());
        assert_eq!(cursors.len(), 5);
        assert!(!cursors.owned("one", 4, "acme"), "the least recently used record was kept");
        assert!(cursors.owned("two", 102, "globex"));
        assert!(!cursors.owned("one", 102, "globex"));
        assert_eq!(cursors.evicted(), 3);
        // Recording an id again moves it to its new owner.
        cursors.record("one", 100, "acme", Default::default());
        assert!(!cursors.owned("one", 100, "globex"));
        assert!(cursors.owned("one", 100, "acme"));
    }
}
