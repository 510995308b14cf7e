//! The command surface: for every command the proxy knows, what it is and every argument it accepts.
//!
//! This table is the proxy's contract with the server. mongod's parsers take the last of duplicate fields and
//! act on arguments the proxy might not look at (`rawData`, internal fields, options added in a later
//! version); a proxy that forwarded what it did not list would understand a command differently from the server.
//! So an argument, a document sequence or a nested statement field that is not listed here is refused with the
//! field named, before any rewriting runs. [`Command::spec`] is an exhaustive match: a new command cannot be added
//! without a spec, and [`render_markdown`] prints the table into the policy reference for security reviewers.
//!
//! What it must never do: accept "anything else" for a forwarded command. Commands the proxy answers itself
//! ([`Handling::Local`]) never reach a backend, so their arguments are read only by the proxy's own handlers.

use tenantwall_protocol::fields::word_of;

use super::Command;

/// Generic arguments a client may send with any forwarded command (generic_argument.idl, the ones drivers send).
/// Internal ones (`$audit`, `$client`, `shardVersion`, `$tenant`, `rawData`, ...) are absent, so refused. Every
/// command's [`Accepted`] table holds them.
pub const GENERIC_ARGUMENTS: &[&str] = &[
    "$db",
    "apiVersion",
    "apiStrict",
    "apiDeprecationErrors",
    "maxTimeMS",
    "readConcern",
    "writeConcern",
    "lsid",
    "txnNumber",
    "autocommit",
    "startTransaction",
    "comment",
    "$readPreference",
    "$clusterTime",
];

/// How the proxy handles a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// Answered by the proxy itself, before and after authentication; never forwarded.
    Local,
    /// Forwarded (rewritten) after authentication only.
    Forwarded,
    /// Answered locally before authentication (nothing to act on yet), forwarded after.
    LocalUntilAuthenticated,
    /// Answered by the proxy itself, after authentication only; never forwarded.
    LocalAfterAuthentication,
}

/// Which database a command may run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    /// Any: the proxy answers it.
    Any,
    /// `admin` only (cluster-level commands whose namespaces are in their arguments).
    Admin,
    /// A database some rule opens to the tenant.
    Tenant,
}

/// The rewrite family, which decides the engine module that handles the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Handshake,
    Auth,
    /// One filter: find, count, distinct.
    Read,
    Aggregate,
    /// insert, update, delete, findAndModify.
    Write,
    Bulk,
    Cursor,
    Session,
    Catalog,
    Ddl,
    Explain,
    /// dbStats, collStats: the tenant's own namespaces only, backend details removed from the reply.
    Stats,
    /// Answered by the proxy from what the connection knows.
    Tool,
}

/// The fields one element of a statement array may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statement {
    /// Every element is a document with only these fields.
    Fields(&'static [&'static str]),
    /// bulkWrite `ops`: the first field names the kind, which decides the rest.
    BulkOp,
}

/// Everything the proxy knows about one command.
#[derive(Debug, Clone, Copy)]
pub struct CommandSpec {
    /// The canonical name (the spelling drivers send).
    pub name: &'static str,
    pub handling: Handling,
    pub database: Database,
    pub family: Family,
    /// The tenant's `max_time_ms` and `allow_disk_use` apply.
    pub limited: bool,
    /// May be the inner command of `explain`.
    pub explainable: bool,
    /// Arguments besides the command's own first field and the generic arguments.
    pub arguments: &'static [&'static str],
    /// Document sequences (OP_MSG kind 1) the command takes; each stands for the array argument of that name.
    pub sequences: &'static [&'static str],
    /// Array arguments whose elements are statements with fields of their own.
    pub statements: &'static [(&'static str, Statement)],
    /// `arguments` and [`GENERIC_ARGUMENTS`], hashed for the argument check.
    pub accepted: Accepted,
}

/// Names one table holds at most: a command's own arguments and the generic ones (a command with more is a
/// compile error, see [`Accepted::new`]).
const ACCEPTED_MAX: usize = 40;
/// Slots of a table's hash: a power of two, over three times [`ACCEPTED_MAX`], so that probes stay short and
/// always reach an empty slot.
const ACCEPTED_SLOTS: usize = 128;

