//! A tenant's placement in the policy file, edited as text: the tenant's own rules and its backend.
//!
//! `tenantwall move` gives a tenant its new placement by writing rules that apply to it alone, in one block
//! marked by comments and placed before the first `[[rules]]` table (rules are first-match, so they override
//! the general ones for that tenant), and by changing the tenant's `backend`. Everything else in the file —
//! comments, order, layout — is left byte for byte as it was. Moving back removes the block.
//!
//! What it owns: computing the new policy text and writing it atomically (temporary file in the same
//! directory, fsync, rename, fsync of the directory). What it must never do: write a file that does not compile,
//! touch another tenant's lines, or leave a half-written policy where the proxy's watcher could read it.

use std::io::Write;
use std::path::Path;

use crate::config::{self, Mode, PolicyFile, RuleConfig};
use crate::policy::{Placement, Policy, Rule};

/// Where a tenant is to live: the mode of its namespaces and, optionally, another backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub mode: Mode,
    pub backend: Option<String>,
}

impl Destination {
    /// Parses `MODE[:BACKEND]`, e.g. `database:east`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (mode, backend) = match text.split_once(':') {
            Some((mode, backend)) if !backend.is_empty() => (mode, Some(backend.to_owned())),
            Some(_) => return Err("a backend name must follow ':'".into()),
            None => (text, None),
        };
        let mode = match mode {
            "field" => Mode::Field,
            "collection" => Mode::Collection,
            "database" => Mode::Database,
            other => return Err(format!("{other:?} is not field, collection or database")),
        };
        Ok(Self { mode, backend })
    }
}

/// Why the policy cannot be edited to the destination.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("{0}")]
    Policy(#[from] config::ConfigError),
    #[error("no tenant {0:?} in the policy")]
    NoTenant(String),
    #[error("no backend {0:?} in the policy")]
    NoBackend(String),
    #[error("rules[{0}] names tenant {1:?} outside the block `tenantwall move` writes; edit such rules by hand")]
    HandWritten(usize, String),
    #[error(
        "rules[{0}] gives shared (read-only) data in a database the tenant would take whole; it cannot follow \
         the tenant into its own database"
    )]
    SharedInDatabase(usize),
    #[error("the policy has no [[rules]] table to place the tenant's rules before")]
    NoRules,
    #[error(
        "the block `tenantwall move` wrote for tenant {0:?} is damaged ({1}): restore its `# tenantwall move: {0} \
         begin` and `end` lines (one block) by hand, then run the move again"
    )]
    DamagedBlock(String, String),
    #[error("the new policy would change what tenant {0:?} reaches ({1}); a move changes only its own tenant")]
    OtherTenant(String, String),
}

fn begin_marker(tenant: &str) -> String {
    format!("# tenantwall move: {tenant} begin")
}

fn end_marker(tenant: &str) -> String {
    format!("# tenantwall move: {tenant} end")
}

/// `text` with the tenant's block of rules removed (unchanged when it has none). A block that is not exactly one
/// begin marker followed by its end marker is refused: guessing where a damaged block ends could take the
/// general rules (every other tenant's placement) with it.
fn without_block(text: &str, tenant: &str) -> Result<String, EditError> {
    let (begin, end) = (begin_marker(tenant), end_marker(tenant));
    let damaged = |why: &str| EditError::DamagedBlock(tenant.to_owned(), why.to_owned());
    let mut out = String::with_capacity(text.len());
    let (mut inside, mut just_ended, mut blocks) = (false, false, 0usize);
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_end();
        if trimmed == begin {
            if inside {
                return Err(damaged("a begin marker inside its block"));
            }
            blocks += 1;
            if blocks > 1 {
                return Err(damaged("more than one block"));
            }
            inside = true;
        } else if trimmed == end {
            if !inside {
                return Err(damaged("an end marker without its begin marker"));
            }
            inside = false;
            just_ended = true;
            continue;
        } else if !(inside || just_ended && trimmed.is_empty()) {
            // The blank line `edit` puts after the block goes with it.
            out.push_str(line);
        }
        just_ended = false;
    }
    if inside {
        return Err(damaged("a begin marker without its end marker"));
    }
    Ok(out)
}

