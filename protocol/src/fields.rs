//! The top-level fields of a parsed command body, found once.
//!
//! A command's body is read by key several times on the way through the proxy (`$db`, the argument check, the
//! filter, the collation, the sessions, the rewrite). The validation walk reads every top-level element anyway;
//! it notes where each one starts and how long its key is ([`TopLevel`]), and [`Fields`] answers the lookups from
//! that small array instead of reading the bytes again. The keys read from nearly every command ([`KNOWN`]) are
//! noted by name too, so that reading one of them is a look at its slot, not a search. It owns only that
//! bookkeeping: every answer is exactly
//! what a fresh scan of the same bytes gives ([`validate::field`], [`validate::unique_field_span`],
//! [`validate::all_keys`]), repeated keys included, and a document without an index (built, not parsed, or with
//! what the index cannot hold: more top-level elements, an element starting past 64 KiB, a key longer than 255
//! bytes) is scanned as before. It must never be handed positions that
//! were not found in the very bytes it is asked about: the index is kept next to the body it was made from, and
//! every position is checked against the bytes before use, so a wrong one would answer "could not read", not
//! panic.

use std::ops::Range;

use bson::RawDocument;

use crate::validate::{self, Element};

/// Top-level elements an index holds; bodies with more are scanned (correct, only slower). The commands drivers
/// send nearly always fit: the command, a few arguments, `lsid`, `$clusterTime`, `$db`, perhaps `txnNumber` and
/// `$readPreference`. A transactional find with every option and the Stable API fields reaches about fifteen.
pub const TOP_LEVEL_MAX: usize = 14;

/// The top-level keys read from nearly every command on its way through: its database, its sessions, the
/// filter of a read (`filter`, or `query` for a count or a distinct), its collation and time limit, and a
/// reply's cursor. The walk notes where each of them is as it passes it ([`TopLevel::push`]).
pub const KNOWN: [&[u8]; 8] =
    [b"$db", b"lsid", b"endSessions", b"filter", b"query", b"collation", b"maxTimeMS", b"cursor"];

/// The slot of `key` among [`KNOWN`], if it is one of them. Decided by length first, then compared with a
/// key of that length, written out so that each comparison is of a fixed size (a few loads, not a call).
#[inline(always)]
fn known_slot(key: &[u8]) -> Option<usize> {
    match key.len() {
        3 if key == b"$db" => Some(0),
        4 if key == b"lsid" => Some(1),
        11 if key == b"endSessions" => Some(2),
        6 if key == b"filter" => Some(3),
        6 if key == b"cursor" => Some(7),
        5 if key == b"query" => Some(4),
        9 if key == b"collation" => Some(5),
        9 if key == b"maxTimeMS" => Some(6),
        _ => None,
    }
}

/// A key's first eight bytes as a little-endian word, zero-padded: what the validation walk reads each key as
/// (and what the proxy's tables of names are keyed by, when compiled).
pub const fn word_of(key: &[u8]) -> u64 {
    let mut word = 0u64;
    let mut i = 0;
    while i < key.len() && i < 8 {
        word |= (key[i] as u64) << (8 * i);
        i += 1;
    }
    word
}

/// [`known_slot`] for the validation walk, from what it has read of each key anyway: its length and its first
/// eight bytes as a word ([`word_of`]); `key` gives the whole key, read only past the word for the longer ones.
#[inline(always)]
pub(crate) fn known_slot_of_word<'a>(len: usize, word: u64, key: impl Fn() -> &'a [u8]) -> Option<usize> {
    const DB: u64 = word_of(b"$db");
    const LSID: u64 = word_of(b"lsid");
    const QUERY: u64 = word_of(b"query");
    const FILTER: u64 = word_of(b"filter");
    const CURSOR: u64 = word_of(b"cursor");
    const COLLATION: u64 = word_of(b"collation");
    const MAX_TIME_MS: u64 = word_of(b"maxTimeMS");
    const END_SESSIONS: u64 = word_of(b"endSessions");
    match (len, word) {
        (3, DB) => Some(0),
        (4, LSID) => Some(1),
        (5, QUERY) => Some(4),
        (6, FILTER) => Some(3),
        (6, CURSOR) => Some(7),
        (9, COLLATION) if key().get(8..) == Some(b"n") => Some(5),
        (9, MAX_TIME_MS) if key().get(8..) == Some(b"S") => Some(6),
        (11, END_SESSIONS) if key().get(8..) == Some(b"ons") => Some(2),
        _ => None,
    }
}

