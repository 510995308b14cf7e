//! What `tenantwall move` must never do to anyone but the tenant it moves: edit another tenant's placement
//! through a damaged block of the policy file, delete or copy a document another tenant reads, or create
//! collection-wide DDL (a TTL index) on a shared collection on the tenant's behalf.

use std::path::Path;

use tenantwall::lifecycle::placement::{edit, Destination, EditError};

const POLICY: &str = "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n\
    [[backends]]\nname = \"main\"\nuri = \"mongodb://127.0.0.1:1\"\n\n\
    [[tenants]]\nid = \"acme\"\nbackend = \"main\"\n\n\
    [[tenants]]\nid = \"globex\"\nbackend = \"main\"\n\n\
    [[rules]]\ndatabase = \"app\"\ncollection = \"*\"\nmode = \"field\"\n\n\
    [[rules]]\ndatabase = \"ref\"\ncollection = \"*\"\nmode = \"shared\"\n";

fn compiled(text: &str) -> tenantwall::Policy {
    tenantwall::Policy::from_toml(text, Path::new("p.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn a_block_whose_end_marker_is_gone_is_refused_and_never_takes_the_general_rules_with_it() {
    let path = Path::new("p.toml");
    let moved = edit(POLICY, path, "acme", &Destination::parse("database").unwrap()).unwrap();
    compiled(&moved);
    // An operator tidying the file drops the end marker line (or a merge loses it).
    let damaged = moved.replace("# tenantwall move: acme end\n", "");
    match edit(&damaged, path, "acme", &Destination::parse("field").unwrap()) {
        Err(EditError::DamagedBlock(tenant, _)) => assert_eq!(tenant, "acme"),
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(text) => {
            let globex_rules = compiled(&text).rules_of("globex").count();
            panic!("a damaged block was edited ({globex_rules} rules left for globex):\n{text}");
        }
    }
}