/// A TOML basic string for `s` (names here are checked patterns: no control characters).
fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The policy text with `tenant` placed at `to`. Returns the text unchanged when the tenant is already there.
pub fn edit(text: &str, path: &Path, tenant: &str, to: &Destination) -> Result<String, EditError> {
    // 1. The tenant's earlier block goes: the new one is computed from the general rules alone.
    let text = without_block(text, tenant)?;
    let file = config::parse(&text, path)?;
    let Some(tenant_config) = file.tenants.iter().find(|t| t.id.get_ref() == tenant) else {
        return Err(EditError::NoTenant(tenant.to_owned()));
    };
    // 2. The backend, replaced in place (its value's span, quotes included).
    let mut text = text.clone();
    if let Some(backend) = &to.backend {
        if !file.backends.iter().any(|b| b.name.get_ref() == backend) {
            return Err(EditError::NoBackend(backend.clone()));
        }
        if tenant_config.backend.get_ref() != backend {
            let span = tenant_config.backend.span();
            text.replace_range(span, &quoted(backend));
        }
    }
    let file = config::parse(&text, path)?;
    let rules = rules_for(&file, tenant, to)?;
    if rules.is_empty() {
        return Ok(text);
    }
    // 3. The block, before the first [[rules]] table.
    let first = file.rules.first().ok_or(EditError::NoRules)?;
    let header = text.get(..first.database.span().start).and_then(|before| before.rfind("[[rules]]"));
    let at = header.ok_or(EditError::NoRules)?;
    // Before the comment lines that introduce that table, so they stay with it.
    let mut at = text.get(..at).and_then(|before| before.rfind('\n')).map_or(0, |nl| nl + 1);
    while let Some(previous) = text.get(..at.saturating_sub(1)).filter(|_| at > 0) {
        let start = previous.rfind('\n').map_or(0, |nl| nl + 1);
        if !previous.get(start..).is_some_and(|line| line.trim_start().starts_with('#')) {
            break;
        }
        at = start;
    }
    let mut block = format!("{}\n", begin_marker(tenant));
    for rule in rules {
        block.push_str(&rule);
        block.push('\n');
    }
    block.push_str(&end_marker(tenant));
    block.push_str("\n\n");
    text.insert_str(at, &block);
    Ok(text)
}

/// The rules giving `tenant` mode `to.mode` wherever the general rules give it another, as TOML tables. A rule
/// written for the tenant names its databases or collections with the template the general rules use for that
/// mode (see [`kind_template`]): a second per-tenant template next to theirs could render one tenant's name as
/// another's real name.
fn rules_for(file: &PolicyFile, tenant: &str, to: &Destination) -> Result<Vec<String>, EditError> {
    let mut out = Vec::new();
    let mut databases: Vec<&str> = Vec::new();
    for (i, rule) in file.rules.iter().enumerate() {
        match &rule.tenants {
            Some(list) if list.get_ref().iter().any(|t| t.get_ref() == tenant) => {
                return Err(EditError::HandWritten(i, tenant.to_owned()));
            }
            Some(_) => continue,
            None => {}
        }
        let mode = *rule.mode.get_ref();
        if mode == Mode::Shared {
            continue;
        }
        let (database, collection) = (rule.database.get_ref(), rule.collection.get_ref());
        let head = format!("[[rules]]\ntenants = [{}]\ndatabase = {}\n", quoted(tenant), quoted(database));
        let template = |kind: Mode| {
            kind_template(file, kind, database).map_or_else(String::new, |t| format!("template = {}\n", quoted(t)))
        };
        match to.mode {
            Mode::Database => {
                // Already a database of the tenant's own, named per tenant: nothing to override.
                if mode == Mode::Database && per_tenant(rule) || databases.contains(&database.as_str()) {
                    continue;
                }
                if let Some(shared) = file.rules.iter().position(|r| {
                    *r.mode.get_ref() == Mode::Shared && r.tenants.is_none() && r.database.get_ref() == database
                }) {
                    return Err(EditError::SharedInDatabase(shared));
                }
                databases.push(database);
                out.push(format!("{head}mode = \"database\"\n{}", template(Mode::Database)));
            }
            Mode::Collection => {
                // Collection templates always name the tenant: already a collection of its own.
                if mode == Mode::Collection {
                    continue;
                }
                out.push(format!(
                    "{head}collection = {}\nmode = \"collection\"\n{}",
                    quoted(collection),
                    template(Mode::Collection)
                ));
            }
            Mode::Field | Mode::Shared => {
                if mode == Mode::Field {
                    continue;
                }
                out.push(format!("{head}collection = {}\nmode = \"field\"\n", quoted(collection)));
            }
        }
    }
    Ok(out)
}

