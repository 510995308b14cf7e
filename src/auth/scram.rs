//! SCRAM-SHA-256 ([RFC 5802] with the SHA-256 profile of [RFC 7677]) as MongoDB uses it, with no I/O.
//!
//! MongoDB departures from the RFC that this module follows (specifications `source/auth/auth.md`): user names are
//! not SASLprep'd (passwords are), channel binding is never offered (`n,,` from our client, `p=` refused by our
//! server), and iteration counts below [`MIN_ITERATIONS`] are refused by the client.
//!
//! The server keeps only `StoredKey` and `ServerKey` ([`ScramVerifier`]), never a password. A user that does not
//! exist gets a decoy verifier derived from a per-process secret and the user name, so the server-first-message
//! (salt length, iteration count, stability across attempts) looks like a real user's and the conversation fails
//! only at the proof, with the same error as a wrong password.
//!
//! [RFC 5802]: https://www.rfc-editor.org/rfc/rfc5802
//! [RFC 7677]: https://www.rfc-editor.org/rfc/rfc7677

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac, pbkdf2};

/// Lowest iteration count accepted anywhere (RFC 7677 section 4; MongoDB drivers refuse less).
pub const MIN_ITERATIONS: u32 = 4096;
/// Highest iteration count accepted anywhere. Bounds the PBKDF2 work a backend (or a mistyped verifier) can
/// demand: at this count a client spends seconds, not hours.
pub const MAX_ITERATIONS: u32 = 10_000_000;
/// Iteration count for new verifiers and for decoys. MongoDB's default for SCRAM-SHA-256. Verifiers generated with
/// another count make known users distinguishable from unknown ones by their `i=`.
pub const DEFAULT_ITERATIONS: u32 = 15_000;
/// Salt length of generated and decoy verifiers: MongoDB's for SCRAM-SHA-256 (digest length minus 4).
pub const SALT_LEN: usize = 28;
/// Shortest salt a stored verifier may have (PostgreSQL generates 16 bytes).
pub const MIN_SALT_LEN: usize = 16;
/// Longest SCRAM message accepted from a peer, in bytes. Real messages are under 300 bytes.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// SHA-256 output length; every key and signature here has it.
const KEY_LEN: usize = 32;
/// Random bytes in a nonce we generate; base64 of 24 bytes is 32 characters with no padding (MongoDB's choice).
const NONCE_BYTES: usize = 24;
/// MongoDB's server refuses shorter client nonces.
const MIN_CLIENT_NONCE_LEN: usize = 4;
const VERIFIER_PREFIX: &str = "SCRAM-SHA-256$";
const CLIENT_KEY: &[u8] = b"Client Key";
const SERVER_KEY: &[u8] = b"Server Key";

type Key = [u8; KEY_LEN];

/// Everything that can go wrong in a SCRAM exchange or with a stored verifier. No variant carries a password, a key
/// or a proof; [`Malformed`](Self::Malformed) names the broken rule, never the offending input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message does not follow the SCRAM grammar or breaks a rule of the exchange.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client asked for channel binding (`p=` gs2 flag), which is not supported.
    #[error("SCRAM channel binding is not supported")]
    ChannelBindingUnsupported,
    /// Wrong password or unknown user; deliberately the same error for both.
    #[error("authentication failed")]
    AuthenticationFailed,
    /// A stored verifier string is not `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    #[error("invalid SCRAM-SHA-256 verifier: {0}")]
    InvalidVerifier(String),
    /// A password or user name cannot be used (empty, or refused by SASLprep).
    #[error("invalid credential: {0}")]
    InvalidCredential(&'static str),
    /// An iteration count outside [`MIN_ITERATIONS`]`..=`[`MAX_ITERATIONS`].
    #[error("SCRAM iteration count {0} is outside {min}..={max}", min = MIN_ITERATIONS, max = MAX_ITERATIONS)]
    IterationCount(u32),
    /// The server's `v=` did not prove that it knows the credential.
    #[error("SCRAM server signature does not match")]
    ServerSignatureMismatch,
    /// The server ended the exchange with `e=<value>`; the value is kept only if it looks like an RFC 5802 error
    /// token, otherwise it reads `unrecognized`.
    #[error("server rejected SCRAM authentication: {0}")]
    ServerRejected(String),
    /// A client step was called twice or in the wrong order.
    #[error("SCRAM step called out of order")]
    OutOfOrder,
    /// The operating system's random number generator failed.
    #[error("system random number generator failed")]
    Random,
}

// ---------------------------------------------------------------------------------------------------------------
// Primitives

fn to_key(bytes: &[u8]) -> Key {
    // Callers pass SHA-256 outputs, always KEY_LEN bytes; zip keeps this panic-free regardless.
    let mut key = [0u8; KEY_LEN];
    for (k, b) in key.iter_mut().zip(bytes) {
        *k = *b;
    }
    key
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Key {
    to_key(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data).as_ref())
}

fn sha256(data: &[u8]) -> Key {
    to_key(digest::digest(&digest::SHA256, data).as_ref())
}

fn xor(a: &Key, b: &Key) -> Key {
    let mut out = [0u8; KEY_LEN];
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x ^ y;
    }
    out
}

/// `Hi(password, salt, i)` of RFC 5802: PBKDF2-HMAC-SHA-256 with one output block.
fn salted_password(prepped_password: &str, salt: &[u8], iterations: NonZeroU32) -> Key {
    let mut out = [0u8; KEY_LEN];
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, iterations, salt, prepped_password.as_bytes(), &mut out);
    out
}

fn random_bytes<const N: usize>() -> Result<[u8; N], ScramError> {
    let mut bytes = [0u8; N];
    SystemRandom::new().fill(&mut bytes).map_err(|_| ScramError::Random)?;
    Ok(bytes)
}

fn random_nonce() -> Result<String, ScramError> {
    random_bytes::<NONCE_BYTES>().map(|b| BASE64.encode(b))
}

fn check_iterations(iterations: u32) -> Result<NonZeroU32, ScramError> {
    if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
        return Err(ScramError::IterationCount(iterations));
    }
    NonZeroU32::new(iterations).ok_or(ScramError::IterationCount(iterations))
}

/// SASLprep (RFC 4013) as a stored string: prohibited and unassigned code points are refused.
fn prep_password(password: &str) -> Result<String, ScramError> {
    let prepped = stringprep::saslprep(password)
        .map_err(|_| ScramError::InvalidCredential("password contains characters that SASLprep prohibits"))?;
    if prepped.is_empty() {
        return Err(ScramError::InvalidCredential("password is empty"));
    }
    Ok(prepped.into_owned())
}

/// Keys generated once per process. Never leave the process and never appear in any output.
struct ProcessSecrets {
    /// Derives decoy verifiers for unknown users.
    decoy: hmac::Key,
    /// Compares keys by comparing their HMACs with ring's constant-time tag check, so the comparison leaks nothing
    /// about the keys even if it were to leak timing about its (random-looking) inputs.
    compare: hmac::Key,
}

/// `None` only if the system random number generator failed; callers then fail closed.
fn process_secrets() -> Option<&'static ProcessSecrets> {
    static SECRETS: OnceLock<ProcessSecrets> = OnceLock::new();
    if let Some(secrets) = SECRETS.get() {
        return Some(secrets);
    }
    let rng = SystemRandom::new();
    let secrets = ProcessSecrets {
        decoy: hmac::Key::generate(hmac::HMAC_SHA256, &rng).ok()?,
        compare: hmac::Key::generate(hmac::HMAC_SHA256, &rng).ok()?,
    };
    // A concurrent caller may have won the race; its secrets are as good as ours.
    Some(SECRETS.get_or_init(|| secrets))
}

