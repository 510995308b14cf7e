//! Namespace patterns, name templates, and the rule table lookup.
//!
//! Names are compared byte for byte: no case folding, no Unicode normalisation, so a look-alike name is simply
//! another name and falls to the default deny.

use crate::config::Mode;

/// A database or collection name pattern: exact, or a glob where `*` matches any run of characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    /// The pattern has no `*`: a name matches it only by being equal to it.
    exact: bool,
}

/// Characters MongoDB forbids in database names (besides NUL), minus `*` which is our glob.
const BAD_DB_CHARS: &[char] = &['/', '\\', '.', ' ', '"', '$', '<', '>', ':', '|', '?'];

impl Pattern {
    /// Parses a pattern; `collection` selects collection-name rules instead of database-name rules.
    pub fn parse(text: &str, collection: bool) -> Result<Self, String> {
        if text.is_empty() {
            return Err("must not be empty".into());
        }
        if text.contains('\0') {
            return Err("must not contain NUL".into());
        }
        if collection {
            if text.contains('$') {
                return Err(format!("{text:?}: collection names cannot contain '$'"));
            }
            if text.starts_with("system.") {
                return Err(format!("{text:?}: system collections are never reachable"));
            }
        } else {
            if let Some(bad) = text.chars().find(|c| BAD_DB_CHARS.contains(c)) {
                return Err(format!("{text:?}: database names cannot contain {bad:?}"));
            }
            if text.len() > 63 {
                return Err(format!("{text:?}: database names are at most 63 bytes"));
            }
        }
        Ok(Self { text: text.to_owned(), exact: !text.contains('*') })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `name` matches, byte for byte.
    pub fn matches(&self, name: &str) -> bool {
        // Most rules name their namespaces exactly: one comparison, no glob walk.
        if self.exact {
            return self.text == name;
        }
        glob_match(self.text.as_bytes(), name.as_bytes())
    }

    /// Whether some name could match both patterns (exact for patterns with at most one `*` each, conservative
    /// otherwise). Used to warn about rules that shadow each other.
    pub fn overlaps(&self, other: &Pattern) -> bool {
        let (a, b) = (self.text.as_str(), other.text.as_str());
        match (a.contains('*'), b.contains('*')) {
            (false, false) => a == b,
            (true, false) => self.matches(b),
            (false, true) => other.matches(a),
            (true, true) => {
                let prefix = |s: &str| s.split('*').next().unwrap_or_default().to_owned();
                let suffix = |s: &str| s.rsplit('*').next().unwrap_or_default().to_owned();
                let (pa, pb, sa, sb) = (prefix(a), prefix(b), suffix(a), suffix(b));
                (pa.starts_with(&pb) || pb.starts_with(&pa)) && (sa.ends_with(&sb) || sb.ends_with(&sa))
            }
        }
    }
}

/// Iterative glob match with `*` only (no backtracking blow-up).
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while n < name.len() {
        if p < pattern.len() && pattern[p] != b'*' && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            mark = n;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            n = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

/// One piece of a name template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Tenant,
    Name,
}

/// A name template such as `{tenant}__{collection}` or `{tenant}_{db}`, parsed once into its pieces so that
/// rendering is a single pass (a placeholder's replacement is never read again as a placeholder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

impl Template {
    /// Parses and checks a template for `mode`. `{tenant}` must be followed by a character tenant ids cannot
    /// contain, so one tenant's names can never be read as another's (`acme` vs `acme-corp`).
    pub fn parse(text: &str, mode: Mode) -> Result<Self, String> {
        let name = match mode {
            Mode::Collection => "{collection}",
            Mode::Database => "{db}",
            _ => return Err("templates apply only to collection and database modes".into()),
        };
        if text.matches(name).count() != 1 {
            return Err(format!("must contain {name} exactly once"));
        }
        let tenants = text.matches("{tenant}").count();
        if mode == Mode::Collection && tenants != 1 {
            return Err("must contain {tenant} exactly once".into());
        }
        if tenants > 1 {
            return Err("must contain {tenant} at most once".into());
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let next = [("{tenant}", Part::Tenant), (name, Part::Name)]
                .into_iter()
                .filter_map(|(p, part)| rest.find(p).map(|at| (at, p.len(), part)))
                .min_by_key(|(at, _, _)| *at);
            match next {
                Some((at, len, part)) => {
                    if at > 0 {
                        parts.push(Part::Literal(rest[..at].to_owned()));
                    }
                    parts.push(part);
                    rest = &rest[at + len..];
                }
                None => {
                    parts.push(Part::Literal(rest.to_owned()));
                    rest = "";
                }
            }
        }
        let literals: String =
            parts.iter().filter_map(|p| if let Part::Literal(l) = p { Some(l.as_str()) } else { None }).collect();
        if literals.contains(['{', '}']) {
            return Err(format!("only {{tenant}} and {name} are placeholders"));
        }
        if let Some(at) = parts.iter().position(|p| *p == Part::Tenant) {
            let bounded = |p: Option<&Part>| match p {
                None => true,
                Some(Part::Literal(l)) => !l.bytes().next_back().is_some_and(is_tenant_char),
                Some(_) => false,
            };
            let bounded_after = match parts.get(at + 1) {
                None => true,
                Some(Part::Literal(l)) => !l.bytes().next().is_some_and(is_tenant_char),
                Some(_) => false,
            };
            if !bounded(at.checked_sub(1).and_then(|i| parts.get(i))) || !bounded_after {
                return Err(
                    "{tenant} must be separated from the name by a character tenant ids cannot contain, e.g. '_'"
                        .into(),
                );
            }
        }
        if mode == Mode::Database && literals.chars().any(|c| BAD_DB_CHARS.contains(&c)) {
            return Err("database templates cannot contain characters invalid in database names".into());
        }
        Ok(Self { text: text.to_owned(), parts })
    }

