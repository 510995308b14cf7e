//! Hand-built edge cases for the byte-level validation walk, each judged against `bson`'s own reading (every
//! value read at every depth), and the findings checked against what is really there.

mod oracle;

use oracle::reference;
use tenantwall_protocol::validate::validate_with_findings;

/// A document around `elements` (prefix and final NUL added).
fn doc(elements: &[u8]) -> Vec<u8> {
    let mut out = ((elements.len() + 5) as i32).to_le_bytes().to_vec();
    out.extend_from_slice(elements);
    out.push(0);
    out
}

/// One element.
fn el(kind: u8, key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(key);
    out.push(0);
    out.extend_from_slice(value);
    out
}

fn string(bytes: &[u8]) -> Vec<u8> {
    let mut out = ((bytes.len() + 1) as i32).to_le_bytes().to_vec();
    out.extend_from_slice(bytes);
    out.push(0);
    out
}

fn i32le(n: i32) -> Vec<u8> {
    n.to_le_bytes().to_vec()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn cws(code: &[u8], scope: &[u8]) -> Vec<u8> {
    let body = cat(&[&string(code), scope]);
    cat(&[&i32le(body.len() as i32 + 4), &body])
}

fn cases() -> Vec<(&'static str, Vec<u8>)> {
    let empty = doc(&[]);
    vec![
        ("old binary, inner length right", doc(&el(5, b"b", &cat(&[&i32le(6), &[2], &i32le(2), b"xy"])))),
        ("old binary, inner length -1", doc(&el(5, b"b", &cat(&[&i32le(6), &[2], &i32le(-1), b"xy"])))),
        ("old binary, length 3", doc(&el(5, b"b", &cat(&[&i32le(3), &[2], b"xyz"])))),
        ("old binary, length 4 inner 0", doc(&el(5, b"b", &cat(&[&i32le(4), &[2], &i32le(0)])))),
        ("binary, huge length", doc(&el(5, b"b", &cat(&[&i32le(i32::MAX - 4), &[0]])))),
        ("binary, negative length", doc(&el(5, b"b", &cat(&[&i32le(-1), &[0]])))),
        ("code with scope, minimal", doc(&el(0x0F, b"c", &cws(b"", &empty)))),
        ("code with scope, scope shorter than rest", {
            let mut v = cws(b"x", &empty);
            v.push(0);
            let n = v.len() as i32;
            v[..4].copy_from_slice(&n.to_le_bytes());
            doc(&el(0x0F, b"c", &v))
        }),
        ("code with scope, code overruns", {
            let mut v = cws(b"x", &empty);
            v[4..8].copy_from_slice(&i32le(100));
            doc(&el(0x0F, b"c", &v))
        }),
        ("code with scope, code not terminated", {
            let mut v = cws(b"x", &empty);
            v[9] = b'y';
            doc(&el(0x0F, b"c", &v))
        }),
        ("code with scope, size 13", doc(&el(0x0F, b"c", &cat(&[&i32le(13), &i32le(1), &[0], &i32le(5)])))),
        ("code with scope, bad UTF-8 in scope key", doc(&el(0x0F, b"c", &cws(b"", &doc(&el(0x0A, b"\xff", &[])))))),
        ("regex, bad UTF-8 options", doc(&el(0x0B, b"r", b"a\0\xff\0"))),
        ("regex, options unterminated", doc(&el(0x0B, b"r", b"a\0i"))),
        ("key, overlong NUL", doc(&el(0x0A, b"\xc0\x80", &[]))),
        ("key, surrogate", doc(&el(0x0A, b"\xed\xa0\x80", &[]))),
        ("key, empty", doc(&el(0x0A, b"", &[]))),
        ("string, interior NUL", doc(&el(2, b"s", &string(b"a\0b")))),
        ("string, length 0", doc(&el(2, b"s", &cat(&[&i32le(0), &[0]])))),
        ("string, unterminated", doc(&el(2, b"s", &cat(&[&i32le(2), b"ab"])))),
        ("string, NUL is the document's", {
            // The string's length reaches the document's own final NUL.
            let mut v = doc(&el(2, b"s", &cat(&[&i32le(2), b"a"])));
            let n = v.len() as i32;
            v[..4].copy_from_slice(&n.to_le_bytes());
            v
        }),
        ("null key ends at the document's NUL", cat(&[&i32le(7), &[0x0A, b'a', 0]])),
        ("dbpointer, bad UTF-8", doc(&el(0x0C, b"p", &cat(&[&string(b"\xff"), &[0; 12]])))),
        ("dbpointer, good", doc(&el(0x0C, b"p", &cat(&[&string(b"ns"), &[0; 12]])))),
        ("dbpointer, oid short", doc(&el(0x0C, b"p", &cat(&[&string(b"ns"), &[0; 11]])))),
        ("symbol, bad UTF-8", doc(&el(0x0E, b"y", &string(b"\xff")))),
        ("undefined", doc(&el(0x06, b"u", &[]))),
        ("boolean 2", doc(&el(0x08, b"t", &[2]))),
        ("decimal128", doc(&el(0x13, b"d", &[0; 16]))),
        ("decimal128 short", doc(&el(0x13, b"d", &[0; 15]))),
        ("type 0x14", doc(&el(0x14, b"x", &[]))),
        ("type 0 inside", doc(&el(0x00, b"x", &[]))),
        ("min/max key", doc(&cat(&[&el(0xFF, b"a", &[]), &el(0x7F, b"b", &[])]))),
        ("embedded doc reaches outer NUL", {
            let inner = doc(&[]);
            let mut v = doc(&el(3, b"d", &inner[..4]));
            // The inner document's prefix says 5 bytes, which end at the outer's final NUL.
            let n = v.len() as i32;
            v[..4].copy_from_slice(&n.to_le_bytes());
            v
        }),
        ("embedded doc, trailing bytes inside", {
            let inner = cat(&[&i32le(6), &[0, 0]]);
            doc(&el(3, b"d", &inner))
        }),
        ("embedded doc, element overruns inner", {
            // Inner {a: int32} whose int32 runs past the inner document's end into the outer.
            let inner = cat(&[&i32le(9), &[0x10, b'a', 0], &[1, 0]]);
            doc(&cat(&[&el(3, b"d", &inner), &[0, 0, 0]]))
        }),
        ("array of arrays", doc(&el(4, b"a", &doc(&el(4, b"0", &doc(&el(0x10, b"0", &i32le(1)))))))),
        ("trailing bytes after top-level", cat(&[&doc(&[]), &[0]])),
        // Keys are read eight bytes at a time when eight are there: lengths around the word, non-ASCII bytes in
        // and after the first word, and keys that end too close to the document's end for a whole word.
        ("key, seven bytes", doc(&el(0x0A, b"abcdefg", &[]))),
        ("key, eight bytes", doc(&el(0x0A, b"abcdefgh", &[]))),
        ("key, nine bytes", doc(&el(0x0A, b"abcdefghi", &[]))),
        ("key, sixteen bytes", doc(&el(0x0A, b"abcdefghijklmnop", &[]))),
        ("key, two-byte UTF-8 in the first word", doc(&el(0x0A, "aé".as_bytes(), &[]))),
        ("key, UTF-8 after the first word", doc(&el(0x0A, "abcdefghé".as_bytes(), &[]))),
        ("key, bad UTF-8 after the first word", doc(&el(0x0A, b"abcdefgh\xff", &[]))),
        ("key, UTF-8 split by the word", doc(&el(0x0A, "abcdefgé".as_bytes(), &[]))),
        ("key, truncated UTF-8 at the word's end", doc(&el(0x0A, b"abcdefg\xc3", &[]))),
        ("key, 0x80 before its NUL", doc(&el(0x0A, b"a\x80", &[]))),
        ("key, unterminated at the end", cat(&[&i32le(8), &[0x0A, b'a', b'b', 0]])),
        ("key, last element short", doc(&cat(&[&el(0x10, b"long key", &i32le(1)), &el(0x0A, b"z", &[])]))),
        ("key, last element short, bad UTF-8", doc(&cat(&[&el(0x10, b"k", &i32le(1)), &el(0x0A, b"\xff", &[])]))),
        ("string, ASCII", doc(&el(2, b"s", &string(b"SKU-000001")))),
        ("string, UTF-8", doc(&el(2, b"s", &string("żółw".as_bytes())))),
        ("string, bad UTF-8 after ASCII", doc(&el(2, b"s", &string(b"abcdefghij\xff")))),
        ("string, length overruns by one", doc(&el(2, b"s", &cat(&[&i32le(3), b"ab"])))),
        ("length prefix too small", cat(&[&i32le(4), &[0]])),
        ("length prefix negative", cat(&[&i32le(-5), &[0]])),
    ]
}

#[test]
fn hand_built_edges_are_judged_as_bson_judges_them() {
    let mut wrong = Vec::new();
    for (name, bytes) in cases() {
        let ours = validate_with_findings(&bytes).is_ok();
        let theirs = reference(&bytes);
        if ours != theirs {
            wrong.push(format!("{name}: validation {ours}, bson {theirs}: {bytes:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn top_level_keys_are_summarised_for_stamping() {
    let int = i32le(1);
    let plain = |elements: &[u8], key: &[u8]| {
        validate_with_findings(&doc(elements)).expect("valid").1.top_level_plain_without(key)
    };
    let keys = cat(&[
        &el(0x10, b"_id", &int),
        &el(0x10, b"a longer key", &int),
        &el(3, b"sub", &doc(&el(0x10, b"tenantId", &int))),
    ]);
    // Proved absent only when it is: nested keys do not count, top-level ones do.
    assert!(plain(&keys, b"tenantId"));
    assert!(!plain(&keys, b"_id"));
    assert!(!plain(&keys, b"a longer key"));
    assert!(!plain(&cat(&[&keys, &el(0x10, b"tenantId", &int)]), b"tenantId"));
    // `$` keys and dotted keys (a path below the field, or anything else) are never proved plain.
    assert!(!plain(&cat(&[&keys, &el(0x10, b"tenantId.x", &int)]), b"tenantId"));
    assert!(!plain(&cat(&[&keys, &el(0x10, b"a.b", &int)]), b"tenantId"));
    assert!(!plain(&cat(&[&keys, &el(0x10, b"a long key.with a dot", &int)]), b"tenantId"));
    assert!(!plain(&cat(&[&keys, &el(0x10, b"$x", &int)]), b"tenantId"));
    assert!(!plain(&keys, b"$tenant"));
    assert!(!plain(&keys, b"meta.tenant"));
    // Past the keys the filter takes, and after a repeat, nothing is proved.
    let wide: Vec<u8> = (0..40).flat_map(|i| el(0x10, format!("k{i}").as_bytes(), &int)).collect();
    assert!(!plain(&wide, b"tenantId"));
    let repeat = cat(&[&el(0x10, b"k", &int), &el(0x10, b"k", &int)]);
    assert!(!plain(&repeat, b"tenantId"));
    assert!(!plain(&el(3, b"d", &doc(&repeat)), b"tenantId"));
}

fn findings(bytes: &[u8]) -> (bool, bool) {
    let (_, f) = validate_with_findings(bytes).expect("valid");
    (f.duplicate_keys(), f.javascript())
}

#[test]
fn findings_see_every_repeat_and_every_script() {
    let int = i32le(1);
    let arr = |keys: &[&[u8]]| doc(&keys.iter().flat_map(|k| el(0x10, k, &int)).collect::<Vec<_>>());
    // Arrays whose keys are not exactly "0", "1", ... in order.
    for keys in [
        &[b"0".as_slice(), b"0"][..],
        &[b"0", b"01"],
        &[b"1", b"0"],
        &[b"0", b"1", b"1"],
        &[b"00"],
        &[b"a", b"a"],
        &[b"0", b"1 "],
    ] {
        let bytes = doc(&el(4, b"a", &arr(keys)));
        assert!(findings(&bytes).0, "{keys:?}");
    }
    // Positional keys past the single digits.
    let many: Vec<Vec<u8>> = (0..120).map(|i: i32| i.to_string().into_bytes()).collect();
    let refs: Vec<&[u8]> = many.iter().map(Vec::as_slice).collect();
    assert!(!findings(&doc(&el(4, b"a", &arr(&refs)))).0);
    // Repeats in a document nested in an array in a document, past the pairwise limit, and in a scope.
    let repeat = doc(&cat(&[&el(0x10, b"k", &int), &el(0x10, b"k", &int)]));
    assert!(findings(&doc(&el(3, b"x", &doc(&el(4, b"a", &doc(&el(3, b"0", &repeat))))))).0);
    let wide: Vec<u8> = (0..40).flat_map(|i| el(0x10, format!("k{i}").as_bytes(), &int)).collect();
    assert!(!findings(&doc(&wide)).0);
    assert!(findings(&doc(&cat(&[&wide, &el(0x10, b"k39", &int)]))).0);
    assert!(findings(&doc(&cat(&[&wide, &el(0x10, b"k0", &int)]))).0);
    assert!(findings(&doc(&el(0x0F, b"c", &cws(b"", &repeat)))).0);
    // Scripts: keys at any depth, array keys included, code values, code with scope.
    assert!(findings(&doc(&el(4, b"a", &doc(&el(3, b"0", &doc(&el(0x08, b"$where", &[1]))))))).1);
    assert!(findings(&doc(&el(4, b"a", &doc(&el(0x08, b"$function", &[1]))))).1);
    assert!(findings(&doc(&el(0x0D, b"c", &string(b"1")))).1);
    assert!(findings(&doc(&el(4, b"a", &doc(&el(0x0D, b"0", &string(b"1")))))).1);
    assert!(findings(&doc(&el(0x0F, b"c", &cws(b"", &doc(&[]))))).1);
    assert!(!findings(&doc(&el(0x0E, b"$where1", &string(b"1")))).1);
}

#[test]
fn short_arrays_of_plain_values_are_judged_as_bson_judges_them() {
    // Every kind of value the walk reads in a short array without a call, good and bad, in arrays of one to
    // eleven elements (ten is the most read that way), whole and with the last value cut short.
    let text = |bytes: &[u8]| string(bytes);
    let values: Vec<(u8, Vec<u8>)> = vec![
        (0x01, 1.5f64.to_le_bytes().to_vec()),
        (0x09, 7i64.to_le_bytes().to_vec()),
        (0x11, 7i64.to_le_bytes().to_vec()),
        (0x12, 7i64.to_le_bytes().to_vec()),
        (0x10, i32le(7)),
        (0x07, vec![1; 12]),
        (0x13, vec![1; 16]),
        (0x06, vec![]),
        (0x0A, vec![]),
        (0xFF, vec![]),
        (0x7F, vec![]),
        (0x08, vec![1]),
        (0x08, vec![2]),
        (0x02, text(b"ab")),
        (0x02, text("\u{e9}".as_bytes())),
        (0x02, text(&[0xFF])),
        (0x02, text(&[b'a'; 15])),
        (0x02, text(&[b'a'; 16])),
        (0x02, cat(&[&i32le(0), b"\0"])),
        (0x02, cat(&[&i32le(3), b"ab"])),
        (0x0E, text(b"x")),
        (0x0D, text(b"x")),
        (0x03, doc(&[])),
    ];
    for (kind, value) in &values {
        for n in [1, 2, 10, 11] {
            let elements: Vec<u8> = (0..n).flat_map(|i: i32| el(*kind, i.to_string().as_bytes(), value)).collect();
            let whole = doc(&el(4, b"a", &doc(&elements)));
            assert_eq!(validate_with_findings(&whole).is_ok(), reference(&whole), "{kind:#04x} {value:?} x{n}");
            if let Some((_, cut)) = elements.split_last() {
                let cut = doc(&el(4, b"a", &doc(cut)));
                assert_eq!(validate_with_findings(&cut).is_ok(), reference(&cut), "{kind:#04x} {value:?} x{n} cut");
            }
        }
    }
}