/// Constant-time equality of two keys.
fn keys_match(candidate: &Key, expected: &Key) -> bool {
    let Some(secrets) = process_secrets() else { return false };
    let tag = hmac::sign(&secrets.compare, expected);
    hmac::verify(&secrets.compare, candidate, tag.as_ref()).is_ok()
}

// ---------------------------------------------------------------------------------------------------------------
// Message grammar

/// The message as text, after the checks every peer message gets.
fn message_text(message: &[u8]) -> Result<&str, ScramError> {
    if message.len() > MAX_MESSAGE_LEN {
        return Err(ScramError::Malformed("message too long"));
    }
    let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("message is not UTF-8"))?;
    if text.contains('\0') {
        return Err(ScramError::Malformed("message contains NUL"));
    }
    Ok(text)
}

/// The value of `field` if it is `<name>=<value>`.
fn attribute<'a>(field: Option<&'a str>, name: u8, missing: &'static str) -> Result<&'a str, ScramError> {
    field
        .filter(|f| f.as_bytes().starts_with(&[name, b'=']))
        // The two bytes just checked are ASCII, so 2 is a char boundary; `get` would not panic anyway.
        .and_then(|f| f.get(2..))
        .ok_or(ScramError::Malformed(missing))
}

/// Optional extensions after the defined attributes: RFC 5802 says to ignore them, but they must be `attr=value`.
fn check_extensions<'a>(fields: impl Iterator<Item = &'a str>) -> Result<(), ScramError> {
    for field in fields {
        let bytes = field.as_bytes();
        let well_formed = matches!(bytes, [a, b'=', ..] if a.is_ascii_alphabetic());
        if !well_formed {
            return Err(ScramError::Malformed("extension is not attr=value"));
        }
    }
    Ok(())
}

/// RFC 5802 `printable`: `%x21-2B / %x2D-7E`.
fn is_valid_nonce(nonce: &str) -> bool {
    nonce.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

fn decode_base64(value: &str, invalid: &'static str) -> Result<Vec<u8>, ScramError> {
    BASE64.decode(value).map_err(|_| ScramError::Malformed(invalid))
}

fn decode_key(value: &str, invalid: &'static str, wrong_len: &'static str) -> Result<Key, ScramError> {
    let bytes = decode_base64(value, invalid)?;
    if bytes.len() != KEY_LEN {
        return Err(ScramError::Malformed(wrong_len));
    }
    Ok(to_key(&bytes))
}

/// A decimal `u32` with nothing else (`u32::from_str` would also take a leading `+`).
fn parse_u32(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// RFC 5802 `saslname`: `,` and `=` travel as `=2C` and `=3D`.
fn escape_username(username: &str) -> String {
    username.replace('=', "=3D").replace(',', "=2C")
}

/// Inverse of [`escape_username`]; an `=` followed by anything but `2C` or `3D` fails (RFC 5802 section 5.1).
fn unescape_username(saslname: &str) -> Result<String, ScramError> {
    let mut parts = saslname.split('=');
    let mut out = String::with_capacity(saslname.len());
    out.push_str(parts.next().unwrap_or_default());
    for part in parts {
        if let Some(rest) = part.strip_prefix("2C") {
            out.push(',');
            out.push_str(rest);
        } else if let Some(rest) = part.strip_prefix("3D") {
            out.push('=');
            out.push_str(rest);
        } else {
            return Err(ScramError::Malformed("user name has '=' not followed by 2C or 3D"));
        }
    }
    if out.is_empty() {
        return Err(ScramError::Malformed("user name is empty"));
    }
    Ok(out)
}

/// RFC 5802 `server-error-value` tokens are short lowercase words joined by `-`; anything else is not repeated.
fn sanitize_server_error(value: &str) -> String {
    let plausible =
        !value.is_empty() && value.len() <= 64 && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if plausible {
        value.to_owned()
    } else {
        "unrecognized".to_owned()
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Stored credential

/// A stored credential in PostgreSQL's format:
/// `SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>`.
///
/// Holds no password. `StoredKey` lets the server check a proof and `ServerKey` lets it sign; whoever holds both can
/// impersonate the server to a client, and can log in as the user after observing one exchange (RFC 5802 section
/// 9), so treat the string as a secret. `Display` writes that string (for configuration files); `Debug` redacts it.
#[derive(Clone)]
pub struct ScramVerifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Key,
    server_key: Key,
}

impl ScramVerifier {
    /// Derives a verifier for `password` (SASLprep'd) with a fresh random salt of [`SALT_LEN`] bytes.
    /// `iterations` must be within [`MIN_ITERATIONS`]`..=`[`MAX_ITERATIONS`]; use [`DEFAULT_ITERATIONS`] unless
    /// there is a reason not to.
    pub fn generate(password: &str, iterations: u32) -> Result<Self, ScramError> {
        let salt: [u8; SALT_LEN] = random_bytes()?;
        Self::derive(password, &salt, iterations)
    }

    /// The PBKDF2 iteration count a client will have to run.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    fn derive(password: &str, salt: &[u8], iterations: u32) -> Result<Self, ScramError> {
        let rounds = check_iterations(iterations)?;
        let prepped = prep_password(password)?;
        let salted = salted_password(&prepped, salt, rounds);
        let client_key = hmac_sha256(&salted, CLIENT_KEY);
        Ok(Self {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted, SERVER_KEY),
        })
    }

    /// A verifier no password matches, stable for a given user name within this process, shaped like a generated
    /// one. Without process secrets (RNG failure) it is all zeros; the caller fails such conversations anyway.
    fn decoy(secrets: Option<&ProcessSecrets>, username: &str) -> Self {
        let derive = |label: &[u8]| -> Key {
            let Some(secrets) = secrets else { return [0u8; KEY_LEN] };
            let mut ctx = hmac::Context::with_key(&secrets.decoy);
            ctx.update(label);
            ctx.update(username.as_bytes());
            to_key(ctx.sign().as_ref())
        };
        let salt = derive(b"salt\0");
        Self {
            iterations: DEFAULT_ITERATIONS,
            salt: salt.iter().take(SALT_LEN).copied().collect(),
            stored_key: derive(b"stored-key\0"),
            server_key: derive(b"server-key\0"),
        }
    }
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .field("salt_len", &self.salt.len())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{VERIFIER_PREFIX}{}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key)
        )
    }
}

impl FromStr for ScramVerifier {
    type Err = ScramError;

    /// Errors say which part is wrong and never repeat the input, which may be key material.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |why: &str| ScramError::InvalidVerifier(why.to_owned());
        let rest = s.strip_prefix(VERIFIER_PREFIX).ok_or_else(|| invalid("must start with `SCRAM-SHA-256$`"))?;
        let (params, keys) = rest.split_once('$').ok_or_else(|| {
            invalid("expected `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`; no `$` after the salt")
        })?;
        let (iterations, salt) =
            params.split_once(':').ok_or_else(|| invalid("no `:` between the iteration count and the salt"))?;
        let (stored_key, server_key) =
            keys.split_once(':').ok_or_else(|| invalid("no `:` between StoredKey and ServerKey"))?;