/// A slot of [`TopLevel::known`] whose key was not found.
const ABSENT: u8 = u8::MAX;
/// Set in a slot whose key was found more than once (the rest of the slot is the first one's place).
const REPEATED: u8 = 0x80;
/// The place of the first element with the slot's key, in a slot that is not [`ABSENT`].
const PLACE: u8 = 0x0F;
const _: () = assert!(TOP_LEVEL_MAX <= PLACE as usize + 1);

/// Where one top-level element starts (an offset of 16 bits into the document's bytes) and how long its key
/// is (8 bits), packed into three bytes.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
struct Span([u8; 3]);

impl Span {
    /// `None` when either does not fit.
    fn new(start: usize, key_len: usize) -> Option<Self> {
        let [a, b] = u16::try_from(start).ok()?.to_le_bytes();
        Some(Self([a, b, u8::try_from(key_len).ok()?]))
    }

    /// Where the element starts: its type byte.
    fn start(self) -> usize {
        usize::from(u16::from_le_bytes([self.0[0], self.0[1]]))
    }

    /// How long its key is.
    fn key_len(self) -> usize {
        usize::from(self.0[2])
    }

    /// Where its key's NUL is.
    fn key_end(self) -> usize {
        self.start() + 1 + self.key_len()
    }
}

impl std::fmt::Debug for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({}, {})", self.start(), self.key_end())
    }
}

/// Where each top-level element of one document starts and how long its key is, in order, as the validation
/// walk found them. Element `i` ends where element `i + 1` starts, and the last one at the document's final NUL.
///
/// Held inline and small (offsets of 16 bits and key lengths of 8: a body with an element starting past 64 KiB,
/// or with a key longer than 255 bytes, both rare, is not indexed), so that a message carries it without an allocation of its own, and
/// so that a message stays within 128 bytes: a move of one is then a few register moves, not a `memcpy` call
/// (a message moves through several layers on its way through the proxy; `msg.rs` tests the bound).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TopLevel {
    /// The elements' spans, in `spans[..len]`; a key is `bytes[start + 1..key_end]`.
    spans: [Span; TOP_LEVEL_MAX],
    /// How many of `spans` are set; [`TopLevel::UNKNOWN`] when the index is not known.
    len: u8,
    /// For each key of [`KNOWN`], where in `spans` its first element is ([`PLACE`]), with [`REPEATED`] set when
    /// there is more than one; [`ABSENT`] when there is none. Meaningful only while the index is known.
    known: [u8; KNOWN.len()],
}

impl Default for TopLevel {
    /// Not known: lookups read the bytes.
    fn default() -> Self {
        Self { spans: [Span::default(); TOP_LEVEL_MAX], len: Self::UNKNOWN, known: [ABSENT; KNOWN.len()] }
    }
}

impl TopLevel {
    /// The `len` of an index that is not known.
    const UNKNOWN: u8 = u8::MAX;

    /// Where a walk starts: no element yet. Only the walk fills one, so only this crate makes one.
    pub(crate) fn empty() -> Self {
        Self { spans: [Span::default(); TOP_LEVEL_MAX], len: 0, known: [ABSENT; KNOWN.len()] }
    }

    /// Notes the next element (`start` its type byte, `key_end` its key's NUL, `slot` its key's among
    /// [`KNOWN`]); once more elements came than the index holds, or one starts beyond what its offsets reach, or
    /// has a key longer than its key lengths reach, it is no longer known.
    #[inline(always)]
    pub(crate) fn push(&mut self, start: usize, key_end: usize, slot: Option<usize>) {
        let place = self.len;
        match (self.spans.get_mut(usize::from(place)), key_end.checked_sub(start + 1).and_then(|n| Span::new(start, n)))
        {
            (Some(span), Some(new)) => {
                *span = new;
                self.len += 1;
                if let Some(slot) = slot.and_then(|slot| self.known.get_mut(slot)) {
                    // `place` is below TOP_LEVEL_MAX, so within PLACE.
                    *slot = if *slot == ABSENT { place } else { *slot | REPEATED };
                }
            }
            _ => self.len = Self::UNKNOWN,
        }
    }

    /// Makes the index not known, for a walk that could not note an element (lookups then read the bytes).
    pub(crate) fn forget(&mut self) {
        self.len = Self::UNKNOWN;
    }

