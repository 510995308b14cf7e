//! The top-level fields of a parsed command body, found once.
//!
//! A command's body is read by key several times on the way through the proxy (`$db`, the argument check, the
//! filter, the collation, the sessions, the rewrite). The validation walk reads every top-level element anyway;
//! it notes where each one starts and where its key ends ([`TopLevel`]), and [`Fields`] answers the lookups from
//! that small array instead of reading the bytes again. It owns only that bookkeeping: every answer is exactly
//! what a fresh scan of the same bytes gives ([`validate::field`], [`validate::unique_field_span`],
//! [`validate::all_keys`]), repeated keys included, and a document without an index (built, not parsed, or with
//! more top-level elements than the index holds) is scanned as before. It must never be handed positions that
//! were not found in the very bytes it is asked about: the index is kept next to the body it was made from, and
//! every position is checked against the bytes before use, so a wrong one would answer "could not read", not
//! panic.

use std::ops::Range;

use bson::RawDocument;

use crate::validate::{self, Element};

/// Top-level elements an index holds; bodies with more are scanned. Drivers send a dozen at most.
pub const TOP_LEVEL_MAX: usize = 16;

/// Where each top-level element of one document starts and where its key ends (offsets into the document's
/// bytes), in order, as the validation walk found them. Element `i` ends where element `i + 1` starts, and the
/// last one at the document's final NUL.
///
/// Held inline and small (offsets of 16 bits: bodies of 64 KiB or more, rare, are not indexed), so that a
/// message carries it without an allocation of its own and moves of a message stay cheap.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TopLevel {
    /// `(element start, key end)` in `spans[..len]`; the key is `bytes[start + 1..key_end]`.
    spans: [(u16, u16); TOP_LEVEL_MAX],
    /// How many of `spans` are set; [`TopLevel::UNKNOWN`] when the index is not known.
    len: u8,
}

impl Default for TopLevel {
    /// Not known: lookups read the bytes.
    fn default() -> Self {
        Self { spans: [(0, 0); TOP_LEVEL_MAX], len: Self::UNKNOWN }
    }
}

impl TopLevel {
    /// The `len` of an index that is not known.
    const UNKNOWN: u8 = u8::MAX;

    /// Where a walk starts: no element yet. Only the walk fills one, so only this crate makes one.
    pub(crate) fn empty() -> Self {
        Self { spans: [(0, 0); TOP_LEVEL_MAX], len: 0 }
    }

    /// Notes the next element (`start` its type byte, `key_end` its key's NUL); once more elements came than
    /// the index holds, or one lies beyond what its offsets reach, it is no longer known.
    #[inline(always)]
    pub(crate) fn push(&mut self, start: usize, key_end: usize) {
        match (self.spans.get_mut(usize::from(self.len)), u16::try_from(start), u16::try_from(key_end)) {
            (Some(span), Ok(start), Ok(key_end)) => {
                *span = (start, key_end);
                self.len += 1;
            }
            _ => self.len = Self::UNKNOWN,
        }
    }

    /// Whether the index is known.
    pub fn is_known(&self) -> bool {
        usize::from(self.len) <= TOP_LEVEL_MAX
    }

    /// The spans, when known.
    fn spans(&self) -> Option<&[(u16, u16)]> {
        self.spans.get(..usize::from(self.len))
    }

    /// The index of the document made from this one's by replacing its element at `span` with an element of the
    /// same key (or, for an empty `span` at the document's final NUL, appending an element whose key is
    /// `key_len` bytes long) that ends at `new_end`: the elements before it are where they were (the replaced one
    /// too: it starts where it did, and its key ends where it did), those after it are where they were moved by
    /// the difference in length. Not known when this one is not, or when an offset does not fit.
    pub(crate) fn replaced(&self, span: Range<usize>, key_len: usize, new_end: usize) -> TopLevel {
        let (true, Ok(old_end), Ok(new_end)) = (self.is_known(), u16::try_from(span.end), u16::try_from(new_end))
        else {
            return Self::default();
        };
        let mut index = *self;
        if span.is_empty() {
            index.push(span.start, span.start.saturating_add(1 + key_len));
            return index;
        }
        for (at, key_end) in index.spans.iter_mut().take(usize::from(self.len)).filter(|(at, _)| *at >= old_end) {
            match (
                at.checked_sub(old_end).and_then(|after| after.checked_add(new_end)),
                key_end.checked_sub(old_end).and_then(|after| after.checked_add(new_end)),
            ) {
                (Some(moved_at), Some(moved_key_end)) => (*at, *key_end) = (moved_at, moved_key_end),
                _ => return Self::default(),
            }
        }
        index
    }
}

impl std::fmt::Debug for TopLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.spans() {
            Some(spans) => f.debug_list().entries(spans).finish(),
            None => f.write_str("TopLevel(unknown)"),
        }
    }
}

