//! Policy text → compiled policy: any text gives a policy or an error, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tenantwall::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // `from_toml` resolves password_env/password_file secrets: unset variables and missing files are errors, so
    // this stays deterministic on a machine without them.
    let Ok(policy) = Policy::from_toml(text, Path::new("fuzz.toml")) else { return };
    // The lookups a request makes against whatever was compiled.
    let _ = policy.rule_for("acme", "app", "orders");
    let _ = policy.database_rule("acme", "app");
});
