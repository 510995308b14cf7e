//! The proxy's own `hello` / `isMaster`: it presents itself as a mongos, or, on a listener with a replica-set
//! face, as the primary of a one-member replica set whose only member is the listener's advertised address.
//!
//! Drivers that see `msg: "isdbgrid"` treat the proxy as a router and never try to discover the deployment
//! behind it, so the reply must not carry anything that names the backend (`hosts`, `setName`, `me`,
//! `primary`) and no `topologyVersion` (without it drivers poll instead of holding an awaitable hello open).
//! This module is pure: it turns a request document into a reply document and a compression choice.

use bson::{cstr, DateTime, RawArrayBuf, RawBsonRef, RawDocument, RawDocumentBuf};
use tenantwall_protocol::{Compressor, MAX_BSON_OBJECT_SIZE, MAX_MESSAGE_SIZE};

use crate::command::Command;

/// `maxWriteBatchSize` a mongos advertises.
pub const MAX_WRITE_BATCH_SIZE: i32 = 100_000;
/// Session timeout advertised; its presence tells drivers sessions are supported.
pub const LOGICAL_SESSION_TIMEOUT_MINUTES: i32 = 30;
/// Wire version advertised before any backend has been seen (MongoDB 6.0).
pub const FALLBACK_MAX_WIRE_VERSION: i32 = 17;

/// What the connection knows when it answers a hello.
#[derive(Debug, Clone, Copy)]
pub struct HelloContext<'a> {
    pub connection_id: i64,
    pub max_wire_version: i32,
    /// The listener's replica-set face; `None` answers as a mongos.
    pub face: Option<&'a ReplicaSetFace>,
}

/// A listener's replica-set face: the proxy as the only member, and primary, of set `set_name`, reachable at
/// `host`. Both come from the policy, never from a backend, so drivers still learn no backend address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSetFace {
    pub set_name: String,
    pub host: String,
}

impl ReplicaSetFace {
    /// Checks the set name and the advertised `host:port`.
    pub fn new(set_name: &str, host: &str) -> Result<Self, String> {
        if set_name.is_empty() || set_name.contains(['/', ',', '\0']) || set_name.trim() != set_name {
            return Err(format!("replica_set {set_name:?} is not a replica set name"));
        }
        let port =
            host.rsplit_once(':').and_then(|(h, p)| (!h.is_empty()).then_some(p)).and_then(|p| p.parse::<u16>().ok());
        if port.is_none_or(|p| p == 0) || host.contains([',', '/', ' ']) {
            return Err(format!("host {host:?} is not the host:port clients reach this listener at"));
        }
        Ok(Self { set_name: set_name.to_owned(), host: host.to_owned() })
    }
}

/// This process's service id for load-balanced clients.
fn service_id() -> bson::oid::ObjectId {
    static ID: std::sync::OnceLock<bson::oid::ObjectId> = std::sync::OnceLock::new();
    *ID.get_or_init(bson::oid::ObjectId::new)
}

/// The compressors a client offered that the proxy also implements, in the client's order of preference.
pub fn negotiate_compression(request: &RawDocument) -> Vec<Compressor> {
    let Ok(Some(RawBsonRef::Array(offered))) = request.get("compression") else {
        return Vec::new();
    };
    let mut chosen = Vec::new();
    for name in offered.into_iter().filter_map(Result::ok) {
        if let Some(c) = name.as_str().and_then(Compressor::from_name) {
            if !chosen.contains(&c) {
                chosen.push(c);
            }
        }
    }
    chosen
}

/// Builds the hello reply for `request` (already classified as `command`).
pub fn hello_reply(
    request: &RawDocument,
    command: Command,
    compression: &[Compressor],
    ctx: HelloContext,
) -> RawDocumentBuf {
    let mut reply = RawDocumentBuf::new();
    if matches!(request.get("helloOk"), Ok(Some(RawBsonRef::Boolean(true)))) {
        reply.append(cstr!("helloOk"), true);
    }
    if command == Command::LegacyHello {
        reply.append(cstr!("ismaster"), true);
    } else {
        reply.append(cstr!("isWritablePrimary"), true);
    }
    match ctx.face {
        None => reply.append(cstr!("msg"), "isdbgrid"),
        Some(face) => {
            let mut hosts = RawArrayBuf::new();
            hosts.push(face.host.as_str());
            reply.append(cstr!("secondary"), false);
            reply.append(cstr!("setName"), face.set_name.as_str());
            reply.append(cstr!("setVersion"), 1);
            reply.append(cstr!("hosts"), hosts);
            reply.append(cstr!("primary"), face.host.as_str());
            reply.append(cstr!("me"), face.host.as_str());
        }
    }
    reply.append(cstr!("maxBsonObjectSize"), MAX_BSON_OBJECT_SIZE as i32);
    reply.append(cstr!("maxMessageSizeBytes"), MAX_MESSAGE_SIZE as i32);
    reply.append(cstr!("maxWriteBatchSize"), MAX_WRITE_BATCH_SIZE);
    reply.append(cstr!("localTime"), DateTime::now());
    reply.append(cstr!("logicalSessionTimeoutMinutes"), LOGICAL_SESSION_TIMEOUT_MINUTES);
    reply.append(cstr!("connectionId"), ctx.connection_id);
    reply.append(cstr!("minWireVersion"), 0);
    reply.append(cstr!("maxWireVersion"), ctx.max_wire_version);
    if request.get("compression").ok().flatten().is_some() {
        let mut names = RawArrayBuf::new();
        for c in compression {
            names.push(c.name());
        }
        reply.append(cstr!("compression"), names);
    }
    if matches!(request.get("loadBalanced"), Ok(Some(RawBsonRef::Boolean(true)))) {
        // Drivers in load-balanced mode require a serviceId; one per proxy process identifies this instance.
        reply.append(cstr!("serviceId"), service_id());
    }
    reply.append(cstr!("readOnly"), false);
    reply.append(cstr!("ok"), 1.0);
    reply
}

