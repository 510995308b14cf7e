//! Full BSON validation before a document is trusted.
//!
//! `RawDocument::from_bytes` checks only the length prefix and the trailing NUL; a proxy that trusted that
//! could read a document differently from the server behind it. Every document that enters through this crate is
//! walked once, element by element and level by level, with a nesting cap so that hostile depth cannot exhaust
//! the stack.

use bson::{RawBsonRef, RawDocument};

use crate::fields::TopLevel;
use crate::ProtocolError;

/// Deepest nesting accepted (the server's default `maxBSONDepth` is 200; it counts the top level too).
pub const MAX_DEPTH: usize = 200;

/// Reads the int32 length prefix of a document starting at `at` and checks it against the bytes available and
/// `max`. Returns the document's length. Nothing is allocated.
pub fn document_len(buf: &[u8], at: usize, max: usize, what: &'static str) -> Result<usize, ProtocolError> {
    let prefix = buf.get(at..at + 4).ok_or(ProtocolError::Truncated(what))?;
    let len = i32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    if len < 5 {
        return Err(ProtocolError::InvalidBson(format!("{what} length {len} is below the minimum of 5")));
    }
    // Non-negative after the check above.
    let len = len as usize;
    if len > max {
        return Err(ProtocolError::DocumentTooLarge { len, max });
    }
    if buf.len() - at < len {
        return Err(ProtocolError::Truncated(what));
    }
    Ok(len)
}

/// Walks a whole document; on success it is safe to view as `&RawDocument` anywhere.
pub fn validate_document(bytes: &[u8]) -> Result<&RawDocument, ProtocolError> {
    validate_with_findings(bytes).map(|(doc, _)| doc)
}

/// What the validation walk noticed about a document's content while it was reading every byte anyway, so that
/// the checks above this crate can skip a walk of their own when there is nothing to find.
///
/// Each finding is a "maybe": `false` is a proof of absence, `true` means "look with the precise check" (it is
/// also set for places the precise checks do not look at, such as the scope of code with scope). Messages that
/// were built rather than parsed carry [`Findings::UNKNOWN`], which sends every check down its precise path.
/// The top-level keys are summarised too ([`Findings::top_level_plain_without`]), so that stamping a
/// sequence's documents need not read their keys again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Findings {
    duplicate_keys: bool,
    javascript: bool,
    /// The top-level keys, hashed into a filter (a bit per key, [`key_bit`]); all bits set when not known.
    top_keys: u64,
    /// Some top-level key starts with `$` or holds a dot.
    odd_top_key: bool,
}

impl Findings {
    /// Nothing was proved absent.
    pub const UNKNOWN: Self = Self { duplicate_keys: true, javascript: true, top_keys: u64::MAX, odd_top_key: true };

    /// Where a walk starts: nothing found yet. Only a walk that then reads every byte may hand it out (hence not
    /// `Default`, which would let a caller claim proofs no walk made).
    pub(crate) const NOTHING_YET: Self =
        Self { duplicate_keys: false, javascript: false, top_keys: 0, odd_top_key: false };

    /// Some document at some depth may repeat a key.
    pub fn duplicate_keys(self) -> bool {
        self.duplicate_keys
    }

    /// Server-side JavaScript may be present: a code value (BSON types 0x0D and 0x0F) or a key that runs code on
    /// the server (`$where`, `$function`, `$accumulator`), at any depth.
    pub fn javascript(self) -> bool {
        self.javascript
    }

    /// Whether it is proved that no top-level key is `key`, starts with `$` or holds a dot (so that none is a
    /// path below `key` either). `false` means "maybe": read the keys. For a `key` that itself starts with `$`
    /// or holds a dot, nothing is proved.
    pub fn top_level_plain_without(self, key: &[u8]) -> bool {
        !self.odd_top_key && !odd_key(key) && self.top_keys & key_bit(key) == 0
    }

    /// What either of two documents may hold.
    #[must_use]
    pub fn union(self, other: Self) -> Self {
        Self {
            duplicate_keys: self.duplicate_keys || other.duplicate_keys,
            javascript: self.javascript || other.javascript,
            top_keys: self.top_keys | other.top_keys,
            odd_top_key: self.odd_top_key || other.odd_top_key,
        }
    }
}

/// Whether `key` (whose first eight bytes are `word`) holds a dot: for a key of up to seven bytes, the word
/// alone answers (its padding is NUL, never a dot).
#[inline(always)]
fn has_dot<'a>(len: usize, word: u64, key: impl FnOnce() -> &'a [u8]) -> bool {
    if len < 8 {
        return nul_in(word ^ u64::from_le_bytes([b'.'; 8])).is_some();
    }
    key().contains(&b'.')
}

/// Whether a key starts with `$` or holds a dot.
fn odd_key(key: &[u8]) -> bool {
    key.first() == Some(&b'$') || key.contains(&b'.')
}

/// The filter bit of a key: a hash of its length and first eight bytes (as a little-endian word, zero-padded).
fn key_bit(key: &[u8]) -> u64 {
    word_bit(first_word(key), key.len())
}

/// A key's first eight bytes as a little-endian word, zero-padded (what [`key_at`] returns with its length).
fn first_word(key: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    let head = key.get(..8).unwrap_or(key);
    word.get_mut(..head.len()).unwrap_or_default().copy_from_slice(head);
    u64::from_le_bytes(word)
}