/// A document read by its top-level keys, through its [`TopLevel`] index when it has one.
///
/// It holds the document's bytes, not a `&RawDocument`: lookups need only the bytes, and viewing them as a
/// document (which re-checks their shape) is left to the callers that need one ([`Fields::doc`]).
#[derive(Clone, Copy)]
pub struct Fields<'a> {
    /// The bytes of a document: made from a `&RawDocument` or from a parsed body, so they have its shape.
    bytes: &'a [u8],
    /// The spans of the document's elements, when known.
    spans: Option<&'a [(u16, u16)]>,
}

impl<'a> From<&'a RawDocument> for Fields<'a> {
    /// A document without an index: every lookup reads its bytes.
    fn from(doc: &'a RawDocument) -> Self {
        Self { bytes: doc.as_bytes(), spans: None }
    }
}

impl<'a> From<&'a bson::RawDocumentBuf> for Fields<'a> {
    /// A document without an index: every lookup reads its bytes.
    fn from(doc: &'a bson::RawDocumentBuf) -> Self {
        Self { bytes: doc.as_bytes(), spans: None }
    }
}

impl<'a> Fields<'a> {
    /// `doc` (a document's bytes) read through `index`, which must have been made by walking exactly them (it is checked
    /// against them as it is used, never trusted to index within them). Only this crate pairs the two (a parsed
    /// message's body with its own index, [`crate::OpMsg::body_fields`]).
    pub(crate) fn indexed(doc: &'a [u8], index: &'a TopLevel) -> Self {
        Self { bytes: doc, spans: index.spans() }
    }