    /// The real name for `name` as tenant `tenant` sees it.
    pub fn render(&self, tenant: &str, name: &str) -> String {
        let mut out = String::with_capacity(self.text.len() + tenant.len() + name.len());
        for part in &self.parts {
            out.push_str(match part {
                Part::Literal(l) => l,
                Part::Tenant => tenant,
                Part::Name => name,
            });
        }
        out
    }

    /// `(tenant, name)` when `real` has this template's shape: a tenant id (a maximal run of tenant-id
    /// characters, which the separators guarantee) and a non-empty name. `tenant` is empty for templates
    /// without `{tenant}`.
    pub fn split<'r>(&self, real: &'r str) -> Option<(&'r str, &'r str)> {
        let mut tenant = "";
        let mut name = "";
        matches(&self.parts, real, &mut tenant, &mut name).then_some((tenant, name))
    }

    /// The visible name whose real name under tenant `tenant` is `real`, if `real` is one of the tenant's.
    pub fn unrender(&self, tenant: &str, real: &str) -> Option<String> {
        let (owner, name) = self.split(real)?;
        (owner == tenant || !self.has_tenant()).then(|| name.to_owned())
    }

    /// Whether names differ per tenant.
    pub fn has_tenant(&self) -> bool {
        self.parts.contains(&Part::Tenant)
    }

    /// Whether the template keeps names unchanged (a tenant's own backend, same names).
    pub fn is_identity(&self) -> bool {
        self.parts == [Part::Name]
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

fn matches<'r>(parts: &[Part], s: &'r str, tenant: &mut &'r str, name: &mut &'r str) -> bool {
    match parts.split_first() {
        None => s.is_empty(),
        Some((Part::Literal(l), rest)) => s.strip_prefix(l.as_str()).is_some_and(|r| matches(rest, r, tenant, name)),
        Some((Part::Tenant, rest)) => {
            let len = s.bytes().take_while(|b| is_tenant_char(*b)).count();
            if len == 0 {
                return false;
            }
            *tenant = &s[..len];
            matches(rest, &s[len..], tenant, name)
        }
        Some((Part::Name, rest)) => {
            // Longest name first; a name holds at most a few hundred bytes, and a template one name placeholder.
            for end in (1..=s.len()).rev().filter(|e| s.is_char_boundary(*e)) {
                if matches(rest, &s[end..], tenant, name) {
                    *name = &s[..end];
                    return true;
                }
            }
            false
        }
    }
}

fn is_tenant_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_byte_for_byte() {
        let p = Pattern::parse("orders_*", true).unwrap();
        assert!(p.matches("orders_2024"));
        assert!(p.matches("orders_"));
        assert!(!p.matches("Orders_2024"));
        assert!(!p.matches("orders"));
        let any = Pattern::parse("*", true).unwrap();
        assert!(any.matches("x") && any.matches(""));
        assert!(Pattern::parse("a*b*c", true).unwrap().matches("aXbYbZc"));
        assert!(!Pattern::parse("a*b*c", true).unwrap().matches("aXbYbZ"));
        // Cyrillic І is not Latin I.
        assert!(!Pattern::parse("tenantId", true).unwrap().matches("tenant\u{0406}d"));
    }