/// [`key_bit`] from the key's first word and length.
#[inline(always)]
fn word_bit(word: u64, len: usize) -> u64 {
    1u64 << ((word ^ (len as u64).rotate_right(8)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58)
}

/// Keys whose values MongoDB runs as JavaScript.
const JAVASCRIPT_KEYS: [&[u8]; 3] = [b"$where", b"$function", b"$accumulator"];

/// [`validate_document`], also reporting what the walk found (see [`Findings`]).
///
/// The walk reads the bytes directly, once: every element's type, key (UTF-8, NUL-terminated) and value are
/// checked exactly as strictly as the `bson` crate's iterator checks them when a value is read (lengths within
/// their container, strings UTF-8 and NUL-terminated, booleans 0 or 1, the old binary subtype's inner length,
/// code with scope's parts), so that every later read through `RawDocument` succeeds. Nothing is allocated
/// except for documents with more than [`PAIRWISE_MAX`] keys.
pub fn validate_with_findings(bytes: &[u8]) -> Result<(&RawDocument, Findings), ProtocolError> {
    let doc = RawDocument::from_bytes(bytes).map_err(|e| ProtocolError::InvalidBson(e.to_string()))?;
    let mut findings = Findings::NOTHING_YET;
    walk::<false, true, false>(bytes, 1, &mut findings, None, None)?;
    Ok((doc, findings))
}

/// [`validate_with_findings`], also noting where each top-level element is ([`TopLevel`]).
#[cfg(test)]
pub(crate) fn validate_with_index(bytes: &[u8]) -> Result<(&RawDocument, Findings, TopLevel), ProtocolError> {
    let doc = RawDocument::from_bytes(bytes).map_err(|e| ProtocolError::InvalidBson(e.to_string()))?;
    let mut index = TopLevel::empty();
    let findings = findings_and_index_of(bytes, &mut index)?;
    Ok((doc, findings, index))
}

/// [`validate_with_findings`] for callers that keep the bytes and need only the findings (the parser, once per
/// document of a sequence): the same checks and the same errors, without viewing the bytes as a document.
pub fn findings_of(bytes: &[u8]) -> Result<Findings, ProtocolError> {
    let mut findings = Findings::NOTHING_YET;
    add_findings_of(bytes, &mut findings)?;
    Ok(findings)
}

/// [`findings_of`], adding what it finds to `findings` (which then holds their [`Findings::union`]): for the
/// documents of a sequence, which are known by what any of them may hold. Every finding of the walk only ever
/// grows, so walking into the union is the union of walks.
#[inline]
pub(crate) fn add_findings_of(bytes: &[u8], findings: &mut Findings) -> Result<(), ProtocolError> {
    if !has_document_shape(bytes) {
        // `bson` says why, in its words, as validate_with_findings would.
        shape_error(bytes)?;
    }
    walk::<false, true, false>(bytes, 1, findings, None, None)
}

/// [`add_findings_of`] for the next document of a sequence: `last` holds the top-level keys of the document
/// before it when they were all plain (see [`LastKeys`]), and then holds this one's.
#[inline]
pub(crate) fn add_findings_after(
    bytes: &[u8],
    findings: &mut Findings,
    last: &mut LastKeys,
) -> Result<(), ProtocolError> {
    if !has_document_shape(bytes) {
        // `bson` says why, in its words, as validate_with_findings would.
        shape_error(bytes)?;
    }
    walk::<false, true, false>(bytes, 1, findings, None, Some(last))
}

/// The top-level keys of the last document of a sequence, when each was at most seven bytes long, none
/// started with `$` or held a dot, none repeated, and there were at most [`PAIRWISE_MAX`]: what the documents
/// of one insert nearly always share. A document whose keys are the same, in the same order, from the first,
/// would have the same findings for them; the walk then compares each key with the last document's as one
/// masked word and skips the checks of keys (the repeat filter is carried along). At the first key that differs
/// it checks the rest as usual, having proved nothing lost: the keys before it were those of the last document.
/// Values are always read and checked.
pub(crate) struct LastKeys {
    /// How many keys are known (zero: none, compare nothing).
    len: usize,
    /// Each key's bytes as a little-endian word, zero-padded (its NUL included as a zero byte).
    words: [u64; PAIRWISE_MAX],
    /// Each key's length.
    lens: [u8; PAIRWISE_MAX],
    /// The repeat filter ([`Keys`]) after each key.
    filters: [u64; PAIRWISE_MAX],
}

impl LastKeys {
    /// Nothing known.
    pub(crate) const NONE: Self =
        Self { len: 0, words: [0; PAIRWISE_MAX], lens: [0; PAIRWISE_MAX], filters: [0; PAIRWISE_MAX] };

    /// The key at `at` within `elements`, if it is the last document's key at `place` (which the caller keeps
    /// below [`LastKeys::len`]): its length and the repeat filter after it.
    #[inline(always)]
    fn same_key(&self, place: usize, elements: &[u8], at: usize) -> Option<(usize, u64)> {
        let len = usize::from(*self.lens.get(place)?);
        let word = word_at(elements, at)?;
        // The key's bytes and its NUL: `len` is at most seven, so they are within the word.
        let mask = u64::MAX >> (8 * (7 - len.min(7)));
        (word & mask == *self.words.get(place)?).then(|| (len, self.filters[place.min(PAIRWISE_MAX - 1)]))
    }

    /// Records the key at `place` of the document being walked (its word, its length, the filter after it);
    /// `false` when there is no room for it.
    #[inline(always)]
    fn note(&mut self, place: usize, word: u64, len: usize, filter: u64) -> bool {
        match (self.words.get_mut(place), self.lens.get_mut(place), self.filters.get_mut(place)) {
            (Some(w), Some(l), Some(f)) => {
                *w = word;
                *l = len as u8;
                *f = filter;
                true
            }
            _ => false,
        }
    }
}

/// Why `bytes` do not have a document's shape ([`has_document_shape`]), in `bson`'s words.
#[cold]
#[inline(never)]
fn shape_error(bytes: &[u8]) -> Result<(), ProtocolError> {
    RawDocument::from_bytes(bytes).map(|_| ()).map_err(|e| ProtocolError::InvalidBson(e.to_string()))
}

/// [`findings_of`], also noting in `index` (empty when given) where each top-level element is: for a
/// message's body, which is then read by key several times ([`crate::fields::Fields`]).
pub(crate) fn findings_and_index_of(bytes: &[u8], index: &mut TopLevel) -> Result<Findings, ProtocolError> {
    if !has_document_shape(bytes) {
        RawDocument::from_bytes(bytes).map_err(|e| ProtocolError::InvalidBson(e.to_string()))?;
    }
    let mut findings = Findings::NOTHING_YET;
    walk::<false, true, true>(bytes, 1, &mut findings, Some(index), None)?;
    Ok(findings)
}

/// What `RawDocument::from_bytes` checks, inline: at least five bytes, a length prefix equal to their number,
/// and a final NUL. Where this says no, `from_bytes` refuses the bytes (and reports why).
#[inline]
pub fn has_document_shape(bytes: &[u8]) -> bool {
    match (bytes.first_chunk::<4>(), bytes.last()) {
        (Some(prefix), Some(0)) => bytes.len() >= 5 && usize::try_from(i32::from_le_bytes(*prefix)) == Ok(bytes.len()),
        _ => false,
    }
}

#[cold]
#[inline(never)]
fn invalid(what: &str) -> ProtocolError {
    ProtocolError::InvalidBson(what.to_owned())
}

#[inline(always)]
fn read_i32(bytes: &[u8], at: usize) -> Option<i32> {
    bytes.get(at..)?.first_chunk::<4>().map(|b| i32::from_le_bytes(*b))
}

/// The length of a BSON string (int32 length, UTF-8 bytes, NUL) starting at `at` within `bytes`, all of it
/// checked. Returns the whole element size (prefix included).
fn string_len(bytes: &[u8], at: usize) -> Result<usize, ProtocolError> {
    let len = read_i32(bytes, at).ok_or_else(|| invalid("string length truncated"))?;
    let len = usize::try_from(len).ok().filter(|l| *l >= 1).ok_or_else(|| invalid("string length below 1"))?;
    let start = at + 4;
    let end = start.checked_add(len).ok_or_else(|| invalid("string length overflows"))?;
    let body = bytes.get(start..end).ok_or_else(|| invalid("string overruns its document"))?;
    let (last, text) = body.split_last().ok_or_else(|| invalid("string length below 1"))?;
    if *last != 0 {
        return Err(invalid("string not NUL-terminated"));
    }
    if !text.is_ascii() {
        std::str::from_utf8(text).map_err(|_| invalid("string is not valid UTF-8"))?;
    }
    Ok(4 + len)
}

/// [`string_len`] for the common case, inlined into the walk: ASCII text of at most fifteen bytes that is all
/// there. `None` for anything else, which [`string_len`] then reads and refuses or accepts.
///
/// The word that ends at the NUL (inclusive) holds the NUL as its top byte and up to seven bytes of text below
/// it: one load checks the terminator and, masked to the text, that the text is ASCII. Text of eight to fifteen
/// bytes takes its first eight bytes too (the two words overlap). A word ending at the NUL always lies within
/// the document, as the length prefix and key come before the text; one starting at the text need not.
#[inline(always)]
fn short_string(bytes: &[u8], at: usize) -> Option<usize> {
    let len = read_i32(bytes, at)?;
    // `len` counts the NUL: one to sixteen.
    if !(1..=16).contains(&len) {
        return None;
    }
    let text = len as usize - 1;
    // No overflow: `at + 4` is within `bytes` (the prefix was read) and `len` is at most sixteen.
    let nul = at + 3 + len as usize;
    let last = word_at(bytes, nul.checked_sub(7)?)?;
    if last >> 56 != 0 {
        return None;
    }
    let high = if text <= 7 {
        // The text's bytes and the NUL: the word's top `text + 1` bytes.
        last & (u64::MAX << (8 * (7 - text)))
    } else {
        last | word_at(bytes, at + 4)?
    };
    (high & HIGH_BITS == 0).then_some(4 + len as usize)
}

/// The eight bytes at `at` as a little-endian word, if there are eight.
#[inline(always)]
fn word_at(bytes: &[u8], at: usize) -> Option<u64> {
    let chunk: [u8; 8] = bytes.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(chunk))
}

/// [`key_at`] for the common case, inlined into the walk: an ASCII key of at most fifteen bytes (with eight
/// bytes to read from its start for one of at most seven). `None` for anything else, which [`key_at`] then
/// reads and refuses or accepts.
#[inline(always)]
fn short_key(bytes: &[u8], at: usize) -> Option<(usize, u64)> {
    let word = word_at(bytes, at)?;
    let zero = zero_bytes(word);
    if zero == 0 {
        // No NUL in the first eight bytes: a key of eight to fifteen (`createdAt`, `singleBatch`) has its NUL in
        // the next eight, read the same way. The first word is all key, so it must be ASCII as a whole.
        let after = at + 8;
        let avail = bytes.len() - after;
        let next = match avail {
            8.. => word_at(bytes, after)?,
            // Fewer than eight bytes left (a key near its document's end, as in `sort: {createdAt: -1}`): the
            // word that ends where the bytes do, shifted down to start at `after`. Its top bytes are then zeros
            // that are not in the bytes: a NUL found there is not one, and the key is left to `key_at`.
            1.. => word_at(bytes, bytes.len() - 8)? >> (8 * (8 - avail)),
            0 => return None,
        };
        let zero = zero_bytes(next);
        let len = (zero.trailing_zeros() / 8) as usize;
        let rest = next & (zero ^ zero.wrapping_sub(1)) >> 8;
        return (zero != 0 && len < avail && (word | rest) & HIGH_BITS == 0).then_some((8 + len, word));
    }
    // The bits below the first NUL's flag, less its byte: the key's bytes.
    let key = word & ((zero ^ (zero - 1)) >> 8);
    (key & HIGH_BITS == 0).then_some(((zero.trailing_zeros() / 8) as usize, key))
}

/// The length of a C string (bytes up to a NUL, UTF-8) starting at `at` within `bytes`, NUL excluded.
fn cstring_len(bytes: &[u8], at: usize) -> Result<usize, ProtocolError> {
    key_at(bytes, at).map(|(len, _)| len)
}

const LOW_BITS: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// The bytes of `word` below byte `n` (`n` < 8), the rest cleared.
fn low_bytes(word: u64, n: usize) -> u64 {
    word & ((1u64 << (8 * n)) - 1)
}

/// The index of the first NUL in an 8-byte little-endian word, if any. The classic zero-byte test: a borrow
/// only runs upwards from a zero byte, so the lowest flagged byte is always a real NUL.
#[inline(always)]
fn nul_in(word: u64) -> Option<usize> {
    let zero = zero_bytes(word);
    (zero != 0).then(|| (zero.trailing_zeros() / 8) as usize)
}

/// The high bit of each byte of `word` that may be NUL, the lowest one set being the first NUL ([`nul_in`]);
/// zero when there is none.
#[inline(always)]
fn zero_bytes(word: u64) -> u64 {
    word.wrapping_sub(LOW_BITS) & !word & HIGH_BITS
}

/// The C string (key, regex pattern or options) starting at `at` within `bytes`, checked: its length (NUL
/// excluded) and its first eight bytes as a little-endian word (zero-padded), which keys are hashed by.
///
/// Keys are short and nearly always ASCII: they are read eight bytes at a time, the NUL and any non-ASCII byte
/// found in the same pass, so the UTF-8 check runs only for keys that need it.
fn key_at(bytes: &[u8], at: usize) -> Result<(usize, u64), ProtocolError> {
    let rest = bytes.get(at..).ok_or_else(|| invalid("C string truncated"))?;
    let mut high = 0u64;
    let mut first = None;
    let mut chunks = rest.chunks_exact(8);
    let mut base = 0;
    let mut found = None;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        if let Some(i) = nul_in(word) {
            let below = low_bytes(word, i);
            high |= below;
            first.get_or_insert(below);
            found = Some(base + i);
            break;
        }
        high |= word;
        first.get_or_insert(word);
        base += 8;
    }
    let len = match found {
        Some(len) => len,
        None => {
            // Fewer than eight bytes left: one at a time.
            let tail = chunks.remainder();
            let i = tail.iter().position(|b| *b == 0).ok_or_else(|| invalid("C string not NUL-terminated"))?;
            let mut word = [0u8; 8];
            word[..i].copy_from_slice(&tail[..i]);
            let word = u64::from_le_bytes(word);
            high |= word;
            first.get_or_insert(word);
            base + i
        }
    };
    if high & HIGH_BITS != 0 {
        let key = rest.get(..len).ok_or_else(|| invalid("C string truncated"))?;
        std::str::from_utf8(key).map_err(|_| invalid("C string is not valid UTF-8"))?;
    }
    Ok((len, first.unwrap_or(0)))
}