/// The top-level names a command accepts besides its first field (its own arguments and the generic ones),
/// hashed into a table when the proxy is compiled, so that the argument check every command passes looks each
/// key up once instead of comparing it with each name in turn.
///
/// A key is hashed by its length and first eight bytes, and found only when a name has the same length and the
/// same bytes, all of them: the table answers exactly whether the key is one of the names, never "close".
#[derive(Clone, Copy)]
pub struct Accepted {
    /// The names, each with its first eight bytes as a little-endian word (zero-padded): most names are
    /// compared by that word and their length alone, the longer ones by their remaining bytes too.
    names: [(u64, &'static str); ACCEPTED_MAX],
    /// For each slot, 1 + the place in `names` of a name hashed there or probed on to it, 0 for none.
    slots: [u8; ACCEPTED_SLOTS],
}

/// [`word_of`] for a key read at run time: one 8-byte load for a key of eight bytes or more, two 4-byte loads
/// for one of four to seven (they overlap, with the same bytes where they do), byte by byte below four.
#[inline(always)]
fn key_word(key: &[u8]) -> u64 {
    if let Some(first) = key.first_chunk::<8>() {
        return u64::from_le_bytes(*first);
    }
    match (key.first_chunk::<4>(), key.last_chunk::<4>()) {
        (Some(low), Some(high)) => {
            u64::from(u32::from_le_bytes(*low)) | u64::from(u32::from_le_bytes(*high)) << (8 * (key.len() - 4))
        }
        _ => word_of(key),
    }
}

/// The slot a name of `len` bytes starting with `word` is hashed to.
const fn accepted_slot(word: u64, len: usize) -> usize {
    ((word ^ (len as u64).rotate_right(8)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 57) as usize
}

const _: () = assert!(ACCEPTED_SLOTS == 1 << 7 && ACCEPTED_SLOTS > 3 * ACCEPTED_MAX && ACCEPTED_MAX < u8::MAX as usize);

impl Accepted {
    /// `arguments` and the generic arguments. Evaluated when compiled: a repeated name, or more than
    /// [`ACCEPTED_MAX`], stops the build.
    const fn new(arguments: &[&'static str]) -> Self {
        let mut table = Self { names: [(0, ""); ACCEPTED_MAX], slots: [0; ACCEPTED_SLOTS] };
        let mut n = 0;
        while n < arguments.len() + GENERIC_ARGUMENTS.len() {
            let name = if n < arguments.len() { arguments[n] } else { GENERIC_ARGUMENTS[n - arguments.len()] };
            assert!(n < ACCEPTED_MAX, "a command accepts more names than Accepted holds");
            let word = word_of(name.as_bytes());
            let mut slot = accepted_slot(word, name.len());
            while table.slots[slot] != 0 {
                let (other_word, other) = table.names[table.slots[slot] as usize - 1];
                assert!(
                    !(other_word == word && other.len() == name.len() && tail_eq(other.as_bytes(), name.as_bytes())),
                    "a name is listed twice"
                );
                slot = (slot + 1) % ACCEPTED_SLOTS;
            }
            table.names[n] = (word, name);
            table.slots[slot] = (n + 1) as u8;
            n += 1;
        }
        table
    }

    /// Whether `key` is one of the names.
    #[inline]
    pub fn contains(&self, key: &[u8]) -> bool {
        let word = key_word(key);
        let mut slot = accepted_slot(word, key.len());
        // Ends: at most ACCEPTED_MAX slots are taken, so an empty one is always ahead.
        loop {
            let Some((held_word, name)) = self.names.get(usize::from(self.slots[slot]).wrapping_sub(1)) else {
                return false;
            };
            if *held_word == word && name.len() == key.len() && (key.len() <= 8 || name.as_bytes()[8..] == key[8..]) {
                return true;
            }
            slot = (slot + 1) % ACCEPTED_SLOTS;
        }
    }
}

/// Whether two names of the same length and the same first eight bytes are the same (when compiled).
const fn tail_eq(a: &[u8], b: &[u8]) -> bool {
    let mut i = 8;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.names.iter().map(|(_, name)| name).filter(|name| !name.is_empty())).finish()
    }
}

/// Fields of one `update.updates[]` statement.
pub const UPDATE_STATEMENT: &[&str] = &["q", "u", "c", "upsert", "multi", "collation", "arrayFilters", "hint", "sort"];
/// Fields of one `delete.deletes[]` statement.
pub const DELETE_STATEMENT: &[&str] = &["q", "limit", "collation", "hint"];
/// Fields of one `createIndexes.indexes[]` index specification.
pub const INDEX_SPEC: &[&str] = &[
    "key",
    "name",
    "v",
    "background",
    "unique",
    "prepareUnique",
    "partialFilterExpression",
    "sparse",
    "expireAfterSeconds",
    "hidden",
    "collation",
    "weights",
    "default_language",
    "language_override",
    "textIndexVersion",
    "2dsphereIndexVersion",
    "bits",
    "min",
    "max",
    "coarsestIndexedLevel",
    "finestIndexedLevel",
    "wildcardProjection",
];
/// Fields of one `bulkWrite.nsInfo[]` entry.
pub const NS_INFO: &[&str] = &["ns"];
/// bulkWrite insert op fields (the first is the kind, holding the nsInfo index).
pub const BULK_INSERT: &[&str] = &["insert", "document"];
/// bulkWrite update op fields.
pub const BULK_UPDATE: &[&str] =
    &["update", "filter", "updateMods", "upsert", "multi", "arrayFilters", "hint", "collation", "constants", "sort"];
/// bulkWrite delete op fields.
pub const BULK_DELETE: &[&str] = &["delete", "filter", "multi", "hint", "collation"];

const fn local(name: &'static str, family: Family) -> CommandSpec {
    CommandSpec {
        name,
        handling: Handling::Local,
        database: Database::Any,
        family,
        limited: false,
        explainable: false,
        arguments: &[],
        sequences: &[],
        statements: &[],
        accepted: Accepted::new(&[]),
    }
}

const fn forwarded(name: &'static str, family: Family, arguments: &'static [&'static str]) -> CommandSpec {
    CommandSpec {
        name,
        handling: Handling::Forwarded,
        database: Database::Tenant,
        family,
        limited: false,
        explainable: false,
        arguments,
        sequences: &[],
        statements: &[],
        accepted: Accepted::new(arguments),
    }
}

const HELLO: CommandSpec = local("hello", Family::Handshake);
const LEGACY_HELLO: CommandSpec = local("isMaster", Family::Handshake);
const PING: CommandSpec = local("ping", Family::Handshake);
const BUILD_INFO: CommandSpec = local("buildInfo", Family::Handshake);
const SASL_START: CommandSpec = local("saslStart", Family::Auth);
const SASL_CONTINUE: CommandSpec = local("saslContinue", Family::Auth);
const LOGOUT: CommandSpec = local("logout", Family::Auth);

const FIND: CommandSpec = CommandSpec {
    limited: true,
    explainable: true,
    ..forwarded(
        "find",
        Family::Read,
        &[
            "filter",
            "sort",
            "projection",
            "hint",
            "skip",
            "limit",
            "batchSize",
            "singleBatch",
            "max",
            "min",
            "returnKey",
            "showRecordId",
            "tailable",
            "noCursorTimeout",
            "awaitData",
            "allowPartialResults",
            "collation",
            "allowDiskUse",
            "let",
        ],
    )
};
const COUNT: CommandSpec = CommandSpec {
    limited: true,
    explainable: true,
    ..forwarded("count", Family::Read, &["query", "limit", "skip", "hint", "collation"])
};
const DISTINCT: CommandSpec = CommandSpec {
    limited: true,
    explainable: true,
    ..forwarded("distinct", Family::Read, &["key", "query", "collation", "hint"])
};
const AGGREGATE: CommandSpec = CommandSpec {
    limited: true,
    explainable: true,
    ..forwarded(
        "aggregate",
        Family::Aggregate,
        &["pipeline", "cursor", "explain", "allowDiskUse", "bypassDocumentValidation", "collation", "hint", "let"],
    )
};
const INSERT: CommandSpec = CommandSpec {
    limited: true,
    sequences: &["documents"],
    ..forwarded("insert", Family::Write, &["documents", "ordered", "bypassDocumentValidation"])
};
const UPDATE: CommandSpec = CommandSpec {
    limited: true,
    explainable: true,
    sequences: &["updates"],
    statements: &[("updates", Statement::Fields(UPDATE_STATEMENT))],
    ..forwarded("update", Family::Write, &["updates", "ordered", "bypassDocumentValidation", "let"])
};
const DELETE: CommandSpec = CommandSpec {
    limited: true,
    explainable: true,
    sequences: &["deletes"],
    statements: &[("deletes", Statement::Fields(DELETE_STATEMENT))],
    ..forwarded("delete", Family::Write, &["deletes", "ordered", "let"])
};
const FIND_AND_MODIFY: CommandSpec = CommandSpec {
    limited: true,
    explainable: true,
    ..forwarded(
        "findAndModify",
        Family::Write,
        &[
            "query",
            "sort",
            "remove",
            "update",
            "new",
            "fields",
            "upsert",
            "bypassDocumentValidation",
            "collation",
            "arrayFilters",
            "hint",
            "let",
        ],
    )
};
const GET_MORE: CommandSpec = forwarded("getMore", Family::Cursor, &["collection", "batchSize"]);
const KILL_CURSORS: CommandSpec = forwarded("killCursors", Family::Cursor, &["cursors"]);
const BULK_WRITE: CommandSpec = CommandSpec {
    database: Database::Admin,
    limited: true,
    sequences: &["ops", "nsInfo"],
    statements: &[("ops", Statement::BulkOp), ("nsInfo", Statement::Fields(NS_INFO))],
    ..forwarded(
        "bulkWrite",
        Family::Bulk,
        &["ops", "nsInfo", "ordered", "bypassDocumentValidation", "let", "errorsOnly", "cursor"],
    )
};
const EXPLAIN: CommandSpec = forwarded("explain", Family::Explain, &["verbosity"]);
const END_SESSIONS: CommandSpec = CommandSpec {
    handling: Handling::LocalUntilAuthenticated,
    database: Database::Admin,
    ..forwarded("endSessions", Family::Session, &[])
};
const COMMIT_TRANSACTION: CommandSpec =
    CommandSpec { database: Database::Admin, ..forwarded("commitTransaction", Family::Session, &["recoveryToken"]) };
const ABORT_TRANSACTION: CommandSpec =
    CommandSpec { database: Database::Admin, ..forwarded("abortTransaction", Family::Session, &["recoveryToken"]) };
const CREATE: CommandSpec = forwarded(
    "create",
    Family::Ddl,
    &[
        "capped",
        "size",
        "max",
        "idIndex",
        "validator",
        "validationLevel",
        "validationAction",
        "indexOptionDefaults",
        "viewOn",
        "pipeline",
        "collation",
        "timeseries",
        "clusteredIndex",
        "expireAfterSeconds",
        "changeStreamPreAndPostImages",
    ],
);
const DROP: CommandSpec = forwarded("drop", Family::Ddl, &[]);
const DROP_DATABASE: CommandSpec = forwarded("dropDatabase", Family::Ddl, &[]);
const CREATE_INDEXES: CommandSpec = CommandSpec {
    statements: &[("indexes", Statement::Fields(INDEX_SPEC))],
    ..forwarded("createIndexes", Family::Ddl, &["indexes", "commitQuorum"])
};
const DROP_INDEXES: CommandSpec = forwarded("dropIndexes", Family::Ddl, &["index"]);
const LIST_INDEXES: CommandSpec = forwarded("listIndexes", Family::Catalog, &["cursor"]);
const LIST_COLLECTIONS: CommandSpec =
    forwarded("listCollections", Family::Catalog, &["filter", "nameOnly", "authorizedCollections", "cursor"]);
const LIST_DATABASES: CommandSpec = CommandSpec {
    database: Database::Admin,
    ..forwarded("listDatabases", Family::Catalog, &["filter", "nameOnly", "authorizedDatabases"])
};
const COLL_MOD: CommandSpec = forwarded(
    "collMod",
    Family::Ddl,
    &[
        "validator",
        "validationLevel",
        "validationAction",
        "viewOn",
        "pipeline",
        "index",
        "expireAfterSeconds",
        "changeStreamPreAndPostImages",
        "cappedSize",
        "cappedMax",
        "timeseries",
    ],
);
const DB_STATS: CommandSpec = forwarded("dbStats", Family::Stats, &["scale", "freeStorage"]);
const COLL_STATS: CommandSpec = forwarded("collStats", Family::Stats, &["scale"]);
const CONNECTION_STATUS: CommandSpec =
    CommandSpec { handling: Handling::LocalAfterAuthentication, ..local("connectionStatus", Family::Tool) };
const WHATS_MY_URI: CommandSpec =
    CommandSpec { handling: Handling::LocalAfterAuthentication, ..local("whatsmyuri", Family::Tool) };
const LIST_COMMANDS: CommandSpec =
    CommandSpec { handling: Handling::LocalAfterAuthentication, ..local("listCommands", Family::Tool) };
const RENAME_COLLECTION: CommandSpec =
    CommandSpec { database: Database::Admin, ..forwarded("renameCollection", Family::Ddl, &["to", "dropTarget"]) };

impl Command {
    /// The command's spec; `None` for commands that are refused whatever the policy.
    pub fn spec(self) -> Option<&'static CommandSpec> {
        // No `_` arm: a new command does not compile without a decision here.
        let spec = match self {
            Command::Hello => &HELLO,
            Command::LegacyHello => &LEGACY_HELLO,
            Command::Ping => &PING,
            Command::BuildInfo => &BUILD_INFO,
            Command::SaslStart => &SASL_START,
            Command::SaslContinue => &SASL_CONTINUE,
            Command::Logout => &LOGOUT,
            Command::Find => &FIND,
            Command::Insert => &INSERT,
            Command::Update => &UPDATE,
            Command::Delete => &DELETE,
            Command::FindAndModify => &FIND_AND_MODIFY,
            Command::Aggregate => &AGGREGATE,
            Command::Count => &COUNT,
            Command::Distinct => &DISTINCT,
            Command::GetMore => &GET_MORE,
            Command::KillCursors => &KILL_CURSORS,
            Command::BulkWrite => &BULK_WRITE,
            Command::Explain => &EXPLAIN,
            Command::EndSessions => &END_SESSIONS,
            Command::CommitTransaction => &COMMIT_TRANSACTION,
            Command::AbortTransaction => &ABORT_TRANSACTION,
            Command::Create => &CREATE,
            Command::Drop => &DROP,
            Command::DropDatabase => &DROP_DATABASE,
            Command::CreateIndexes => &CREATE_INDEXES,
            Command::DropIndexes => &DROP_INDEXES,
            Command::ListIndexes => &LIST_INDEXES,
            Command::ListCollections => &LIST_COLLECTIONS,
            Command::ListDatabases => &LIST_DATABASES,
            Command::CollMod => &COLL_MOD,
            Command::RenameCollection => &RENAME_COLLECTION,
            Command::DbStats => &DB_STATS,
            Command::CollStats => &COLL_STATS,
            Command::ConnectionStatus => &CONNECTION_STATUS,
            Command::WhatsMyUri => &WHATS_MY_URI,
            Command::ListCommands => &LIST_COMMANDS,
            Command::Forbidden(_) | Command::Unknown => return None,
        };
        Some(spec)
    }
}

/// Every command with a spec, in the order the reference lists them.
pub const ALL: &[Command] = &[
    Command::Hello,
    Command::LegacyHello,
    Command::Ping,
    Command::BuildInfo,
    Command::SaslStart,
    Command::SaslContinue,
    Command::Logout,
    Command::Find,
    Command::Count,
    Command::Distinct,
    Command::Aggregate,
    Command::Insert,
    Command::Update,
    Command::Delete,
    Command::FindAndModify,
    Command::BulkWrite,
    Command::GetMore,
    Command::KillCursors,
    Command::Explain,
    Command::EndSessions,
    Command::CommitTransaction,
    Command::AbortTransaction,
    Command::ListCollections,
    Command::ListDatabases,
    Command::ListIndexes,
    Command::Create,
    Command::CollMod,
    Command::Drop,
    Command::DropDatabase,
    Command::CreateIndexes,
    Command::DropIndexes,
    Command::RenameCollection,
    Command::DbStats,
    Command::CollStats,
    Command::ConnectionStatus,
    Command::WhatsMyUri,
    Command::ListCommands,
];

fn code_list(items: &[&str]) -> String {
    if items.is_empty() {
        return "—".into();
    }
    items.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ")
}

/// The command surface as the Markdown table in `policies/README.md` (a test keeps the two equal).
pub fn render_markdown() -> String {
    let mut out = String::new();
    out.push_str("| command | handled | database | limits | explain | arguments (besides generic) | sequences |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    for command in ALL {
        let Some(spec) = command.spec() else { continue };
        let handled = match spec.handling {
            Handling::Local => "by the proxy",
            Handling::Forwarded => "forwarded",
            Handling::LocalUntilAuthenticated => "proxy before auth, then forwarded",
            Handling::LocalAfterAuthentication => "by the proxy, after auth",
        };
        let database = match spec.database {
            Database::Any => "any",
            Database::Admin => "admin",
            Database::Tenant => "tenant's",
        };
        let arguments = if matches!(spec.handling, Handling::Local | Handling::LocalAfterAuthentication) {
            "(never forwarded)".into()
        } else {
            code_list(spec.arguments)
        };
        let yes = |b: bool| if b { "yes" } else { "—" };
        out.push_str(&format!(
            "| `{}` | {handled} | {database} | {} | {} | {arguments} | {} |\n",
            spec.name,
            yes(spec.limited),
            yes(spec.explainable),
            code_list(spec.sequences)
        ));
    }
    out.push_str(&format!(
        "\nGeneric arguments accepted on every forwarded command: {}.\n",
        code_list(GENERIC_ARGUMENTS)
    ));
    out.push_str(&format!("\nStatement fields: `updates[]` {}; `deletes[]` {}; `indexes[]` {}; bulkWrite `nsInfo[]` {}, insert ops {}, update ops {}, delete ops {}.\n",
        code_list(UPDATE_STATEMENT), code_list(DELETE_STATEMENT), code_list(INDEX_SPEC), code_list(NS_INFO),
        code_list(BULK_INSERT), code_list(BULK_UPDATE), code_list(BULK_DELETE)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_command_has_a_spec_and_a_name_that_maps_back() {
        for command in ALL {
            let spec = command.spec().expect("listed commands have specs");
            assert_eq!(Command::from_name(spec.name), *command, "{}", spec.name);
            for seq in spec.sequences {
                assert!(spec.arguments.contains(seq), "{}: sequence {seq} is also an argument", spec.name);
            }
            assert!(!spec.arguments.iter().any(|a| GENERIC_ARGUMENTS.contains(a)), "{}", spec.name);
        }
        assert!(Command::Unknown.spec().is_none());
        assert!(Command::from_name("mapReduce").spec().is_none());
    }

    #[test]
    fn each_table_holds_exactly_its_arguments_and_the_generic_ones() {
        // The table's own list, compared as sets with what the spec declares: nothing slipped in, nothing lost.
        let specs = ALL.iter().filter_map(|c| c.spec()).chain([&HELLO, &PING]);
        for spec in specs {
            let mut held: Vec<&str> = spec.accepted.names.iter().map(|(_, n)| *n).filter(|n| !n.is_empty()).collect();
            let mut declared: Vec<&str> = spec.arguments.iter().chain(GENERIC_ARGUMENTS).copied().collect();
            held.sort_unstable();
            declared.sort_unstable();
            assert_eq!(held, declared, "{}", spec.name);
            for (word, name) in spec.accepted.names.iter().filter(|(_, n)| !n.is_empty()) {
                assert_eq!(*word, word_of(name.as_bytes()), "{}: {name}", spec.name);
            }
            // Internal arguments mongod takes from other servers, never from a client: refused by every table.
            for internal in ["rawData", "$tenant", "securityToken", "shardVersion", "$audit", "txnRetryCounter"] {
                assert!(!spec.accepted.contains(internal.as_bytes()), "{}: {internal}", spec.name);
            }
        }
    }

    #[test]
    fn a_key_read_at_run_time_is_worded_as_a_name_is() {
        let bytes: Vec<u8> = (0u8..24).map(|i| i.wrapping_mul(37) ^ 0xA5).collect();
        for len in 0..=bytes.len() {
            assert_eq!(key_word(&bytes[..len]), word_of(&bytes[..len]), "{len}");
        }
    }

    #[test]
    fn internal_arguments_are_not_generic() {
        for internal in ["rawData", "$tenant", "securityToken", "shardVersion", "$audit", "txnRetryCounter"] {
            assert!(!GENERIC_ARGUMENTS.contains(&internal), "{internal}");
        }
    }

    #[test]
    fn the_policy_reference_shows_the_current_surface() {
        let reference = include_str!("../../policies/README.md");
        assert!(
            reference.contains(&render_markdown()),
            "policies/README.md is out of date: run `tenantwall surface` and paste its output into the \
             \"Command surface\" section"
        );
    }
}