    /// The document.
    pub fn doc(&self) -> &'a RawDocument {
        // The bytes came from a `&RawDocument` (or a parsed body, which passed the same check and more), and
        // `from_bytes` checks only that shape again: failure is impossible, and the `expect` documents an
        // invariant, not an input condition.
        RawDocument::from_bytes(self.bytes).expect("Fields are made from documents")
    }

    /// The document's bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The element at index position `i`, or `None` when its span does not fit the bytes.
    #[inline]
    fn element(&self, spans: &[(u16, u16)], i: usize) -> Option<Element<'a>> {
        let bytes = self.bytes;
        let &(start, key_end) = spans.get(i)?;
        let end = match spans.get(i + 1) {
            Some(&(next, _)) => usize::from(next),
            None => bytes.len().checked_sub(1)?,
        };
        let element = bytes.get(usize::from(start)..end)?;
        let key_len = usize::from(key_end).checked_sub(usize::from(start) + 1)?;
        Some(Element {
            kind: *element.first()?,
            key: element.get(1..1 + key_len)?,
            value: element.get(key_len + 2..)?,
            bytes: element,
        })
    }

    /// The key of the element at index position `i`.
    #[inline]
    fn key(&self, span: (u16, u16)) -> Option<&'a [u8]> {
        self.bytes.get(usize::from(span.0) + 1..usize::from(span.1))
    }

    /// [`validate::field`]: the first top-level element named `key`; `Some(None)` when none is, `None` when the
    /// bytes could not be read.
    #[inline]
    pub fn field(&self, key: &[u8]) -> Option<Option<Element<'a>>> {
        let Some(spans) = self.spans else { return validate::field_of_bytes(self.bytes, key) };
        for (i, span) in spans.iter().enumerate() {
            // Compare lengths first: most keys differ in length.
            if usize::from(span.1).wrapping_sub(usize::from(span.0) + 1) == key.len() && self.key(*span)? == key {
                return self.element(spans, i).map(Some);
            }
        }
        Some(None)
    }

    /// [`validate::unique_field_span`]: where the element named `key` is within the document's bytes;
    /// `Some(None)` when none is, `None` when more than one is or the bytes could not be read.
    #[inline]
    pub fn unique_field_span(&self, key: &[u8]) -> Option<Option<Range<usize>>> {
        let Some(spans) = self.spans else { return validate::unique_field_span_of_bytes(self.bytes, key) };
        let mut found = None;
        for (i, span) in spans.iter().enumerate() {
            if usize::from(span.1).wrapping_sub(usize::from(span.0) + 1) == key.len() && self.key(*span)? == key {
                if found.is_some() {
                    return None;
                }
                found = Some(i);
            }
        }
        let Some(i) = found else { return Some(None) };
        let element = self.element(spans, i)?;
        let start = usize::from(spans.get(i)?.0);
        Some(Some(start..start + element.bytes.len()))
    }

    /// [`validate::all_keys`]: whether `keep` holds for every top-level key, stopping at the first that fails;
    /// `None` when the bytes could not be read.
    #[inline]
    pub fn all_keys(&self, mut keep: impl FnMut(&'a [u8]) -> bool) -> Option<bool> {
        let Some(spans) = self.spans else { return validate::all_keys(self.bytes, keep) };
        for span in spans {
            if !keep(self.key(*span)?) {
                return Some(false);
            }
        }
        Some(true)
    }

    /// The first element (the command name's), `None` for an empty document or bytes that cannot be read.
    #[inline]
    pub fn first(&self) -> Option<Element<'a>> {
        match self.spans {
            Some(spans) => self.element(spans, 0),
            None => validate::Elements::of_bytes(self.bytes).next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{field, validate_with_index};
    use bson::{cstr, rawdoc, RawDocumentBuf};

    /// Every lookup through the index answers what the scan answers, for every key the document has and some
    /// it has not.
    fn agree(doc: &RawDocument) {
        let (_, _, index) = validate_with_index(doc.as_bytes()).unwrap();
        let indexed = Fields::indexed(doc.as_bytes(), &index);
        let scanned = Fields::from(doc);
        let mut keys: Vec<Vec<u8>> = validate::Elements::new(doc).map(|e| e.key.to_vec()).collect();
        keys.extend([b"".to_vec(), b"absent".to_vec(), b"$db".to_vec(), b"a\xc3\xa9".to_vec()]);
        for key in &keys {
            let (a, b) = (indexed.field(key), scanned.field(key));
            assert_eq!(a.map(|e| e.map(|e| e.bytes)), b.map(|e| e.map(|e| e.bytes)), "{key:?}");
            let element = a.flatten();
            assert_eq!(
                element.map(|e| (e.kind, e.key, e.value)),
                field(doc, key).flatten().map(|e| (e.kind, e.key, e.value))
            );
            assert_eq!(indexed.unique_field_span(key), scanned.unique_field_span(key), "{key:?}");
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        assert_eq!(
            indexed.all_keys(|k| {
                a.push(k);
                true
            }),
            scanned.all_keys(|k| {
                b.push(k);
                true
            })
        );
        assert_eq!(a, b);
        for stop in 0..a.len() {
            let (mut i, mut j) = (0, 0);
            let stops_at = |n: &mut usize| {
                *n += 1;
                *n <= stop
            };
            assert_eq!(indexed.all_keys(|_| stops_at(&mut i)), scanned.all_keys(|_| stops_at(&mut j)));
            assert_eq!(i, j);
        }
        assert_eq!(indexed.first().map(|e| e.bytes), scanned.first().map(|e| e.bytes));
    }

    #[test]
    fn the_index_answers_what_a_scan_answers() {
        let regex = bson::Regex { pattern: cstr!("a.b").into(), options: cstr!("i").into() };
        let docs = [
            rawdoc! {},
            rawdoc! { "find": "orders", "filter": { "a": 1 }, "limit": 5, "$db": "shop" },
            rawdoc! { "a": 1.5, "é": "x", "long key of many bytes": [1, { "b": 2 }], "r": regex, "n": null, "b": true },
            rawdoc! { "": 1, "x": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![7; 16] } },
        ];
        for doc in &docs {
            agree(doc);
        }
        // Repeated keys: the first found, no unique span.
        let mut repeated = RawDocumentBuf::new();
        repeated.append(cstr!("limit"), 1);
        repeated.append(cstr!("b"), "x");
        repeated.append(cstr!("limit"), 2);
        agree(&repeated);
        let (_, _, index) = validate_with_index(repeated.as_bytes()).unwrap();
        let fields = Fields::indexed(repeated.as_bytes(), &index);
        assert_eq!(fields.unique_field_span(b"limit"), None);
        assert_eq!(fields.field(b"limit").unwrap().unwrap().value, 1i32.to_le_bytes());
        // Elements beyond what 16-bit offsets reach: not known, and the scan answers.
        let mut large = rawdoc! { "find": "c", "big": "x".repeat(70_000) };
        large.append(cstr!("after"), 1);
        let (_, _, index) = validate_with_index(large.as_bytes()).unwrap();
        assert!(!index.is_known());
        agree(&large);
        // At the index's capacity it is known; one more element and it is not, and the scan answers.
        for n in [TOP_LEVEL_MAX - 1, TOP_LEVEL_MAX, TOP_LEVEL_MAX + 1, 100] {
            let mut doc = RawDocumentBuf::new();
            for i in 0..n {
                doc.append(bson::raw::CString::try_from(format!("k{i}")).unwrap(), i as i32);
            }
            let (_, _, index) = validate_with_index(doc.as_bytes()).unwrap();
            assert_eq!(index.is_known(), n <= TOP_LEVEL_MAX, "{n}");
            agree(&doc);
        }
    }

    #[test]
    fn positions_that_do_not_fit_the_bytes_read_as_unreadable() {
        let doc = rawdoc! { "a": 1, "bb": 2 };
        let other = rawdoc! { "a": 1 };
        let (_, _, index) = validate_with_index(doc.as_bytes()).unwrap();
        // An index of other bytes never panics and never reads past them.
        let fields = Fields::indexed(other.as_bytes(), &index);
        assert!(fields.field(b"bb").is_none());
        assert!(fields.unique_field_span(b"bb").is_none());
        assert_eq!(fields.all_keys(|_| true), None);
    }
}