/// The length of a C string (bytes up to a NUL) starting at `at`, unchecked beyond finding the NUL.
#[inline(always)]
fn nul_at(bytes: &[u8], at: usize) -> Option<usize> {
    let rest = bytes.get(at..)?;
    let mut chunks = rest.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        if let Some(i) = nul_in(u64::from_le_bytes(word)) {
            return Some(base + i);
        }
        base += 8;
    }
    chunks.remainder().iter().position(|b| *b == 0).map(|i| base + i)
}

/// Validates the document that is exactly `doc` (its length prefix already matched against `doc.len()` and its
/// last byte checked to be NUL by the caller), recording findings. Arrays are walked as the documents they are
/// on the wire (the precise checks read their keys too); keys that are the positions "0", "1", ... in order
/// cannot repeat, so an array's keys are compared with their positions instead of with each other, and any
/// other key is noted as a possible repeat. `ARRAY` says which of the two the bytes are. `TOP` is set for a
/// document at depth 1 (a message's body, a sequence's document), whose keys are summarised in the findings.
/// With `INDEX` (for a message body's top level), `top` is told where each element starts and where its key
/// ends; the other walks (every nested document, every document of a sequence) are compiled without that step.
fn walk<const ARRAY: bool, const TOP: bool, const INDEX: bool>(
    doc: &[u8],
    depth: usize,
    findings: &mut Findings,
    mut top: Option<&mut TopLevel>,
    mut last: Option<&mut LastKeys>,
) -> Result<(), ProtocolError> {
    if depth > MAX_DEPTH {
        return Err(ProtocolError::InvalidBson(format!("nesting deeper than {MAX_DEPTH} levels")));
    }
    // Elements end at or before the document's final NUL, so `elements` excludes it.
    let elements = doc.get(..doc.len().saturating_sub(1)).ok_or_else(|| invalid("document truncated"))?;
    let mut keys = Keys::new();
    let mut index = Position::default();
    let mut pos = 4;
    // The element's place in the document, and how many of the last document's keys this one has repeated so
    // far, from the first, while it still does (none once a key differs, or when nothing is known).
    let mut place = 0;
    let mut following = match last.as_deref_mut() {
        // Nothing is known for the next document unless this walk ends well (below): a document refused
        // halfway must not leave the next one comparing with a mixture of two documents' keys.
        Some(last) => {
            let known = std::mem::take(&mut last.len);
            if TOP && !findings.duplicate_keys {
                known
            } else {
                0
            }
        }
        None => 0,
    };
    // Whether this document's keys can be the next one's [`LastKeys`].
    let mut plain = TOP && last.is_some() && !findings.duplicate_keys;
    while let Some(&kind) = elements.get(pos) {
        let key_at = pos + 1;
        let followed = match last.as_deref() {
            Some(last) if TOP && place < following => last.same_key(place, elements, key_at),
            _ => None,
        };
        // For an indexed walk, the key's slot among the keys the index notes by name (`Some(None)`: none), set
        // only where the key is read; an element whose key was not read leaves it `None`, and the index not
        // known ([`TopLevel::forget`]) rather than noting a key as absent that may be there.
        let mut known_slot = None;
        // An array's key that is its next one-digit position is all the checks below would pass: ASCII, not
        // `$`, no dot, no repeat. Nearly every array element is one of those.
        let key_len = if ARRAY && index.next_is_digit(elements, key_at) {
            1
        } else if let Some((key_len, filter)) = followed {
            // The same key as the last document's at this place, after the same keys before it: the checks
            // below found nothing for it there, and would find nothing here.
            keys.follow(filter);
            key_len
        } else {
            following = 0;
            let (key_len, word) = match short_key(elements, key_at) {
                Some(short) => short,
                None => self::key_at(elements, key_at)?,
            };
            // Within `elements`: the key's NUL was found there.
            // The key as bytes, for the uncommon paths (the common ones need only its length and first word).
            let key = || elements.get(key_at..key_at + key_len).unwrap_or_default();
            // One repeat anywhere is all the finding records: once it is set, keys need not be compared.
            if !findings.duplicate_keys {
                let repeated =
                    if ARRAY { !index.next_is(key, word) } else { keys.repeated(elements, pos, key, key_len, word) };
                if repeated {
                    findings.duplicate_keys = true;
                }
            }
            if word as u8 == b'$' {
                if JAVASCRIPT_KEYS.contains(&key()) {
                    findings.javascript = true;
                }
                if TOP {
                    findings.odd_top_key = true;
                }
            }
            if INDEX {
                known_slot = Some(crate::fields::known_slot_of_word(key_len, word, key));
            }
            let dot = TOP && has_dot(key_len, word, key);
            if dot {
                findings.odd_top_key = true;
            }
            if let Some(last) = last.as_deref_mut() {
                plain =
                    plain && key_len < 8 && word as u8 != b'$' && !dot && last.note(place, word, key_len, keys.filter);
            }
            key_len
        };
        let at = key_at + key_len + 1;
        let size = match kind {
            _ if let Some(size) = fixed_size(kind) => size,
            0x02 | 0x0E => match short_string(elements, at) {
                Some(size) => size,
                None => string_len(elements, at)?,
            },
            0x0D => {
                findings.javascript = true;
                string_len(elements, at)?
            }
            0x03 | 0x04 => {
                let inner = document_at(elements, at)?;
                if kind == 0x04 {
                    // Most arrays are short lists of plain values: those are read here, without a call.
                    if depth >= MAX_DEPTH || !plain_short_array(inner) {
                        walk::<true, false, false>(inner, depth + 1, findings, None, None)?;
                    }
                } else {
                    walk::<false, false, false>(inner, depth + 1, findings, None, None)?;
                }
                inner.len()
            }
            0x05 => binary_len(elements, at)?,
            0x08 => match elements.get(at) {
                Some(0 | 1) => 1,
                Some(_) => return Err(invalid("boolean must be 0 or 1")),
                None => return Err(invalid("boolean truncated")),
            },
            0x0B => {
                let pattern = cstring_len(elements, at)?;
                let options = cstring_len(elements, at + pattern + 1)?;
                pattern + 1 + options + 1
            }
            0x0C => string_len(elements, at)? + 12,
            0x0F => {
                findings.javascript = true;
                code_with_scope_len(elements, at, depth, findings)?
            }
            other => return Err(ProtocolError::InvalidBson(format!("invalid element type {other:#04x}"))),
        };
        let end = at.checked_add(size).ok_or_else(|| invalid("element length overflows"))?;
        if end > elements.len() {
            return Err(invalid("element overruns its document"));
        }
        if INDEX {
            if let Some(top) = top.as_deref_mut() {
                match known_slot {
                    Some(slot) => top.push(pos, key_at + key_len, slot),
                    None => top.forget(),
                }
            }
        }
        pos = end;
        place += 1;
    }
    if let Some(last) = last {
        // Known for the next document only if every key was recorded, none repeated, and the filter alone
        // answered for all of them (no key kept for comparing).
        last.len = if plain && !findings.duplicate_keys && keys.filter_alone() { place } else { 0 };
    }
    if TOP {
        // The filter holds every top-level key only if each was recorded: no more than the filter takes, and
        // none skipped because a repeat had already been found. Added to what is there: the findings may be
        // those of the documents before this one ([`add_findings_of`]).
        findings.top_keys |= if findings.duplicate_keys || !keys.filter_complete() { u64::MAX } else { keys.filter };
    }
    Ok(())
}

/// Whether `array` (an array's bytes, prefix and final NUL checked by [`document_at`]) holds at most ten
/// elements keyed by their positions, each a number, a date, a timestamp, an ObjectId, a boolean, a null (or
/// undefined, min key, max key) or a string [`short_string`] takes: an array [`walk`] accepts with nothing to
/// note. `false` for anything else, which the walk then reads (and accepts, notes or refuses). One level deeper
/// than the array's container, which the caller checks against the depth cap.
#[inline(always)]
fn plain_short_array(array: &[u8]) -> bool {
    // Ten such elements take at most 230 bytes (a string's: type, digit, NUL, length, sixteen bytes): a longer
    // array is left to the walk at once, not after ten elements read twice.
    if array.len() > PLAIN_SHORT_ARRAY_MAX {
        return false;
    }
    let Some(elements) = array.get(..array.len().saturating_sub(1)) else { return false };
    let mut pos = 4;
    let mut position = b'0';
    while let Some(&kind) = elements.get(pos) {
        if position > b'9' || elements.get(pos + 1..).and_then(<[u8]>::first_chunk::<2>) != Some(&[position, 0]) {
            return false;
        }
        let at = pos + 3;
        let size = match kind {
            _ if let Some(size) = fixed_size(kind) => size,
            0x08 => match elements.get(at) {
                Some(0 | 1) => 1,
                _ => return false,
            },
            0x02 | 0x0E => match short_string(elements, at) {
                Some(size) => size,
                None => return false,
            },
            _ => return false,
        };
        pos = at + size;
        if pos > elements.len() {
            return false;
        }
        position += 1;
    }
    true
}

