//! State bound to tenants: logical sessions and cursors.
//!
//! Sessions are virtualised, not tracked: every `lsid` a tenant sends is replaced by one derived from the tenant
//! and the original (`SHA-256("tenantwall lsid\0" ‖ tenant ‖ "\0" ‖ id)`, first 16 bytes, as a UUID). Two tenants
//! presenting the same lsid therefore reach different server sessions, and no tenant can name another's session
//! or transaction; the mapping is the same on every proxy instance, so it survives a client moving between
//! proxies behind a load balancer.
//!
//! Cursors are tracked: the server cannot tell tenants apart when the proxy uses one backend user, so the proxy
//! records which tenant each cursor id was returned to and refuses `getMore`/`killCursors` on any other id with
//! the same error as a cursor that does not exist. Records expire with the server's idle cursor timeout.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bson::spec::BinarySubtype;
use bson::{cstr, RawArrayBuf, RawBson, RawBsonRef, RawDocument, RawDocumentBuf};
use ring::digest;
use tenantwall_protocol::OpMsg;

use crate::engine::raw::replace_fields;

/// Server-side idle cursors time out after 10 minutes by default; keep records a while longer.
const CURSOR_TTL: Duration = Duration::from_secs(30 * 60);
/// Sweep expired records once the table holds this many.
const SWEEP_AT: usize = 4096;

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

fn virtual_lsid_doc(tenant: &str, lsid: &RawDocument) -> Option<RawDocumentBuf> {
    let id = match lsid.get("id") {
        Ok(Some(RawBsonRef::Binary(bin))) => bin.bytes,
        _ => return None,
    };
    let new_id = bson::Binary { subtype: BinarySubtype::Uuid, bytes: virtual_lsid(tenant, id) };
    Some(replace_fields(lsid, &[("id", Some(RawBson::Binary(new_id)))]))
}

/// `msg` with every lsid (the generic `lsid` argument, and the list of `endSessions`) replaced by the tenant's
/// own. `None` when the command carries no session.
pub fn virtualize(msg: &OpMsg, tenant: &str) -> Option<OpMsg> {
    let body = msg.body();
    let mut edits: Vec<(&str, Option<RawBson>)> = Vec::new();
    if let Ok(lsid) = body.get_document("lsid") {
        edits.push(("lsid", virtual_lsid_doc(tenant, lsid).map(RawBson::Document)));
    }
    if let Ok(list) = body.get_array("endSessions") {
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
    // A malformed lsid is dropped rather than forwarded; the server then treats the command as session-less.
    Some(OpMsg::with_sequences(msg.flags, replace_fields(body, &edits), msg.sequences().to_vec()))
}

struct CursorRecord {
    tenant: String,
    last_used: Instant,
}

/// Which tenant each open cursor belongs to, per backend.
#[derive(Default)]
pub struct Cursors {
    records: Mutex<HashMap<(String, i64), CursorRecord>>,
}

impl Cursors {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i64), CursorRecord>> {
        // A poisoned map only means a panic elsewhere mid-update; its entries are still usable.
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `id` (non-zero) on `backend` as `tenant`'s.
    pub fn record(&self, backend: &str, id: i64, tenant: &str) {
        if id == 0 {
            return;
        }
        let mut records = self.lock();
        if records.len() >= SWEEP_AT {
            let now = Instant::now();
            records.retain(|_, r| now.duration_since(r.last_used) < CURSOR_TTL);
        }
        records.insert((backend.to_owned(), id), CursorRecord { tenant: tenant.to_owned(), last_used: Instant::now() });
    }

    /// Whether `id` on `backend` belongs to `tenant` (and refreshes it).
    pub fn owned(&self, backend: &str, id: i64, tenant: &str) -> bool {
        let mut records = self.lock();
        match records.get_mut(&(backend.to_owned(), id)) {
            Some(r) if r.tenant == tenant && r.last_used.elapsed() < CURSOR_TTL => {
                r.last_used = Instant::now();
                true
            }
            _ => false,
        }
    }

    pub fn release(&self, backend: &str, id: i64) {
        self.lock().remove(&(backend.to_owned(), id));
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The cursor id of a reply (`cursor.id`), if it has one.
pub fn reply_cursor_id(body: &RawDocument) -> Option<i64> {
    body.get_document("cursor").ok()?.get_i64("id").ok()
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

    #[test]
    fn lsids_differ_per_tenant_and_are_stable() {
        let id = [7u8; 16];
        assert_eq!(virtual_lsid("acme", &id), virtual_lsid("acme", &id));
        assert_ne!(virtual_lsid("acme", &id), virtual_lsid("globex", &id));
        assert_ne!(virtual_lsid("acme", &id), id.to_vec());
        let lsid = bson::Binary { subtype: BinarySubtype::Uuid, bytes: id.to_vec() };
        let msg =
            OpMsg::new(MsgFlags::default(), rawdoc! { "find": "c", "lsid": { "id": lsid.clone() }, "$db": "app" });
        let out = virtualize(&msg, "acme").unwrap();
        let new_id = out.body().get_document("lsid").unwrap().get_binary("id").unwrap();
        assert_eq!(new_id.bytes, virtual_lsid("acme", &id).as_slice());
        let end = OpMsg::new(MsgFlags::default(), rawdoc! { "endSessions": [{ "id": lsid }], "$db": "admin" });
        let out = virtualize(&end, "acme").unwrap();
        let listed = out.body().get_array("endSessions").unwrap().get_document(0).unwrap().get_binary("id").unwrap();
        assert_eq!(listed.bytes, virtual_lsid("acme", &id).as_slice());
    }

    #[test]
    fn cursors_belong_to_their_tenant() {
        let cursors = Cursors::default();
        cursors.record("one", 42, "acme");
        assert!(cursors.owned("one", 42, "acme"));
        assert!(!cursors.owned("one", 42, "globex"));
        assert!(!cursors.owned("two", 42, "acme"));
        cursors.release("one", 42);
        assert!(!cursors.owned("one", 42, "acme"));
        cursors.record("one", 0, "acme");
        assert!(cursors.is_empty());
    }
}
