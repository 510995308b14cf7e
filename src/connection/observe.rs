//! What a connection tells operators: metrics per tenant, audit records, and the tenant's rate limit and
//! connection cap. Kept apart from the request path in `connection.rs`, which calls in at a few points: when a
//! frame arrives, once the decision is known, when the backend answers, and when the command is done.
//!
//! What it must never do: put anything from a document or filter into a record or a label, or wait on the audit
//! queue.

use std::time::Duration;

use bson::RawDocument;
use tokio::time::Instant;
use tracing::info;

use super::ClientConnection;
use crate::admin::audit::{rule_of, visible_namespace, AuditDecision, AuditRecord};
use crate::admin::metrics::{command_label, Outcome};
use crate::command::spec::Family;
use crate::command::Command;
use crate::engine::decide::Decision;
use crate::error::ProxyError;
use crate::policy::Tenant;
use crate::ratelimit;
use crate::server::Generation;

/// Per-command observations, reset for every command.
#[derive(Debug, Default)]
pub(super) struct Observed {
    pub outcome: Option<Outcome>,
    /// When the command was sent to the backend.
    pub sent: Option<Instant>,
    /// Time the backend took to answer.
    pub backend: Option<Duration>,
}

impl ClientConnection {
    /// Once the decision is known: audits denials and findings (and writes, when asked), and applies the tenant's
    /// rate limit. Returns the reply for a command the rate limit refuses.
    pub(super) fn decided(
        &mut self,
        generation: &Generation,
        decision: &Decision,
        command: Command,
        body: &RawDocument,
        request_id: i32,
    ) -> Option<bson::RawDocumentBuf> {
        match decision {
            Decision::Local(_) => self.observed.outcome = Some(Outcome::Local),
            Decision::Deny(denial) => {
                self.observed.outcome = Some(Outcome::Denied);
                let reason = ProxyError::from(denial.clone()).to_string();
                self.audit(generation, AuditDecision::Denied, command, body, request_id, reason);
            }
            Decision::Forward(plan) => {
                let tenant = self.tenant.clone()?;
                if let Some(limit) = &tenant.rate_limit {
                    if !self.shared.rate.admit(&tenant.id, limit) {
                        self.observed.outcome = Some(Outcome::RateLimited);
                        self.usage.rate_limited.inc();
                        info!(target: "tenantwall::audit", tenant = %tenant.id, command = command_label(command), "rate limited");
                        let reason = format!("rate limit of {} commands per second exceeded", limit.per_second);
                        self.audit(generation, AuditDecision::RateLimited, command, body, request_id, reason);
                        return Some(ratelimit::refusal(&tenant.id));
                    }
                }
                for note in &plan.audit {
                    self.audit(generation, AuditDecision::AuditFinding, command, body, request_id, note.clone());
                }
                let write =
                    command.spec().is_some_and(|s| matches!(s.family, Family::Write | Family::Bulk | Family::Ddl));
                if write && self.shared.audit.log_writes() {
                    self.audit(generation, AuditDecision::Write, command, body, request_id, "forwarded".into());
                }
            }
        }
        None
    }

    fn audit(
        &self,
        generation: &Generation,
        decision: AuditDecision,
        command: Command,
        body: &RawDocument,
        request_id: i32,
        reason: String,
    ) {
        if !self.shared.audit.enabled() {
            return;
        }
        let namespace = visible_namespace(body);
        let rule = rule_of(&generation.policy, self.usage.tenant(), namespace.as_deref());
        self.shared.audit.record(AuditRecord {
            time: AuditRecord::now(),
            tenant: self.usage.tenant().to_owned(),
            user: self.authenticated_user.clone(),
            client: self.peer.to_string(),
            connection_id: self.id,
            request_id,
            command: command_label(command),
            namespace,
            rule,
            decision,
            reason,
        });
    }

    /// The command is about to be sent to the backend.
    pub(super) fn sending(&mut self) {
        // Until a reply arrives, the command failed on the way.
        self.observed.outcome = Some(Outcome::Error);
        self.observed.sent.get_or_insert_with(Instant::now);
    }

    /// The backend answered with `reply` (before it is rewritten for the client).
    pub(super) fn answered(&mut self, cursor: &crate::session::ReplyCursor) {
        self.observed.outcome = Some(Outcome::Forwarded);
        if let Some(sent) = self.observed.sent.take() {
            *self.observed.backend.get_or_insert_default() += sent.elapsed();
        }
        if let Some(n) = cursor.batch_len {
            self.usage.documents_returned.inc_by(n);
        }
    }

    /// The command is done: counts it under its outcome (a command the cursor table refused is `denied`).
    pub(super) fn done(&mut self, command: Command, started: Instant) {
        let observed = std::mem::take(&mut self.observed);
        let outcome = observed.outcome.unwrap_or(Outcome::Denied);
        self.shared.metrics.command(&mut self.usage, command, outcome);
        self.usage.command_duration.observe(started.elapsed().as_secs_f64());
        if let (Some(took), Some(tenant)) = (observed.backend, &self.tenant) {
            self.usage.backend_time.inc_by(took.as_secs_f64());
            self.shared.metrics.backend_duration(&mut self.usage, &tenant.backend, took);
        }
    }

    /// Moves the connection onto `tenant`'s series; `false` when the tenant's connection cap is reached.
    pub(super) fn claim_tenant_slot(&mut self, tenant: &Tenant) -> bool {
        let claimed = self.shared.metrics.move_connection(&mut self.usage, &tenant.id, tenant.max_connections);
        if !claimed {
            info!(tenant = %tenant.id, cap = tenant.max_connections, "tenant connection cap reached; refusing");
        }
        claimed
    }
}