/// The size of a value whose type alone fixes it: double, datetime, timestamp and int64 (8), int32 (4),
/// ObjectId (12), decimal128 (16), and undefined, null, min key and max key (0). `None` for every other type
/// (booleans, which are one byte but checked, included). The one list every reading of elements sizes them by.
#[inline(always)]
const fn fixed_size(kind: u8) -> Option<usize> {
    match kind {
        0x01 | 0x09 | 0x11 | 0x12 => Some(8),
        0x10 => Some(4),
        0x07 => Some(12),
        0x13 => Some(16),
        0x06 | 0x0A | 0xFF | 0x7F => Some(0),
        _ => None,
    }
}

/// The longest array [`plain_short_array`] can take: its prefix, ten elements of at most 23 bytes, its NUL.
const PLAIN_SHORT_ARRAY_MAX: usize = 4 + 10 * 23 + 1;

/// The embedded document or array starting at `at` within `bytes`, with its prefix and final NUL checked (its
/// elements are the caller's to walk).
#[inline(always)]
fn document_at(bytes: &[u8], at: usize) -> Result<&[u8], ProtocolError> {
    let len = read_i32(bytes, at).ok_or_else(|| invalid("document length truncated"))?;
    let len = usize::try_from(len).ok().filter(|l| *l >= 5).ok_or_else(|| invalid("document length below 5"))?;
    let end = at.checked_add(len).ok_or_else(|| invalid("document length overflows"))?;
    let inner = bytes.get(at..end).ok_or_else(|| invalid("document overruns its container"))?;
    match inner.last() {
        Some(0) => Ok(inner),
        _ => Err(invalid("document not NUL-terminated")),
    }
}

/// The size of a binary value (int32 length, subtype, bytes) starting at `at`.
fn binary_len(bytes: &[u8], at: usize) -> Result<usize, ProtocolError> {
    let len = read_i32(bytes, at).ok_or_else(|| invalid("binary length truncated"))?;
    let len = usize::try_from(len).map_err(|_| invalid("binary length is negative"))?;
    // The old binary subtype (2) carries its length a second time, inside the data.
    if bytes.get(at + 4) == Some(&2) {
        let inner = read_i32(bytes, at + 5).ok_or_else(|| invalid("old binary subtype has no inner length"))?;
        if len < 4 || usize::try_from(inner).ok().and_then(|i| i.checked_add(4)) != Some(len) {
            return Err(invalid("old binary subtype has a wrong inner length"));
        }
    }
    // A length of i32::MAX - 4 or more makes the element's size reach i32::MAX, which bson refuses.
    let size = len + 5;
    if size >= i32::MAX as usize {
        return Err(invalid("binary length exceeds the maximum"));
    }
    Ok(size)
}

/// The size of a code-with-scope value starting at `at`: int32 total size, the code as a string, then the scope
/// document filling the rest exactly (walked like any document).
fn code_with_scope_len(bytes: &[u8], at: usize, depth: usize, findings: &mut Findings) -> Result<usize, ProtocolError> {
    let size = read_i32(bytes, at).ok_or_else(|| invalid("code with scope length truncated"))?;
    // The smallest: the size itself, a one-byte string (length and NUL) and an empty document.
    let size = usize::try_from(size).ok().filter(|s| *s >= 14).ok_or_else(|| invalid("code with scope too small"))?;
    let end = at.checked_add(size).ok_or_else(|| invalid("code with scope length overflows"))?;
    let value = bytes.get(at..end).ok_or_else(|| invalid("code with scope overruns its document"))?;
    let code = string_len(value, 4)?;
    let scope = value.get(4 + code..).ok_or_else(|| invalid("code with scope truncated"))?;
    RawDocument::from_bytes(scope).map_err(|e| ProtocolError::InvalidBson(e.to_string()))?;
    walk::<false, false, false>(scope, depth + 1, findings, None, None)?;
    Ok(size)
}

/// The next position of an array, as its decimal key.
#[derive(Default)]
struct Position {
    /// Positions compared so far.
    count: u64,
    /// Decimal digits of the current position from the eleventh on, most significant first, in
    /// `digits[..len]`.
    digits: [u8; 20],
    len: usize,
}

impl Position {
    /// Whether the key at `at` within `elements` is the next position and has one digit ("0" to "9"), read as
    /// the digit and its NUL; advancing only then. `false` says nothing: the key is then read as any key and
    /// compared with [`Position::next_is`].
    #[inline(always)]
    fn next_is_digit(&mut self, elements: &[u8], at: usize) -> bool {
        let next = self.count < 10
            && elements.get(at..).and_then(<[u8]>::first_chunk::<2>) == Some(&[b'0' + self.count as u8, 0]);
        self.count += u64::from(next);
        next
    }

    /// Whether `key` (whose first eight bytes are `word`, [`key_at`]) is the next position ("0", then "1",
    /// ...), advancing either way.
    #[inline(always)]
    fn next_is<'a>(&mut self, key: impl FnOnce() -> &'a [u8], word: u64) -> bool {
        // The first ten positions (most arrays' whole length) are one digit, which the word is alone.
        if self.count < 10 {
            self.count += 1;
            return word == u64::from(b'0') + self.count - 1;
        }
        self.count += 1;
        self.next_long(key())
    }

    /// [`Position::next_is`] from the eleventh position on.
    fn next_long(&mut self, key: &[u8]) -> bool {
        if self.len == 0 {
            self.digits[..2].copy_from_slice(b"10");
            self.len = 2;
        } else {
            // Increment the decimal string in place.
            let mut i = self.len;
            loop {
                if i == 0 {
                    if self.len == self.digits.len() {
                        return false;
                    }
                    self.digits.copy_within(..self.len, 1);
                    self.digits[0] = b'1';
                    self.len += 1;
                    break;
                }
                i -= 1;
                if self.digits[i] == b'9' {
                    self.digits[i] = b'0';
                } else {
                    self.digits[i] += 1;
                    break;
                }
            }
        }
        key == &self.digits[..self.len]
    }
}

/// The keys of one document seen so far, for noting a repeat.
///
/// The first [`PAIRWISE_MAX`] keys are hashed into a 64-bit filter (by their length and first eight bytes): a
/// key whose bit is still clear is new, and nothing is stored or compared. At the first key whose bit is already
/// set, the keys before it are read again from the document, once, and kept; from then on every key is kept
/// and compared with the kept ones. The filter's hash is fixed, so a client can choose keys that collide: that
/// costs it one extra read of a document's keys, never one per colliding key. Beyond [`PAIRWISE_MAX`] keys they
/// go into a hash set (keyed per process).
///
/// Nearly every document is done with while only the filter is in use, so that state is the one tested per key
/// ([`Keys::filter_only`]) and everything else is out of line ([`Keys::repeated_slow`]).
struct Keys<'a> {
    filter: u64,
    /// How many more keys the filter alone takes: [`PAIRWISE_MAX`] at first, zero once it took that many or
    /// once a collision made the keys worth keeping.
    filter_only: usize,
    /// What replaces the filter alone (nothing while it is in use).
    slow: Slow<'a>,
}

/// The rare states of [`Keys`].
enum Slow<'a> {
    /// The filter alone (or, once it took [`PAIRWISE_MAX`] keys, a hash set is next).
    None,
    /// Every key so far (no more than [`PAIRWISE_MAX`]), since a collision made them worth keeping; the filter
    /// still takes each key's bit.
    Kept(Vec<&'a [u8]>),
    /// Every key so far, past [`PAIRWISE_MAX`] keys.
    Large(std::collections::HashSet<&'a [u8]>),
}

impl<'a> Keys<'a> {
    #[inline(always)]
    fn new() -> Self {
        Self { filter: 0, filter_only: PAIRWISE_MAX, slow: Slow::None }
    }

    /// Records `key`, the key of the element starting at `start` within `elements` (`word` its first eight
    /// bytes); whether an earlier element of the same document has the same key.
    #[inline(always)]
    fn repeated(
        &mut self,
        elements: &'a [u8],
        start: usize,
        key: impl FnOnce() -> &'a [u8],
        len: usize,
        word: u64,
    ) -> bool {
        let bit = word_bit(word, len);
        if self.filter_only != 0 && self.filter & bit == 0 {
            self.filter |= bit;
            self.filter_only -= 1;
            return false;
        }
        self.repeated_slow(elements, start, key(), bit)
    }

    /// [`Keys::repeated`] for a key the filter alone does not answer (`bit` is its filter bit).
    #[cold]
    #[inline(never)]
    fn repeated_slow(&mut self, elements: &'a [u8], start: usize, key: &'a [u8], bit: u64) -> bool {
        // The keys before this element, read again from the document (validated already); `None` were they
        // somehow unreadable, which then answers "maybe".
        let earlier = || {
            let mut elements = Elements { elements: elements.get(..start).unwrap_or_default(), pos: 4, complete: true };
            let keys: Vec<&[u8]> = elements.by_ref().map(|e| e.key).collect();
            elements.complete().then_some(keys)
        };
        let before = match &mut self.slow {
            Slow::Large(set) => return !set.insert(key),
            Slow::Kept(kept) if kept.len() < PAIRWISE_MAX => {
                self.filter |= bit;
                let seen = kept.contains(&key);
                kept.push(key);
                return seen;
            }
            Slow::Kept(kept) => std::mem::take(kept),
            Slow::None => {
                let Some(mut before) = earlier() else { return true };
                if self.filter_only != 0 {
                    // A collision within the filter's keys: from now on they are kept and compared.
                    self.filter_only = 0;
                    let seen = before.contains(&key);
                    before.push(key);
                    self.slow = Slow::Kept(before);
                    return seen;
                }
                before
            }
        };
        // Past PAIRWISE_MAX keys. The std hasher is keyed per process, so a client cannot pick keys that all
        // collide.
        let mut set: std::collections::HashSet<&[u8]> = before.into_iter().collect();
        let seen = !set.insert(key);
        self.slow = Slow::Large(set);
        seen
    }

    /// Takes a key the last document of a sequence had at the same place after the same keys ([`LastKeys`]):
    /// `filter` is the filter after it there.
    #[inline(always)]
    fn follow(&mut self, filter: u64) {
        self.filter = filter;
        self.filter_only = self.filter_only.saturating_sub(1);
    }

    /// Whether the filter alone has answered for every key so far (no key kept for comparing).
    fn filter_alone(&self) -> bool {
        matches!(self.slow, Slow::None)
    }

    /// Whether the filter holds every key recorded (it does until a hash set replaces it).
    fn filter_complete(&self) -> bool {
        !matches!(self.slow, Slow::Large(_))
    }
}

/// One element of a document, as bytes: its type, its key, and its value's bytes.
#[derive(Clone, Copy, Debug)]
pub struct Element<'a> {
    pub kind: u8,
    pub key: &'a [u8],
    /// The value's bytes (for a string, its length prefix, text and NUL).
    pub value: &'a [u8],
    /// The whole element: type byte, key, NUL and value, ready to copy into another document.
    pub bytes: &'a [u8],
}

