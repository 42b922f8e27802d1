//! The ciphertext blob: an envelope only this service can open.
//!
//! ```text
//! offset  size  field
//! 0       1     format version (1)
//! 1       16    id of the master key (UUID bytes)
//! 17      12    AES-GCM nonce, random per blob
//! 29      n     plaintext encrypted under the master key with AES-256-GCM
//! 29+n    16    GCM tag
//! ```
//!
//! The associated data is the 17-byte header followed by the canonical encryption context (each
//! key and value, in key order, prefixed by its length as a big-endian u32), so a blob opens only
//! under the key it names and with exactly the context it was made with.
//!
//! Nonces are random: one master key seals at most a few data keys per session, far below the
//! 2^32 random-nonce invocations NIST SP 800-38D allows per key.

use std::collections::BTreeMap;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use uuid::Uuid;

use crate::store::MasterKey;

/// The only format written and read.
const FORMAT_VERSION: u8 = 1;
/// Version byte and key id.
const HEADER_LEN: usize = 1 + 16;
/// GCM tag size.
const TAG_LEN: usize = 16;
/// Bytes a blob has beyond its plaintext.
pub const BLOB_OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;

/// A blob whose layout checked out; not yet authenticated.
pub struct Envelope<'a> {
    /// The master key the blob claims to be sealed under.
    pub key_id: Uuid,
    header: &'a [u8],
    nonce: [u8; NONCE_LEN],
    sealed: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// Reads the layout of `blob`; `None` when it cannot be one of ours.
    pub fn parse(blob: &'a [u8]) -> Option<Self> {
        if blob.len() < BLOB_OVERHEAD || blob[0] != FORMAT_VERSION {
            return None;
        }
        let (header, rest) = blob.split_at(HEADER_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        Some(Self {
            key_id: Uuid::from_slice(&header[1..]).ok()?,
            header,
            nonce: nonce.try_into().ok()?,
            sealed,
        })
    }

    /// The plaintext, when `master` and `context` are the ones the blob was sealed with and the
    /// blob is unaltered.
    pub fn open(&self, master: &MasterKey, context: &BTreeMap<String, String>) -> Option<Vec<u8>> {
        let key = aead_key(master);
        let mut buf = self.sealed.to_vec();
        let len = key
            .open_in_place(
                Nonce::assume_unique_for_key(self.nonce),
                Aad::from(associated_data(self.header, context)),
                &mut buf,
            )
            .ok()?
            .len();
        buf.truncate(len);
        Some(buf)
    }
}

/// Seals `plaintext` under `master` (whose id is `key_id`) bound to `context`.
pub fn seal(
    rng: &SystemRandom,
    key_id: Uuid,
    master: &MasterKey,
    context: &BTreeMap<String, String>,
    plaintext: &[u8],
) -> Result<Vec<u8>, ring::error::Unspecified> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce)?;
    let mut blob = Vec::with_capacity(plaintext.len() + BLOB_OVERHEAD);
    blob.push(FORMAT_VERSION);
    blob.extend_from_slice(key_id.as_bytes());
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(plaintext);
    let (header, rest) = blob.split_at_mut(HEADER_LEN);
    let aad = associated_data(header, context);
    let tag = aead_key(master).seal_in_place_separate_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut rest[NONCE_LEN..],
    )?;
    blob.extend_from_slice(tag.as_ref());
    Ok(blob)
}

fn aead_key(master: &MasterKey) -> LessSafeKey {
    LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, master.as_bytes()).expect("a 32-byte AES-256 key"),
    )
}

fn associated_data(header: &[u8], context: &BTreeMap<String, String>) -> Vec<u8> {
    let mut aad = header.to_vec();
    for (key, value) in context {
        for part in [key, value] {
            // Request bodies are far below 4 GiB, so every length fits.
            aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
            aad.extend_from_slice(part.as_bytes());
        }
    }
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn seal_open_and_refuse() {
        let rng = SystemRandom::new();
        let master = MasterKey::from_bytes([5; 32]);
        let id = Uuid::new_v4();
        let ctx = context(&[("a", "b"), ("c", "d")]);
        let blob = seal(&rng, id, &master, &ctx, b"data key").unwrap();
        assert_eq!(blob.len(), 8 + BLOB_OVERHEAD);

        let env = Envelope::parse(&blob).unwrap();
        assert_eq!(env.key_id, id);
        assert_eq!(env.open(&master, &ctx).unwrap(), b"data key");

        // Context: another value, a missing pair, an extra pair, pairs shifted between key
        // and value.
        for other in [
            context(&[("a", "b"), ("c", "e")]),
            context(&[("a", "b")]),
            context(&[("a", "b"), ("c", "d"), ("e", "f")]),
            context(&[("a", "bc"), ("c", "d")]),
            context(&[("ab", ""), ("c", "d")]),
        ] {
            assert!(env.open(&master, &other).is_none(), "{other:?}");
        }
        assert!(env.open(&MasterKey::from_bytes([6; 32]), &ctx).is_none());

        for i in 0..blob.len() {
            let mut tampered = blob.clone();
            tampered[i] ^= 0x80;
            let opened = Envelope::parse(&tampered).and_then(|e| e.open(&master, &ctx));
            assert!(opened.is_none(), "flip at byte {i} went unnoticed");
        }
        assert!(Envelope::parse(&blob[..BLOB_OVERHEAD - 1]).is_none());
    }
}
