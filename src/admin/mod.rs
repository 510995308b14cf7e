//! The operator's side of the proxy: metrics, health, and the audit log, and the admin HTTP listener that serves
//! `/metrics`, `/healthz` and `/readyz`.
//!
//! The listener is a deliberately small HTTP/1.1 responder: one request per connection (`Connection: close`),
//! `GET` and `HEAD` for the read-only paths, `POST` for the actions of a tenant move (hold, release, reload; see
//! [`Action`]), the request head capped at [`MAX_REQUEST_BYTES`] and [`REQUEST_TIMEOUT`], a few connections at
//! once, and an optional bearer token compared in constant time. Anything else is answered 400, 401, 403, 404 or
//! 405. It is plain HTTP: bind it to localhost or a private network.
//!
//! What it must never do: panic or allocate without bound on any input, serve anything but these paths, take an
//! action without a configured token, or print the token.

pub mod audit;
pub mod health;
pub mod metrics;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::server::Shared;

/// Largest request head read; a longer one is answered 400.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Time a client has to send its whole request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Admin connections served at once; more are closed at accept.
const MAX_ADMIN_CONNECTIONS: usize = 16;

/// What the responder needs to know to answer one request.
pub struct View<'a> {
    /// The bearer token requests must carry, when one is configured.
    pub token: Option<&'a str>,
    /// The metrics text, rendered only for `/metrics`.
    pub metrics: &'a dyn Fn() -> String,
    /// Readiness: `Err` holds why not, one line each (a draining server, backends that did not answer).
    pub ready: &'a dyn Fn() -> Result<(), Vec<String>>,
}

/// One HTTP response.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// `HEAD`: the headers of a GET, without the body.
    pub head_only: bool,
    pub extra_header: Option<&'static str>,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            head_only: false,
            extra_header: None,
        }
    }

    fn reason(&self) -> &'static str {
        match self.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            409 => "Conflict",
            422 => "Unprocessable Content",
            503 => "Service Unavailable",
            _ => "Error",
        }
    }

    /// The bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
            self.status,
            self.reason(),
            self.content_type,
            self.body.len()
        );
        if let Some(header) = self.extra_header {
            out.push_str(header);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        if !self.head_only {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

/// The end of the request head (the index after `\r\n\r\n`), once it has arrived.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4)
}

/// Compares without stopping at the first difference, so response time does not reveal the token.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// What the admin listener was asked to change: the operations of a tenant move (`POST` only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `POST /tenants/{id}/hold?max_secs=N`: hold the tenant's new commands, wait for those in flight.
    Hold { tenant: String, max: Duration },
    /// `POST /tenants/{id}/release[?hold=ID]`: end the tenant's hold.
    Release { tenant: String, hold: Option<u64> },
    /// `POST /reload[?tenant=T&hold=ID]`: load the policy file now; with a hold, only while that hold is in force,
    /// and end it once the new policy is in force.
    Reload { release: Option<(String, u64)> },
}

/// The answer to a request: a response now, or an action to run first.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Now(Response),
    Act(Action),
}

/// Default and largest hold asked through `/tenants/{id}/hold`.
const DEFAULT_HOLD: Duration = Duration::from_secs(30);

/// The query parameter `key` of `query` (`a=1&b=2`).
fn param<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| pair.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
}

/// The action a `POST` asks for, or the response refusing it.
fn action(path: &str, query: &str) -> Result<Action, Response> {
    let bad = |why: &str| Response::text(400, format!("bad request: {why}\n"));
    let number = |key: &str| -> Result<Option<u64>, Response> {
        param(query, key).map(|v| v.parse::<u64>().map_err(|_| bad(&format!("{key} must be a number")))).transpose()
    };
    if path == "/reload" {
        let release = match (param(query, "tenant"), number("hold")?) {
            (None, None) => None,
            (Some(tenant), Some(hold)) if crate::policy::compile::valid_tenant_id(tenant) => {
                Some((tenant.to_owned(), hold))
            }
            _ => return Err(bad("tenant and hold go together")),
        };
        return Ok(Action::Reload { release });
    }
    let Some(rest) = path.strip_prefix("/tenants/") else { return Err(Response::text(404, "not found\n")) };
    let Some((tenant, verb)) = rest.split_once('/') else { return Err(Response::text(404, "not found\n")) };
    if !crate::policy::compile::valid_tenant_id(tenant) {
        return Err(Response::text(404, "not found\n"));
    }
    let tenant = tenant.to_owned();
    match verb {
        "hold" => {
            let max = number("max_secs")?.map_or(DEFAULT_HOLD, Duration::from_secs);
            if max.is_zero() || max > crate::gate::MAX_HOLD {
                return Err(bad("max_secs must be between 1 and 600"));
            }
            Ok(Action::Hold { tenant, max })
        }
        "release" => Ok(Action::Release { tenant, hold: number("hold")? }),
        _ => Err(Response::text(404, "not found\n")),
    }
}

