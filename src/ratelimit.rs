//! Per-tenant command rate limits: one token bucket per tenant, shared by all its connections.
//!
//! A command is admitted when the tenant's bucket holds a token; otherwise it is answered at once with the error
//! MongoDB's own ingress request rate limiter uses (`IngressRequestRateLimitExceeded`, 462, labelled
//! `SystemOverloadedError` and `RetryableError`; see the mongodb/specifications client-backpressure spec), so
//! drivers that implement backpressure back off and retry. Buckets follow reloads: a changed limit applies to the
//! tokens already held, capped at the new burst.
//!
//! What it must never do: wait (a refused command costs the tenant nothing but the reply), or let one tenant's
//! bucket be charged for another's commands.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use bson::{rawdoc, RawDocumentBuf};

use crate::error::ErrorCode;
use crate::policy::RateLimit;

/// The code mongod and mongos answer when their ingress request rate limiter refuses a command.
pub const RATE_LIMIT_EXCEEDED: ErrorCode = ErrorCode { code: 462, name: "IngressRequestRateLimitExceeded" };

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Every tenant's bucket.
#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Takes one token from `tenant`'s bucket; `false` when it is empty.
    pub fn admit(&self, tenant: &str, limit: &RateLimit) -> bool {
        self.admit_at(tenant, limit, Instant::now())
    }

    fn admit_at(&self, tenant: &str, limit: &RateLimit, now: Instant) -> bool {
        // A poisoned lock only means a panic elsewhere mid-update; the numbers are still usable.
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.entry(tenant.to_owned()).or_insert(Bucket { tokens: limit.burst, at: now });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * limit.per_second).min(limit.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// An overload reply in mongod's own shape (`IngressRequestRateLimitExceeded` with `SystemOverloadedError` and
/// `RetryableError`), so drivers recognise it and retry with backoff. Every refusal for load uses it: the rate
/// limit, the connection cap, the in-flight cap.
pub fn overloaded(errmsg: &str) -> RawDocumentBuf {
    let mut labels = bson::RawArrayBuf::new();
    labels.push("SystemOverloadedError");
    labels.push("RetryableError");
    rawdoc! {
        "ok": 0.0,
        "errmsg": errmsg,
        "code": RATE_LIMIT_EXCEEDED.code,
        "codeName": RATE_LIMIT_EXCEEDED.name,
        "errorLabels": labels,
    }
}

/// The reply to a command beyond the tenant's rate limit.
pub fn refusal(tenant: &str) -> RawDocumentBuf {
    overloaded(&format!("Rate limit of tenant {tenant} exceeded"))
}

/// The reply to an authentication beyond the tenant's connection cap (the connection then closes): the same
/// overload shape, so a driver backs off before it opens another connection.
pub fn connection_refusal(tenant: &str) -> RawDocumentBuf {
    overloaded(&format!("Connection limit of tenant {tenant} reached"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn burst_then_refill_per_tenant() {
        let limiter = RateLimiter::default();
        let limit = RateLimit { per_second: 2.0, burst: 3.0 };
        let t0 = Instant::now();
        assert!((0..3).all(|_| limiter.admit_at("a", &limit, t0)), "the burst is admitted at once");
        assert!(!limiter.admit_at("a", &limit, t0), "then the bucket is empty");
        assert!(limiter.admit_at("b", &limit, t0), "another tenant has its own bucket");
        let later = t0 + Duration::from_millis(500);
        assert!(limiter.admit_at("a", &limit, later), "one token back after 1/2 s at 2 per second");
        assert!(!limiter.admit_at("a", &limit, later));
        let much_later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| limiter.admit_at("a", &limit, much_later)).count(), 3, "capped at the burst");
    }

    #[test]
    fn refusal_has_the_server_shape() {
        let reply = refusal("acme");
        assert_eq!(reply.get_i32("code").ok(), Some(462));
        assert_eq!(reply.get_str("codeName").ok(), Some("IngressRequestRateLimitExceeded"));
        let labels: Vec<&str> =
            reply.get_array("errorLabels").unwrap().into_iter().filter_map(|l| l.ok()?.as_str()).collect();
        assert_eq!(labels, ["SystemOverloadedError", "RetryableError"]);
    }
}
