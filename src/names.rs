//! Maps keyed by names the policy defines (tenant ids, backend names), read on every command.
//!
//! The standard hasher is keyed per process so that a client cannot choose keys that collide; that costs more
//! than a hundred instructions per lookup of a short name. The names here come from the policy file or the
//! operator's admin requests, never from a database client, so collisions cannot be chosen by an attacker and a
//! plain FNV-1a hash serves. What this module must never do: hash anything a client sends (a key of a client's document, a
//! user name before authentication) — such maps keep the standard hasher.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A map keyed by policy-defined names.
pub type NameMap<K, V> = HashMap<K, V, BuildHasherDefault<NameHasher>>;

/// FNV-1a, 64 bits.
pub struct NameHasher(u64);

impl Default for NameHasher {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_found_and_told_apart() {
        let mut map: NameMap<String, usize> = NameMap::default();
        for i in 0..1000 {
            map.insert(format!("tenant-{i}"), i);
        }
        assert_eq!(map.len(), 1000);
        assert!((0..1000).all(|i| map.get(format!("tenant-{i}").as_str()) == Some(&i)));
        assert_eq!(map.get("tenant-1000"), None);
        // The hash is FNV-1a's: its published value for "a" (the `str` impl also writes a 0xff terminator).
        let mut h = NameHasher::default();
        h.write(b"a");
        assert_eq!(h.finish(), 0xaf63_dc4c_8601_ec8c);
    }
}
