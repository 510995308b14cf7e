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

#[test]
fn a_tenant_moved_to_its_own_database_is_named_with_the_general_rules_template() {
    use tenantwall::engine::{resolve, Target};
    let path = Path::new("p.toml");
    let real_db = |policy: &tenantwall::Policy, tenant: &str, db: &str| match resolve(policy, tenant, db, Some("o")) {
        Ok(Target::Mapped { db, .. }) => Some(db),
        _ => None,
    };
    // Every tenant's databases are named {db}_{tenant}: acme already has its own, nothing to write.
    let general = POLICY.replace(
        "database = \"app\"\ncollection = \"*\"\nmode = \"field\"\n",
        "database = \"*\"\nmode = \"database\"\ntemplate = \"{db}_{tenant}\"\n",
    );
    let general = general.replace("[[rules]]\ndatabase = \"ref\"\ncollection = \"*\"\nmode = \"shared\"\n", "");
    compiled(&general);
    assert_eq!(edit(&general, path, "acme", &Destination::parse("database").unwrap()).unwrap(), general);
    // app in field mode, crm per tenant as {db}_{tenant}: acme's app is named in that one per-tenant scheme
    // (app_acme), not in a second one ({tenant}_{db}) under which two tenants' names could meet.
    let mixed =
        format!("{POLICY}\n[[rules]]\ndatabase = \"crm\"\nmode = \"database\"\ntemplate = \"{{db}}_{{tenant}}\"\n");
    let moved = edit(&mixed, path, "acme", &Destination::parse("database").unwrap()).unwrap();
    let policy = compiled(&moved);
    assert_eq!(real_db(&policy, "acme", "app").as_deref(), Some("app_acme"), "{moved}");
    assert_eq!(real_db(&policy, "acme", "crm").as_deref(), Some("crm_acme"));
    assert_eq!(real_db(&policy, "globex", "crm").as_deref(), Some("crm_globex"));
}
