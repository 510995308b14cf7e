//! The shape check: a command carries only the arguments, document sequences and statement fields its
//! [`CommandSpec`] lists. Runs before any rewriter reads the command, so every rewriter can rely on knowing every
//! field it is given; anything else is refused with the field named, as mongod's own parsers refuse unknown
//! fields (error 40415).

use bson::{RawBsonRef, RawDocument};
use tenantwall_protocol::fields::Fields;
use tenantwall_protocol::OpMsg;

use super::{first_key, Denial, Result};
use crate::command::spec::{Statement, BULK_DELETE, BULK_INSERT, BULK_UPDATE, GENERIC_ARGUMENTS};
use crate::command::CommandSpec;
use crate::error::ErrorCode;

fn unknown(place: &str, field: &str) -> Denial {
    Denial::new(
        ErrorCode::UNKNOWN_FIELD,
        format!("BSON field '{place}.{field}' is an unknown field (not in tenantwall's command surface)"),
    )
}

/// Checks `body` (and `msg`'s sequences, when given) against `spec`.
pub fn check(fields: Fields<'_>, sequences: Option<&OpMsg>, spec: &CommandSpec) -> Result<()> {
    // The command name, for messages only.
    let name = || first_key(fields.doc());
    // The arguments' names compared as bytes; a document whose elements cannot all be read that way (never one
    // that passed validation) is read again through bson below, which says what is wrong with it. Each key after
    // the first (the command's name) is looked up once in the spec's table of its arguments and the generic ones.
    let mut unknown_key = None;
    let read = match fields.indexed_keys() {
        // The body of a parsed message: its keys from its index, in a loop the lookup is compiled into.
        Some(mut keys) => match keys.next() {
            Some(None) => None,
            // The first key that cannot be read or is not accepted, if any.
            _ => match keys.find(|key| key.is_none_or(|key| !spec.accepted.contains(key))) {
                None => Some(true),
                Some(None) => None,
                Some(Some(key)) => {
                    unknown_key = Some(key);
                    Some(false)
                }
            },
        },
        None => {
            let mut first = true;
            fields.all_keys(|key| {
                if std::mem::take(&mut first) || spec.accepted.contains(key) {
                    return true;
                }
                unknown_key = Some(key);
                false
            })
        }
    };
    if let Some(key) = unknown_key {
        return Err(unknown(name(), &String::from_utf8_lossy(key)));
    }
    if read.is_none() {
        for (i, element) in fields.doc().iter_elements().enumerate() {
            let element = element.map_err(|e| Denial::new(ErrorCode::FAILED_TO_PARSE, e.to_string()))?;
            let key = element.key().as_str();
            if i == 0 || spec.arguments.contains(&key) || GENERIC_ARGUMENTS.contains(&key) {
                continue;
            }
            return Err(unknown(name(), key));
        }
    }
    if let Some(msg) = sequences {
        for seq in msg.sequences() {
            let id = seq.identifier();
            if !spec.sequences.contains(&id) {
                return Err(Denial::new(
                    ErrorCode::UNKNOWN_FIELD,
                    format!("{} takes no document sequence named {id:?}", name()),
                ));
            }
            if super::raw::get(fields, id).ok().flatten().is_some() {
                return Err(Denial::new(
                    ErrorCode::FAILED_TO_PARSE,
                    format!("{id} given both in the body and as a document sequence"),
                ));
            }
        }
    }
    for (field, statement) in spec.statements {
        let place = format!("{}.{field}", name());
        match (sequences.and_then(|m| m.sequence(field)), super::raw::get(fields, field)) {
            (Some(seq), _) => {
                for doc in seq.documents() {
                    check_statement(doc, *statement, &place)?;
                }
            }
            (None, Ok(Some(RawBsonRef::Array(items)))) => {
                for item in items {
                    match item {
                        Ok(RawBsonRef::Document(doc)) => check_statement(doc, *statement, &place)?,
                        _ => {
                            return Err(Denial::new(ErrorCode::FAILED_TO_PARSE, format!("{place} must hold documents")))
                        }
                    }
                }
            }
            (None, Ok(None)) => {}
            (None, _) => return Err(Denial::new(ErrorCode::FAILED_TO_PARSE, format!("{place} must be an array"))),
        }
    }
    Ok(())
}

