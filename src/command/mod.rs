//! The command model: a command's name mapped to a typed value, once, at the edge.
//!
//! Everything downstream matches on [`Command`], never on strings. Names the proxy does not know become
//! [`Command::Unknown`], which every later stage denies. [`spec`] is the command surface: every argument each
//! known command accepts.

use tenantwall_protocol::OpMsg;

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
        Self::from_key(name.as_bytes())
    }

    /// Classifies a received command by the first key of its body, read as bytes: no name the server knows is
    /// anything but ASCII, so a key that is not valid UTF-8 is simply unknown, as [`Self::from_name`] of the
    /// empty name that such a key reads as elsewhere.
    pub fn of(msg: &OpMsg) -> Self {
        msg.body_fields().first().map_or(Self::Unknown, |first| Self::from_key(first.key))
    }

    /// [`Self::from_name`] of a name's bytes.
    fn from_key(name: &[u8]) -> Self {
        match name {
            b"hello" => Self::Hello,
            b"isMaster" | b"ismaster" => Self::LegacyHello,
            b"ping" => Self::Ping,
            b"buildInfo" | b"buildinfo" => Self::BuildInfo,
            b"saslStart" => Self::SaslStart,
            b"saslContinue" => Self::SaslContinue,
            b"logout" => Self::Logout,
            b"find" => Self::Find,
            b"insert" => Self::Insert,
            b"update" => Self::Update,
            b"delete" => Self::Delete,
            b"findAndModify" | b"findandmodify" => Self::FindAndModify,
            b"aggregate" => Self::Aggregate,
            b"count" => Self::Count,
            b"distinct" => Self::Distinct,
            b"getMore" => Self::GetMore,
            b"killCursors" => Self::KillCursors,
            b"bulkWrite" => Self::BulkWrite,
            b"explain" => Self::Explain,
            b"endSessions" => Self::EndSessions,
            b"commitTransaction" => Self::CommitTransaction,
            b"abortTransaction" => Self::AbortTransaction,
            b"create" => Self::Create,
            b"drop" => Self::Drop,
            b"dropDatabase" => Self::DropDatabase,
            b"createIndexes" => Self::CreateIndexes,
            b"dropIndexes" | b"deleteIndexes" => Self::DropIndexes,
            b"listIndexes" => Self::ListIndexes,
            b"listCollections" => Self::ListCollections,
            b"listDatabases" => Self::ListDatabases,
            b"collMod" => Self::CollMod,
            b"renameCollection" => Self::RenameCollection,
            b"dbStats" | b"dbstats" => Self::DbStats,
            b"collStats" | b"collstats" => Self::CollStats,
            b"connectionStatus" => Self::ConnectionStatus,
            b"whatsmyuri" => Self::WhatsMyUri,
            b"listCommands" => Self::ListCommands,
            other => match FORBIDDEN.iter().find(|f| f.as_bytes() == other) {
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

    /// A received command is classified by its first key's bytes as by its name: every name, near misses,
    /// a key that is not UTF-8, and an empty body.
    #[test]
    fn a_message_is_classified_as_its_name_is() {
        use bson::raw::{CString, RawDocumentBuf};
        use tenantwall_protocol::{MsgFlags, OpMsg};
        let names = super::FORBIDDEN.iter().copied().chain([
            "hello",
            "isMaster",
            "ismaster",
            "ping",
            "buildInfo",
            "buildinfo",
            "saslStart",
            "saslContinue",
            "logout",
            "find",
            "insert",
            "update",
            "delete",
            "findAndModify",
            "findandmodify",
            "aggregate",
            "count",
            "distinct",
            "getMore",
            "killCursors",
            "bulkWrite",
            "explain",
            "endSessions",
            "commitTransaction",
            "abortTransaction",
            "create",
            "drop",
            "dropDatabase",
            "createIndexes",
            "dropIndexes",
            "deleteIndexes",
            "listIndexes",
            "listCollections",
            "listDatabases",
            "collMod",
            "renameCollection",
            "dbStats",
            "dbstats",
            "collStats",
            "collstats",
            "connectionStatus",
            "whatsmyuri",
            "listCommands",
            "Find",
            "finds",
            "fin",
            "",
            "é",
        ]);
        for name in names {
            let mut body = RawDocumentBuf::new();
            body.append(CString::try_from(name).unwrap(), 1);
            body.append(bson::cstr!("$db"), "app");
            let msg = OpMsg::new(MsgFlags::default(), body);
            assert_eq!(Command::of(&msg), Command::from_name(name), "{name}");
        }
        // Not UTF-8: no name matches.
        let mut bytes = vec![0u8; 4];
        bytes.extend_from_slice(&[0x10, b'f', 0xff, b'n', b'd', 0, 1, 0, 0, 0, 0]);
        let len = bytes.len() as i32;
        bytes[..4].copy_from_slice(&len.to_le_bytes());
        let body = RawDocumentBuf::from_bytes(bytes).unwrap();
        assert_eq!(Command::of(&OpMsg::new(MsgFlags::default(), body)), Command::Unknown);
        assert_eq!(Command::of(&OpMsg::new(MsgFlags::default(), RawDocumentBuf::new())), Command::Unknown);
    }
}
