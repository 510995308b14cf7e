//! What mongosh and Compass ask on their first screen: storage statistics of the tenant's own namespaces, and
//! the connection's own facts answered by the proxy.
//!
//! `dbStats` and `collStats` count what they read. On the tenant's own database (database mode) or collection
//! (collection mode) the numbers are the tenant's; on a collection other tenants share (field and shared mode)
//! they count every tenant's documents, and on a database other tenants' collections live in (collection mode)
//! they count those collections: refused, saying why. Replies lose everything that names the deployment
//! ([`super::reply`]). `connectionStatus`, `whatsmyuri` and `listCommands` never reach a backend: the backend's
//! answers would describe the proxy's service user, the proxy's own address and the server's surface, not the
//! tenant's.

use bson::{cstr, RawArrayBuf, RawDocumentBuf};
use tenantwall_protocol::OpMsg;

use super::raw::rename_collection;
use super::read::command_collection;
use super::{Denial, ReplyKind, ReplyPlan, Result, Scope, Target};
use crate::command::spec::{Database, Handling, ALL};
use crate::command::Command;
use crate::config::Mode;

/// `dbStats` and `collStats` on the tenant's own namespaces, renamed; refused where other tenants' data counts.
pub fn stats(msg: &OpMsg, command: Command, scope: &mut Scope<'_>) -> Result<(Option<OpMsg>, ReplyPlan)> {
    let plan = ReplyPlan { kind: ReplyKind::StatsCommand, ..ReplyPlan::default() };
    if command == Command::DbStats {
        return match scope.resolve_db()? {
            Target::Mapped { rule, .. } if rule.mode() == Mode::Database => Ok((None, plan)),
            target => Err(Denial::unauthorized(format!(
                "dbStats on {} is not available through tenantwall: the database holds other tenants' data, so its \
                 statistics would count it ({}); collStats on the tenant's own collections is",
                scope.db,
                target.rule().describe()
            ))),
        };
    }
    let coll = command_collection(msg.body())?;
    match scope.resolve(coll)? {
        target @ Target::Mapped { .. } => Ok((rename_collection(msg, coll, target.real_coll(coll)), plan)),
        target => Err(Denial::unauthorized(format!(
            "collStats on {}.{coll} is not available through tenantwall: the collection is shared by every tenant, so \
             its statistics would count other tenants' documents ({}); count the tenant's own with countDocuments",
            scope.db,
            target.rule().describe()
        ))),
    }
}

/// The proxy's answer to a tool command; `user` is the connection's SCRAM user, or its tenant when it was
/// identified otherwise.
pub fn answer(command: Command, user: Option<&str>) -> RawDocumentBuf {
    let mut reply = RawDocumentBuf::new();
    match command {
        Command::ConnectionStatus => {
            let mut users = RawArrayBuf::new();
            if let Some(user) = user {
                let mut entry = RawDocumentBuf::new();
                entry.append(cstr!("user"), user);
                entry.append(cstr!("db"), "admin");
                users.push(entry);
            }
            let mut info = RawDocumentBuf::new();
            info.append(cstr!("authenticatedUsers"), users);
            info.append(cstr!("authenticatedUserRoles"), RawArrayBuf::new());
            reply.append(cstr!("authInfo"), info);
        }
        // The client's address is known to the listener, not to the command path; the backend's answer would be
        // the proxy's own address.
        Command::WhatsMyUri => reply.append(cstr!("you"), "(through tenantwall)"),
        Command::ListCommands => {
            let mut commands = RawDocumentBuf::new();
            for spec in ALL.iter().filter_map(|c| c.spec()) {
                let mut entry = RawDocumentBuf::new();
                entry.append(cstr!("requiresAuth"), !matches!(spec.handling, Handling::Local));
                entry.append(cstr!("secondaryOk"), true);
                entry.append(cstr!("adminOnly"), spec.database == Database::Admin);
                entry.append(cstr!("help"), "see the command surface in tenantwall's policy reference");
                if let Ok(name) = <&bson::raw::CStr>::try_from(spec.name) {
                    commands.append(name, entry);
                }
            }
            reply.append(cstr!("commands"), commands);
        }
        _ => {}
    }
    reply.append(cstr!("ok"), 1.0);
    reply
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::decide::{decide, Decision};
    use tenantwall_protocol::MsgFlags;

    #[test]
    fn connection_status_names_the_connections_user() {
        let reply = answer(Command::ConnectionStatus, Some("acme-app"));
        let users = reply.get_document("authInfo").unwrap().get_array("authenticatedUsers").unwrap();
        let first = users.into_iter().next().unwrap().unwrap();
        assert_eq!(first.as_document().unwrap().get_str("user").unwrap(), "acme-app");
        assert_eq!(reply.get_f64("ok").unwrap(), 1.0);
    }

    #[test]
    fn list_commands_is_the_proxys_surface() {
        let reply = answer(Command::ListCommands, Some("acme-app"));
        let commands = reply.get_document("commands").unwrap();
        assert!(commands.get_document("find").is_ok());
        assert!(commands.get_document("collStats").is_ok());
        for absent in ["mapReduce", "currentOp", "hostInfo", "getParameter"] {
            assert!(commands.get(absent).unwrap().is_none(), "{absent}");
        }
        assert!(answer(Command::WhatsMyUri, None).get_str("you").is_ok());
    }

    #[test]
    fn tools_need_authentication() {
        let policy = crate::Policy::from_toml(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[backends]]\nname = \"b\"\nuri = \"mongodb://127.0.0.1:1/\"\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        for name in ["connectionStatus", "whatsmyuri", "listCommands"] {
            let mut body = RawDocumentBuf::new();
            body.append(<&bson::raw::CStr>::try_from(name).unwrap(), 1);
            body.append(cstr!("$db"), "admin");
            let msg = OpMsg::new(MsgFlags::default(), body);
            assert!(matches!(decide(&msg, Command::from_name(name), None, &policy), Decision::Deny(_)), "{name}");
        }
    }
}
