//! The command model: a command's name mapped to a typed value, once, at the edge.
//!
//! Everything downstream matches on [`Command`], never on strings. Names the proxy does not know become
//! [`Command::Unknown`], which every later stage denies. [`spec`] is the command surface: every argument each
//! known command accepts.

pub mod spec;

pub use spec::CommandSpec;

/// A MongoDB command the proxy knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    // Handshake and diagnostics that reveal nothing about data.
    Hello,
    /// `isMaster` / `ismaster`: answered with `ismaster` instead of `isWritablePrimary`.
    LegacyHello,
    Ping,
    BuildInfo,
    // Authentication.
    SaslStart,
    SaslContinue,
    Logout,
    // CRUD and cursors.
    Find,
    Insert,
    Update,
    Delete,
    FindAndModify,
    Aggregate,
    Count,
    Distinct,
    GetMore,
    KillCursors,
    BulkWrite,
    Explain,
    // Sessions and transactions.
    EndSessions,
    CommitTransaction,
    AbortTransaction,
    // Catalog and DDL.
    Create,
    Drop,
    DropDatabase,
    CreateIndexes,
    DropIndexes,
    ListIndexes,
    ListCollections,
    ListDatabases,
    CollMod,
    RenameCollection,
    // Tools (mongosh, Compass).
    /// Storage statistics of the tenant's own database.
    DbStats,
    /// Storage statistics of the tenant's own collection.
    CollStats,
    /// The connection's user, answered by the proxy.
    ConnectionStatus,
    /// The client's address as the server sees it, answered by the proxy.
    WhatsMyUri,
    /// The proxy's own command surface.
    ListCommands,
    /// Known to MongoDB and refused by tenantwall whatever the policy: server-side JavaScript, cluster
    /// administration, diagnostics that show other clients' operations, and writes to arbitrary namespaces.
    Forbidden(&'static str),
    /// Not known to tenantwall: denied.
    Unknown,
}

/// Commands that are refused outright (ATTACKS.md: JavaScript, diagnostics, cross-namespace writes).
const FORBIDDEN: &[&str] = &[
    "mapReduce",
    "mapreduce",
    "$eval",
    "eval",
    "applyOps",
    "cloneCollectionAsCapped",
    "convertToCapped",
    "currentOp",
    "killOp",
    "killSessions",
    "killAllSessions",
    "killAllSessionsByPattern",
    "serverStatus",
    "top",
    "getLog",
    "hostInfo",
    "getCmdLineOpts",
    "dataSize",
    "validate",
    "compact",
    "shutdown",
    "fsync",
    "fsyncUnlock",
    "setParameter",
    "getParameter",
    "createUser",
    "updateUser",
    "dropUser",
    "dropAllUsersFromDatabase",
    "grantRolesToUser",
    "revokeRolesFromUser",
    "createRole",
    "updateRole",
    "dropRole",
    "usersInfo",
    "rolesInfo",
    "authenticate",
    "getnonce",
    "replSetGetStatus",
    "replSetGetConfig",
    "replSetReconfig",
    "replSetStepDown",
    "startSession",
    "refreshSessions",
    "profile",
    "planCacheClear",
    "planCacheClearFilters",
    "planCacheListFilters",
    "planCacheSetFilter",
    "reIndex",
    "enableSharding",
    "shardCollection",
    "addShard",
    "removeShard",
    "balancerStart",
    "balancerStop",
    "flushRouterConfig",
    "setFeatureCompatibilityVersion",
    "logRotate",
    "lockInfo",
];

impl Command {
    /// Classifies a command by its name (the body's first key). Names are case-sensitive, as on the server;
    /// only the historical `ismaster` spelling is folded.
    pub fn from_name(name: &str) -> Self {
        match name {
            "hello" => Self::Hello,
            "isMaster" | "ismaster" => Self::LegacyHello,
            "ping" => Self::Ping,
            "buildInfo" | "buildinfo" => Self::BuildInfo,
            "saslStart" => Self::SaslStart,
            "saslContinue" => Self::SaslContinue,
            "logout" => Self::Logout,
            "find" => Self::Find,
            "insert" => Self::Insert,
            "update" => Self::Update,
            "delete" => Self::Delete,
            "findAndModify" | "findandmodify" => Self::FindAndModify,
            "aggregate" => Self::Aggregate,
            "count" => Self::Count,
            "distinct" => Self::Distinct,
            "getMore" => Self::GetMore,
            "killCursors" => Self::KillCursors,
            "bulkWrite" => Self::BulkWrite,
            "explain" => Self::Explain,
            "endSessions" => Self::EndSessions,
            "commitTransaction" => Self::CommitTransaction,
            "abortTransaction" => Self::AbortTransaction,
            "create" => Self::Create,
            "drop" => Self::Drop,
            "dropDatabase" => Self::DropDatabase,
            "createIndexes" => Self::CreateIndexes,
            "dropIndexes" | "deleteIndexes" => Self::DropIndexes,
            "listIndexes" => Self::ListIndexes,
            "listCollections" => Self::ListCollections,
            "listDatabases" => Self::ListDatabases,
            "collMod" => Self::CollMod,
            "renameCollection" => Self::RenameCollection,
            "dbStats" | "dbstats" => Self::DbStats,
            "collStats" | "collstats" => Self::CollStats,
            "connectionStatus" => Self::ConnectionStatus,
            "whatsmyuri" => Self::WhatsMyUri,
            "listCommands" => Self::ListCommands,
            other => match FORBIDDEN.iter().find(|f| **f == other) {
                Some(name) => Self::Forbidden(name),
                None => Self::Unknown,
            },
        }
    }

    /// Handshake commands the proxy answers itself.
    pub fn is_hello(self) -> bool {
        matches!(self, Self::Hello | Self::LegacyHello)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_known_forbidden_and_unknown() {
        assert_eq!(Command::from_name("find"), Command::Find);
        assert_eq!(Command::from_name("ismaster"), Command::LegacyHello);
        assert_eq!(Command::from_name("mapReduce"), Command::Forbidden("mapReduce"));
        assert_eq!(Command::from_name("Find"), Command::Unknown);
        assert_eq!(Command::from_name("frobnicate"), Command::Unknown);
        assert_eq!(Command::from_name(""), Command::Unknown);
    }
}
