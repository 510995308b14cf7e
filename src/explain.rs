//! `tenantwall explain` and `tenantwall test`: what the proxy would do with one command, without sockets.
//!
//! Security teams use these in reviews and CI: a command written as extended JSON goes through exactly the
//! decision and rewrite path a live connection uses (`engine::decide::prepare_forward`), and the
//! result is the command that would be forwarded (canonical extended JSON) or the denial with its code, rule and
//! reason.

use std::path::{Path, PathBuf};

use bson::{Bson, Document, RawDocumentBuf};
use serde::Deserialize;
use tenantwall_protocol::{decode, Message, MsgFlags, OpMsg};

use crate::command::Command;
use crate::engine::decide::{prepare_forward, Decision};
use crate::engine::reply;
use crate::policy::Policy;

/// What the proxy would do with a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Forwarded to the tenant's backend as this document, with these audit notes; `reply` is how a given
    /// backend reply would reach the client.
    Forwarded { command: Document, audit: Vec<String>, reply: Option<Document> },
    /// Answered by the proxy itself.
    Local,
    /// Refused.
    Denied { code: i32, code_name: &'static str, reason: String },
}

/// Parses an extended JSON command document.
pub fn parse_command(json: &str) -> Result<Document, String> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    match Bson::try_from(value).map_err(|e| format!("not extended JSON: {e}"))? {
        Bson::Document(doc) => Ok(doc),
        _ => Err("the command must be a JSON object".into()),
    }
}

/// Runs `command` (with `$db` defaulting to `db`) for `tenant` through the decision path.
pub fn explain(policy: &Policy, tenant: &str, command: Document, db: &str) -> Result<Outcome, String> {
    explain_with_reply(policy, tenant, command, db, None)
}

/// Like [`explain`], and shows how `backend_reply` would be rewritten on its way back to the client.
pub fn explain_with_reply(
    policy: &Policy,
    tenant: &str,
    mut command: Document,
    db: &str,
    backend_reply: Option<Document>,
) -> Result<Outcome, String> {
    let tenant = policy.tenant(tenant).ok_or_else(|| format!("the policy has no tenant {tenant:?}"))?.clone();
    if !command.contains_key("$db") {
        command.insert("$db", db);
    }
    let raw = RawDocumentBuf::try_from(&command).map_err(|e| format!("cannot encode the command: {e}"))?;
    // Through the wire format and back, so that the command is read exactly as a live connection reads it:
    // validated, with what validation found in it.
    let frame =
        OpMsg::new(MsgFlags::default(), raw).encode(0, 0).map_err(|e| format!("cannot encode the command: {e}"))?;
    let Message::Msg(msg) = decode(frame.freeze()).map_err(|e| format!("the command is not valid: {e}"))?.message
    else {
        return Err("the command did not decode as OP_MSG".into());
    };
    let name = msg.command_name().unwrap_or_default().to_owned();
    Ok(match prepare_forward(&msg, Command::from_name(&name), Some(&tenant), policy) {
        Decision::Local(_) => Outcome::Local,
        Decision::Deny(denial) => {
            Outcome::Denied { code: denial.code.code, code_name: denial.code.name, reason: denial.reason }
        }
        Decision::Forward(plan) => {
            let forwarded = plan.forward.unwrap_or(msg);
            let mut command = Document::try_from(forwarded.body()).map_err(|e| e.to_string())?;
            // Document sequences are logical array fields: show them where the command would have them.
            for seq in forwarded.sequences() {
                let docs: Result<Vec<Bson>, _> =
                    seq.documents().map(|d| Document::try_from(d).map(Bson::Document)).collect();
                command.insert(seq.identifier(), docs.map_err(|e| e.to_string())?);
            }
            let reply = match backend_reply {
                Some(reply) => {
                    let raw = RawDocumentBuf::try_from(&reply).map_err(|e| format!("cannot encode the reply: {e}"))?;
                    let rewritten = reply::rewrite_reply(&raw, &plan.reply, policy, &tenant).unwrap_or(raw);
                    Some(Document::try_from(rewritten.as_ref()).map_err(|e| e.to_string())?)
                }
                None => None,
            };
            Outcome::Forwarded { command, audit: plan.audit, reply }
        }
    })
}