    /// Whether the index is known.
    pub fn is_known(&self) -> bool {
        usize::from(self.len) <= TOP_LEVEL_MAX
    }

    /// The spans, when known.
    fn spans(&self) -> Option<&[Span]> {
        self.spans.get(..usize::from(self.len))
    }

    /// The index of the document made from this one's by replacing its element at `span` with an element of the
    /// same key (or, for an empty `span` at the document's final NUL, appending an element whose key is `key`)
    /// that ends at `new_end`: the elements before it are where they were (the replaced one
    /// too: it starts where it did, and its key ends where it did), those after it are where they were moved by
    /// the difference in length. Not known when this one is not, or when an offset does not fit.
    pub(crate) fn replaced(&self, span: Range<usize>, key: &[u8], new_end: usize) -> TopLevel {
        let (true, Ok(old_end), Ok(new_end)) = (self.is_known(), u16::try_from(span.end), u16::try_from(new_end))
        else {
            return Self::default();
        };
        let mut index = *self;
        if span.is_empty() {
            index.push(span.start, span.start.saturating_add(1 + key.len()), known_slot(key));
            return index;
        }
        // Only the start of each element after the replaced one moves, in the 16 bits it is held in; its key's
        // length stays as it is.
        for span in index.spans.iter_mut().take(usize::from(self.len)) {
            let start = u16::from_le_bytes([span.0[0], span.0[1]]);
            if start >= old_end {
                let Some(moved) = (start - old_end).checked_add(new_end) else { return Self::default() };
                [span.0[0], span.0[1]] = moved.to_le_bytes();
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
    spans: Option<&'a [Span]>,
    /// Where the [`KNOWN`] keys are among `spans` ([`TopLevel::known`]), read only when `spans` is known.
    known: &'a [u8; KNOWN.len()],
}

/// The slots of a document without an index, never read (its `spans` are not known).
static NOT_INDEXED: [u8; KNOWN.len()] = [ABSENT; KNOWN.len()];

impl<'a> From<&'a RawDocument> for Fields<'a> {
    /// A document without an index: every lookup reads its bytes.
    fn from(doc: &'a RawDocument) -> Self {
        Self { bytes: doc.as_bytes(), spans: None, known: &NOT_INDEXED }
    }
}

impl<'a> From<&'a bson::RawDocumentBuf> for Fields<'a> {
    /// A document without an index: every lookup reads its bytes.
    fn from(doc: &'a bson::RawDocumentBuf) -> Self {
        Self { bytes: doc.as_bytes(), spans: None, known: &NOT_INDEXED }
    }
}

impl<'a> Fields<'a> {
    /// `doc` (a document's bytes) read through `index`, which must have been made by walking exactly them (it is checked
    /// against them as it is used, never trusted to index within them). Only this crate pairs the two (a parsed
    /// message's body with its own index, [`crate::OpMsg::body_fields`]).
    pub(crate) fn indexed(doc: &'a [u8], index: &'a TopLevel) -> Self {
        Self { bytes: doc, spans: index.spans(), known: &index.known }
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
    fn element(&self, spans: &[Span], i: usize) -> Option<Element<'a>> {
        let bytes = self.bytes;
        let span = *spans.get(i)?;
        let end = match spans.get(i + 1) {
            Some(next) => next.start(),
            None => bytes.len().checked_sub(1)?,
        };
        let element = bytes.get(span.start()..end)?;
        let key_len = span.key_len();
        Some(Element {
            kind: *element.first()?,
            key: element.get(1..1 + key_len)?,
            value: element.get(key_len + 2..)?,
            bytes: element,
        })
    }

    /// The key of the element at index position `i`.
    #[inline]
    fn key(&self, span: Span) -> Option<&'a [u8]> {
        self.bytes.get(span.start() + 1..span.key_end())
    }