/// Answers one complete request head. Pure: unit tests call it without sockets.
pub fn respond(head: &[u8], view: &View<'_>) -> Answer {
    match route(head, view) {
        Ok(response) => Answer::Now(response),
        Err(action) => Answer::Act(action),
    }
}

/// `Ok` with a response, or `Err` with the action a `POST` asks for.
fn route(head: &[u8], view: &View<'_>) -> Result<Response, Action> {
    let bad = |why: &str| Ok(Response::text(400, format!("bad request: {why}\n")));
    let Ok(text) = std::str::from_utf8(head) else { return bad("not UTF-8") };
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return bad("malformed request line");
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return bad("unsupported HTTP version");
    }
    let mut authorization = None;
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else { return bad("malformed header") };
        if name.is_empty() || name.contains([' ', '\t']) {
            return bad("malformed header name");
        }
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("authorization") {
            if authorization.is_some() {
                return bad("more than one Authorization header");
            }
            authorization = Some(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || (name.eq_ignore_ascii_case("content-length") && value != "0")
        {
            return bad("requests have no body here");
        }
    }
    if let Some(token) = view.token {
        let given = authorization.and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
        if !given.is_some_and(|g| same_secret(g.as_bytes(), token.as_bytes())) {
            let mut response = Response::text(401, "unauthorized\n");
            response.extra_header = Some("WWW-Authenticate: Bearer");
            return Ok(response);
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let posted = path == "/reload" || path.starts_with("/tenants/");
    let head_only = match method {
        "GET" if !posted => false,
        "HEAD" if !posted => true,
        // Changing the proxy's state is never open to whoever reaches the port: without a token, refused.
        "POST" if posted && view.token.is_none() => {
            return Ok(Response::text(403, "admin actions need a token ([admin] token_env)\n"));
        }
        "POST" if posted => {
            return match action(path, query) {
                Ok(action) => Err(action),
                Err(refusal) => Ok(refusal),
            };
        }
        _ => {
            let mut response = Response::text(405, "method not allowed\n");
            response.extra_header = Some(if posted { "Allow: POST" } else { "Allow: GET, HEAD" });
            return Ok(response);
        }
    };
    let mut response = match path {
        "/metrics" => Response {
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            ..Response::text(200, (view.metrics)())
        },
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" => match (view.ready)() {
            Ok(()) => Response::text(200, "ready\n"),
            Err(reasons) => {
                let mut body = String::from("not ready:\n");
                for reason in reasons {
                    body.push_str(&reason);
                    body.push('\n');
                }
                Response::text(503, body)
            }
        },
        _ => Response::text(404, "not found\n"),
    };
    response.head_only = head_only;
    Ok(response)
}

/// Readiness of the server: not while it drains, nor while a backend fails its health check.
fn readiness(shared: &Shared, backends: impl Iterator<Item = String>) -> Result<(), Vec<String>> {
    let mut reasons = Vec::new();
    if *shared.draining().borrow() {
        reasons.push("draining: the proxy is shutting down".to_owned());
    }
    if let Err(failing) = shared.health.ready(backends) {
        reasons.extend(failing.into_iter().map(|name| format!("backend {name}: no answer to its last health check")));
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}

/// Serves the admin listener until the task is aborted (after the server has drained, so that `/readyz` says
/// "draining" meanwhile).
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let accepted = listener.accept().await;
        let (mut stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "too many admin connections; closing");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let response = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
                Ok(Ok(Some(head))) => {
                    let answer = {
                        let generation = shared.current();
                        let token = generation.policy.admin.as_ref().and_then(|a| a.token.as_ref()).map(|t| t.expose());
                        let metrics = || shared.metrics.encode();
                        let ready = || readiness(&shared, generation.backends.keys().cloned());
                        respond(&head, &View { token, metrics: &metrics, ready: &ready })
                    };
                    match answer {
                        Answer::Now(response) => response,
                        Answer::Act(action) => act(action, &shared).await,
                    }
                }
                Ok(Ok(None)) => Response::text(400, "bad request: request head too large or incomplete\n"),
                Ok(Err(_)) => return,
                Err(_) => Response::text(408, "request timeout\n"),
            };
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, async {
                stream.write_all(&response.encode()).await?;
                stream.shutdown().await
            })
            .await;
            drop(slot);
        });
    }
}