        let iterations = parse_u32(iterations)
            .ok_or_else(|| invalid("iteration count is not a decimal number that fits 32 bits"))?;
        check_iterations(iterations).map_err(|e| ScramError::InvalidVerifier(e.to_string()))?;

        let salt = BASE64.decode(salt).map_err(|_| invalid("salt is not valid base64"))?;
        if salt.len() < MIN_SALT_LEN {
            return Err(ScramError::InvalidVerifier(format!(
                "salt is {} bytes; at least {MIN_SALT_LEN} are required",
                salt.len()
            )));
        }
        let key = |text: &str, name: &str| -> Result<Key, ScramError> {
            let bytes = BASE64.decode(text).map_err(|_| invalid(&format!("{name} is not valid base64")))?;
            if bytes.len() != KEY_LEN {
                return Err(ScramError::InvalidVerifier(format!(
                    "{name} is {} bytes; SHA-256 keys are {KEY_LEN}",
                    bytes.len()
                )));
            }
            Ok(to_key(&bytes))
        };
        Ok(Self {
            iterations,
            salt,
            stored_key: key(stored_key, "StoredKey")?,
            server_key: key(server_key, "ServerKey")?,
        })
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Server

/// A parsed client-first-message, ready for the user lookup.
#[derive(Debug, Clone)]
pub struct ClientFirst {
    /// `n,,` or `y,,`; the client-final-message must repeat it, base64-encoded, in `c=`.
    gs2_header: &'static str,
    /// client-first-message-bare, verbatim: part of the AuthMessage.
    bare: String,
    username: String,
    nonce: String,
}

impl ClientFirst {
    /// The user name, with `=2C` and `=3D` un-escaped. Not SASLprep'd (MongoDB compares it byte for byte).
    pub fn username(&self) -> &str {
        &self.username
    }
}

/// The server side of one SCRAM-SHA-256 conversation.
pub struct ScramServer {
    username: String,
    gs2_header: &'static str,
    /// Client nonce followed by ours.
    nonce: String,
    /// client-first-message-bare "," server-first-message.
    auth_prefix: String,
    stored_key: Key,
    server_key: Key,
    /// Unknown user, or the conversation could not be set up securely: no proof may succeed.
    doomed: bool,
}

impl ScramServer {
    /// Parses client-first-message (`n,,n=<user>,r=<nonce>`). Refuses channel binding (`p=`), an authorization
    /// identity, mandatory extensions (`m=`), a missing or malformed user name and a nonce shorter than 4
    /// characters. `y` is accepted like `n`: the client could have bound the channel but thinks we cannot, which
    /// is true.
    pub fn parse_client_first(client_first: &[u8]) -> Result<ClientFirst, ScramError> {
        let text = message_text(client_first)?;
        let (cbind_flag, rest) = text.split_once(',').ok_or(ScramError::Malformed("missing gs2 header"))?;
        let gs2_header = match cbind_flag {
            "n" => "n,,",
            "y" => "y,,",
            flag if flag.starts_with("p=") => return Err(ScramError::ChannelBindingUnsupported),
            _ => return Err(ScramError::Malformed("unknown gs2 channel-binding flag")),
        };
        let (authzid, bare) = rest.split_once(',').ok_or(ScramError::Malformed("missing gs2 header"))?;
        if !authzid.is_empty() {
            return Err(ScramError::Malformed("authorization identity is not supported"));
        }
        if bare.starts_with("m=") {
            return Err(ScramError::Malformed("mandatory extensions are not supported"));
        }
        let mut fields = bare.split(',');
        let username = unescape_username(attribute(fields.next(), b'n', "missing user name")?)?;
        let nonce = attribute(fields.next(), b'r', "missing nonce")?;
        if nonce.len() < MIN_CLIENT_NONCE_LEN {
            return Err(ScramError::Malformed("client nonce is shorter than 4 characters"));
        }
        if !is_valid_nonce(nonce) {
            return Err(ScramError::Malformed("nonce has characters outside printable ASCII or a comma"));
        }
        check_extensions(fields)?;
        Ok(ClientFirst { gs2_header, bare: bare.to_owned(), username, nonce: nonce.to_owned() })
    }

    /// Starts the conversation and returns the server-first-message (`r=<nonce>,s=<salt>,i=<iterations>`).
    ///
    /// `verifier` is `None` for an unknown user: the message then carries a decoy salt and [`DEFAULT_ITERATIONS`],
    /// stable for that user name within this process, and [`finish`](Self::finish) fails like a wrong password.
    /// If the system random number generator fails, the conversation is set up the same way but can never
    /// succeed.
    pub fn new(client_first: ClientFirst, verifier: Option<&ScramVerifier>) -> (ScramServer, Vec<u8>) {
        let (server_nonce, random_ok) = match random_nonce() {
            Ok(nonce) => (nonce, true),
            Err(_) => (BASE64.encode([0u8; NONCE_BYTES]), false),
        };
        let secrets = process_secrets();
        let (mut server, message) = match verifier {
            Some(verifier) => Self::with_server_nonce(client_first, verifier, &server_nonce),
            None => {
                let decoy = ScramVerifier::decoy(secrets, &client_first.username);
                let (mut server, message) = Self::with_server_nonce(client_first, &decoy, &server_nonce);
                server.doomed = true;
                (server, message)
            }
        };
        server.doomed |= !random_ok || secrets.is_none();
        (server, message)
    }

    fn with_server_nonce(client_first: ClientFirst, verifier: &ScramVerifier, server_nonce: &str) -> (Self, Vec<u8>) {
        let ClientFirst { gs2_header, bare, username, nonce: client_nonce } = client_first;
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!("r={nonce},s={},i={}", BASE64.encode(&verifier.salt), verifier.iterations);
        let server = Self {
            username,
            gs2_header,
            nonce,
            auth_prefix: format!("{bare},{server_first}"),
            stored_key: verifier.stored_key,
            server_key: verifier.server_key,
            doomed: false,
        };
        (server, server_first.into_bytes())
    }