/// MongoDB release matching a wire version, for the pre-authentication `buildInfo` answer.
fn version_for_wire(wire: i32) -> &'static str {
    match wire {
        ..=17 => "6.0.0",
        18..=20 => "6.1.0",
        21..=24 => "7.0.0",
        _ => "8.0.0",
    }
}

/// `buildInfo` before authentication: only what drivers need to pick features, nothing about the backend.
pub fn build_info_reply(max_wire_version: i32) -> RawDocumentBuf {
    let version = version_for_wire(max_wire_version);
    let mut parts = RawArrayBuf::new();
    for part in version.split('.') {
        parts.push(part.parse::<i32>().unwrap_or(0));
    }
    parts.push(0);
    let mut reply = RawDocumentBuf::new();
    reply.append(cstr!("version"), version);
    reply.append(cstr!("versionArray"), parts);
    reply.append(cstr!("maxBsonObjectSize"), MAX_BSON_OBJECT_SIZE as i32);
    reply.append(cstr!("ok"), 1.0);
    reply
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    const CTX: HelloContext<'static> = HelloContext { connection_id: 7, max_wire_version: 25, face: None };

    #[test]
    fn a_replica_set_face_names_only_the_advertised_host() {
        let face = ReplicaSetFace::new("rs0", "proxy.example:27018").unwrap();
        let ctx = HelloContext { face: Some(&face), ..CTX };
        let reply = hello_reply(&rawdoc! { "hello": 1 }, Command::Hello, &[], ctx);
        assert_eq!(reply.get_str("setName").unwrap(), "rs0");
        assert_eq!(reply.get_str("me").unwrap(), "proxy.example:27018");
        assert_eq!(reply.get_str("primary").unwrap(), "proxy.example:27018");
        let hosts: Vec<_> =
            reply.get_array("hosts").unwrap().into_iter().map(|h| h.unwrap().as_str().unwrap()).collect();
        assert_eq!(hosts, ["proxy.example:27018"]);
        assert!(reply.get_bool("isWritablePrimary").unwrap() && !reply.get_bool("secondary").unwrap());
        assert!(reply.get("msg").unwrap().is_none() && reply.get("topologyVersion").unwrap().is_none());
        let legacy = hello_reply(&rawdoc! { "isMaster": 1 }, Command::LegacyHello, &[], ctx);
        assert!(legacy.get_bool("ismaster").unwrap());
        for bad in [("", "h:1"), ("rs0", "h"), ("rs0", "h:0"), ("rs0", "a:1,b:2"), ("r/s", "h:1")] {
            assert!(ReplicaSetFace::new(bad.0, bad.1).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn presents_as_mongos_without_backend_details() {
        let request = rawdoc! { "hello": 1, "helloOk": true, "$db": "admin" };
        let reply = hello_reply(&request, Command::Hello, &[], CTX);
        assert_eq!(reply.get_str("msg").unwrap(), "isdbgrid");
        assert!(reply.get_bool("isWritablePrimary").unwrap());
        assert!(reply.get_bool("helloOk").unwrap());
        assert_eq!(reply.get_i32("maxBsonObjectSize").unwrap(), 16 * 1024 * 1024);
        assert_eq!(reply.get_i32("maxMessageSizeBytes").unwrap(), 48_000_000);
        assert_eq!(reply.get_i32("maxWireVersion").unwrap(), 25);
        for absent in ["hosts", "setName", "me", "primary", "topologyVersion", "compression", "ismaster"] {
            assert!(reply.get(absent).unwrap().is_none(), "{absent} present");
        }
    }

    #[test]
    fn load_balanced_clients_get_a_stable_service_id() {
        let request = rawdoc! { "hello": 1, "loadBalanced": true };
        let first = hello_reply(&request, Command::Hello, &[], CTX);
        let second = hello_reply(&request, Command::Hello, &[], CTX);
        assert_eq!(first.get_object_id("serviceId").unwrap(), second.get_object_id("serviceId").unwrap());
        assert!(hello_reply(&rawdoc! { "hello": 1 }, Command::Hello, &[], CTX).get("serviceId").unwrap().is_none());
    }

    #[test]
    fn legacy_hello_uses_ismaster() {
        let reply = hello_reply(&rawdoc! { "isMaster": 1 }, Command::LegacyHello, &[], CTX);
        assert!(reply.get_bool("ismaster").unwrap());
        assert!(reply.get("isWritablePrimary").unwrap().is_none());
        assert!(reply.get("helloOk").unwrap().is_none());
    }

    #[test]
    fn negotiates_in_client_order_and_drops_unknown() {
        let request = rawdoc! { "hello": 1, "compression": ["lz4", "zlib", "zstd", "zlib"] };
        let chosen = negotiate_compression(&request);
        assert_eq!(chosen, vec![Compressor::Zlib, Compressor::Zstd]);
        let reply = hello_reply(&request, Command::Hello, &chosen, CTX);
        let names: Vec<_> = reply
            .get_array("compression")
            .unwrap()
            .into_iter()
            .map(|v| v.unwrap().as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["zlib", "zstd"]);
        assert!(negotiate_compression(&rawdoc! { "hello": 1 }).is_empty());
    }
}
