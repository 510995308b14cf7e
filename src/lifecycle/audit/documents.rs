//! Documents of field-mode collections: whose each one is, and the per-collection tally a scan builds.
//!
//! A document belongs to a tenant when the server's `$eq` on the tenant field would match that tenant's value
//! ([`TenantValue::matches`], so `NumberLong(42)` is tenant 42's). Everything else is a gap: no tenant field
//! (or null), the field twice (which of the two the server matches on is not defined), an array (the server
//! matches any of its elements, so several tenants could see the document), a value no tenant of the backend
//! has, or a value of a type no tenant value has.
//!
//! It must never keep or render a tenant value read from a document: the tally holds counts, byte sizes and
//! `_id`s only. Pure: no I/O.

use std::collections::HashMap;

use bson::{RawBsonRef, RawDocument};

use crate::policy::TenantValue;

/// `_id`s kept per kind of problem, so the report points at examples without growing with the collection.
pub const SAMPLE_IDS: usize = 5;
/// Longest rendered `_id`; longer ones are cut (an `_id` can be a large document).
const MAX_ID_CHARS: usize = 96;

/// A tenant a document may belong to.
#[derive(Debug, Clone, Copy)]
pub struct Slot<'p> {
    pub id: &'p str,
    pub value: &'p TenantValue,
    /// Placed on the backend being scanned (a document of a tenant placed elsewhere is one the proxy never
    /// shows it).
    pub here: bool,
}

/// Whose a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The tenant at this index of the slots, placed on this backend.
    Tenant(usize),
    /// No tenant field, or null.
    Unstamped,
    /// The tenant field appears more than once.
    DuplicateField,
    /// An array, a document, or a type no tenant value has.
    WrongType,
    /// A value of the right type that no tenant has.
    Foreign,
    /// The value of the tenant at this index, placed on another backend.
    Misplaced(usize),
}

/// The tenants a document may belong to, indexed by the server's equality so a scan costs one lookup per
/// document whatever the number of tenants.
#[derive(Debug, Clone)]
pub struct Tenants<'p> {
    slots: Vec<Slot<'p>>,
    /// [`TenantValue::canonical_key`] → index in `slots`.
    by_key: HashMap<String, usize>,
    families: Vec<Family>,
}

impl<'p> Tenants<'p> {
    pub fn new(slots: Vec<Slot<'p>>) -> Self {
        let by_key = slots.iter().enumerate().map(|(i, s)| (s.value.canonical_key(), i)).collect();
        let mut families: Vec<Family> = slots.iter().filter_map(|s| family(s.value.raw().as_raw_bson_ref())).collect();
        families.sort_unstable();
        families.dedup();
        Self { slots, by_key, families }
    }

    pub fn slots(&self) -> &[Slot<'p>] {
        &self.slots
    }

    /// The slot whose value the server's `$eq` would find equal to `value`.
    fn find(&self, value: RawBsonRef<'_>) -> Option<usize> {
        let hit = match value {
            // Equal to an integer tenant value only when integral; the linear match decides (rare in data).
            RawBsonRef::Double(_) | RawBsonRef::Decimal128(_) => {
                return self.slots.iter().position(|s| s.value.matches(value));
            }
            other => bson::Bson::try_from(other)
                .ok()
                .and_then(|b| TenantValue::new(b).ok())
                .and_then(|v| self.by_key.get(&v.canonical_key()).copied()),
        };
        // The key only narrows the search; the server's equality decides.
        hit.filter(|i| self.slots.get(*i).is_some_and(|s| s.value.matches(value)))
    }
}

/// Decides whose `doc` is under tenant field `field`.
pub fn verdict(doc: &RawDocument, field: &str, tenants: &Tenants<'_>) -> Verdict {
    let mut value = None;
    let mut seen = 0;
    for element in doc {
        match element {
            Ok((key, v)) if key.as_str() == field => {
                seen += 1;
                value.get_or_insert(v);
            }
            Ok(_) => {}
            // A document the server stored but that does not parse here is not anyone's for certain.
            Err(_) => return Verdict::WrongType,
        }
    }
    if seen > 1 {
        return Verdict::DuplicateField;
    }
    let value = match value {
        None | Some(RawBsonRef::Null | RawBsonRef::Undefined) => return Verdict::Unstamped,
        Some(RawBsonRef::Array(_)) => return Verdict::WrongType,
        Some(v) => v,
    };
    if let Some(i) = tenants.find(value) {
        let here = tenants.slots.get(i).is_some_and(|s| s.here);
        return if here { Verdict::Tenant(i) } else { Verdict::Misplaced(i) };
    }
    match family(value) {
        Some(found) if tenants.families.contains(&found) => Verdict::Foreign,
        _ => Verdict::WrongType,
    }
}