/// A JSON response.
fn json(status: u16, body: serde_json::Value) -> Response {
    Response { content_type: "application/json", ..Response::text(status, format!("{body}\n")) }
}

/// Runs an admin action against the running server.
async fn act(action: Action, shared: &Arc<Shared>) -> Response {
    let reloader = crate::server::Reloader::from_shared(shared.clone());
    match action {
        Action::Hold { tenant, max } => {
            if shared.current().policy.tenant(&tenant).is_none() {
                return Response::text(404, "no such tenant\n");
            }
            info!(tenant = %tenant, max_secs = max.as_secs(), "holding tenant");
            match shared.gate.hold(&tenant, max).await {
                Ok(hold) => json(
                    200,
                    serde_json::json!({
                        "hold": hold.id,
                        "drained_ms": hold.drained_in.as_millis() as u64,
                        "max_secs": hold.max.as_secs(),
                    }),
                ),
                Err(e) => {
                    warn!(tenant = %tenant, error = %e, "hold not granted");
                    json(503, serde_json::json!({ "error": e.to_string() }))
                }
            }
        }
        Action::Release { tenant, hold } => match shared.gate.release(&tenant, hold) {
            Some(held) => {
                info!(tenant = %tenant, held_ms = held.as_millis() as u64, "tenant released");
                json(200, serde_json::json!({ "released": true, "held_ms": held.as_millis() as u64 }))
            }
            None => json(409, serde_json::json!({ "released": false, "error": "no such hold in force" })),
        },
        Action::Reload { release } => {
            // A switch must land while the tenant is still held, with a margin, or held commands could run on the
            // old placement while the new one takes over.
            if let Some((tenant, hold)) = &release {
                if !shared.gate.is_held(tenant, *hold, SWITCH_MARGIN) {
                    return json(409, serde_json::json!({ "error": "the hold is no longer in force; not reloaded" }));
                }
            }
            let path = shared.current().policy.path.clone();
            match crate::policy::Policy::load(&path) {
                Ok(policy) => {
                    info!("admin: reloading policy");
                    reloader.apply(policy);
                    let held = release.and_then(|(tenant, hold)| shared.gate.release(&tenant, Some(hold)));
                    json(
                        200,
                        serde_json::json!({
                            "generation": reloader.generation(),
                            "held_ms": held.map(|h| h.as_millis() as u64),
                        }),
                    )
                }
                Err(e) => {
                    reloader.rejected();
                    warn!(error = %e, "admin reload: new policy rejected; keeping the one in force");
                    json(422, serde_json::json!({ "error": e.to_string() }))
                }
            }
        }
    }
}

/// Time a hold must still have left for a policy switch to be applied under it.
const SWITCH_MARGIN: Duration = Duration::from_millis(500);