fn check_statement(doc: &RawDocument, statement: Statement, place: &str) -> Result<()> {
    let allowed = match statement {
        Statement::Fields(fields) => fields,
        Statement::BulkOp => match first_key(doc) {
            "insert" => BULK_INSERT,
            "update" => BULK_UPDATE,
            "delete" => BULK_DELETE,
            other => {
                return Err(Denial::unauthorized(format!("{place}: bulkWrite operation {other:?} is not allowed")))
            }
        },
    };
    for element in doc.iter_elements() {
        let element = element.map_err(|e| Denial::new(ErrorCode::FAILED_TO_PARSE, e.to_string()))?;
        let key = element.key().as_str();
        if !allowed.contains(&key) {
            return Err(unknown(place, key));
        }
    }
    Ok(())
}

/// Checks that `doc` (a stage's or option's specification at `place`) has only `allowed` fields.
pub fn only(doc: &RawDocument, allowed: &[&str], place: &str) -> Result<()> {
    for element in doc.iter_elements() {
        let element = element.map_err(|e| Denial::new(ErrorCode::FAILED_TO_PARSE, e.to_string()))?;
        if !allowed.contains(&element.key().as_str()) {
            return Err(unknown(place, element.key().as_str()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parsed_body_and_a_built_one_are_checked_alike() {
        // Read through a parsed message's index (its own loop) and through the bytes (a built document): the
        // same answer, the first key (the command's name) never looked up, the first unknown key named.
        use tenantwall_protocol::{decode, Message, MsgFlags};
        let spec = crate::command::Command::Find.spec().unwrap();
        let cases = [
            (bson::rawdoc! { "find": "o", "filter": {}, "limit": 1, "$db": "d" }, None),
            (
                bson::rawdoc! { "find": "o", "filter": {}, "frobnicate": 1, "rawData": 1, "$db": "d" },
                Some("frobnicate"),
            ),
            (bson::rawdoc! { "find": "o", "$db": "d", "rawData": true }, Some("rawData")),
            (bson::rawdoc! { "frobnicate": "o", "$db": "d" }, None),
            (bson::rawdoc! { "find": "o" }, None),
        ];
        for (body, refused) in cases {
            let frame = OpMsg::new(MsgFlags::default(), body.clone()).encode(1, 0).unwrap().freeze();
            let Message::Msg(parsed) = decode(frame).unwrap().message else { panic!("not an OP_MSG") };
            assert!(parsed.body_fields().is_indexed());
            let built = Fields::from(&body);
            assert!(!built.is_indexed());
            for fields in [parsed.body_fields(), built] {
                match (check(fields, None, spec), refused) {
                    (Ok(()), None) => {}
                    (Err(denial), Some(key)) => {
                        assert_eq!(denial.code, ErrorCode::UNKNOWN_FIELD);
                        assert!(denial.reason.contains(&format!("'find.{key}'")), "{body:?}: {}", denial.reason);
                    }
                    (other, _) => panic!("{body:?}: {:?}", other.map_err(|d| d.reason)),
                }
            }
        }
    }

    #[test]
    fn each_command_accepts_exactly_its_arguments_and_the_generic_ones() {
        // Every name of every spec's table, and near misses of each: the same length with one byte changed at
        // each place (the first eight bytes, which the table hashes, and the rest, which it compares), one byte
        // more or less, another case. Accepted exactly when listed.
        for spec in crate::command::spec::ALL.iter().filter_map(|c| c.spec()) {
            let listed = |key: &[u8]| spec.arguments.iter().chain(GENERIC_ARGUMENTS).any(|n| n.as_bytes() == key);
            let every_name = spec.arguments.iter().chain(GENERIC_ARGUMENTS);
            for name in every_name.clone() {
                assert!(spec.accepted.contains(name.as_bytes()), "{}: {name} not accepted", spec.name);
            }
            let near = every_name.flat_map(|name| {
                let name = name.as_bytes().to_vec();
                let changed: Vec<Vec<u8>> = (0..name.len())
                    .map(|i| {
                        let mut near = name.clone();
                        near[i] ^= 0x01;
                        near
                    })
                    .collect();
                let longer = [name.clone(), b"x".to_vec()].concat();
                let shorter = name[..name.len() - 1].to_vec();
                let upper = name.to_ascii_uppercase();
                changed.into_iter().chain([longer, shorter, upper])
            });
            for key in near.chain([b"".to_vec(), b"$".to_vec(), b"db".to_vec(), vec![0xFF; 9]]) {
                assert_eq!(spec.accepted.contains(&key), listed(&key), "{}: {}", spec.name, key.escape_ascii());
            }
        }
    }
}
