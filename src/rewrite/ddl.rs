//! Catalog and DDL commands: free on a tenant's own backend; on shared data only what cannot reach another
//! tenant's rows (collection creation, non-unique or tenant-prefixed unique indexes, listing indexes).

use bson::RawBsonRef;
use tenantwall_protocol::OpMsg;

use super::raw::array_documents;
use super::read::command_collection;
use super::{resolve, Denial, ReplyPlan, Result, Scope, Target};
use crate::command::Command;
use crate::error::ErrorCode;
use crate::policy::Rule;

pub fn rewrite(msg: &OpMsg, command: Command, scope: &mut Scope<'_>) -> Result<(Option<OpMsg>, ReplyPlan)> {
    let body = msg.body();
    let cursor = ReplyPlan { record_cursor: true, ..ReplyPlan::default() };
    match command {
        Command::ListCollections | Command::DropDatabase => {
            return match resolve(scope.policy, scope.db, None)? {
                Target::Dedicated(_) => Ok((None, cursor)),
                Target::Field(rule) | Target::Shared(rule) if command == Command::ListCollections => {
                    // Collection names of shared data are the same for every tenant.
                    let _ = rule;
                    Ok((None, cursor))
                }
                target => Err(Denial::unauthorized(format!(
                    "{}: dropDatabase is not allowed on shared data",
                    target.rule().describe()
                ))),
            };
        }
        _ => {}
    }
    let coll = command_collection(body)?;
    let target = scope.resolve(coll)?;
    let rule = match target {
        Target::Dedicated(_) => return Ok((None, cursor)),
        Target::Field(rule) | Target::Shared(rule) => rule,
    };
    match command {
        Command::ListIndexes => Ok((None, cursor)),
        Command::Create => {
            if body.get("viewOn").ok().flatten().is_some() || body.get("pipeline").ok().flatten().is_some() {
                return Err(Denial::unauthorized(format!(
                    "{}: views cannot be defined on shared data",
                    rule.describe()
                )));
            }
            Ok((None, ReplyPlan::default()))
        }
        Command::CreateIndexes if matches!(target, Target::Field(_)) => {
            check_indexes(body.get("indexes").ok().flatten(), rule)?;
            Ok((None, ReplyPlan::default()))
        }
        _ => Err(Denial::unauthorized(format!(
            "{}: {} changes the whole collection, which other tenants share",
            rule.describe(),
            super::first_key(body)
        ))),
    }
}

/// Indexes on a shared collection: no TTL (it would delete other tenants' documents), and unique only when the
/// key starts with the tenant field (otherwise uniqueness and its errors span tenants).
fn check_indexes(indexes: Option<RawBsonRef<'_>>, rule: &Rule) -> Result<()> {
    let indexes = array_documents(
        indexes.ok_or_else(|| Denial::new(ErrorCode::FAILED_TO_PARSE, "createIndexes needs indexes"))?,
        "indexes",
    )?;
    for (i, index) in indexes.iter().enumerate() {
        if index.get("expireAfterSeconds").ok().flatten().is_some() {
            return Err(Denial::unauthorized(format!(
                "{}: indexes[{i}] is a TTL index on a shared collection",
                rule.describe()
            )));
        }
        if index.get_bool("unique").unwrap_or(false) {
            let key =
                index.get_document("key").map_err(|_| Denial::new(ErrorCode::FAILED_TO_PARSE, "index needs key"))?;
            if super::first_key(key) != rule.field {
                return Err(Denial::unauthorized(format!(
                    "{}: indexes[{i}] is unique but does not start with {}",
                    rule.describe(),
                    rule.field
                )));
            }
        }
    }
    Ok(())
}
