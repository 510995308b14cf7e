//! Collations on field-mode collections: allowed exactly when `check` proves no collation can make two tenants'
//! values compare equal (computed once at compile), refused otherwise. Pure; exact outputs.

use bson::doc;
use tenantwall::explain::{explain, Outcome};
use tenantwall::Policy;

fn policy(values: &[&str]) -> Policy {
    let mut text = String::from(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[backends]]\nname = \"b\"\nuri = \"mongodb://127.0.0.1:1/\"\n",
    );
    for (i, value) in values.iter().enumerate() {
        text.push_str(&format!("[[tenants]]\nid = \"t{i}\"\nvalue = {value}\nbackend = \"b\"\nsni = [\"t{i}\"]\n"));
    }
    text.push_str("[[rules]]\ndatabase = \"app\"\ncollection = \"orders\"\nmode = \"field\"\n");
    Policy::from_toml(&text, std::path::Path::new("collation.toml")).unwrap()
}

const CASE_INSENSITIVE: &str = r#"{ "locale": "en", "strength": 1, "alternate": "shifted", "numericOrdering": true }"#;

fn find_with_collation(policy: &Policy) -> Outcome {
    let collation: bson::Document = serde_json::from_str(CASE_INSENSITIVE).unwrap();
    explain(policy, "t0", doc! { "find": "orders", "filter": { "name": "x" }, "collation": collation }, "app").unwrap()
}

#[test]
fn values_no_collation_can_confuse_qualify() {
    for values in [
        &["1", "2", "{ \"$numberLong\" = \"3\" }"][..],
        &["{ \"$oid\" = \"65f0c0ffee0000000000beef\" }", "{ \"$oid\" = \"65f0c0ffee0000000000beee\" }"],
        &["\"acme\"", "\"globex\"", "\"acme2\"", "42"],
        &["\"a1\"", "\"a10\""],
    ] {
        let policy = policy(values);
        assert!(policy.collation_safe, "{values:?}");
        match find_with_collation(&policy) {
            Outcome::Forwarded { command, .. } => {
                assert!(command.get_document("collation").is_ok());
                assert!(command.get_document("filter").unwrap().get_array("$and").is_ok());
            }
            other => panic!("{values:?}: {other:?}"),
        }
    }
}

#[test]
fn values_some_collation_could_confuse_do_not() {
    for values in [
        // Case, punctuation and whitespace (alternate: "shifted"), leading zeros (numericOrdering).
        &["\"acme\"", "\"ACME\""][..],
        &["\"acme\"", "\"a-cme\""],
        &["\"acme corp\"", "\"acmecorp\""],
        &["\"7\"", "\"007\""],
        // Hungarian: "ccs" sorts as "cscs".
        &["\"ccs\"", "\"cscs\""],
        &["\"naggy\"", "\"nagygy\""],
        // Letters some locales tell apart only at the second level: v/w (Finnish, Estonian), i/y (Lithuanian).
        &["\"wave\"", "\"vave\""],
        &["\"tyre\"", "\"tire\""],
        // Diacritics and anything else outside ASCII cannot be proved apart.
        &["\"café\"", "\"globex\""],
    ] {
        let policy = policy(values);
        assert!(!policy.collation_safe, "{values:?}");
        match find_with_collation(&policy) {
            Outcome::Denied { code: 13, reason, .. } => assert!(reason.contains("collation"), "{reason}"),
            other => panic!("{values:?}: {other:?}"),
        }
    }
}

#[test]
fn simple_collation_and_malformed_collations_are_unchanged() {
    let unsafe_policy = policy(&["\"acme\"", "\"ACME\""]);
    let simple = explain(&unsafe_policy, "t0", doc! { "find": "orders", "collation": { "locale": "simple" } }, "app");
    assert!(matches!(simple.unwrap(), Outcome::Forwarded { .. }));
    // A collation that is not a document is never taken for a harmless one.
    let safe = policy(&["1", "2"]);
    let odd = explain(&safe, "t0", doc! { "find": "orders", "collation": "en" }, "app").unwrap();
    assert!(matches!(odd, Outcome::Denied { code: 13, .. }), "{odd:?}");
}
