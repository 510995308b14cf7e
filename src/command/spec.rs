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

use super::Command;

/// Defines [`GENERIC_ARGUMENTS`] and [`is_generic_argument`] from one list, so the two cannot disagree.
macro_rules! generic_arguments {
    ($($name:literal),* $(,)?) => {
        /// Generic arguments a client may send with any forwarded command (generic_argument.idl, the ones
        /// drivers send). Internal ones (`$audit`, `$client`, `shardVersion`, `$tenant`, `rawData`, ...) are
        /// absent, so refused.
        pub const GENERIC_ARGUMENTS: &[&str] = &[$(
            match std::str::from_utf8($name) {
                Ok(name) => name,
                Err(_) => panic!("generic argument names are UTF-8"),
            }
        ),*];

        /// Whether `key` is one of [`GENERIC_ARGUMENTS`]: a `match`, decided by the key's length and bytes at
        /// once, for the argument check every command passes (most carry several: `$db`, `lsid`, `$clusterTime`).
        pub fn is_generic_argument(key: &[u8]) -> bool {
            matches!(key, $($name)|*)
        }
    };
}

generic_arguments![
    b"$db",
    b"apiVersion",
    b"apiStrict",
    b"apiDeprecationErrors",
    b"maxTimeMS",
    b"readConcern",
    b"writeConcern",
    b"lsid",
    b"txnNumber",
    b"autocommit",
    b"startTransaction",
    b"comment",
    b"$readPreference",
    b"$clusterTime",
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