/// Reads until the end of the request head; `None` when it is longer than [`MAX_REQUEST_BYTES`] or the client
/// closed before finishing it.
async fn read_head(stream: &mut tokio::net::TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if let Some(end) = head_end(&buf) {
            buf.truncate(end);
            return Ok(Some(buf));
        }
        if buf.len() > MAX_REQUEST_BYTES {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(head: &str, token: Option<&str>, ready: Result<(), Vec<String>>) -> Response {
        let metrics = || "tenantwall_policy_generation 1\n".to_owned();
        let ready = || ready.clone();
        match respond(head.as_bytes(), &View { token, metrics: &metrics, ready: &ready }) {
            Answer::Now(response) => response,
            Answer::Act(action) => panic!("unexpected action {action:?}"),
        }
    }

    fn act(head: &str) -> Answer {
        let metrics = String::new;
        let ready = || Ok(());
        respond(head.as_bytes(), &View { token: Some("t"), metrics: &metrics, ready: &ready })
    }

    #[test]
    fn move_actions_need_post_and_the_token() {
        let auth = "Authorization: Bearer t\r\n";
        assert_eq!(
            act(&format!("POST /tenants/acme/hold?max_secs=5 HTTP/1.1\r\n{auth}\r\n")),
            Answer::Act(Action::Hold { tenant: "acme".into(), max: Duration::from_secs(5) })
        );
        assert_eq!(
            act(&format!("POST /tenants/acme/release?hold=3 HTTP/1.1\r\n{auth}\r\n")),
            Answer::Act(Action::Release { tenant: "acme".into(), hold: Some(3) })
        );
        assert_eq!(
            act(&format!("POST /reload?tenant=acme&hold=3 HTTP/1.1\r\n{auth}\r\n")),
            Answer::Act(Action::Reload { release: Some(("acme".into(), 3)) })
        );
        let status = |head: String| match act(&head) {
            Answer::Now(r) => r.status,
            Answer::Act(a) => panic!("{a:?}"),
        };
        assert_eq!(status("POST /tenants/acme/hold HTTP/1.1\r\n\r\n".into()), 401);
        assert_eq!(status(format!("GET /tenants/acme/hold HTTP/1.1\r\n{auth}\r\n")), 405);
        assert_eq!(status(format!("POST /tenants/acme/hold?max_secs=0 HTTP/1.1\r\n{auth}\r\n")), 400);
        assert_eq!(status(format!("POST /tenants/acme/hold?max_secs=x HTTP/1.1\r\n{auth}\r\n")), 400);
        assert_eq!(status(format!("POST /tenants/ac.me/hold HTTP/1.1\r\n{auth}\r\n")), 404);
        assert_eq!(status(format!("POST /tenants/acme/drop HTTP/1.1\r\n{auth}\r\n")), 404);
        assert_eq!(status(format!("POST /reload?tenant=acme HTTP/1.1\r\n{auth}\r\n")), 400);
        // Without a configured token, nothing may change the proxy's state.
        let metrics = String::new;
        let ready = || Ok(());
        let open = respond(b"POST /reload HTTP/1.1\r\n\r\n", &View { token: None, metrics: &metrics, ready: &ready });
        assert!(matches!(open, Answer::Now(Response { status: 403, .. })));
    }

    #[test]
    fn paths_methods_and_statuses() {
        let ok = || Ok(());
        assert_eq!(ask("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", None, ok()).status, 200);
        let metrics = ask("GET /metrics?x=1 HTTP/1.1\r\n\r\n", None, ok());
        assert_eq!((metrics.status, metrics.content_type), (200, "text/plain; version=0.0.4; charset=utf-8"));
        assert_eq!(ask("GET /nope HTTP/1.1\r\n\r\n", None, ok()).status, 404);
        assert_eq!(ask("POST /metrics HTTP/1.1\r\n\r\n", None, ok()).status, 405);
        assert_eq!(ask("GET /metrics HTTP/2\r\n\r\n", None, ok()).status, 400);
        assert_eq!(ask("GET  /metrics HTTP/1.1\r\n\r\n", None, ok()).status, 400);
        assert_eq!(ask("GET /metrics HTTP/1.1\r\nbad header\r\n\r\n", None, ok()).status, 400);
        assert_eq!(ask("GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\n", None, ok()).status, 400);
        let head = ask("HEAD /healthz HTTP/1.1\r\n\r\n", None, ok());
        let wire = String::from_utf8(head.encode()).unwrap();
        assert!(wire.contains("Content-Length: 3\r\n") && wire.ends_with("\r\n\r\n"), "{wire}");
        let unready = ask("GET /readyz HTTP/1.1\r\n\r\n", None, Err(vec!["east".into()]));
        assert_eq!(unready.status, 503);
        assert!(unready.body.contains("east"));
    }

    #[test]
    fn bearer_token() {
        let ok = || Ok(());
        assert_eq!(ask("GET /metrics HTTP/1.1\r\n\r\n", Some("s3cret"), ok()).status, 401);
        assert_eq!(
            ask("GET /metrics HTTP/1.1\r\nAuthorization: Bearer nope\r\n\r\n", Some("s3cret"), ok()).status,
            401
        );
        let granted = ask("GET /metrics HTTP/1.1\r\nauthorization: Bearer s3cret\r\n\r\n", Some("s3cret"), ok());
        assert_eq!(granted.status, 200);
        let denied = ask("GET /nope HTTP/1.1\r\n\r\n", Some("s3cret"), ok());
        assert_eq!(denied.status, 401, "paths are not revealed without the token");
        assert!(!String::from_utf8(denied.encode()).unwrap().contains("s3cret"));
    }

    #[test]
    fn never_panics_on_garbage() {
        let ok = || Ok(());
        for head in ["", "\r\n\r\n", "GET", "GET / HTTP/1.1 extra\r\n\r\n", ":\r\n\r\n", "GET / HTTP/1.1\r\n:x\r\n\r\n"]
        {
            let status = ask(head, None, ok()).status;
            assert!(matches!(status, 400 | 404), "{head:?}: {status}");
        }
        let bytes: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        let metrics = String::new;
        let ready = || Ok(());
        let answer = respond(&bytes, &View { token: None, metrics: &metrics, ready: &ready });
        assert!(matches!(answer, Answer::Now(Response { status: 400, .. })));
    }
}
