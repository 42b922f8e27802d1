//! SHA-256 of payloads. `ring` runs the assembly kernels (SHA-NI / AVX2 where the CPU has
//! them); see `benches/codec.rs` for the side-by-side figures behind this choice.

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}
