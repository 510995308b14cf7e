//! Authentication of clients to the proxy and of the proxy to its backends.
//!
//! Owns the SCRAM-SHA-256 mechanism ([RFC 5802], [RFC 7677]) as MongoDB speaks it: the stored credential format
//! ([`ScramVerifier`]), the server side of one conversation ([`ScramServer`]) and the client side the proxy uses
//! with its service credentials ([`ScramClient`]). Everything here is sans-IO: byte messages in, byte messages out;
//! the SASL command framing (`saslStart`, `saslContinue`, `speculativeAuthenticate`) lives in [`crate::sasl`].
//!
//! What this module must never do:
//! - log, format or return a password, a salted password or a key (errors name the rule that was broken, never the
//!   input; `Debug` output of every type redacts key material);
//! - panic or allocate without bound on anything a peer sent: messages longer than [`MAX_MESSAGE_LEN`] are refused
//!   before they are parsed, and parsing never indexes past what it has checked;
//! - tell an unknown user apart from a wrong password: both get a plausible server-first-message and then the same
//!   [`ScramError::AuthenticationFailed`];
//! - compare a proof or a signature in variable time.
//!
//! [RFC 5802]: https://www.rfc-editor.org/rfc/rfc5802
//! [RFC 7677]: https://www.rfc-editor.org/rfc/rfc7677

mod scram;

pub use scram::{
    ClientFirst, ClientKeys, ScramClient, ScramError, ScramServer, ScramVerifier, ServerFirst, DEFAULT_ITERATIONS,
    MAX_ITERATIONS, MAX_MESSAGE_LEN, MIN_ITERATIONS, MIN_SALT_LEN, SALT_LEN,
};