/// Renders an outcome for humans (and for `explain`'s stdout).
pub fn render(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Forwarded { command, audit, reply } => {
            let mut out = Bson::Document(command.clone()).into_canonical_extjson().to_string();
            for note in audit {
                out.push_str(&format!("\naudit: {note}"));
            }
            if let Some(reply) = reply {
                out.push_str(&format!("\nreply: {}", Bson::Document(reply.clone()).into_canonical_extjson()));
            }
            out
        }
        Outcome::Local => "answered by the proxy itself".into(),
        Outcome::Denied { code, code_name, reason } => format!("denied: {code} ({code_name}): {reason}"),
    }
}

/// A policy test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// The policy under test, relative to the test file.
    pub policy: PathBuf,
    /// Database for cases that do not set `$db` or `db`.
    #[serde(default = "default_db")]
    pub db: String,
    #[serde(rename = "case", default)]
    pub cases: Vec<TestCase>,
}

fn default_db() -> String {
    "app".into()
}

/// One case: a tenant, a command, and the expected outcome.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub name: String,
    pub tenant: String,
    #[serde(default)]
    pub db: Option<String>,
    /// The command, extended JSON.
    pub command: String,
    /// Expected forwarded command, extended JSON (exact, field order included).
    #[serde(default)]
    pub expect: Option<String>,
    /// Expected denial code.
    #[serde(default)]
    pub deny: Option<i32>,
    /// Text the denial reason must contain.
    #[serde(default)]
    pub reason_contains: Option<String>,
    /// A backend reply to the forwarded command, extended JSON.
    #[serde(default)]
    pub reply: Option<String>,
    /// What the client must receive for `reply`, extended JSON (exact).
    #[serde(default)]
    pub expect_reply: Option<String>,
}

/// Runs every case of a test file; returns (passed, failures as messages).
pub fn run_test_file(path: &Path) -> Result<(usize, Vec<String>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: TestFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let policy_path = path.parent().unwrap_or(Path::new(".")).join(&file.policy);
    let policy = Policy::load_for_analysis(&policy_path).map_err(|e| e.to_string())?;
    let mut passed = 0;
    let mut failures = Vec::new();
    for case in &file.cases {
        match run_case(&policy, case, &file.db) {
            Ok(()) => passed += 1,
            Err(why) => failures.push(format!("{}: {}: {why}", path.display(), case.name)),
        }
    }
    Ok((passed, failures))
}

fn run_case(policy: &Policy, case: &TestCase, default_db: &str) -> Result<(), String> {
    let command = parse_command(&case.command)?;
    let backend_reply = case.reply.as_deref().map(parse_command).transpose()?;
    let outcome =
        explain_with_reply(policy, &case.tenant, command, case.db.as_deref().unwrap_or(default_db), backend_reply)?;
    if let (Some(expect_reply), Outcome::Forwarded { reply: Some(got), .. }) = (&case.expect_reply, &outcome) {
        let expected = parse_command(expect_reply)?;
        if &expected != got {
            return Err(format!(
                "expected reply {}\n     got reply {}",
                Bson::Document(expected).into_canonical_extjson(),
                Bson::Document(got.clone()).into_canonical_extjson()
            ));
        }
    } else if case.expect_reply.is_some() != case.reply.is_some() {
        return Err("reply and expect_reply go together, on a forwarded command".into());
    }
    match (&case.expect, case.deny, &outcome) {
        (Some(expect), None, Outcome::Forwarded { command, .. }) => {
            let expected = parse_command(expect)?;
            if &expected == command {
                Ok(())
            } else {
                Err(format!(
                    "expected {}\n     got {}",
                    Bson::Document(expected).into_canonical_extjson(),
                    Bson::Document(command.clone()).into_canonical_extjson()
                ))
            }
        }
        (None, Some(code), Outcome::Denied { code: got, reason, .. }) => {
            if *got != code {
                return Err(format!("expected denial {code}, got {}", render(&outcome)));
            }
            match &case.reason_contains {
                Some(text) if !reason.contains(text.as_str()) => Err(format!("reason {reason:?} lacks {text:?}")),
                _ => Ok(()),
            }
        }
        (None, None, _) => Err("a case needs expect or deny".into()),
        (Some(_), Some(_), _) => Err("a case has either expect or deny, not both".into()),
        _ => Err(format!("got {}", render(&outcome))),
    }
}