/// Types the server compares with one another: numbers across their types, the rest by type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Family {
    Number,
    String,
    ObjectId,
    Binary,
}

fn family(value: RawBsonRef<'_>) -> Option<Family> {
    match value {
        RawBsonRef::Int32(_) | RawBsonRef::Int64(_) | RawBsonRef::Double(_) | RawBsonRef::Decimal128(_) => {
            Some(Family::Number)
        }
        RawBsonRef::String(_) => Some(Family::String),
        RawBsonRef::ObjectId(_) => Some(Family::ObjectId),
        RawBsonRef::Binary(_) => Some(Family::Binary),
        _ => None,
    }
}

/// How many documents had one kind of problem, and the `_id`s of the first few.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    pub count: u64,
    pub ids: Vec<String>,
}

impl Sample {
    fn add(&mut self, doc: &RawDocument) {
        self.count += 1;
        if self.ids.len() < SAMPLE_IDS {
            self.ids.push(render_id(doc));
        }
    }
}

/// Documents and bytes of one tenant in one collection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub documents: u64,
    pub bytes: u64,
}

/// What a scan of one field-mode collection found.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Per slot, in the order of the slots given to [`Tally::new`].
    pub tenants: Vec<Usage>,
    pub unstamped: Sample,
    pub duplicate_field: Sample,
    pub wrong_type: Sample,
    pub foreign: Sample,
    /// Per slot: documents carrying the value of a tenant placed on another backend.
    pub misplaced: Vec<Sample>,
    pub scanned: u64,
}

impl Tally {
    pub fn new(slots: usize) -> Self {
        Self { tenants: vec![Usage::default(); slots], misplaced: vec![Sample::default(); slots], ..Self::default() }
    }

    /// Counts one document.
    pub fn add(&mut self, doc: &RawDocument, field: &str, tenants: &Tenants<'_>) {
        self.scanned += 1;
        match verdict(doc, field, tenants) {
            Verdict::Tenant(i) => {
                if let Some(usage) = self.tenants.get_mut(i) {
                    usage.documents += 1;
                    usage.bytes += u64::try_from(doc.as_bytes().len()).unwrap_or(u64::MAX);
                }
            }
            Verdict::Unstamped => self.unstamped.add(doc),
            Verdict::DuplicateField => self.duplicate_field.add(doc),
            Verdict::WrongType => self.wrong_type.add(doc),
            Verdict::Foreign => self.foreign.add(doc),
            Verdict::Misplaced(i) => {
                if let Some(sample) = self.misplaced.get_mut(i) {
                    sample.add(doc);
                }
            }
        }
    }
}