    /// Checks client-final-message (`c=biws,r=<nonce>,p=<proof>`) and returns server-final-message
    /// (`v=<ServerSignature>`).
    ///
    /// `c=` must be the base64 of the gs2 header the client sent (`biws` for `n,,`, `eSws` for `y,,`), `r=` the
    /// combined nonce, and the proof is checked in constant time. A wrong proof and an unknown user both give
    /// [`ScramError::AuthenticationFailed`]; grammar violations give [`ScramError::Malformed`].
    pub fn finish(self, client_final: &[u8]) -> Result<Vec<u8>, ScramError> {
        let text = message_text(client_final)?;
        let (without_proof, proof) = text.rsplit_once(',').ok_or(ScramError::Malformed("missing proof"))?;
        let proof = attribute(Some(proof), b'p', "proof must be the last attribute")?;
        let proof = decode_key(proof, "proof is not valid base64", "proof is not 32 bytes")?;

        let mut fields = without_proof.split(',');
        let channel_binding = attribute(fields.next(), b'c', "missing channel binding")?;
        if channel_binding != BASE64.encode(self.gs2_header) {
            return Err(ScramError::Malformed("channel binding does not repeat the gs2 header"));
        }
        let nonce = attribute(fields.next(), b'r', "missing nonce")?;
        if nonce != self.nonce {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        check_extensions(fields)?;

        let auth_message = format!("{},{without_proof}", self.auth_prefix);
        let client_signature = hmac_sha256(&self.stored_key, auth_message.as_bytes());
        let client_key = xor(&proof, &client_signature);
        let proof_ok = keys_match(&sha256(&client_key), &self.stored_key);
        if !proof_ok || self.doomed {
            return Err(ScramError::AuthenticationFailed);
        }
        let server_signature = hmac_sha256(&self.server_key, auth_message.as_bytes());
        Ok(format!("v={}", BASE64.encode(server_signature)).into_bytes())
    }

    /// The un-escaped user name from the client-first-message.
    pub fn username(&self) -> &str {
        &self.username
    }
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramServer").field("username", &self.username).finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Client

/// The client side of one SCRAM-SHA-256 conversation: the proxy authenticating to a backend.
pub struct ScramClient {
    username: String,
    nonce: String,
    /// client-first-message-bare, verbatim: part of the AuthMessage.
    bare: String,
    state: ClientState,
}

enum ClientState {
    AwaitingServerFirst {
        prepped_password: String,
    },
    AwaitingServerFinal {
        server_key: Key,
        auth_message: String,
    },
    /// A step failed; the conversation is over.
    Spent,
}

/// A checked server-first-message.
#[derive(Debug)]
pub struct ServerFirst {
    nonce: String,
    salt: Vec<u8>,
    rounds: NonZeroU32,
    text: String,
}

impl ServerFirst {
    /// The salt the server holds for the user.
    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    /// The PBKDF2 iteration count the server holds for the user.
    pub fn iterations(&self) -> u32 {
        self.rounds.get()
    }
}

/// The keys a client derives from its password, a salt and an iteration count. The same for every conversation
/// with those three, so a client that authenticates many connections derives them once, as drivers do.
#[derive(Clone)]
pub struct ClientKeys {
    client_key: Key,
    stored_key: Key,
    server_key: Key,
}

impl ClientKeys {
    fn from_salted(salted: &Key) -> Self {
        let client_key = hmac_sha256(salted, CLIENT_KEY);
        Self { client_key, stored_key: sha256(&client_key), server_key: hmac_sha256(salted, SERVER_KEY) }
    }
}

impl fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientKeys(..)")
    }
}

impl ScramClient {
    /// Starts a conversation; returns the client and the client-first-message (`n,,n=<user>,r=<nonce>`).
    /// The user name is escaped but not SASLprep'd (MongoDB); the password is SASLprep'd.
    pub fn new(username: &str, password: &str) -> Result<(ScramClient, Vec<u8>), ScramError> {
        Self::with_nonce(username, password, random_nonce()?)
    }

    fn with_nonce(username: &str, password: &str, nonce: String) -> Result<(Self, Vec<u8>), ScramError> {
        if username.is_empty() {
            return Err(ScramError::InvalidCredential("user name is empty"));
        }
        if username.contains('\0') {
            return Err(ScramError::InvalidCredential("user name contains NUL"));
        }
        let prepped_password = prep_password(password)?;
        let bare = format!("n={},r={nonce}", escape_username(username));
        let client_first = format!("n,,{bare}").into_bytes();
        let client = Self {
            username: username.to_owned(),
            nonce,
            bare,
            state: ClientState::AwaitingServerFirst { prepped_password },
        };
        Ok((client, client_first))
    }

    /// Answers server-first-message with client-final-message. The server nonce must extend ours, the salt must be
    /// valid base64 and the iteration count within [`MIN_ITERATIONS`]`..=`[`MAX_ITERATIONS`]. Runs PBKDF2; a caller
    /// that authenticates often splits this into [`read_server_first`](Self::read_server_first),
    /// [`ClientKeys::derive`] (cached per salt and iteration count) and [`answer`](Self::answer).
    pub fn handle_server_first(&mut self, server_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, ClientState::AwaitingServerFirst { .. }) {
            return Err(ScramError::OutOfOrder);
        }
        let answered = self.read_server_first(server_first).and_then(|first| {
            let keys = self.derive_keys(&first)?;
            self.answer(&first, &keys)
        });
        if answered.is_err() {
            // A conversation that went wrong once is over.
            self.state = ClientState::Spent;
        }
        answered
    }

    /// Checks server-first-message and returns what the key derivation and the answer need.
    pub fn read_server_first(&self, server_first: &[u8]) -> Result<ServerFirst, ScramError> {
        if !matches!(self.state, ClientState::AwaitingServerFirst { .. }) {
            return Err(ScramError::OutOfOrder);
        }
        let text = message_text(server_first)?;
        if text.starts_with("m=") {
            return Err(ScramError::Malformed("mandatory extensions are not supported"));
        }
        let mut fields = text.split(',');
        let nonce = attribute(fields.next(), b'r', "missing nonce")?;
        if nonce.len() <= self.nonce.len() || !nonce.starts_with(&self.nonce) {
            return Err(ScramError::Malformed("server nonce does not extend the client nonce"));
        }
        if !is_valid_nonce(nonce) {
            return Err(ScramError::Malformed("nonce has characters outside printable ASCII or a comma"));
        }
        let salt = decode_base64(attribute(fields.next(), b's', "missing salt")?, "salt is not valid base64")?;
        if salt.is_empty() {
            return Err(ScramError::Malformed("salt is empty"));
        }
        let iterations = parse_u32(attribute(fields.next(), b'i', "missing iteration count")?)
            .ok_or(ScramError::Malformed("iteration count is not a decimal number"))?;
        let rounds = check_iterations(iterations)?;
        check_extensions(fields)?;
        Ok(ServerFirst { nonce: nonce.to_owned(), salt, rounds, text: text.to_owned() })
    }

    /// Derives the keys for `first` from this conversation's password (PBKDF2: milliseconds of CPU).
    pub fn derive_keys(&self, first: &ServerFirst) -> Result<ClientKeys, ScramError> {
        self.derive_keys_for(&first.salt, first.rounds.get())
    }

    /// Derives the keys for a salt and iteration count (as a [`ServerFirst`] carries them).
    pub fn derive_keys_for(&self, salt: &[u8], iterations: u32) -> Result<ClientKeys, ScramError> {
        let rounds = check_iterations(iterations)?;
        match &self.state {
            ClientState::AwaitingServerFirst { prepped_password } => {
                Ok(ClientKeys::from_salted(&salted_password(prepped_password, salt, rounds)))
            }
            _ => Err(ScramError::OutOfOrder),
        }
    }