/// The elements of a document, read from its bytes without decoding or re-checking them: for documents that
/// passed [`validate_document`] (or were built with `bson`'s builders), or parts of them. On any other bytes it
/// never panics; it stops at the first element it cannot size and [`Elements::complete`] says so.
pub struct Elements<'a> {
    elements: &'a [u8],
    pos: usize,
    complete: bool,
}

impl<'a> Elements<'a> {
    #[inline]
    pub fn new(doc: &'a RawDocument) -> Self {
        Self::of_bytes(doc.as_bytes())
    }

    /// The elements of the document whose bytes are `bytes`, for bytes that were validated but are held as
    /// bytes (a sequence's documents): the same reading as [`Elements::new`], without viewing them as a
    /// document first.
    #[inline]
    pub fn of_bytes(bytes: &'a [u8]) -> Self {
        Self { elements: bytes.get(..bytes.len().saturating_sub(1)).unwrap_or_default(), pos: 4, complete: true }
    }

    /// Whether every element was read (false after stopping at bytes it could not size).
    pub fn complete(&self) -> bool {
        self.complete
    }
}

impl<'a> Iterator for Elements<'a> {
    type Item = Element<'a>;

    #[inline]
    fn next(&mut self) -> Option<Element<'a>> {
        if self.pos >= self.elements.len() {
            return None;
        }
        let start = self.pos;
        let element = read_element(self.elements, start);
        match element {
            Some(e) => {
                self.pos = start + e.bytes.len();
                Some(e)
            }
            None => {
                self.complete = false;
                self.pos = self.elements.len();
                None
            }
        }
    }
}

/// The element starting at `start` within `elements`, sized without checking its contents.
#[inline(always)]
fn read_element(elements: &[u8], start: usize) -> Option<Element<'_>> {
    let kind = *elements.get(start)?;
    let key_len = nul_at(elements, start + 1)?;
    let at = start + 1 + key_len + 1;
    let prefixed = |extra: usize| -> Option<usize> {
        let len = usize::try_from(read_i32(elements, at)?).ok()?;
        len.checked_add(extra)
    };
    let size = match kind {
        _ if let Some(size) = fixed_size(kind) => size,
        0x02 | 0x0D | 0x0E => prefixed(4)?,
        0x03 | 0x04 | 0x0F => prefixed(0)?,
        0x05 => prefixed(5)?,
        0x08 => 1,
        0x0B => {
            let pattern = nul_at(elements, at)?;
            let options = nul_at(elements, at + pattern + 1)?;
            pattern + 1 + options + 1
        }
        0x0C => prefixed(4 + 12)?,
        _ => return None,
    };
    let bytes = elements.get(start..at.checked_add(size)?)?;
    Some(Element { kind, key: bytes.get(1..1 + key_len)?, value: bytes.get(2 + key_len..)?, bytes })
}

/// The top-level element named `key` of a document that passed [`validate_document`] (or was built with
/// `bson`'s builders), found by comparing keys as bytes: `Some(None)` when every element was read and none has
/// that name, `None` when the bytes could not all be read up to it (ask `bson`, which reports why). Keys are
/// compared only when their length is the one asked for.
#[inline]
pub fn field<'a>(doc: &'a RawDocument, key: &[u8]) -> Option<Option<Element<'a>>> {
    field_of_bytes(doc.as_bytes(), key)
}

/// [`field`] of a document's bytes.
#[inline]
pub(crate) fn field_of_bytes<'a>(bytes: &'a [u8], key: &[u8]) -> Option<Option<Element<'a>>> {
    let elements = bytes.get(..bytes.len().checked_sub(1)?)?;
    let mut found = None;
    scan(elements, |start, _, element_key| {
        if element_key == key {
            found = Some(start);
            return false;
        }
        true
    })?;
    match found {
        Some(start) => read_element(elements, start).map(Some),
        None => Some(None),
    }
}

/// Where the top-level element named `key` is within the bytes of `doc` (type byte to the end of its value),
/// reading every element (for documents that passed [`validate_document`] or were built with `bson`'s
/// builders): `Some(None)` when none has that name, `None` when the bytes cannot all be read as elements or
/// more than one element has that name.
#[inline]
pub fn unique_field_span(doc: &RawDocument, key: &[u8]) -> Option<Option<std::ops::Range<usize>>> {
    unique_field_span_of_bytes(doc.as_bytes(), key)
}

/// [`unique_field_span`] of a document's bytes.
#[inline]
pub(crate) fn unique_field_span_of_bytes(bytes: &[u8], key: &[u8]) -> Option<Option<std::ops::Range<usize>>> {
    let elements = bytes.get(..bytes.len().checked_sub(1)?)?;
    let mut found = None;
    let mut repeated = false;
    let complete = scan(elements, |start, end, element_key| {
        if element_key == key {
            repeated |= found.replace(start..end).is_some();
        }
        !repeated
    })?;
    (complete && !repeated).then_some(found)
}

/// Reads the elements of `elements` (a document's bytes without its final NUL) from the first, handing
/// `visit` each one's start, end and key until it returns `false`. `Some(true)` when every element was read,
/// `Some(false)` when `visit` stopped early, `None` when the bytes could not be read as elements. Values are
/// sized, not checked: for validated documents.
#[inline(always)]
fn scan<'a>(elements: &'a [u8], mut visit: impl FnMut(usize, usize, &'a [u8]) -> bool) -> Option<bool> {
    let mut pos = 4;
    while let Some(&kind) = elements.get(pos) {
        let key_at = pos + 1;
        let key_len = nul_at(elements, key_at)?;
        let at = key_at + key_len + 1;
        let prefixed =
            |extra: usize| -> Option<usize> { usize::try_from(read_i32(elements, at)?).ok()?.checked_add(extra) };
        let size = match kind {
            _ if let Some(size) = fixed_size(kind) => size,
            0x02 | 0x0D | 0x0E => prefixed(4)?,
            0x03 | 0x04 | 0x0F => prefixed(0)?,
            0x08 => 1,
            _ => read_element(elements, pos)?.value.len(),
        };
        let end = at.checked_add(size).filter(|end| *end <= elements.len())?;
        if !visit(pos, end, elements.get(key_at..key_at + key_len)?) {
            return Some(false);
        }
        pos = end;
    }
    Some(pos == elements.len())
}

/// Whether `keep` holds for every top-level key of the document whose bytes are `bytes` (one that passed
/// [`validate_document`]), stopping at the first that fails; `None` when the bytes cannot all be read as
/// elements (never for a validated document). The keys are found without building [`Element`]s, for loops
/// that read only keys (stamping a sequence's documents).
#[inline]
pub fn all_keys<'a>(bytes: &'a [u8], mut keep: impl FnMut(&'a [u8]) -> bool) -> Option<bool> {
    let elements = bytes.get(..bytes.len().checked_sub(1)?)?;
    scan(elements, |_, _, key| keep(key))
}

/// Whether `doc` has a top-level field named `key`: `Some(false)` only when every element was read and none
/// has that name, `None` when the bytes could not all be read (ask `bson`, which reports why).
pub fn has_field(doc: &RawDocument, key: &str) -> Option<bool> {
    let mut elements = Elements::new(doc);
    if elements.any(|e| e.key == key.as_bytes()) {
        return Some(true);
    }
    elements.complete().then_some(false)
}

/// Documents with more keys than this are checked for duplicates with a hash set; smaller ones by comparing
/// keys pairwise ([`first_duplicate_key`]) or through a filter of hashed keys (the validation walk), which is
/// faster for the few keys a command document usually has.
const PAIRWISE_MAX: usize = 16;

/// The first key that repeats at the top level of `doc`. Servers and drivers disagree about which duplicate
/// wins (mongod's parsers take the last, the proxy would read the first), so a document with one can be read
/// two ways and is refused. Linear in the number of keys whatever their values.
pub fn first_duplicate_key(doc: &RawDocument) -> Option<String> {
    // Small documents (nearly all of them) use a buffer on the stack: no allocation per document.
    let mut small: [&str; PAIRWISE_MAX] = [""; PAIRWISE_MAX];
    let mut len = 0;
    let mut large: Option<std::collections::HashSet<&str>> = None;
    for element in doc.iter_elements() {
        let Ok(element) = element else { return None };
        let key = element.key().as_str();
        let repeated = match &mut large {
            Some(set) => !set.insert(key),
            None if len < PAIRWISE_MAX => {
                let seen = small[..len].contains(&key);
                small[len] = key;
                len += 1;
                seen
            }
            None => {
                // The std hasher is keyed per process, so a client cannot pick keys that all collide.
                let mut set: std::collections::HashSet<&str> = small.iter().copied().collect();
                let repeated = !set.insert(key);
                large = Some(set);
                repeated
            }
        };
        if repeated {
            return Some(key.to_owned());
        }
    }
    None
}