/// A document's `_id` for the report (relaxed extended JSON, cut to a bounded length).
pub fn render_id(doc: &RawDocument) -> String {
    let text = match doc.get("_id") {
        Ok(Some(id)) => match bson::Bson::try_from(id) {
            Ok(bson) => bson.into_relaxed_extjson().to_string(),
            Err(_) => "(unreadable _id)".to_owned(),
        },
        Ok(None) => "(no _id)".to_owned(),
        Err(_) => "(unreadable _id)".to_owned(),
    };
    if text.chars().count() > MAX_ID_CHARS {
        let cut: String = text.chars().take(MAX_ID_CHARS).collect();
        format!("{cut}…")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{rawdoc, Bson, RawDocumentBuf};

    fn slots<'a>(values: &'a [(&'a str, TenantValue, bool)]) -> Tenants<'a> {
        Tenants::new(values.iter().map(|(id, value, here)| Slot { id, value, here: *here }).collect())
    }

    #[test]
    fn documents_belong_to_the_tenant_the_server_would_match() {
        let values = [
            ("acme", TenantValue::new(Bson::String("acme".into())).unwrap(), true),
            ("n42", TenantValue::new(Bson::Int32(42)).unwrap(), true),
            ("far", TenantValue::new(Bson::String("far".into())).unwrap(), false),
        ];
        let s = slots(&values);
        let f = "tenantId";
        assert_eq!(verdict(&rawdoc! { "_id": 1, "tenantId": "acme" }, f, &s), Verdict::Tenant(0));
        assert_eq!(verdict(&rawdoc! { "_id": 1, "tenantId": 42_i64 }, f, &s), Verdict::Tenant(1));
        assert_eq!(verdict(&rawdoc! { "_id": 1, "tenantId": 42.0 }, f, &s), Verdict::Tenant(1));
        assert_eq!(verdict(&rawdoc! { "_id": 1, "tenantId": "far" }, f, &s), Verdict::Misplaced(2));
        assert_eq!(verdict(&rawdoc! { "_id": 1 }, f, &s), Verdict::Unstamped);
        assert_eq!(verdict(&rawdoc! { "_id": 1, "tenantId": null }, f, &s), Verdict::Unstamped);
        assert_eq!(verdict(&rawdoc! { "_id": 1, "tenantId": "globex" }, f, &s), Verdict::Foreign);
        assert_eq!(verdict(&rawdoc! { "_id": 1, "tenantId": 7 }, f, &s), Verdict::Foreign);
        assert_eq!(verdict(&rawdoc! { "_id": 1, "tenantId": true }, f, &s), Verdict::WrongType);
        assert_eq!(verdict(&rawdoc! { "_id": 1, "tenantId": { "t": "acme" } }, f, &s), Verdict::WrongType);
        // The server would match an array on any element: visible to acme and to whoever has "globex".
        assert_eq!(verdict(&rawdoc! { "_id": 1, "tenantId": ["acme", "globex"] }, f, &s), Verdict::WrongType);
        let mut dup = RawDocumentBuf::new();
        dup.append(bson::cstr!("tenantId"), "acme");
        dup.append(bson::cstr!("tenantId"), "globex");
        assert_eq!(verdict(&dup, f, &s), Verdict::DuplicateField);
    }

    #[test]
    fn thousands_of_tenants_are_found_by_key() {
        let values: Vec<(String, TenantValue)> = (0..5000)
            .map(|i| (format!("t{i}"), TenantValue::new(Bson::ObjectId(bson::oid::ObjectId::new())).unwrap()))
            .collect();
        let tenants = Tenants::new(values.iter().map(|(id, value)| Slot { id, value, here: true }).collect());
        let Bson::ObjectId(oid) = values[4321].1.bson().clone() else { unreachable!() };
        assert_eq!(verdict(&rawdoc! { "tenantId": oid }, "tenantId", &tenants), Verdict::Tenant(4321));
        let stranger = bson::oid::ObjectId::new();
        assert_eq!(verdict(&rawdoc! { "tenantId": stranger }, "tenantId", &tenants), Verdict::Foreign);
        assert_eq!(verdict(&rawdoc! { "tenantId": "t1" }, "tenantId", &tenants), Verdict::WrongType);
    }

    #[test]
    fn a_string_tenant_policy_finds_numbers_of_the_wrong_type() {
        let values = [("acme", TenantValue::new(Bson::String("acme".into())).unwrap(), true)];
        let s = slots(&values);
        assert_eq!(verdict(&rawdoc! { "tenantId": 42 }, "tenantId", &s), Verdict::WrongType);
    }

    #[test]
    fn the_tally_counts_sizes_per_tenant_and_keeps_only_ids_of_problems() {
        let values = [("acme", TenantValue::new(Bson::String("acme".into())).unwrap(), true)];
        let s = slots(&values);
        let mut tally = Tally::new(1);
        let a = rawdoc! { "_id": 1, "tenantId": "acme", "x": "hello" };
        tally.add(&a, "tenantId", &s);
        tally.add(&a, "tenantId", &s);
        for i in 0..8 {
            tally.add(&rawdoc! { "_id": i, "tenantId": "globex-secret-value" }, "tenantId", &s);
        }
        assert_eq!(tally.scanned, 10);
        let expected_bytes = 2 * u64::try_from(a.as_bytes().len()).unwrap();
        assert_eq!(tally.tenants, vec![Usage { documents: 2, bytes: expected_bytes }]);
        assert_eq!(tally.foreign.count, 8);
        assert_eq!(tally.foreign.ids, vec!["0", "1", "2", "3", "4"]);
        assert!(!format!("{tally:?}").contains("globex-secret-value"));
    }

    #[test]
    fn long_ids_are_cut() {
        let long = "x".repeat(500);
        let rendered = render_id(&rawdoc! { "_id": long });
        assert!(rendered.chars().count() <= MAX_ID_CHARS + 1);
        assert_eq!(render_id(&rawdoc! { "a": 1 }), "(no _id)");
        let oid = bson::oid::ObjectId::new();
        assert!(render_id(&rawdoc! { "_id": oid }).contains(&oid.to_hex()));
    }
}