    /// The client-final-message for `first`, proved with `keys` (derived from this conversation's password with
    /// `first`'s salt and iteration count).
    pub fn answer(&mut self, first: &ServerFirst, keys: &ClientKeys) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, ClientState::AwaitingServerFirst { .. }) {
            return Err(ScramError::OutOfOrder);
        }
        let without_proof = format!("c=biws,r={}", first.nonce);
        let auth_message = format!("{},{},{without_proof}", self.bare, first.text);
        let client_signature = hmac_sha256(&keys.stored_key, auth_message.as_bytes());
        let proof = xor(&keys.client_key, &client_signature);
        let client_final = format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes();
        self.state = ClientState::AwaitingServerFinal { server_key: keys.server_key, auth_message };
        Ok(client_final)
    }

    /// Checks server-final-message: `v=` must carry the server signature (compared in constant time); `e=` is
    /// the server refusing.
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let ClientState::AwaitingServerFinal { server_key, auth_message } = &self.state else {
            return Err(ScramError::OutOfOrder);
        };
        let text = message_text(server_final)?;
        let mut fields = text.split(',');
        let first = fields.next();
        if let Some(error) = first.and_then(|f| f.strip_prefix("e=")) {
            return Err(ScramError::ServerRejected(sanitize_server_error(error)));
        }
        let signature = attribute(first, b'v', "missing server signature")?;
        let signature = decode_base64(signature, "server signature is not valid base64")?;
        check_extensions(fields)?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, server_key);
        hmac::verify(&key, auth_message.as_bytes(), &signature).map_err(|_| ScramError::ServerSignatureMismatch)
    }

    /// The user name as given to [`new`](Self::new).
    pub fn username(&self) -> &str {
        &self.username
    }
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClient").field("username", &self.username).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677 section 3.
    const USER: &str = "user";
    const PASSWORD: &str = "pencil";
    const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const SALT_B64: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str =
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    /// The verifier behind the example, derived once: PBKDF2 is slow in debug builds.
    fn rfc_verifier() -> ScramVerifier {
        static VERIFIER: OnceLock<ScramVerifier> = OnceLock::new();
        VERIFIER
            .get_or_init(|| {
                let salt = BASE64.decode(SALT_B64).unwrap();
                ScramVerifier::derive(PASSWORD, &salt, 4096).unwrap()
            })
            .clone()
    }

    fn rfc_server() -> ScramServer {
        let first = ScramServer::parse_client_first(CLIENT_FIRST.as_bytes()).unwrap();
        let (server, _) = ScramServer::with_server_nonce(first, &rfc_verifier(), SERVER_NONCE);
        server
    }

    /// A cheap verifier for tests that only need a real one.
    fn verifier(password: &str) -> ScramVerifier {
        ScramVerifier::generate(password, MIN_ITERATIONS).unwrap()
    }

    /// Runs a whole conversation; returns the server's verdict on the client-final-message.
    fn converse(user: &str, password: &str, verifier: Option<&ScramVerifier>) -> Result<(), ScramError> {
        let (mut client, client_first) = ScramClient::new(user, password)?;
        let first = ScramServer::parse_client_first(&client_first)?;
        assert_eq!(first.username(), user);
        let (server, server_first) = ScramServer::new(first, verifier);
        let client_final = client.handle_server_first(&server_first)?;
        let server_final = server.finish(&client_final)?;
        client.verify_server_final(&server_final)
    }

    #[test]
    fn rfc7677_server_reproduces_the_example() {
        let first = ScramServer::parse_client_first(CLIENT_FIRST.as_bytes()).unwrap();
        assert_eq!(first.username(), USER);
        let (server, server_first) = ScramServer::with_server_nonce(first, &rfc_verifier(), SERVER_NONCE);
        assert_eq!(server_first, SERVER_FIRST.as_bytes());
        assert_eq!(server.username(), USER);
        assert_eq!(server.finish(CLIENT_FINAL.as_bytes()).unwrap(), SERVER_FINAL.as_bytes());
    }

    #[test]
    fn rfc7677_client_reproduces_the_example() {
        let (mut client, client_first) = ScramClient::with_nonce(USER, PASSWORD, CLIENT_NONCE.to_owned()).unwrap();
        assert_eq!(client_first, CLIENT_FIRST.as_bytes());
        assert_eq!(client.handle_server_first(SERVER_FIRST.as_bytes()).unwrap(), CLIENT_FINAL.as_bytes());
        client.verify_server_final(SERVER_FINAL.as_bytes()).unwrap();
        assert_eq!(client.username(), USER);
    }

    #[test]
    fn rfc7677_verifier_matches_the_example_keys() {
        // The keys behind the example, as PostgreSQL would store them.
        let text = rfc_verifier().to_string();
        assert!(text.starts_with("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"), "{text}");
        let parsed: ScramVerifier = text.parse().unwrap();
        assert_eq!(parsed.to_string(), text);
        let first = ScramServer::parse_client_first(CLIENT_FIRST.as_bytes()).unwrap();
        let (server, _) = ScramServer::with_server_nonce(first, &parsed, SERVER_NONCE);
        assert_eq!(server.finish(CLIENT_FINAL.as_bytes()).unwrap(), SERVER_FINAL.as_bytes());
    }

    #[test]
    fn client_and_server_agree_with_a_generated_verifier() {
        let v = verifier("correct horse");
        assert_eq!(v.iterations(), MIN_ITERATIONS);
        converse("alice", "correct horse", Some(&v)).unwrap();
        // Through the stored text form too.
        let stored: ScramVerifier = v.to_string().parse().unwrap();
        converse("alice", "correct horse", Some(&stored)).unwrap();
    }

    #[test]
    fn generated_verifiers_use_fresh_salts() {
        let a = verifier("pw");
        let b = verifier("pw");
        assert_eq!(a.salt.len(), SALT_LEN);
        assert_ne!(a.salt, b.salt);
        assert_ne!(a.to_string(), b.to_string());
    }

    #[test]
    fn wrong_password_and_unknown_user_fail_alike() {
        let v = verifier("right");
        let wrong = converse("alice", "wrong", Some(&v)).unwrap_err();
        let unknown = converse("mallory", "right", None).unwrap_err();
        assert_eq!(wrong, ScramError::AuthenticationFailed);
        assert_eq!(unknown, wrong);
        assert_eq!(unknown.to_string(), wrong.to_string());
    }

    #[test]
    fn doomed_conversations_fail_even_with_a_correct_proof() {
        // Unknown users (and RNG failures) are doomed; a proof that would verify must still fail.
        let mut server = rfc_server();
        server.doomed = true;
        assert_eq!(server.finish(CLIENT_FINAL.as_bytes()), Err(ScramError::AuthenticationFailed));
        let first = ScramServer::parse_client_first(CLIENT_FIRST.as_bytes()).unwrap();
        let (server, _) = ScramServer::new(first, None);
        assert!(server.doomed);
        let first = ScramServer::parse_client_first(CLIENT_FIRST.as_bytes()).unwrap();
        let (server, _) = ScramServer::new(first, Some(&rfc_verifier()));
        assert!(!server.doomed);
    }

    #[test]
    fn decoy_looks_like_a_real_user_and_is_stable() {
        let salt_and_iterations = |user: &str| {
            let first = ScramServer::parse_client_first(format!("n,,n={user},r=abcdefgh").as_bytes()).unwrap();
            let (_, server_first) = ScramServer::new(first, None);
            let text = String::from_utf8(server_first).unwrap();
            let mut fields = text.split(',').skip(1);
            (fields.next().unwrap().to_owned(), fields.next().unwrap().to_owned())
        };
        let (salt, iterations) = salt_and_iterations("ghost");
        assert_eq!(salt_and_iterations("ghost"), (salt.clone(), iterations.clone()));
        assert_ne!(salt_and_iterations("phantom").0, salt);
        assert_eq!(iterations, format!("i={DEFAULT_ITERATIONS}"));
        let salt = BASE64.decode(salt.strip_prefix("s=").unwrap()).unwrap();
        assert_eq!(salt.len(), SALT_LEN);
    }

    #[test]
    fn server_nonce_is_fresh_and_extends_the_client_nonce() {
        let nonce_of = || {
            let first = ScramServer::parse_client_first(b"n,,n=u,r=abcd").unwrap();
            let (_, server_first) = ScramServer::new(first, Some(&rfc_verifier()));
            let text = String::from_utf8(server_first).unwrap();
            text.split(',').next().unwrap().strip_prefix("r=abcd").unwrap().to_owned()
        };
        let a = nonce_of();
        assert_eq!(BASE64.decode(&a).unwrap().len(), NONCE_BYTES);
        assert_ne!(a, nonce_of());
    }

    #[test]
    fn saslprep_applies_to_passwords() {
        let salt = [7u8; 16];
        let key = |pw: &str| ScramVerifier::derive(pw, &salt, MIN_ITERATIONS).map(|v| v.to_string());
        // U+00AD SOFT HYPHEN maps to nothing.
        assert_eq!(key("pen\u{AD}cil").unwrap(), key("pencil").unwrap());
        // Non-ASCII spaces map to U+0020.
        assert_eq!(key("a\u{A0}b").unwrap(), key("a b").unwrap());
        assert_eq!(key("a\u{2003}b").unwrap(), key("a b").unwrap());
        // NFKC (RFC 4013 examples): U+2168 ROMAN NUMERAL NINE is "IX", U+00AA is "a".
        assert_eq!(key("\u{2168}").unwrap(), key("IX").unwrap());
        assert_eq!(key("\u{AA}").unwrap(), key("a").unwrap());
        // Case is kept.
        assert_ne!(key("USER").unwrap(), key("user").unwrap());
        // Prohibited output: control characters and bidi violations.
        let prohibited = ScramError::InvalidCredential("password contains characters that SASLprep prohibits");
        assert_eq!(key("pass\u{7}word"), Err(prohibited.clone()));
        assert_eq!(key("\0"), Err(prohibited.clone()));
        assert_eq!(key("\u{627}\u{31}"), Err(prohibited.clone()));
        // Nothing left after mapping.
        assert_eq!(key("\u{AD}"), Err(ScramError::InvalidCredential("password is empty")));
        assert_eq!(key(""), Err(ScramError::InvalidCredential("password is empty")));
        // The client preps the same way, so a differently spelled password still logs in.
        let v = ScramVerifier::generate("pen\u{AD}cil", MIN_ITERATIONS).unwrap();
        converse("u", "pencil", Some(&v)).unwrap();
        assert_eq!(ScramClient::new("u", "bad\u{7}").unwrap_err(), prohibited);
    }

    #[test]
    fn user_names_are_escaped_and_unescaped() {
        let (_, client_first) = ScramClient::with_nonce("a,b=c", "pw", "nonce".to_owned()).unwrap();
        assert_eq!(client_first, b"n,,n=a=2Cb=3Dc,r=nonce");
        let first = ScramServer::parse_client_first(&client_first).unwrap();
        assert_eq!(first.username(), "a,b=c");
        assert_eq!(unescape_username("=3D2C").unwrap(), "=2C");
        assert_eq!(escape_username("=2C"), "=3D2C");
        for bad in ["a=", "a=2", "a=2c", "a=3d", "a=41", "=", "a==2C"] {
            assert_eq!(
                unescape_username(bad),
                Err(ScramError::Malformed("user name has '=' not followed by 2C or 3D")),
                "{bad}"
            );
        }
        // Not SASLprep'd: a user name is looked up byte for byte.
        let first = ScramServer::parse_client_first("n,,n=\u{2168},r=abcd".as_bytes()).unwrap();
        assert_eq!(first.username(), "\u{2168}");
        let v = verifier("pw");
        converse("we,ird=na,me", "pw", Some(&v)).unwrap();
        assert_eq!(ScramClient::new("", "pw").unwrap_err(), ScramError::InvalidCredential("user name is empty"));
        assert!(ScramClient::new("a\0b", "pw").is_err());
    }

    #[test]
    fn gs2_y_flag_is_accepted_and_must_be_repeated() {
        let v = rfc_verifier();
        let first = ScramServer::parse_client_first(b"y,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        let (server, _) = ScramServer::with_server_nonce(first, &v, SERVER_NONCE);
        // The RFC example carries c=biws (for "n,,"); after "y,," the client must send c=eSws.
        let err = server.finish(CLIENT_FINAL.as_bytes()).unwrap_err();
        assert_eq!(err, ScramError::Malformed("channel binding does not repeat the gs2 header"));

        let (mut client, _) = ScramClient::new("user", "pencil").unwrap();
        let nonce = client.nonce.clone();
        let first = ScramServer::parse_client_first(format!("y,,n=user,r={nonce}").as_bytes()).unwrap();
        let (server, server_first) = ScramServer::with_server_nonce(first, &v, "xyz");
        let client_final = String::from_utf8(client.handle_server_first(&server_first).unwrap()).unwrap();
        // Our client always sends "n,,", so re-derive its proof for a "y,," conversation by hand.
        let prepped = prep_password("pencil").unwrap();
        let salted = salted_password(&prepped, &v.salt, check_iterations(v.iterations).unwrap());
        let client_key = hmac_sha256(&salted, CLIENT_KEY);
        let without_proof = format!("c=eSws,r={nonce}xyz");
        let auth_message = format!("n=user,r={nonce},{},{without_proof}", String::from_utf8(server_first).unwrap());
        let proof = xor(&client_key, &hmac_sha256(&sha256(&client_key), auth_message.as_bytes()));
        assert!(client_final.starts_with("c=biws,"));
        let y_final = format!("{without_proof},p={}", BASE64.encode(proof));
        server.finish(y_final.as_bytes()).unwrap();
    }

    #[test]
    fn malformed_client_first_is_refused() {
        use ScramError::{ChannelBindingUnsupported as Cb, Malformed as M};
        let cases: &[(&[u8], ScramError)] = &[
            (b"", M("missing gs2 header")),
            (b"n", M("missing gs2 header")),
            (b"n,", M("missing gs2 header")),
            (b"n,,", M("missing user name")),
            (b"p=tls-unique,,n=user,r=abcd", Cb),
            (b"p=,,n=user,r=abcd", Cb),
            (b"x,,n=user,r=abcd", M("unknown gs2 channel-binding flag")),
            (b"N,,n=user,r=abcd", M("unknown gs2 channel-binding flag")),
            (b",,n=user,r=abcd", M("unknown gs2 channel-binding flag")),
            (b"n,a=user,n=user,r=abcd", M("authorization identity is not supported")),
            (b"n,a=,n=user,r=abcd", M("authorization identity is not supported")),
            (b"n,,m=ext,n=user,r=abcd", M("mandatory extensions are not supported")),
            (b"n,,r=abcd,n=user", M("missing user name")),
            (b"n,,n=,r=abcd", M("user name is empty")),
            (b"n,,n=user", M("missing nonce")),
            (b"n,,n=user,", M("missing nonce")),
            (b"n,,n=user,r=", M("client nonce is shorter than 4 characters")),
            (b"n,,n=user,r=abc", M("client nonce is shorter than 4 characters")),
            (b"n,,n=user,r=ab\x7fcd", M("nonce has characters outside printable ASCII or a comma")),
            (b"n,,n=user,r=ab cd", M("nonce has characters outside printable ASCII or a comma")),
            (b"n,,n=user,r=abcd,", M("extension is not attr=value")),
            (b"n,,n=user,r=abcd,1=x", M("extension is not attr=value")),
            (b"n,,n=user,r=abcd,xyz", M("extension is not attr=value")),
            (b"n,,n=us\xffer,r=abcd", M("message is not UTF-8")),
            (b"n,,n=us\0er,r=abcd", M("message contains NUL")),
            (b"n,,n=user,,r=abcd", M("missing nonce")),
        ];
        for (input, expected) in cases {
            let got = ScramServer::parse_client_first(input).unwrap_err();
            assert_eq!(&got, expected, "{}", String::from_utf8_lossy(input));
        }
        let long = format!("n,,n=user,r={}", "a".repeat(MAX_MESSAGE_LEN));
        assert_eq!(ScramServer::parse_client_first(long.as_bytes()).unwrap_err(), M("message too long"));
        // Optional extensions are ignored (RFC 5802), y is accepted.
        let first = ScramServer::parse_client_first(b"n,,n=user,r=abcd,x=1,y=").unwrap();
        assert_eq!(first.username(), "user");
        assert_eq!(ScramServer::parse_client_first(b"y,,n=user,r=abcd").unwrap().gs2_header, "y,,");
    }

    #[test]
    fn malformed_client_final_is_refused() {
        use ScramError::Malformed as M;
        let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let proof = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let cases: Vec<(String, ScramError)> = vec![
            (String::new(), M("missing proof")),
            (format!("c=biws,r={nonce}"), M("proof must be the last attribute")),
            (format!("c=biws,p={proof},r={nonce}"), M("proof must be the last attribute")),
            (format!("c=biws,r={nonce},p="), M("proof is not 32 bytes")),
            (format!("c=biws,r={nonce},p=!!!!"), M("proof is not valid base64")),
            (format!("c=biws,r={nonce},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ"), M("proof is not valid base64")),
            (format!("c=biws,r={nonce},p=AAAA"), M("proof is not 32 bytes")),
            (format!("r={nonce},p={proof}"), M("missing channel binding")),
            (format!("c=eSws,r={nonce},p={proof}"), M("channel binding does not repeat the gs2 header")),
            (format!("c=,r={nonce},p={proof}"), M("channel binding does not repeat the gs2 header")),
            (format!("c=biws,p={proof}"), M("missing nonce")),
            (format!("c=biws,r=rOprNGfwEbeRWgbNEkqO,p={proof}"), M("nonce does not match")),
            (format!("c=biws,r={nonce}x,p={proof}"), M("nonce does not match")),
            (format!("c=biws,r={nonce},junk,p={proof}"), M("extension is not attr=value")),
            (format!("c=biws,r={nonce},p={proof}\0"), M("message contains NUL")),
        ];
        for (input, expected) in cases {
            assert_eq!(rfc_server().finish(input.as_bytes()).unwrap_err(), expected, "{input}");
        }
        assert_eq!(rfc_server().finish(b"\xff\xfe").unwrap_err(), M("message is not UTF-8"));
        // A well-formed but wrong proof.
        let wrong = format!("c=biws,r={nonce},p={}", BASE64.encode([0u8; 32]));
        assert_eq!(rfc_server().finish(wrong.as_bytes()).unwrap_err(), ScramError::AuthenticationFailed);
        // Extensions before the proof are ignored but covered by the AuthMessage, so the RFC proof no longer fits.
        let extended = format!("c=biws,r={nonce},x=1,p={proof}");
        assert_eq!(rfc_server().finish(extended.as_bytes()).unwrap_err(), ScramError::AuthenticationFailed);
    }

    #[test]
    fn malformed_server_first_is_refused() {
        use ScramError::Malformed as M;
        let client = || ScramClient::with_nonce(USER, PASSWORD, CLIENT_NONCE.to_owned()).unwrap().0;
        let n = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let cases: Vec<(String, ScramError)> = vec![
            (String::new(), M("missing nonce")),
            (format!("m=x,r={n},s={SALT_B64},i=4096"), M("mandatory extensions are not supported")),
            (format!("s={SALT_B64},r={n},i=4096"), M("missing nonce")),
            (format!("r=other{n},s={SALT_B64},i=4096"), M("server nonce does not extend the client nonce")),
            (format!("r={CLIENT_NONCE},s={SALT_B64},i=4096"), M("server nonce does not extend the client nonce")),
            (format!("r=rOprNG,s={SALT_B64},i=4096"), M("server nonce does not extend the client nonce")),
            (format!("r={n} x,s={SALT_B64},i=4096"), M("nonce has characters outside printable ASCII or a comma")),
            (format!("r={n}"), M("missing salt")),
            (format!("r={n},s=%%%,i=4096"), M("salt is not valid base64")),
            (format!("r={n},s=,i=4096"), M("salt is empty")),
            (format!("r={n},s={SALT_B64}"), M("missing iteration count")),
            (format!("r={n},s={SALT_B64},i="), M("iteration count is not a decimal number")),
            (format!("r={n},s={SALT_B64},i=+4096"), M("iteration count is not a decimal number")),
            (format!("r={n},s={SALT_B64},i=99999999999"), M("iteration count is not a decimal number")),
            (format!("r={n},s={SALT_B64},i=4095"), ScramError::IterationCount(4095)),
            (format!("r={n},s={SALT_B64},i=0"), ScramError::IterationCount(0)),
            (format!("r={n},s={SALT_B64},i=4294967295"), ScramError::IterationCount(u32::MAX)),
            (format!("r={n},s={SALT_B64},i=4096,bogus"), M("extension is not attr=value")),
        ];
        for (input, expected) in cases {
            let mut c = client();
            assert_eq!(c.handle_server_first(input.as_bytes()).unwrap_err(), expected, "{input}");
            // A failed step ends the conversation.
            assert_eq!(c.handle_server_first(SERVER_FIRST.as_bytes()).unwrap_err(), ScramError::OutOfOrder);
        }
    }

    #[test]
    fn server_final_is_checked() {
        use ScramError::Malformed as M;
        let ready = || {
            let (mut c, _) = ScramClient::with_nonce(USER, PASSWORD, CLIENT_NONCE.to_owned()).unwrap();
            c.handle_server_first(SERVER_FIRST.as_bytes()).unwrap();
            c
        };
        let c = ready();
        let other = format!("v={}", BASE64.encode([1u8; 32]));
        assert_eq!(c.verify_server_final(other.as_bytes()), Err(ScramError::ServerSignatureMismatch));
        assert_eq!(c.verify_server_final(b"v="), Err(ScramError::ServerSignatureMismatch));
        assert_eq!(c.verify_server_final(b"v=AAAA"), Err(ScramError::ServerSignatureMismatch));
        assert_eq!(c.verify_server_final(b"v=%%"), Err(M("server signature is not valid base64")));
        assert_eq!(c.verify_server_final(b""), Err(M("missing server signature")));
        assert_eq!(c.verify_server_final(b"x=1"), Err(M("missing server signature")));
        assert_eq!(
            c.verify_server_final(b"e=invalid-proof"),
            Err(ScramError::ServerRejected("invalid-proof".to_owned()))
        );
        assert_eq!(
            c.verify_server_final("e=<script> ünïcode".as_bytes()),
            Err(ScramError::ServerRejected("unrecognized".to_owned()))
        );
        // Extensions after v= are ignored.
        c.verify_server_final(format!("{SERVER_FINAL},x=1").as_bytes()).unwrap();
        // Verifying does not consume the state.
        c.verify_server_final(SERVER_FINAL.as_bytes()).unwrap();
    }

    #[test]
    fn client_steps_out_of_order_are_refused() {
        let (mut c, _) = ScramClient::with_nonce(USER, PASSWORD, CLIENT_NONCE.to_owned()).unwrap();
        assert_eq!(c.verify_server_final(SERVER_FINAL.as_bytes()), Err(ScramError::OutOfOrder));
        c.handle_server_first(SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(c.handle_server_first(SERVER_FIRST.as_bytes()), Err(ScramError::OutOfOrder));
        c.verify_server_final(SERVER_FINAL.as_bytes()).unwrap();
    }

    #[test]
    fn generate_checks_its_inputs() {
        assert_eq!(ScramVerifier::generate("pw", 4095).unwrap_err(), ScramError::IterationCount(4095));
        assert_eq!(
            ScramVerifier::generate("pw", MAX_ITERATIONS + 1).unwrap_err(),
            ScramError::IterationCount(MAX_ITERATIONS + 1)
        );
        assert_eq!(ScramVerifier::generate("", 4096).unwrap_err(), ScramError::InvalidCredential("password is empty"));
    }

    #[test]
    fn verifier_round_trips_and_debug_redacts() {
        let v = rfc_verifier();
        let text = v.to_string();
        let parsed: ScramVerifier = text.parse().unwrap();
        assert_eq!(parsed.to_string(), text);
        assert_eq!(parsed.iterations(), 4096);
        let debug = format!("{v:?}");
        assert_eq!(debug, "ScramVerifier { iterations: 4096, salt_len: 16, .. }");
        let (_, keys) = text.rsplit_once('$').unwrap();
        let (stored, server) = keys.split_once(':').unwrap();
        for secret in [stored, server, SALT_B64] {
            assert!(!debug.contains(secret));
        }
        assert!(!format!("{:?}", rfc_server()).contains(stored));
        let (client, _) = ScramClient::new(USER, PASSWORD).unwrap();
        assert!(!format!("{client:?}").contains(PASSWORD));
    }

    #[test]
    fn verifier_parse_errors_name_the_part_without_echoing_it() {
        let good = rfc_verifier().to_string();
        let (head, keys) = good.rsplit_once('$').unwrap();
        let (stored, server) = keys.split_once(':').unwrap();
        let salt = SALT_B64;
        let short_key = BASE64.encode([9u8; 31]);
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "must start with `SCRAM-SHA-256$`"),
            (good.replacen("SCRAM-SHA-256", "SCRAM-SHA-1", 1), "must start with `SCRAM-SHA-256$`"),
            (format!("scram-sha-256${}", good.strip_prefix(VERIFIER_PREFIX).unwrap()), "must start with"),
            (format!("SCRAM-SHA-256$4096:{salt}"), "no `$` after the salt"),
            (format!("SCRAM-SHA-256$4096{salt}${stored}:{server}"), "no `:` between the iteration count and the salt"),
            (format!("SCRAM-SHA-256$4096:{salt}${stored}{server}"), "no `:` between StoredKey and ServerKey"),
            (format!("SCRAM-SHA-256$:{salt}${stored}:{server}"), "iteration count is not a decimal number"),
            (format!("SCRAM-SHA-256$x4096:{salt}${stored}:{server}"), "iteration count is not a decimal number"),
            (format!("SCRAM-SHA-256$-1:{salt}${stored}:{server}"), "iteration count is not a decimal number"),
            (format!("SCRAM-SHA-256$4294967296:{salt}${stored}:{server}"), "iteration count is not a decimal number"),
            (format!("SCRAM-SHA-256$1000:{salt}${stored}:{server}"), "iteration count 1000 is outside 4096..=10000000"),
            (format!("SCRAM-SHA-256$4096:*{salt}${stored}:{server}"), "salt is not valid base64"),
            (format!("SCRAM-SHA-256$4096:${stored}:{server}"), "salt is 0 bytes; at least 16 are required"),
            (format!("SCRAM-SHA-256$4096:AAAA${stored}:{server}"), "salt is 3 bytes; at least 16 are required"),
            (format!("{head}$*{stored}:{server}"), "StoredKey is not valid base64"),
            (format!("{head}${short_key}:{server}"), "StoredKey is 31 bytes; SHA-256 keys are 32"),
            (format!("{head}${stored}:{server}*"), "ServerKey is not valid base64"),
            (format!("{head}${stored}:"), "ServerKey is 0 bytes; SHA-256 keys are 32"),
            (format!("{head}${stored}:{server}:{server}"), "ServerKey is not valid base64"),
            (format!("{head}${stored}:{server}$"), "ServerKey is not valid base64"),
            (format!("{good}\n"), "ServerKey is not valid base64"),
            (format!(" {good}"), "must start with"),
        ];
        for (input, expected) in cases {
            let err = input.parse::<ScramVerifier>().unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, ScramError::InvalidVerifier(_)), "{input}: {err:?}");
            assert!(message.contains(expected), "{input}: {message}");
            for secret in [stored, server, salt] {
                assert!(!message.contains(secret), "{message} echoes its input");
            }
        }
    }

    /// Byte strings that exercise the parsers: random bytes, random strings over the SCRAM alphabet, and every
    /// truncation of the valid messages.
    fn hostile_inputs() -> Vec<Vec<u8>> {
        let rng = SystemRandom::new();
        let mut inputs = Vec::new();
        for message in [CLIENT_FIRST, SERVER_FIRST, CLIENT_FINAL, SERVER_FINAL, "y,,n=a=2C=3D,r=abcd"] {
            for end in 0..=message.len() {
                inputs.push(message.as_bytes()[..end].to_vec());
            }
        }
        let alphabet = b"npyrscvmeai=,23CDbw+/AZ09\0\xff$";
        for round in 0..2000usize {
            let mut len = [0u8; 1];
            rng.fill(&mut len).unwrap();
            let mut bytes = vec![0u8; usize::from(len[0] % 96)];
            rng.fill(&mut bytes).unwrap();
            if round % 2 == 0 {
                for b in &mut bytes {
                    *b = alphabet[usize::from(*b) % alphabet.len()];
                }
            }
            inputs.push(bytes);
        }
        inputs
    }

    #[test]
    fn hostile_input_never_panics() {
        // The client needs one PBKDF2 per accepted server-first; keep those cheap and few.
        let (ready_client, _) = {
            let (mut c, first) = ScramClient::with_nonce(USER, PASSWORD, CLIENT_NONCE.to_owned()).unwrap();
            c.handle_server_first(SERVER_FIRST.as_bytes()).unwrap();
            (c, first)
        };
        for input in hostile_inputs() {
            let _ = ScramServer::parse_client_first(&input);
            let _ = rfc_server().finish(&input);
            let _ = ready_client.verify_server_final(&input);
            let _ = String::from_utf8_lossy(&input).parse::<ScramVerifier>();
            let _ = unescape_username(&String::from_utf8_lossy(&input));
            let mut fresh = ScramClient::with_nonce(USER, PASSWORD, "abcd".to_owned()).unwrap().0;
            let _ = fresh.handle_server_first(&input);
        }
    }
}