/// Whether a collection or database rule names its namespaces per tenant (its template, or the default one,
/// has `{tenant}`); `{db}` alone is the same name on the tenant's own backend.
fn per_tenant(rule: &RuleConfig) -> bool {
    rule.template.as_ref().is_none_or(|t| t.get_ref().contains("{tenant}"))
}

/// The template the general rules use for mode `kind` (collection or database), for a rule of the tenant's own
/// on `database`: that of the first general rule of that kind with a per-tenant template on the same database
/// pattern, else of the first one anywhere. `None`: the default template (no such rule, or it uses the default).
fn kind_template<'f>(file: &'f PolicyFile, kind: Mode, database: &str) -> Option<&'f str> {
    let general = || file.rules.iter().filter(|r| r.tenants.is_none() && *r.mode.get_ref() == kind && per_tenant(r));
    let rule = general().find(|r| r.database.get_ref() == database).or_else(|| general().next())?;
    rule.template.as_ref().map(|t| t.get_ref().as_str())
}

/// Refuses a new policy under which any tenant other than `tenant` is governed differently: the same tenants,
/// and each other tenant with the same settings (backend, value, limits) and the same rules, in the same order,
/// as the policy resolves them for it. The last check before a move writes the file: whatever the text edit did,
/// it can only have changed the moving tenant's placement.
pub fn others_unchanged(old: &Policy, new: &Policy, tenant: &str) -> Result<(), EditError> {
    let ids = |p: &Policy| {
        let mut ids: Vec<String> = p.tenant_ids().map(str::to_owned).collect();
        ids.sort();
        ids
    };
    let (old_ids, new_ids) = (ids(old), ids(new));
    if old_ids != new_ids {
        let changed = old_ids.iter().chain(&new_ids).find(|id| !(old_ids.contains(id) && new_ids.contains(id)));
        return Err(EditError::OtherTenant(changed.cloned().unwrap_or_default(), "added or removed".into()));
    }
    for other in old_ids.iter().filter(|id| id.as_str() != tenant) {
        if old.tenant(other) != new.tenant(other) {
            return Err(EditError::OtherTenant(other.clone(), "its backend or settings".into()));
        }
        let rules = |p: &Policy| p.rules_of(other).map(RuleKey::of).collect::<Vec<_>>();
        if rules(old) != rules(new) {
            return Err(EditError::OtherTenant(other.clone(), "its rules".into()));
        }
    }
    Ok(())
}

/// What a compiled rule does, without its position in the file (a block inserted before it moves it).
#[derive(Debug, PartialEq, Eq)]
struct RuleKey {
    database: String,
    collection: String,
    mode: Mode,
    field: Option<String>,
    style: Option<crate::config::Style>,
    template: Option<String>,
    tenants: Option<Vec<String>>,
}

impl RuleKey {
    fn of(rule: &Rule) -> Self {
        let (field, style) = match &rule.placement {
            Placement::Field { field, style } => (Some(field.as_str().to_owned()), Some(*style)),
            _ => (None, None),
        };
        Self {
            database: rule.database.as_str().to_owned(),
            collection: rule.collection.as_str().to_owned(),
            mode: rule.mode(),
            field,
            style,
            template: rule.template().map(|t| t.as_str().to_owned()),
            tenants: rule.tenants.clone(),
        }
    }
}

