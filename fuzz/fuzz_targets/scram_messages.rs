//! SCRAM-SHA-256 as the proxy's server side sees it: a stored verifier string, a client-first-message and a
//! client-final-message, all arbitrary. The input is the three, separated by 0xff (never valid UTF-8):
//! `client-first 0xff client-final 0xff verifier`. The server nonce is random, so `%r` in the client-final
//! stands for the combined nonce from the server-first-message; without it the fuzzer could not get past the
//! nonce check.
#![no_main]

use std::str::FromStr;

use libfuzzer_sys::fuzz_target;
use tenantwall::auth::{ScramServer, ScramVerifier};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == 0xff);
    let client_first = parts.next().unwrap_or_default();
    let client_final = parts.next().unwrap_or_default();
    let verifier = parts.next().and_then(|v| std::str::from_utf8(v).ok()).and_then(|v| ScramVerifier::from_str(v).ok());
    if let Some(verifier) = &verifier {
        let text = verifier.to_string();
        let again = ScramVerifier::from_str(&text).expect("a verifier parses back from its Display form");
        assert_eq!(again.to_string(), text);
    }

    let Ok(first) = ScramServer::parse_client_first(client_first) else { return };
    let (server, server_first) = ScramServer::new(first, verifier.as_ref());
    let nonce = server_first
        .strip_prefix(b"r=")
        .and_then(|rest| rest.split(|b| *b == b',').next())
        .expect("server-first-message starts with r=<nonce>,");
    let _ = server.finish(&replace(client_final, b"%r", nonce));
});

fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(at) = rest.windows(from.len()).position(|w| w == from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}