    /// [`validate::field`]: the first top-level element named `key`; `Some(None)` when none is, `None` when the
    /// bytes could not be read. Inlined for a key of [`KNOWN`], so that a literal key's slot is found when
    /// compiled; any other key is searched for by [`Fields::field_searched`], which the compiler may keep out of
    /// line.
    #[inline(always)]
    pub fn field(&self, key: &[u8]) -> Option<Option<Element<'a>>> {
        let (Some(spans), Some(slot)) = (self.spans, known_slot(key)) else { return self.field_searched(key) };
        match self.known.get(slot) {
            Some(&ABSENT) => Some(None),
            // The element's key is compared all the same (with `key`, the slot's key: a literal, compared in
            // place): an index of other bytes answers "could not read", never another element.
            Some(at) => self.element(spans, usize::from(at & PLACE)).filter(|e| e.key == key).map(Some),
            None => None,
        }
    }

    /// [`Fields::field`] for a key that is not one of [`KNOWN`], or a document without an index.
    fn field_searched(&self, key: &[u8]) -> Option<Option<Element<'a>>> {
        let Some(spans) = self.spans else { return validate::field_of_bytes(self.bytes, key) };
        for (i, span) in spans.iter().enumerate() {
            // Compare lengths first: most keys differ in length.
            if span.key_len() == key.len() && self.key(*span)? == key {
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
        let slot = known_slot(key);
        let found = match slot {
            Some(slot) => match *self.known.get(slot)? {
                ABSENT => None,
                at if at & REPEATED != 0 => return None,
                at => Some(usize::from(at)),
            },
            None => {
                let mut found = None;
                for (i, span) in spans.iter().enumerate() {
                    if span.key_len() == key.len() && self.key(*span)? == key {
                        if found.is_some() {
                            return None;
                        }
                        found = Some(i);
                    }
                }
                found
            }
        };
        let Some(i) = found else { return Some(None) };
        // When the slot answered, the element's key is compared with `key` (the slot's key), as in `field`; the
        // loop compared it already otherwise.
        let element = self.element(spans, i).filter(|e| slot.is_none() || e.key == key)?;
        let start = spans.get(i)?.start();
        Some(Some(start..start + element.bytes.len()))
    }

    /// Whether lookups are answered from an index (they read the bytes otherwise): a caller asking about several
    /// keys of a document without one may rather read its keys once itself.
    #[inline]
    pub fn is_indexed(&self) -> bool {
        self.spans.is_some()
    }

    /// How many top-level elements are named `key`: 0, 1, or 2 for two or more; `None` when the bytes could
    /// not be read. Inlined for a key of [`KNOWN`] (a look at its slot), as [`Fields::field`].
    #[inline(always)]
    pub fn occurrences(&self, key: &[u8]) -> Option<u8> {
        let (Some(_), Some(slot)) = (self.spans, known_slot(key)) else { return self.occurrences_counted(key) };
        match *self.known.get(slot)? {
            ABSENT => Some(0),
            at if at & REPEATED != 0 => Some(2),
            _ => Some(1),
        }
    }

    /// [`Fields::occurrences`] for a key that is not one of [`KNOWN`], or a document without an index.
    fn occurrences_counted(&self, key: &[u8]) -> Option<u8> {
        let mut count = 0u8;
        self.all_keys(|k| {
            count += u8::from(k == key);
            count < 2
        })?;
        Some(count)
    }

    /// The top-level keys in order, read from the index; `None` for a document without one (whose keys
    /// [`Fields::all_keys`] reads). An item is `None` when its key could not be read.
    #[inline]
    pub fn indexed_keys(&self) -> Option<impl Iterator<Item = Option<&'a [u8]>> + use<'a>> {
        let bytes = self.bytes;
        Some(self.spans?.iter().map(move |span| bytes.get(span.start() + 1..span.key_end())))
    }

    /// [`validate::all_keys`]: whether `keep` holds for every top-level key, stopping at the first that fails;
    /// `None` when the bytes could not be read.
    #[inline]
    pub fn all_keys(&self, mut keep: impl FnMut(&'a [u8]) -> bool) -> Option<bool> {
        let Some(keys) = self.indexed_keys() else { return validate::all_keys(self.bytes, keep) };
        for key in keys {
            if !keep(key?) {
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
        keys.extend([b"".to_vec(), b"absent".to_vec(), b"a\xc3\xa9".to_vec()]);
        // Every noted key, and keys of the same lengths that are not one.
        keys.extend(KNOWN.iter().map(|k| k.to_vec()));
        keys.extend([b"$dc".to_vec(), b"lsie".to_vec(), b"filtes".to_vec(), b"cursos".to_vec(), b"collatioN".to_vec()]);
        for key in &keys {
            let (a, b) = (indexed.field(key), scanned.field(key));
            assert_eq!(a.map(|e| e.map(|e| e.bytes)), b.map(|e| e.map(|e| e.bytes)), "{key:?}");
            let element = a.flatten();
            assert_eq!(
                element.map(|e| (e.kind, e.key, e.value)),
                field(doc, key).flatten().map(|e| (e.kind, e.key, e.value))
            );
            assert_eq!(indexed.unique_field_span(key), scanned.unique_field_span(key), "{key:?}");
            let count = validate::Elements::new(doc).filter(|e| e.key == &key[..]).count().min(2) as u8;
            assert_eq!(indexed.occurrences(key), Some(count), "{key:?}");
            assert_eq!(scanned.occurrences(key), Some(count), "{key:?}");
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
        // Every noted key, alone, repeated once and twice, first or after others, beside keys that are not one.
        for (i, key) in KNOWN.iter().enumerate() {
            let key = bson::raw::CString::try_from(std::str::from_utf8(key).unwrap()).unwrap();
            for repeats in 1..=3 {
                for before in 0..2 {
                    let mut doc = RawDocumentBuf::new();
                    for b in 0..before {
                        doc.append(bson::raw::CString::try_from(format!("before{b}")).unwrap(), 1);
                    }
                    for r in 0..repeats {
                        doc.append(key.clone(), r);
                        doc.append(bson::raw::CString::try_from(format!("k{i}{r}")).unwrap(), "x");
                    }
                    agree(&doc);
                }
            }
        }
        // Elements beyond what 16-bit offsets reach: not known, and the scan answers.
        let mut large = rawdoc! { "find": "c", "big": "x".repeat(70_000) };
        large.append(cstr!("after"), 1);
        let (_, _, index) = validate_with_index(large.as_bytes()).unwrap();
        assert!(!index.is_known());
        agree(&large);
        // Elements starting at the last offset the index reaches and one past it, with the longest key it holds.
        for (at, known) in [(65_535, true), (65_536, false)] {
            let mut doc = RawDocumentBuf::new();
            // The padding element: type, "pad" and its NUL, the string's length, its text and NUL.
            doc.append(cstr!("pad"), "x".repeat(at - 4 - 10));
            doc.append(bson::raw::CString::try_from("k".repeat(255)).unwrap(), 1);
            let (_, _, index) = validate_with_index(doc.as_bytes()).unwrap();
            assert_eq!(index.is_known(), known, "{at}");
            assert_eq!(index.spans().map(|s| s[1].start()), known.then_some(at));
            agree(&doc);
        }
        // A key longer than the index's 8-bit key lengths reach: not known, and the scan answers.
        let mut long_key = rawdoc! { "find": "c" };
        long_key.append(bson::raw::CString::try_from("k".repeat(300)).unwrap(), 1);
        long_key.append(cstr!("$db"), "app");
        let (_, _, index) = validate_with_index(long_key.as_bytes()).unwrap();
        assert!(!index.is_known());
        agree(&long_key);
        for len in [256, 300] {
            let mut long_key = rawdoc! { "find": "c" };
            long_key.append(bson::raw::CString::try_from("k".repeat(len)).unwrap(), 1);
            let (_, _, index) = validate_with_index(long_key.as_bytes()).unwrap();
            assert!(!index.is_known(), "{len}");
        }
        let mut longest = rawdoc! { "find": "c" };
        longest.append(bson::raw::CString::try_from("k".repeat(255)).unwrap(), 1);
        let (_, _, index) = validate_with_index(longest.as_bytes()).unwrap();
        assert!(index.is_known());
        agree(&longest);
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
    fn each_noted_key_has_its_own_slot() {
        for (i, key) in KNOWN.iter().enumerate() {
            // Both ways of telling, the walk's from the key's word and the lookups' from its bytes.
            let slot = |key: &[u8]| {
                let by_word = known_slot_of_word(key.len(), word_of(key), || key);
                assert_eq!(by_word, known_slot(key), "{key:?}");
                by_word
            };
            assert_eq!(slot(key), Some(i), "{key:?}");
            // Not a prefix, an extension or a near miss at either end.
            assert_eq!(slot(&key[..key.len() - 1]), None);
            assert_eq!(slot(&[*key, &b"x"[..]].concat()), None);
            for at in [0, key.len() - 1] {
                let mut near = key.to_vec();
                near[at] ^= 0x20;
                assert_eq!(slot(&near), None);
            }
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