/// The first key that repeats within any one document at any depth of `doc` (documents inside arrays
/// included), as `path.key`. Each document is visited once, so the walk is linear in the document's size.
/// Arrays are positional: their own keys are not compared.
pub fn first_duplicate_key_deep(doc: &RawDocument) -> Option<String> {
    deep(doc, 0)
}

fn deep(doc: &RawDocument, depth: usize) -> Option<String> {
    if depth > MAX_DEPTH {
        // Validation refuses such documents before anyone asks; refuse here too rather than recurse on.
        return Some(String::from("(nesting too deep)"));
    }
    if let Some(key) = first_duplicate_key(doc) {
        return Some(key);
    }
    for element in doc.iter_elements() {
        let Ok(element) = element else { return None };
        let inner = match element.value() {
            Ok(RawBsonRef::Document(d)) => deep(d, depth + 1),
            Ok(RawBsonRef::Array(a)) => deep_array(a, depth + 1),
            _ => None,
        };
        if let Some(key) = inner {
            return Some(format!("{}.{key}", element.key().as_str()));
        }
    }
    None
}

fn deep_array(array: &bson::RawArray, depth: usize) -> Option<String> {
    for (i, item) in array.into_iter().enumerate() {
        let inner = match item {
            Ok(RawBsonRef::Document(d)) => deep(d, depth + 1),
            Ok(RawBsonRef::Array(a)) => deep_array(a, depth + 1),
            _ => None,
        };
        if let Some(key) = inner {
            return Some(format!("{i}.{key}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    /// Keys that all land on one bit of the repeat filter (its hash is fixed, so a client can find them too).
    fn colliding_keys(n: usize) -> Vec<String> {
        let bit_of = |k: &str| {
            let (len, word) = key_at(format!("{k}\0").as_bytes(), 0).unwrap();
            word_bit(word, len)
        };
        let target = bit_of("k0");
        (0..).map(|i| format!("k{i}")).filter(|k| bit_of(k) == target).take(n).collect()
    }

    #[test]
    fn keys_colliding_in_the_filter_are_told_apart_and_repeats_among_them_found() {
        let keys = colliding_keys(PAIRWISE_MAX);
        let mut doc = bson::RawDocumentBuf::new();
        for key in &keys {
            doc.append(bson::raw::CString::try_from(key.as_str()).unwrap(), "x".repeat(1_000));
        }
        let (_, findings) = validate_with_findings(doc.as_bytes()).unwrap();
        assert!(!findings.duplicate_keys(), "distinct keys sharing a bit were taken for a repeat");
        // A repeat of any of them, below the hash set's threshold and at it, is found.
        for repeat in [&keys[1], &keys[PAIRWISE_MAX - 1]] {
            let mut short = bson::RawDocumentBuf::new();
            for key in &keys[..PAIRWISE_MAX - 2] {
                short.append(bson::raw::CString::try_from(key.as_str()).unwrap(), 1);
            }
            short.append(bson::raw::CString::try_from(repeat.as_str()).unwrap(), 2);
            let expected = keys[..PAIRWISE_MAX - 2].contains(repeat);
            assert_eq!(validate_with_findings(short.as_bytes()).unwrap().1.duplicate_keys(), expected, "{repeat}");
            let mut full = doc.clone();
            full.append(bson::raw::CString::try_from(repeat.as_str()).unwrap(), 2);
            assert!(validate_with_findings(full.as_bytes()).unwrap().1.duplicate_keys(), "{repeat}");
        }
    }

    #[test]
    fn the_filter_alone_kept_keys_and_the_hash_set_hand_over_at_their_thresholds() {
        // Distinct keys, two of which share a filter bit, the second at each position up to past the switch to
        // the hash set; then the same with the second repeating the first instead.
        let pair = colliding_keys(2);
        let plain: Vec<String> =
            (0..).map(|i| format!("p{i}")).filter(|k| !pair.contains(k)).take(PAIRWISE_MAX + 2).collect();
        for total in [PAIRWISE_MAX - 1, PAIRWISE_MAX, PAIRWISE_MAX + 1, PAIRWISE_MAX + 2] {
            for second in 1..total {
                for repeat in [false, true] {
                    let mut keys: Vec<&str> = plain[..total - 2].iter().map(String::as_str).collect();
                    keys.insert(0, &pair[0]);
                    keys.insert(second, if repeat { &pair[0] } else { &pair[1] });
                    let doc = with_keys(&keys);
                    let findings = validate_with_findings(doc.as_bytes()).unwrap().1;
                    let case = format!("{total} keys, the second of the pair at {second}, repeated: {repeat}");
                    assert_eq!(findings.duplicate_keys(), repeat, "{case}");
                    // The top-level keys are summarised exactly when the filter took every one.
                    let summarised = !repeat && total <= PAIRWISE_MAX;
                    assert_eq!(findings.top_level_plain_without(b"absent"), summarised, "{case}");
                    assert_eq!(findings.top_keys == u64::MAX, !summarised, "{case}");
                }
            }
            // Without a collision: the filter alone, then the hash set.
            let keys: Vec<&str> = plain[..total].iter().map(String::as_str).collect();
            let findings = validate_with_findings(with_keys(&keys).as_bytes()).unwrap().1;
            assert!(!findings.duplicate_keys(), "{total}");
            assert_eq!(findings.top_keys == u64::MAX, total > PAIRWISE_MAX, "{total}");
            let mut repeated = keys.clone();
            repeated.push(keys[total - 1]);
            assert!(validate_with_findings(with_keys(&repeated).as_bytes()).unwrap().1.duplicate_keys(), "{total}");
        }
    }

    #[test]
    fn a_sequence_s_findings_are_the_union_of_its_documents() {
        let docs = [
            rawdoc! { "a": 1 },
            rawdoc! { "b": { "$where": "x" } },
            with_keys(&["c", "c"]),
            rawdoc! { "$d": 1 },
            rawdoc! { "e.f": [1, 2] },
            with_keys(
                &(0..PAIRWISE_MAX + 1)
                    .map(|i| format!("k{i}"))
                    .collect::<Vec<_>>()
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
            ),
        ];
        for first in &docs {
            for second in &docs {
                let mut added = Findings::NOTHING_YET;
                add_findings_of(first.as_bytes(), &mut added).unwrap();
                add_findings_of(second.as_bytes(), &mut added).unwrap();
                let union = findings_of(first.as_bytes()).unwrap().union(findings_of(second.as_bytes()).unwrap());
                assert_eq!(added, union, "{first:?} then {second:?}");
            }
        }
    }

    #[test]
    fn documents_that_repeat_the_last_ones_keys_are_found_as_if_each_was_walked_alone() {
        // Documents around the keys `a`, `bb`, `ccc`: the same keys, a prefix of them, more of them, one that
        // differs in a byte or a length, a repeat, `$` and dotted keys, the tenant field, values that hold
        // scripts or repeats under a shared key, more keys than the filter takes, keys that collide in it.
        let colliding = colliding_keys(3);
        let colliding: Vec<&str> = colliding.iter().map(String::as_str).collect();
        let wide: Vec<String> = (0..PAIRWISE_MAX + 1).map(|i| format!("k{i}")).collect();
        let wide: Vec<&str> = wide.iter().map(String::as_str).collect();
        let docs = [
            rawdoc! { "a": 1, "bb": 2, "ccc": 3 },
            rawdoc! { "a": "x", "bb": [1], "ccc": {} },
            rawdoc! { "a": 1, "bb": 2 },
            rawdoc! { "a": 1, "bb": 2, "ccc": 3, "d": 4 },
            with_keys(&["a", "bb", "a"]),
            with_keys(&["a", "bb", "ccc", "bb"]),
            rawdoc! { "a": 1, "bb": 2, "$where": 1 },
            rawdoc! { "a": 1, "bb": 2, "c.d": 1 },
            rawdoc! { "a": 1, "bc": 2, "ccc": 3 },
            rawdoc! { "a": 1, "b": 2, "ccc": 3 },
            rawdoc! { "a": 1, "bb": 2, "tenantId": 1 },
            rawdoc! { "a": { "$where": "x" }, "bb": 2, "ccc": 3 },
            rawdoc! { "a": 1, "bb": with_keys(&["x", "x"]), "ccc": 3 },
            rawdoc! { "a": 1, "bb": 2, "cccdefg": 3 },
            rawdoc! { "a": 1, "bb": 2, "cccdefgh": 3 },
            rawdoc! { "a": 1, "bb": 2, "cccdefghi": 3 },
            with_keys(&wide),
            with_keys(&colliding),
            rawdoc! {},
        ];
        for first in &docs {
            for second in &docs {
                for third in &docs {
                    let mut added = Findings::NOTHING_YET;
                    let mut last = LastKeys::NONE;
                    let mut union = Findings::NOTHING_YET;
                    for doc in [first, second, third] {
                        add_findings_after(doc.as_bytes(), &mut added, &mut last).unwrap();
                        union = union.union(findings_of(doc.as_bytes()).unwrap());
                    }
                    assert_eq!(added, union, "{first:?}, {second:?}, {third:?}");
                    // And each on its own, after the others' keys.
                    let mut last = LastKeys::NONE;
                    for doc in [first, second, third] {
                        let mut alone = Findings::NOTHING_YET;
                        add_findings_after(doc.as_bytes(), &mut alone, &mut last).unwrap();
                        assert_eq!(alone, findings_of(doc.as_bytes()).unwrap(), "{doc:?} after the others");
                    }
                }
            }
        }
        // Values are read whatever the keys: a bad one after the same keys is refused.
        let mut bad = rawdoc! { "a": 1, "bb": 2, "ccc": "x" }.into_bytes();
        let at = bad.len() - 3;
        bad[at] = 0xFF;
        let mut findings = Findings::NOTHING_YET;
        let mut last = LastKeys::NONE;
        add_findings_after(rawdoc! { "a": 1, "bb": 2, "ccc": "y" }.as_bytes(), &mut findings, &mut last).unwrap();
        assert!(add_findings_after(&bad, &mut findings, &mut last).is_err());
        // A document refused halfway leaves nothing to compare with: its first keys replaced the last
        // document's, the rest did not.
        let mut last = LastKeys::NONE;
        let mut findings = Findings::NOTHING_YET;
        add_findings_after(rawdoc! { "x": 1, "y": 1 }.as_bytes(), &mut findings, &mut last).unwrap();
        let mut cut = rawdoc! { "y": "abc" }.into_bytes();
        let at = cut.len() - 2;
        cut[at] = b'!';
        assert!(add_findings_after(&cut, &mut findings, &mut last).is_err());
        let mut repeated = bson::RawDocumentBuf::new();
        repeated.append(bson::cstr!("y"), 1);
        repeated.append(bson::cstr!("y"), 1.5);
        let mut alone = Findings::NOTHING_YET;
        add_findings_after(repeated.as_bytes(), &mut alone, &mut last).unwrap();
        assert!(alone.duplicate_keys());
    }

    /// A document of `element` and an int32 element `n`, with `element` last (where fewer than eight bytes
    /// follow its value) or first.
    fn placed(element: &[u8], last: bool) -> Vec<u8> {
        let int: &[u8] = b"\x10n\0\x01\0\0\0";
        let body = if last { [int, element].concat() } else { [element, int].concat() };
        let mut doc = ((body.len() + 5) as i32).to_le_bytes().to_vec();
        doc.extend_from_slice(&body);
        doc.push(0);
        doc
    }

    #[test]
    fn short_strings_are_checked_wherever_they_end() {
        // Strings of every short length, last in their document (where fewer than eight bytes follow their
        // text) and not, with a lone continuation byte at each place or none: only ASCII passes.
        for len in 0..20i32 {
            for last in [true, false] {
                for bad in std::iter::once(None).chain((0..len).map(Some)) {
                    let text: Vec<u8> = (0..len).map(|i| if Some(i) == bad { 0x80 } else { b'a' }).collect();
                    let mut element = vec![0x02, b's', 0];
                    element.extend_from_slice(&(len + 1).to_le_bytes());
                    element.extend_from_slice(&text);
                    element.push(0);
                    let doc = placed(&element, last);
                    assert_eq!(validate_document(&doc).is_ok(), bad.is_none(), "{len} {last} {bad:?}");
                    assert_eq!(
                        validate_document(&doc).is_ok(),
                        RawDocument::from_bytes(&doc).unwrap().iter().all(|e| e.is_ok())
                    );
                }
            }
        }
    }

    #[test]
    fn short_strings_without_their_nul_are_refused_wherever_they_end() {
        // The byte where a string's NUL belongs is something else: refused as bson refuses it, however long the
        // text and whatever follows.
        for len in 0..20i32 {
            for last in [true, false] {
                for terminator in [b'a', 0x80, 0x01] {
                    let mut element = vec![0x02, b's', 0];
                    element.extend_from_slice(&(len + 1).to_le_bytes());
                    element.extend(std::iter::repeat_n(b'a', len as usize));
                    element.push(terminator);
                    let doc = placed(&element, last);
                    assert!(validate_document(&doc).is_err(), "{len} {last} {terminator}");
                    assert!(RawDocument::from_bytes(&doc).unwrap().iter().any(|e| e.is_err()), "{len} {last}");
                }
            }
        }
    }

    #[test]
    fn a_key_that_runs_into_the_end_of_its_document_is_refused() {
        // `{<type 0x10> key...}` with no NUL after the key before the document's own final NUL, at every short
        // length, at the top level and nested: refused, as bson refuses it.
        for len in 0..12usize {
            let mut body = vec![0x10u8];
            body.extend((0..len).map(|i| b'a' + i as u8));
            let mut inner = ((body.len() + 5) as i32).to_le_bytes().to_vec();
            inner.extend_from_slice(&body);
            inner.push(0);
            assert!(validate_document(&inner).is_err(), "{len}");
            // And the key itself is refused where it is read, not only by the overrun after it.
            let elements = &inner[..inner.len() - 1];
            assert!(key_at(elements, 5).is_err(), "{len}: a key without its NUL was read");
            assert!(RawDocument::from_bytes(&inner).map_or(true, |d| d.iter().any(|e| e.is_err())));
            let mut outer = vec![0x03, b'd', 0];
            outer.extend_from_slice(&inner);
            let mut doc = ((outer.len() + 5) as i32).to_le_bytes().to_vec();
            doc.extend_from_slice(&outer);
            doc.push(0);
            assert!(validate_document(&doc).is_err(), "nested {len}");
        }
    }

    #[test]
    fn the_inlined_key_read_agrees_with_the_full_one() {
        // Keys of every length up to twenty, all ASCII or with a lone lead byte at each place, with none to
        // sixteen bytes after their NUL: the inlined read answers the common case (ASCII, at most fifteen bytes,
        // eight bytes to read from the start of a key shorter than eight) exactly as `key_at` does, and leaves
        // everything else to it.
        for len in 0..20usize {
            for odd in std::iter::once(None).chain((0..len).map(Some)) {
                for after in 0..17usize {
                    let mut bytes: Vec<u8> = (0..len).map(|i| b'a' + i as u8).collect();
                    if let Some(i) = odd {
                        bytes[i] = 0xC3;
                    }
                    bytes.push(0);
                    bytes.extend(std::iter::repeat_n(b'z', after));
                    let short = short_key(&bytes, 0);
                    if let Some(short) = short {
                        assert_eq!(Ok(short), key_at(&bytes, 0), "{len} {odd:?} {after}");
                    }
                    // A key of eight or more always has its first word; a shorter one needs eight bytes to read.
                    let common = odd.is_none() && len <= 15 && (len >= 8 || bytes.len() >= 8);
                    assert_eq!(short.is_some(), common, "{len} {odd:?} {after}");
                }
            }
            // No NUL before the bytes end: never read as a key, wherever the bytes stop.
            let unterminated: Vec<u8> = (0..len).map(|i| b'a' + i as u8).collect();
            for end in 0..=len {
                assert_eq!(short_key(&unterminated[..end], 0), None, "{len} {end}");
            }
        }
    }

    #[test]
    fn keys_of_every_length_are_read_wherever_they_end() {
        // Keys of every length up to 24, last in their document (few bytes after them) and not, all ASCII, with a
        // lone continuation byte, or with a two-byte character at each place: the walk accepts what bson
        // accepts, finds the key's whole length, and notes it in the top-level filter.
        for len in 0..25usize {
            for last in [true, false] {
                let places = (0..len).flat_map(|i| [Some((i, false)), Some((i, true))]);
                for odd in std::iter::once(None).chain(places) {
                    let mut key: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
                    match odd {
                        Some((i, false)) => key[i] = 0x80,
                        Some((i, true)) if i + 1 < len => key.splice(i..i + 2, "é".bytes()).for_each(drop),
                        _ => {}
                    }
                    let mut element = vec![0x10];
                    element.extend_from_slice(&key);
                    element.extend_from_slice(b"\0\x07\0\0\0");
                    let doc = placed(&element, last);
                    let by_bson = RawDocument::from_bytes(&doc).unwrap().iter().all(|e| e.is_ok());
                    let walked = validate_with_findings(&doc);
                    assert_eq!(walked.is_ok(), by_bson, "{len} {last} {odd:?}");
                    if let Ok((_, findings)) = walked {
                        let mut keys = Vec::new();
                        assert_eq!(
                            all_keys(&doc, |k| {
                                keys.push(k.to_vec());
                                true
                            }),
                            Some(true)
                        );
                        assert!(keys.contains(&key), "{len} {last} {odd:?}: {keys:?}");
                        assert!(!findings.top_level_plain_without(&key), "{len} {last} {odd:?}: not in the filter");
                    }
                }
            }
        }
    }

    /// An indexed walk notes the keys it reads; one whose keys are taken from the last document's instead
    /// (never the case for a message's body, which is walked alone) leaves its index not known, never wrong.
    #[test]
    fn an_indexed_walk_that_does_not_read_its_keys_is_not_known() {
        let doc = rawdoc! { "lsid": 1, "filter": 2 };
        let mut last = LastKeys::NONE;
        let mut findings = Findings::NOTHING_YET;
        walk::<false, true, false>(doc.as_bytes(), 1, &mut findings, None, Some(&mut last)).unwrap();
        let (mut index, mut findings) = (TopLevel::empty(), Findings::NOTHING_YET);
        walk::<false, true, true>(doc.as_bytes(), 1, &mut findings, Some(&mut index), Some(&mut last)).unwrap();
        assert!(!index.is_known());
        let fields = crate::fields::Fields::indexed(doc.as_bytes(), &index);
        assert_eq!(fields.occurrences(b"lsid"), Some(1));
        assert!(fields.field(b"filter").unwrap().is_some());
    }

    #[test]
    fn accepts_nested_documents() {
        let doc = rawdoc! { "a": { "b": [1, 2, { "c": "d" }] } };
        assert!(validate_document(doc.as_bytes()).is_ok());
    }

    #[test]
    fn rejects_bad_utf8_inside_nested_document() {
        let mut bytes = rawdoc! { "a": { "s": "xy" } }.into_bytes();
        let pos = bytes.windows(2).position(|w| w == b"xy").unwrap();
        bytes[pos] = 0xff;
        assert!(matches!(validate_document(&bytes), Err(ProtocolError::InvalidBson(_))));
    }

    #[test]
    fn rejects_inner_length_overrun() {
        let mut bytes = rawdoc! { "a": { "b": 1 } }.into_bytes();
        // The inner document's length prefix sits after the type byte and the key "a\0".
        bytes[7] = 200;
        assert!(validate_document(&bytes).is_err());
    }

    #[test]
    fn rejects_excessive_depth_without_overflowing_the_stack() {
        // Build 10,000 levels of {"a": {...}} by hand.
        let levels = 10_000;
        let mut bytes = vec![5, 0, 0, 0, 0];
        for _ in 0..levels {
            let len = bytes.len() + 4 + 3 + 1;
            let mut outer = Vec::with_capacity(len);
            outer.extend_from_slice(&(len as i32).to_le_bytes());
            outer.push(3);
            outer.extend_from_slice(b"a\0");
            outer.extend_from_slice(&bytes);
            outer.push(0);
            bytes = outer;
        }
        assert!(matches!(validate_document(&bytes), Err(ProtocolError::InvalidBson(m)) if m.contains("nesting")));
    }

    #[test]
    fn fixed_sizes_are_bson_s() {
        use bson::RawBson;
        let values = [
            RawBson::Double(1.5),
            RawBson::DateTime(bson::DateTime::from_millis(7)),
            RawBson::Timestamp(bson::Timestamp { time: 1, increment: 2 }),
            RawBson::Int64(7),
            RawBson::Int32(7),
            RawBson::ObjectId(bson::oid::ObjectId::new()),
            RawBson::Decimal128(bson::Decimal128::from_bytes([1; 16])),
            RawBson::Undefined,
            RawBson::Null,
            RawBson::MinKey,
            RawBson::MaxKey,
        ];
        for value in values {
            let mut doc = bson::RawDocumentBuf::new();
            doc.append(bson::cstr!("k"), value.clone());
            let bytes = doc.as_bytes();
            // Prefix, type, "k", NUL, the value, the final NUL.
            assert_eq!(fixed_size(bytes[4]), Some(bytes.len() - 8), "{value:?}");
        }
        for kind in [0x02, 0x03, 0x04, 0x05, 0x08, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F, 0x00, 0x14] {
            assert_eq!(fixed_size(kind), None, "{kind:#04x}");
        }
    }

    #[test]
    fn a_short_array_of_plain_values_counts_towards_the_depth_cap() {
        // `[1]` inside `levels` documents: the array is at depth `levels + 1`.
        let nested = |levels: usize| {
            let mut bytes = vec![12, 0, 0, 0, 0x10, b'0', 0, 1, 0, 0, 0, 0];
            let mut kind = 4;
            for _ in 0..levels {
                let len = bytes.len() + 4 + 3 + 1;
                let mut outer = (len as i32).to_le_bytes().to_vec();
                outer.extend_from_slice(&[kind, b'a', 0]);
                outer.extend_from_slice(&bytes);
                outer.push(0);
                bytes = outer;
                kind = 3;
            }
            bytes
        };
        assert!(validate_document(&nested(MAX_DEPTH - 1)).is_ok());
        assert!(matches!(
            validate_document(&nested(MAX_DEPTH)),
            Err(ProtocolError::InvalidBson(m)) if m.contains("nesting")
        ));
    }

    #[test]
    fn document_len_checks_before_taking() {
        let doc = rawdoc! { "a": 1 };
        let bytes = doc.as_bytes();
        assert_eq!(document_len(bytes, 0, 100, "body"), Ok(bytes.len()));
        assert_eq!(document_len(&bytes[..bytes.len() - 1], 0, 100, "body"), Err(ProtocolError::Truncated("body")));
        assert!(matches!(document_len(bytes, 0, 5, "body"), Err(ProtocolError::DocumentTooLarge { .. })));
        assert!(matches!(document_len(&[1, 0, 0, 0, 0], 0, 100, "body"), Err(ProtocolError::InvalidBson(_))));
    }

    #[test]
    fn array_positions_count_up_in_decimal() {
        let mut position = Position::default();
        let mut next_is = |key: &[u8]| position.next_is(|| key, first_word(key));
        for i in 0..1234 {
            assert!(next_is(i.to_string().as_bytes()), "{i}");
        }
        assert!(!next_is(b"1235"));
        assert!(next_is(b"1235"));
        let mut position = Position::default();
        assert!(!position.next_is(|| b"00", first_word(b"00")));
        assert!(position.next_is(|| b"1", first_word(b"1")));
        // Arrays whose keys are not their positions are reported as possibly repeating a key.
        let mut odd = bson::RawDocumentBuf::new();
        odd.append(bson::cstr!("0"), 1);
        odd.append(bson::cstr!("0"), 2);
        let mut doc = Vec::new();
        doc.extend_from_slice(&((4 + 1 + 2 + odd.as_bytes().len() + 1) as i32).to_le_bytes());
        doc.extend_from_slice(b"\x04a\0");
        doc.extend_from_slice(odd.as_bytes());
        doc.push(0);
        assert!(validate_with_findings(&doc).unwrap().1.duplicate_keys());
        let fine = rawdoc! { "a": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12] };
        assert!(!validate_with_findings(fine.as_bytes()).unwrap().1.duplicate_keys());
    }

    #[test]
    fn all_keys_reads_every_top_level_key() {
        let doc = rawdoc! { "a": 1, "b": { "c": "d" }, "e": [1, 2], "f": 0.5, "g": null, "h": bson::Regex { pattern: bson::cstr!("x").into(), options: bson::cstr!("i").into() } };
        let mut keys = Vec::new();
        assert_eq!(
            all_keys(doc.as_bytes(), |k| {
                keys.push(k.to_vec());
                true
            }),
            Some(true)
        );
        assert_eq!(keys, [&b"a"[..], b"b", b"e", b"f", b"g", b"h"]);
        assert_eq!(all_keys(doc.as_bytes(), |k| k != b"e"), Some(false));
        // Bytes that are not a document are never read past their end.
        assert_eq!(all_keys(&[9, 0, 0, 0, 0x10, b'a', 0, 1], |_| true), None);
        assert_eq!(all_keys(&[], |_| true), None);
    }

    #[test]
    fn fields_are_found_by_their_bytes() {
        let doc = rawdoc! { "find": "c", "filter": { "a": 1 }, "limit": 5, "$db": "app" };
        let found = field(&doc, b"filter").unwrap().unwrap();
        assert_eq!((found.kind, found.key, found.value), (0x03, &b"filter"[..], rawdoc! { "a": 1 }.as_bytes()));
        assert!(field(&doc, b"filte").unwrap().is_none());
        assert!(field(&doc, b"a").unwrap().is_none());
        let span = unique_field_span(&doc, b"limit").unwrap().unwrap();
        assert_eq!(doc.as_bytes()[span], *b"\x10limit\0\x05\0\0\0");
        assert_eq!(unique_field_span(&doc, b"absent"), Some(None));
        let mut repeated = doc.clone();
        repeated.append(bson::cstr!("limit"), 6);
        assert_eq!(unique_field_span(&repeated, b"limit"), None);
        assert!(unique_field_span(&repeated, b"find").unwrap().is_some());
    }

    #[test]
    fn finds_duplicate_keys() {
        let mut doc = bson::RawDocumentBuf::new();
        doc.append(bson::cstr!("a"), 1);
        doc.append(bson::cstr!("b"), 1);
        doc.append(bson::cstr!("a"), 2);
        assert_eq!(first_duplicate_key(&doc), Some("a".to_owned()));
        assert_eq!(first_duplicate_key(&rawdoc! { "a": 1, "b": 2 }), None);
    }

    fn with_keys(keys: &[&str]) -> bson::RawDocumentBuf {
        let mut doc = bson::RawDocumentBuf::new();
        for k in keys {
            doc.append(bson::raw::CString::try_from(*k).unwrap(), 1);
        }
        doc
    }

    #[test]
    fn finds_duplicates_past_the_pairwise_limit() {
        let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
        let mut refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        assert_eq!(first_duplicate_key(&with_keys(&refs)), None);
        refs.push("k3");
        assert_eq!(first_duplicate_key(&with_keys(&refs)), Some("k3".into()));
        // The repeat right at the switch from pairwise to hashed.
        let mut at_switch: Vec<&str> = refs[..PAIRWISE_MAX].to_vec();
        at_switch.push("k0");
        assert_eq!(first_duplicate_key(&with_keys(&at_switch)), Some("k0".into()));
    }

    #[test]
    fn finds_duplicates_at_any_depth() {
        let dup = with_keys(&["from", "from"]);
        let lookup = rawdoc! { "aggregate": "c", "pipeline": [{ "$match": {} }, { "$lookup": dup.clone() }] };
        assert_eq!(first_duplicate_key_deep(&lookup), Some("pipeline.1.$lookup.from".into()));
        let nested = rawdoc! { "a": [[{ "b": { "c": dup } }]] };
        assert_eq!(first_duplicate_key_deep(&nested), Some("a.0.0.b.c.from".into()));
        assert_eq!(first_duplicate_key_deep(&rawdoc! { "a": { "x": 1 }, "b": { "x": 1 }, "c": [1, 1] }), None);
    }
}
