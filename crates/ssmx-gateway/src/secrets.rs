//! The gateway's secrets: the key that seals agent secrets at rest in the database, and the
//! random ids, codes and tokens it issues.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use rand::Rng as _;
use ring::aead;

use crate::store::StoreError;

const HEX: &[u8] = b"0123456789abcdef";
/// Letters and digits.
pub(crate) const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// The RFC 4648 base32 alphabet (access key ids).
pub(crate) const BASE32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// AES-256-GCM key sealing secrets stored in the database; kept in a file beside it.
pub(crate) struct SealingKey(aead::LessSafeKey);

impl SealingKey {
    /// A new key that lives as long as the process (in-memory databases).
    pub(crate) fn ephemeral() -> Self {
        Self::from_bytes(&random_bytes::<32>())
    }

    /// The key of the database at `db`, `<db>.key`, created (mode 0600) when missing.
    pub(crate) fn for_database(db: &Path) -> Result<Self, StoreError> {
        let path = key_path(db);
        let io_err = |source| StoreError::KeyFile {
            path: path.clone(),
            source,
        };
        let key: [u8; 32] = match std::fs::read(&path) {
            Ok(bytes) => bytes
                .try_into()
                .map_err(|_| StoreError::KeyFileCorrupt(path.clone()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = random_bytes::<32>();
                write_private_file(&path, &key).map_err(io_err)?;
                key
            }
            Err(e) => return Err(io_err(e)),
        };
        Ok(Self::from_bytes(&key))
    }

    fn from_bytes(key: &[u8; 32]) -> Self {
        let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, key).expect("32-byte key");
        Self(aead::LessSafeKey::new(unbound))
    }

    /// `plaintext` sealed: a random nonce, then ciphertext and tag.
    pub(crate) fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let nonce_bytes = random_bytes::<12>();
        let nonce = aead::Nonce::assume_unique_for_key(nonce_bytes);
        let mut buf = plaintext.to_vec();
        self.0
            .seal_in_place_append_tag(nonce, aead::Aad::empty(), &mut buf)
            .expect("sealing a short secret cannot fail");
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&buf);
        out
    }

    /// The text [`SealingKey::seal`] sealed; an error when another key sealed it.
    pub(crate) fn open(&self, sealed: &[u8]) -> Result<String, StoreError> {
        if sealed.len() < 12 {
            return Err(StoreError::Unseal);
        }
        let (nonce, ciphertext) = sealed.split_at(12);
        let nonce =
            aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| StoreError::Unseal)?;
        let mut buf = ciphertext.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, aead::Aad::empty(), &mut buf)
            .map_err(|_| StoreError::Unseal)?;
        String::from_utf8(plain.to_vec()).map_err(|_| StoreError::Unseal)
    }
}

fn key_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".key");
    db.with_file_name(name)
}

fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// `len` characters drawn uniformly from `alphabet` with the OS-seeded CSPRNG.
pub(crate) fn random_token(len: usize, alphabet: &[u8]) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

/// `len` random lowercase hex digits.
pub(crate) fn random_hex(len: usize) -> String {
    random_token(len, HEX)
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    rand::rng().fill(&mut out[..]);
    out
}

/// Random URL-safe base64 of `bytes` random bytes (tokens).
pub(crate) fn random_base64(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill(&mut buf[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// Lower-hex SHA-256 of a secret, as stored in its place (activation codes, session tokens).
pub(crate) fn secret_hash(secret: &str) -> String {
    hex::encode(ssmx_protocol::digest::sha256(secret.as_bytes()))
}

/// Compares secrets in time independent of where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