    #[test]
    fn exact_patterns_match_as_the_glob_walk_does() {
        let names = ["orders", "Orders", "orders ", "order", "ordersx", "", "ordérs", "orders\u{0}"];
        for pattern in ["orders", "ordérs", "o", "order"] {
            let p = Pattern::parse(pattern, true).unwrap();
            for name in names {
                assert_eq!(p.matches(name), glob_match(pattern.as_bytes(), name.as_bytes()), "{pattern} {name:?}");
            }
        }
    }

    #[test]
    fn rejects_unsafe_names() {
        assert!(Pattern::parse("system.views", true).is_err());
        assert!(Pattern::parse("a$b", true).is_err());
        assert!(Pattern::parse("a.b", false).is_err());
        assert!(Pattern::parse("", false).is_err());
        assert!(Pattern::parse("fs.files", true).is_ok());
    }

    #[test]
    fn overlap_detection() {
        let p = |s| Pattern::parse(s, true).unwrap();
        assert!(p("*").overlaps(&p("orders")));
        assert!(p("ord*").overlaps(&p("or*")));
        assert!(!p("a*").overlaps(&p("b*")));
        assert!(!p("orders").overlaps(&p("invoices")));
    }

    #[test]
    fn templates_keep_tenants_apart() {
        let t = Template::parse("{tenant}__{collection}", Mode::Collection).unwrap();
        assert_eq!(t.render("acme", "orders"), "acme__orders");
        assert!(Template::parse("{tenant}-{collection}", Mode::Collection).is_err());
        assert!(Template::parse("{tenant}{collection}", Mode::Collection).is_err());
        assert!(Template::parse("x{tenant}_{collection}", Mode::Collection).is_err());
        assert!(Template::parse("{collection}", Mode::Collection).is_err());
        assert!(Template::parse("{tenant}_{db}", Mode::Database).is_ok());
        assert!(Template::parse("{db}", Mode::Database).unwrap().is_identity());
        assert!(Template::parse("{tenant}_{db}_{x}", Mode::Database).is_err());
        assert!(Template::parse("{tenant}.{db}", Mode::Database).is_err());
        assert_eq!(t.unrender("acme", "acme__orders").as_deref(), Some("orders"));
        assert_eq!(t.unrender("acme", "acme-corp__orders"), None);
        assert_eq!(t.unrender("acme-corp", "acme__orders"), None);
        assert_eq!(t.unrender("acme", "orders"), None);
        let d = Template::parse("{tenant}_{db}", Mode::Database).unwrap();
        assert_eq!(d.unrender("acme", "acme_app").as_deref(), Some("app"));
        assert_eq!(d.unrender("acme", "acme-corp_app"), None);
    }

    #[test]
    fn rendering_is_one_pass() {
        // A name that looks like a placeholder is not expanded again.
        let t = Template::parse("inv{db}x", Mode::Database).unwrap();
        assert_eq!(t.render("acme", "{tenant}"), "inv{tenant}x");
        let t = Template::parse("{tenant}__{collection}", Mode::Collection).unwrap();
        assert_eq!(t.render("acme", "{collection}"), "acme__{collection}");
        assert_eq!(t.unrender("acme", "acme__{collection}").as_deref(), Some("{collection}"));
        let suffix = Template::parse("{db}_{tenant}", Mode::Database).unwrap();
        assert_eq!(suffix.render("acme", "my_app"), "my_app_acme");
        assert_eq!(suffix.split("my_app_acme"), Some(("acme", "my_app")));
        assert_eq!(suffix.unrender("acme", "my_app_acme").as_deref(), Some("my_app"));
    }

    #[test]
    fn split_finds_the_tenant_of_a_real_name() {
        let t = Template::parse("{tenant}__{collection}", Mode::Collection).unwrap();
        assert_eq!(t.split("globex__invoices"), Some(("globex", "invoices")));
        assert_eq!(t.split("acme-corp__a__b"), Some(("acme-corp", "a__b")));
        assert_eq!(t.split("invoices"), None);
        assert_eq!(t.split("__invoices"), None);
        assert_eq!(t.split("acme__"), None);
    }
}
