//! Rules for some tenants next to the general ones: whatever templates they use, no two tenants may ever reach the
//! same real database or collection.

use std::path::Path;

use tenantwall::engine::{resolve, Target};

const HEAD: &str = "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n\
    [[backends]]\nname = \"main\"\nuri = \"mongodb://127.0.0.1:1\"\n\n\
    [[tenants]]\nid = \"acme\"\nbackend = \"main\"\n\n\
    [[tenants]]\nid = \"globex\"\nbackend = \"main\"\n\n";

fn real_db(policy: &tenantwall::Policy, tenant: &str, db: &str) -> Option<String> {
    match resolve(policy, tenant, db, Some("orders")) {
        Ok(Target::Mapped { db, .. }) => Some(db),
        _ => None,
    }
}

fn real_coll(policy: &tenantwall::Policy, tenant: &str, coll: &str) -> Option<String> {
    match resolve(policy, tenant, "app", Some(coll)) {
        Ok(Target::Mapped { coll, .. }) => coll,
        _ => None,
    }
}

#[test]
fn a_tenant_override_with_another_database_template_never_reaches_another_tenants_database() {
    // acme's own placement names databases {tenant}_{db}; everyone else's {db}_{tenant}.
    let text = format!(
        "{HEAD}[[rules]]\ntenants = [\"acme\"]\ndatabase = \"*\"\nmode = \"database\"\ntemplate = \"{{tenant}}_{{db}}\"\n\n\
         [[rules]]\ndatabase = \"*\"\nmode = \"database\"\ntemplate = \"{{db}}_{{tenant}}\"\n"
    );
    let policy = match tenantwall::Policy::from_toml(&text, Path::new("p.toml")) {
        Ok(policy) => policy,
        Err(_) => return, // refused: fine
    };
    let globex = real_db(&policy, "globex", "acme_app");
    let acme = real_db(&policy, "acme", "app_globex");
    assert!(globex.is_none() || globex != acme, "acme's db app_globex and globex's db acme_app are both {globex:?}");
}

#[test]
fn a_tenant_override_with_another_collection_template_never_reaches_another_tenants_collection() {
    let text = format!(
        "{HEAD}[[rules]]\ntenants = [\"acme\"]\ndatabase = \"app\"\ncollection = \"*\"\nmode = \"collection\"\n\
         template = \"{{tenant}}_{{collection}}\"\n\n\
         [[rules]]\ndatabase = \"app\"\ncollection = \"*\"\nmode = \"collection\"\ntemplate = \"{{collection}}_{{tenant}}\"\n"
    );
    let policy = match tenantwall::Policy::from_toml(&text, Path::new("p.toml")) {
        Ok(policy) => policy,
        Err(_) => return,
    };
    let globex = real_coll(&policy, "globex", "acme_orders");
    let acme = real_coll(&policy, "acme", "orders_globex");
    assert!(globex.is_none() || globex != acme, "acme's orders_globex and globex's acme_orders are both {globex:?}");
}

#[test]
fn tenantwall_move_never_writes_a_placement_that_renders_another_tenants_names() {
    // The general rule names each tenant's databases {db}_{tenant}; moving acme "to database" gives it the
    // default {tenant}_{db} in a block of its own.
    let text = format!("{HEAD}[[rules]]\ndatabase = \"*\"\nmode = \"database\"\ntemplate = \"{{db}}_{{tenant}}\"\n");
    let to = tenantwall::lifecycle::placement::Destination::parse("database").unwrap();
    let moved = match tenantwall::lifecycle::placement::edit(&text, Path::new("p.toml"), "acme", &to) {
        Ok(moved) => moved,
        Err(_) => return,
    };
    let policy = match tenantwall::Policy::from_toml(&moved, Path::new("p.toml")) {
        Ok(policy) => policy,
        Err(_) => return,
    };
    let globex = real_db(&policy, "globex", "acme_app");
    let acme = real_db(&policy, "acme", "app_globex");
    assert!(globex.is_none() || globex != acme, "after the move both are {globex:?}:\n{moved}");
}