/// Writes `text` to `path` so that a reader sees the old file or the new one, never a mix: a temporary file
/// next to it, flushed to disk, renamed over it, and the directory flushed so the rename survives a crash.
///
/// The temporary file is created new (`O_CREAT | O_EXCL`, which never follows a symlink someone planted at that
/// name) under a name no other writer can predict, with the original file's permissions from its first byte (a
/// policy holding SCRAM verifiers is never readable by more users, not even while being written).
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // The original's permission bits (owner only when it cannot be read).
    let mode = std::fs::metadata(path).map_or(0o600, |meta| meta.permissions().mode() & 0o7777);
    let mut attempts = 0;
    let (temp, mut file) = loop {
        let temp = dir.join(format!(".{name}.tenantwall-move.{}.{}", std::process::id(), unique_suffix()));
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&temp) {
            Ok(file) => break (temp, file),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempts < 8 => attempts += 1,
            Err(e) => return Err(e),
        }
    };
    let written = (|| {
        // The mode given at creation is narrowed by the umask: set it exactly, on the open file, before writing.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// A name part no other process can guess: a process-wide counter and 64 random bits.
fn unique_suffix() -> String {
    use ring::rand::SecureRandom;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut random = [0u8; 8];
    // Without randomness the name is still unique to this process; `create_new` refuses any existing file.
    let _ = ring::rand::SystemRandom::new().fill(&mut random);
    format!("{count}.{:016x}", u64::from_le_bytes(random))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "# the demo policy\n[[listeners]]\naddress = \"127.0.0.1:0\"\n\n\
        [[backends]]\nname = \"main\"\nuri = \"mongodb://127.0.0.1:1\"\n\n\
        [[backends]]\nname = \"east\"\nuri = \"mongodb://127.0.0.1:2\"\n\n\
        [[tenants]]\nid = \"acme\"\nbackend = \"main\" # moved later\n\n\
        [[tenants]]\nid = \"globex\"\nbackend = \"main\"\n\n\
        # Rules: shared collections.\n[[rules]]\ndatabase = \"app\"\ncollection = \"orders\"\nmode = \"field\"\n";

    fn compiles(text: &str) -> crate::policy::Policy {
        let file = config::parse(text, Path::new("p.toml")).unwrap();
        let compiled =
            crate::policy::compile::compile(&file, text, Path::new("p.toml"), crate::policy::compile::Secrets::Skip);
        compiled.policy.unwrap_or_else(|| panic!("{:?}\n{text}", compiled.errors))
    }

    #[test]
    fn a_move_is_a_block_of_rules_and_a_backend_and_moving_back_removes_them() {
        let to = Destination::parse("database:east").unwrap();
        let moved = edit(POLICY, Path::new("p.toml"), "acme", &to).unwrap();
        assert!(moved.starts_with("# the demo policy\n"), "comments stay: {moved}");
        assert!(moved.contains("id = \"acme\"\nbackend = \"east\" # moved later\n"), "{moved}");
        assert!(moved.contains("id = \"globex\"\nbackend = \"main\"\n"));
        let block = "# tenantwall move: acme begin\n[[rules]]\ntenants = [\"acme\"]\ndatabase = \"app\"\n\
                     mode = \"database\"\n\n# tenantwall move: acme end\n\n# Rules: shared collections.\n";
        assert!(moved.contains(block), "{moved}");
        let policy = compiles(&moved);
        assert_eq!(policy.tenant("acme").unwrap().backend, "east");
        // Moving again to the same place changes nothing.
        assert_eq!(edit(&moved, Path::new("p.toml"), "acme", &to).unwrap(), moved);
        // Back to field mode on main: the file is the original again.
        let back = edit(&moved, Path::new("p.toml"), "acme", &Destination::parse("field:main").unwrap()).unwrap();
        assert_eq!(back, POLICY);
    }

    #[test]
    fn collection_mode_and_refusals() {
        let to = Destination::parse("collection").unwrap();
        let moved = edit(POLICY, Path::new("p.toml"), "acme", &to).unwrap();
        assert!(moved.contains("collection = \"orders\"\nmode = \"collection\"\n"), "{moved}");
        compiles(&moved);
        assert!(matches!(edit(POLICY, Path::new("p.toml"), "initech", &to), Err(EditError::NoTenant(_))));
        assert!(matches!(
            edit(POLICY, Path::new("p.toml"), "acme", &Destination::parse("database:west").unwrap()),
            Err(EditError::NoBackend(_))
        ));
        let shared =
            format!("{POLICY}\n[[rules]]\ndatabase = \"app\"\ncollection = \"countries\"\nmode = \"shared\"\n");
        assert!(matches!(
            edit(&shared, Path::new("p.toml"), "acme", &Destination::parse("database").unwrap()),
            Err(EditError::SharedInDatabase(1))
        ));
        assert!(Destination::parse("cluster").is_err());
        assert!(Destination::parse("database:").is_err());
    }

    #[test]
    fn a_new_policy_that_changes_another_tenant_is_refused() {
        let old = compiles(POLICY);
        let moved = edit(POLICY, Path::new("p.toml"), "acme", &Destination::parse("database:east").unwrap()).unwrap();
        others_unchanged(&old, &compiles(&moved), "acme").unwrap();
        let globex_moved = POLICY.replace("id = \"globex\"\nbackend = \"main\"", "id = \"globex\"\nbackend = \"east\"");
        assert!(matches!(
            others_unchanged(&old, &compiles(&globex_moved), "acme"),
            Err(EditError::OtherTenant(t, _)) if t == "globex"
        ));
        let rule_changed = POLICY.replace("collection = \"orders\"", "collection = \"*\"");
        assert!(matches!(
            others_unchanged(&old, &compiles(&rule_changed), "acme"),
            Err(EditError::OtherTenant(t, _)) if t == "globex"
        ));
        let fewer = POLICY.replace("[[tenants]]\nid = \"globex\"\nbackend = \"main\"\n\n", "");
        assert!(matches!(others_unchanged(&old, &compiles(&fewer), "acme"), Err(EditError::OtherTenant(..))));
    }

    #[test]
    fn a_damaged_block_is_refused_never_guessed() {
        let path = Path::new("p.toml");
        let moved = edit(POLICY, path, "acme", &Destination::parse("database").unwrap()).unwrap();
        let field = Destination::parse("field").unwrap();
        let no_end = moved.replace("# tenantwall move: acme end\n", "");
        let no_begin = moved.replace("# tenantwall move: acme begin\n", "");
        let at = moved.find("# tenantwall move: acme begin").unwrap();
        let end = moved.find("# tenantwall move: acme end\n").unwrap() + "# tenantwall move: acme end\n".len();
        let mut twice = moved.clone();
        twice.insert_str(at, &moved[at..end]);
        for damaged in [no_end, no_begin, twice] {
            assert!(
                matches!(edit(&damaged, path, "acme", &field), Err(EditError::DamagedBlock(..))),
                "accepted:\n{damaged}"
            );
        }
        // Another tenant's markers are that tenant's business.
        assert!(edit(&moved, path, "globex", &Destination::parse("database").unwrap()).is_ok());
    }

    #[test]
    fn the_tenants_own_rules_use_the_general_rules_template_for_their_mode() {
        let path = Path::new("p.toml");
        // Every database of a tenant is already its own under the general rule: nothing to write.
        let databases = POLICY.replace(
            "database = \"app\"\ncollection = \"orders\"\nmode = \"field\"\n",
            "database = \"*\"\nmode = \"database\"\ntemplate = \"{db}_{tenant}\"\n",
        );
        compiles(&databases);
        assert_eq!(edit(&databases, path, "acme", &Destination::parse("database").unwrap()).unwrap(), databases);
        // A field-mode database next to a general database rule with its own template: acme's database is named
        // with that template, not the default one.
        let mixed =
            format!("{POLICY}\n[[rules]]\ndatabase = \"crm\"\nmode = \"database\"\ntemplate = \"{{db}}_{{tenant}}\"\n");
        let moved = edit(&mixed, path, "acme", &Destination::parse("database").unwrap()).unwrap();
        assert!(moved.contains("database = \"app\"\nmode = \"database\"\ntemplate = \"{db}_{tenant}\"\n"), "{moved}");
        let policy = compiles(&moved);
        let target = crate::engine::resolve(&policy, "acme", "app", Some("orders")).unwrap();
        assert!(matches!(target, crate::engine::Target::Mapped { ref db, .. } if db == "app_acme"), "{target:?}");
        // The same for collections.
        let mixed = format!(
            "{POLICY}\n[[rules]]\ndatabase = \"app\"\ncollection = \"invoices\"\nmode = \"collection\"\n\
             template = \"{{collection}}_{{tenant}}\"\n"
        );
        let moved = edit(&mixed, path, "acme", &Destination::parse("collection").unwrap()).unwrap();
        assert!(moved.contains("mode = \"collection\"\ntemplate = \"{collection}_{tenant}\"\n"), "{moved}");
        assert_eq!(moved.matches("[[rules]]").count(), 3, "invoices is already acme's own: {moved}");
    }

    #[test]
    fn the_temporary_file_is_new_unpredictable_and_never_more_readable_than_the_policy() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tw-placement-perm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy.toml");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        // A link planted at the name the temporary file used to have points at a file it must not touch.
        let victim = dir.join("victim");
        std::fs::write(&victim, "victim").unwrap();
        let planted = dir.join(format!(".policy.toml.tenantwall-move.{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        write_atomically(&path, "new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "victim");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_file());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_file_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("tw-placement-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy.toml");
        std::fs::write(&path, "old").unwrap();
        write_atomically(&path, "new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(Result::ok).collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
