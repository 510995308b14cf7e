//! Tenant lifecycle tools that read (and, for `move`, write) the backends directly with the policy's service
//! credentials, outside the request path: `tenantwall audit` ([`audit`]) and `tenantwall move` ([`mover`], with
//! the policy edit in [`placement`]).
//!
//! It owns: the service client operator tools share ([`client`]: commands, batched cursors, catalog
//! listings). It must never: run inside the proxy's request path or share its connections, print or log a
//! document's values beyond `_id`s and counts (a tenant value seen in data is another tenant's secret), or put
//! a service password into any output or error.

pub mod audit;
pub mod client;
pub mod mover;
pub mod placement;
