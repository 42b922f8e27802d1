//! Session encryption (PROTOCOL.md §7): the KMS data key split into per-direction AES-256-GCM
//! keys, the encrypted payload layout, the encryption challenge of the handshake (§6.3), the
//! payload types each end encrypts and the KMS encryption context. No I/O.
//!
//! ```
//! use ssmx_protocol::crypto::SessionCipher;
//!
//! // Both ends hold the same 64-byte plaintext data key from KMS.
//! let data_key = [7u8; 64];
//! let agent = SessionCipher::for_agent(&data_key).unwrap();
//! let client = SessionCipher::for_client(&data_key).unwrap();
//!
//! let sealed = agent.encrypt(b"hello");
//! assert_eq!(&client.decrypt(&sealed).unwrap()[..], b"hello");
//!
//! // The handshake's encryption challenge.
//! let (issued, request) = agent.issue_challenge().unwrap();
//! let response = client.answer_challenge(&request).unwrap();
//! issued.verify(&agent, &response).unwrap();
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};

use crate::message::{AgentMessage, PayloadType};
use crate::payload::{EncryptionChallenge, KmsEncryptionParameters, KmsEncryptionResult};

/// Size of the plaintext data key both ends obtain from KMS: two AES-256 keys (§7.3).
pub const DATA_KEY_LEN: usize = 64;
/// Size of one AES-256 key, half of the data key.
pub const KEY_LEN: usize = 32;
/// AES-GCM nonce size; the nonce leads every encrypted payload.
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag size; the tag ends every encrypted payload.
pub const TAG_LEN: usize = 16;
/// Bytes an encrypted payload has beyond its plaintext: nonce and tag.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Size of the encryption challenge's plaintext (§7.4).
pub const CHALLENGE_LEN: usize = 64;
/// Random bytes behind the `Challenge` string of the KMSEncryption action (§6.1), which goes
/// into the encryption context as `aws:ssm:RandomChallenge`.
pub const RANDOM_CHALLENGE_LEN: usize = 16;

/// Keys of the KMS encryption context (§7.2).
pub mod context_key {
    /// The session id.
    pub const SESSION_ID: &str = "aws:ssm:SessionId";
    /// The target: the StartSession `Target` on the client, the instance id on the agent.
    pub const TARGET_ID: &str = "aws:ssm:TargetId";
    /// The `Challenge` of the KMSEncryption action, when the client acknowledged it.
    pub const RANDOM_CHALLENGE: &str = "aws:ssm:RandomChallenge";
}

/// Why a payload, a key or a challenge was refused.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The plaintext data key from KMS does not have [`DATA_KEY_LEN`] bytes.
    #[error("KMS data key has {actual} bytes, expected {DATA_KEY_LEN}")]
    DataKeyLength {
        /// The length received.
        actual: usize,
    },
    /// An encrypted payload too short to hold a nonce and a tag.
    #[error(
        "encrypted payload of {actual} bytes is shorter than its {OVERHEAD}-byte nonce and tag"
    )]
    CiphertextTooShort {
        /// The length received.
        actual: usize,
    },
    /// AES-GCM authentication failed: the payload was altered or sealed under another key.
    #[error("encrypted payload failed authentication: it was altered or sealed under another key")]
    Authentication,
    /// A base64 field of the handshake does not decode.
    #[error("{what} is not valid base64: {source}")]
    Base64 {
        /// The field.
        what: &'static str,
        /// The decoder's error.
        source: base64::DecodeError,
    },
    /// The decrypted challenge answer does not have [`CHALLENGE_LEN`] bytes.
    #[error("encryption challenge answer has {actual} bytes, expected {CHALLENGE_LEN}")]
    ChallengeLength {
        /// The length received.
        actual: usize,
    },
    /// The client's challenge answer decrypts to something other than the challenge.
    #[error("encryption challenge answer does not match the challenge")]
    ChallengeMismatch,
    /// The client did not put the random challenge into the encryption context, and this agent
    /// requires it.
    #[error(
        "the client did not acknowledge the random KMS challenge, which this agent requires; \
         upgrade the client"
    )]
    ChallengeNotAcknowledged,
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// The two ends of a session's encryption.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The agent: encrypts with `K[0..32]`, decrypts with `K[32..64]`.
    Agent,
    /// The client: encrypts with `K[32..64]`, decrypts with `K[0..32]`.
    Client,
}

impl Role {
    /// The other end.
    pub fn peer(self) -> Role {
        match self {
            Role::Agent => Role::Client,
            Role::Client => Role::Agent,
        }
    }

    /// True when this end encrypts stream payloads of `payload_type` it sends (§7.1): the client
    /// only Output; the agent Output, StdErr and ExitCode. Handshake, Size and Flag payloads are
    /// never encrypted.
    pub fn encrypts(self, payload_type: PayloadType) -> bool {
        match self {
            Role::Client => payload_type == PayloadType::Output,
            Role::Agent => matches!(
                payload_type,
                PayloadType::Output | PayloadType::StdErr | PayloadType::ExitCode
            ),
        }
    }

    /// Offsets of this end's (encryption key, decryption key) within the data key.
    fn key_ranges(self) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let low = 0..KEY_LEN;
        let high = KEY_LEN..DATA_KEY_LEN;
        match self {
            Role::Agent => (low, high),
            Role::Client => (high, low),
        }
    }
}

/// One end's AES-256-GCM state for a session: the key it seals with, the key it opens with, and
/// its nonce sequence.
///
/// Nonces are a 96-bit counter started at a random value and advanced by one per sealed payload
/// (read as a little-endian integer, the same sequence the official agent produces), for both
/// roles. The official client draws a random nonce per message instead; a counter is the better
/// choice: it cannot repeat within 2^64 messages under one key (random 96-bit nonces are only
/// safe for about 2^32, NIST SP 800-38D §8.3), and it spares a call into the system RNG per
/// message on the hot path. The random start keeps sequences apart should a data key ever be
/// reused. Receivers take the nonce from the payload, so peers need not know the scheme.
///
/// `encrypt` takes `&self` (the counter is atomic), so one cipher can serve a sending task and a
/// receiving task at once.
pub struct SessionCipher {
    role: Role,
    sealing: LessSafeKey,
    opening: LessSafeKey,
    /// First nonce, a 96-bit little-endian integer.
    nonce_start: u128,
    /// Payloads sealed so far; the next nonce is `nonce_start + sealed` mod 2^96.
    sealed: AtomicU64,
}

impl SessionCipher {
    /// The client's cipher for the 64-byte plaintext data key KMS returned.
    pub fn for_client(data_key: &[u8]) -> Result<Self, CryptoError> {
        Self::new(Role::Client, data_key)
    }

    /// The agent's cipher for the 64-byte plaintext data key KMS returned.
    pub fn for_agent(data_key: &[u8]) -> Result<Self, CryptoError> {
        Self::new(Role::Agent, data_key)
    }

    /// `role`'s cipher for the 64-byte plaintext data key KMS returned.
    pub fn new(role: Role, data_key: &[u8]) -> Result<Self, CryptoError> {
        let mut start = [0u8; NONCE_LEN];
        fill_random(&mut start)?;
        Self::with_nonce_start(role, data_key, start)
    }

    fn with_nonce_start(
        role: Role,
        data_key: &[u8],
        start: [u8; NONCE_LEN],
    ) -> Result<Self, CryptoError> {
        if data_key.len() != DATA_KEY_LEN {
            return Err(CryptoError::DataKeyLength {
                actual: data_key.len(),
            });
        }
        let (seal_range, open_range) = role.key_ranges();
        let key = |range: std::ops::Range<usize>| {
            let unbound = UnboundKey::new(&AES_256_GCM, &data_key[range])
                .expect("a 32-byte slice is an AES-256 key");
            LessSafeKey::new(unbound)
        };
        let mut wide = [0u8; 16];
        wide[..NONCE_LEN].copy_from_slice(&start);
        Ok(Self {
            role,
            sealing: key(seal_range),
            opening: key(open_range),
            nonce_start: u128::from_le_bytes(wide),
            sealed: AtomicU64::new(0),
        })
    }

    /// The end this cipher belongs to.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Seals `plaintext` under this end's encryption key: `nonce ‖ ciphertext ‖ tag`, no
    /// associated data, [`OVERHEAD`] bytes longer than `plaintext`.
    pub fn encrypt(&self, plaintext: &[u8]) -> Bytes {
        let nonce = self.next_nonce();
        let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .sealing
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut out[NONCE_LEN..],
            )
            .expect("AES-GCM seals any payload below 64 GiB");
        out.extend_from_slice(tag.as_ref());
        Bytes::from(out)
    }

    /// Opens a payload the peer sealed (`nonce ‖ ciphertext ‖ tag`) with this end's decryption
    /// key.
    pub fn decrypt(&self, encrypted: &[u8]) -> Result<Bytes, CryptoError> {
        if encrypted.len() < OVERHEAD {
            return Err(CryptoError::CiphertextTooShort {
                actual: encrypted.len(),
            });
        }
        let (nonce, sealed) = encrypted.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).expect("split at the nonce length");
        let mut buf = sealed.to_vec();
        let plaintext_len = self
            .opening
            .open_in_place(nonce, Aad::empty(), &mut buf)
            .map_err(|_| CryptoError::Authentication)?
            .len();
        buf.truncate(plaintext_len);
        Ok(Bytes::from(buf))
    }

    /// Encrypts `msg`'s payload in place when this end encrypts it (a stream message of a type
    /// [`Role::encrypts`] names). Returns whether it did. Call before encoding: the digest covers
    /// the ciphertext (§7.5).
    pub fn encrypt_outgoing(&self, msg: &mut AgentMessage) -> bool {
        if !(msg.message_type.is_stream_data() && self.role.encrypts(msg.payload_type)) {
            return false;
        }
        msg.payload = self.encrypt(&msg.payload);
        true
    }

    /// Decrypts `msg`'s payload in place when the peer encrypts it (a stream message of a type
    /// [`Role::encrypts`] names for the peer). Returns whether it did; on error `msg` is left
    /// unchanged.
    pub fn decrypt_incoming(&self, msg: &mut AgentMessage) -> Result<bool, CryptoError> {
        if !(msg.message_type.is_stream_data() && self.role.peer().encrypts(msg.payload_type)) {
            return Ok(false);
        }
        msg.payload = self.decrypt(&msg.payload)?;
        Ok(true)
    }

    /// Agent: a fresh encryption challenge (§6.3): 64 random bytes, sealed, for the
    /// EncChallengeRequest payload. Keep the returned [`IssuedChallenge`] to check the answer.
    pub fn issue_challenge(&self) -> Result<(IssuedChallenge, EncryptionChallenge), CryptoError> {
        let mut plaintext = [0u8; CHALLENGE_LEN];
        fill_random(&mut plaintext)?;
        let request = EncryptionChallenge {
            challenge: BASE64.encode(self.encrypt(&plaintext)),
        };
        Ok((IssuedChallenge { plaintext }, request))
    }

    /// Client: the EncChallengeResponse for the agent's EncChallengeRequest: the challenge
    /// opened with this end's decryption key and sealed again with its encryption key.
    pub fn answer_challenge(
        &self,
        request: &EncryptionChallenge,
    ) -> Result<EncryptionChallenge, CryptoError> {
        let plaintext =
            self.decrypt(&decode_base64("encryption challenge", &request.challenge)?)?;
        Ok(EncryptionChallenge {
            challenge: BASE64.encode(self.encrypt(&plaintext)),
        })
    }

    fn next_nonce(&self) -> [u8; NONCE_LEN] {
        const NONCE_MASK: u128 = (1 << (8 * NONCE_LEN)) - 1;
        let counter = self.sealed.fetch_add(1, Ordering::Relaxed);
        let value = self.nonce_start.wrapping_add(u128::from(counter)) & NONCE_MASK;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&value.to_le_bytes()[..NONCE_LEN]);
        nonce
    }
}

impl fmt::Debug for SessionCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionCipher")
            .field("role", &self.role)
            .field("sealed", &self.sealed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The agent's record of the challenge it sent, to verify the client's answer.
pub struct IssuedChallenge {
    plaintext: [u8; CHALLENGE_LEN],
}

impl IssuedChallenge {
    /// Checks the client's EncChallengeResponse: it must open under the agent's decryption key
    /// to exactly the challenge sent.
    pub fn verify(
        &self,
        cipher: &SessionCipher,
        response: &EncryptionChallenge,
    ) -> Result<(), CryptoError> {
        let answer = cipher.decrypt(&decode_base64(
            "encryption challenge answer",
            &response.challenge,
        )?)?;
        if answer.len() != CHALLENGE_LEN {
            return Err(CryptoError::ChallengeLength {
                actual: answer.len(),
            });
        }
        // Every byte is compared, so the time taken says nothing about where a mismatch is.
        let difference = answer
            .iter()
            .zip(&self.plaintext)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if difference == 0 {
            Ok(())
        } else {
            Err(CryptoError::ChallengeMismatch)
        }
    }
}

impl fmt::Debug for IssuedChallenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedChallenge").finish_non_exhaustive()
    }
}

/// True when stream payloads of `payload_type` sent by `sender` are encrypted (§7.1).
pub fn is_encrypted(sender: Role, payload_type: PayloadType) -> bool {
    sender.encrypts(payload_type)
}

/// The KMS encryption context of a session's data key (§7.2): session id, target id and, when
/// given, the random challenge.
pub fn encryption_context(
    session_id: &str,
    target_id: &str,
    random_challenge: Option<&str>,
) -> BTreeMap<String, String> {
    let mut context = BTreeMap::from([
        (context_key::SESSION_ID.to_owned(), session_id.to_owned()),
        (context_key::TARGET_ID.to_owned(), target_id.to_owned()),
    ]);
    if let Some(challenge) = random_challenge {
        context.insert(
            context_key::RANDOM_CHALLENGE.to_owned(),
            challenge.to_owned(),
        );
    }
    context
}

/// Agent: a fresh `Challenge` for the KMSEncryption action: [`RANDOM_CHALLENGE_LEN`] random
/// bytes, base64.
pub fn random_challenge() -> Result<String, CryptoError> {
    let mut bytes = [0u8; RANDOM_CHALLENGE_LEN];
    fill_random(&mut bytes)?;
    Ok(BASE64.encode(bytes))
}

/// What the client asks KMS `GenerateDataKey` for, given the agent's KMSEncryption action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataKeyRequest {
    /// The KMS key to generate under.
    pub key_id: String,
    /// The encryption context.
    pub encryption_context: BTreeMap<String, String>,
    /// Whether the random challenge is in the context (and so must be acknowledged).
    pub challenge_acknowledged: bool,
}

impl DataKeyRequest {
    /// The client's request for `session_id` started with StartSession `target`: the random
    /// challenge goes into the context when the agent sent a non-empty one (§7.2, T23).
    pub fn for_client(session_id: &str, target: &str, params: &KmsEncryptionParameters) -> Self {
        let challenge = params.challenge.as_deref().filter(|c| !c.is_empty());
        Self {
            key_id: params.kms_key_id.clone(),
            encryption_context: encryption_context(session_id, target, challenge),
            challenge_acknowledged: challenge.is_some(),
        }
    }

    /// The KMSEncryption action result carrying KMS's `CiphertextBlob`.
    pub fn result(&self, ciphertext_blob: &[u8]) -> KmsEncryptionResult {
        KmsEncryptionResult {
            kms_cipher_text_key: BASE64.encode(ciphertext_blob),
            kms_cipher_text_hash: None,
            challenge_acknowledgement: self.challenge_acknowledged.then_some(true),
        }
    }
}

/// What the agent asks KMS `Decrypt` for, given the client's KMSEncryption result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataKeyUnwrap {
    /// The data key's KMS ciphertext blob.
    pub ciphertext_blob: Vec<u8>,
    /// The encryption context.
    pub encryption_context: BTreeMap<String, String>,
}

impl DataKeyUnwrap {
    /// The agent's Decrypt request for `session_id` on instance `instance_id`, having sent
    /// `sent_challenge` in the KMSEncryption action: the challenge joins the context iff the
    /// client acknowledged it (§7.2). With `require_challenge`, an answer without the
    /// acknowledgement is refused.
    pub fn for_agent(
        session_id: &str,
        instance_id: &str,
        sent_challenge: Option<&str>,
        result: &KmsEncryptionResult,
        require_challenge: bool,
    ) -> Result<Self, CryptoError> {
        let acknowledged = result.challenge_acknowledgement == Some(true);
        if require_challenge && !acknowledged {
            return Err(CryptoError::ChallengeNotAcknowledged);
        }
        let challenge = if acknowledged { sent_challenge } else { None };
        Ok(Self {
            ciphertext_blob: decode_base64("KMSCipherTextKey", &result.kms_cipher_text_key)?,
            encryption_context: encryption_context(session_id, instance_id, challenge),
        })
    }
}

fn decode_base64(what: &'static str, text: &str) -> Result<Vec<u8>, CryptoError> {
    BASE64
        .decode(text)
        .map_err(|source| CryptoError::Base64 { what, source })
}

fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    SystemRandom::new()
        .fill(buf)
        .map_err(|_| CryptoError::Random)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MessageType;

    /// Data key 00 01 02 … 3f.
    fn data_key() -> Vec<u8> {
        (0u8..64).collect()
    }

    fn cipher(role: Role, start: &str) -> SessionCipher {
        let start: [u8; NONCE_LEN] = hex::decode(start).unwrap().try_into().unwrap();
        SessionCipher::with_nonce_start(role, &data_key(), start).unwrap()
    }

    // Vectors computed independently with Python's `cryptography` (AESGCM) on the same key:
    // agent → client under K[0..32], client → agent under K[32..64].
    const AGENT_VECTOR: &str = "000102030405060708090a0b2f67ba77aac5a469e22cb7ffd98c580ce4b3e940\
                                fd714b24a25e67f771ce915a119530dd2f76";
    const CLIENT_VECTOR: &str =
        "a0a1a2a3a4a5a6a7a8a9aaab124f8419a8b68d6fcad5cecec2c60aa4653ab977e1ea96";

    #[test]
    fn agent_seals_with_the_first_half_like_the_reference() {
        let agent = cipher(Role::Agent, "000102030405060708090a0b");
        let sealed = agent.encrypt(b"hello from the agent\r\n");
        assert_eq!(hex::encode(&sealed), AGENT_VECTOR);
        let client = cipher(Role::Client, "000000000000000000000000");
        let opened = client.decrypt(&hex::decode(AGENT_VECTOR).unwrap()).unwrap();
        assert_eq!(&opened[..], b"hello from the agent\r\n");
    }

    #[test]
    fn client_seals_with_the_second_half_like_the_reference() {
        let client = cipher(Role::Client, "a0a1a2a3a4a5a6a7a8a9aaab");
        assert_eq!(hex::encode(client.encrypt(b"ls -la\r")), CLIENT_VECTOR);
        let agent = cipher(Role::Agent, "000000000000000000000000");
        let opened = agent.decrypt(&hex::decode(CLIENT_VECTOR).unwrap()).unwrap();
        assert_eq!(&opened[..], b"ls -la\r");
    }

    #[test]
    fn nonce_counter_carries_across_words() {
        let agent = cipher(Role::Agent, "ffffffffffffffff00000000");
        let first = agent.encrypt(b"one");
        let second = agent.encrypt(b"two");
        // Independently computed as above, with nonces ff…ff 00000000 and 00…00 01000000.
        assert_eq!(
            hex::encode(&first),
            "ffffffffffffffff000000000dc2e4a56efde3c92264ba483fef09c00316cb"
        );
        assert_eq!(
            hex::encode(&second),
            "0000000000000000010000001ba1e00908663c4dc365475318d333fd40437d"
        );
    }

    #[test]
    fn nonce_counter_wraps_at_96_bits() {
        let agent = cipher(Role::Agent, "ffffffffffffffffffffffff");
        assert_eq!(&agent.encrypt(b"a")[..NONCE_LEN], &[0xff; NONCE_LEN]);
        assert_eq!(&agent.encrypt(b"b")[..NONCE_LEN], &[0; NONCE_LEN]);
    }

    #[test]
    fn nonces_never_repeat_and_starts_differ() {
        let data_key = data_key();
        let a = SessionCipher::for_agent(&data_key).unwrap();
        let b = SessionCipher::for_agent(&data_key).unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            assert!(seen.insert(a.encrypt(b"x")[..NONCE_LEN].to_vec()));
        }
        assert!(!seen.contains(&b.encrypt(b"x")[..NONCE_LEN]));
    }

    #[test]
    fn round_trip_both_directions() {
        let key = data_key();
        let agent = SessionCipher::for_agent(&key).unwrap();
        let client = SessionCipher::for_client(&key).unwrap();
        for len in [0usize, 1, 15, 16, 17, 1024, 32 * 1024] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let sealed = agent.encrypt(&plain);
            assert_eq!(sealed.len(), len + OVERHEAD);
            assert_eq!(&client.decrypt(&sealed).unwrap()[..], &plain[..]);
            let sealed = client.encrypt(&plain);
            assert_eq!(&agent.decrypt(&sealed).unwrap()[..], &plain[..]);
        }
    }

    #[test]
    fn an_end_cannot_open_its_own_payloads() {
        let agent = SessionCipher::for_agent(&data_key()).unwrap();
        let sealed = agent.encrypt(b"echo");
        assert!(matches!(
            agent.decrypt(&sealed),
            Err(CryptoError::Authentication)
        ));
    }

    #[test]
    fn every_tampered_byte_is_detected() {
        let client = cipher(Role::Client, "000000000000000000000000");
        let original = hex::decode(AGENT_VECTOR).unwrap();
        for i in 0..original.len() {
            let mut tampered = original.clone();
            tampered[i] ^= 0x01;
            assert!(
                matches!(client.decrypt(&tampered), Err(CryptoError::Authentication)),
                "flip at byte {i} went unnoticed"
            );
        }
        let truncated = &original[..original.len() - 1];
        assert!(matches!(
            client.decrypt(truncated),
            Err(CryptoError::Authentication)
        ));
        let mut extended = original.clone();
        extended.push(0);
        assert!(matches!(
            client.decrypt(&extended),
            Err(CryptoError::Authentication)
        ));
    }

    #[test]
    fn short_payloads_and_keys_are_typed_errors() {
        let client = SessionCipher::for_client(&data_key()).unwrap();
        for len in [0, 1, OVERHEAD - 1] {
            assert!(matches!(
                client.decrypt(&vec![0; len]),
                Err(CryptoError::CiphertextTooShort { actual }) if actual == len
            ));
        }
        for len in [0, 32, 63, 65] {
            assert!(matches!(
                SessionCipher::for_agent(&vec![1; len]),
                Err(CryptoError::DataKeyLength { actual }) if actual == len
            ));
        }
    }

    #[test]
    fn payload_types_encrypted_per_direction() {
        use PayloadType::*;
        let all = [
            Undefined,
            Output,
            Error,
            Size,
            Parameter,
            HandshakeRequest,
            HandshakeResponse,
            HandshakeComplete,
            EncChallengeRequest,
            EncChallengeResponse,
            Flag,
            StdErr,
            ExitCode,
            Unknown(99),
        ];
        let client: Vec<_> = all
            .iter()
            .filter(|t| is_encrypted(Role::Client, **t))
            .collect();
        let agent: Vec<_> = all
            .iter()
            .filter(|t| is_encrypted(Role::Agent, **t))
            .collect();
        assert_eq!(client, [&Output]);
        assert_eq!(agent, [&Output, &StdErr, &ExitCode]);
    }

    #[test]
    fn messages_are_sealed_and_opened_by_type() {
        let key = data_key();
        let agent = SessionCipher::for_agent(&key).unwrap();
        let client = SessionCipher::for_client(&key).unwrap();

        let mut exit = AgentMessage::new(
            MessageType::OutputStreamData,
            PayloadType::ExitCode,
            Bytes::from_static(b"EXIT_CODE: 3"),
        );
        assert!(agent.encrypt_outgoing(&mut exit));
        assert_eq!(exit.payload.len(), 12 + OVERHEAD);
        assert!(client.decrypt_incoming(&mut exit).unwrap());
        assert_eq!(&exit.payload[..], b"EXIT_CODE: 3");

        let size = Bytes::from_static(br#"{"cols":80,"rows":24}"#);
        let mut msg = AgentMessage::new(
            MessageType::InputStreamData,
            PayloadType::Size,
            size.clone(),
        );
        assert!(!client.encrypt_outgoing(&mut msg));
        assert!(!agent.decrypt_incoming(&mut msg).unwrap());
        assert_eq!(msg.payload, size);

        let mut ack = AgentMessage::new(
            MessageType::Acknowledge,
            PayloadType::Output,
            Bytes::from_static(b"{}"),
        );
        assert!(!agent.encrypt_outgoing(&mut ack));
        assert_eq!(&ack.payload[..], b"{}");

        let mut forged = AgentMessage::new(
            MessageType::InputStreamData,
            PayloadType::Output,
            Bytes::from_static(b"plaintext keystrokes pretending"),
        );
        let before = forged.payload.clone();
        assert!(matches!(
            agent.decrypt_incoming(&mut forged),
            Err(CryptoError::Authentication)
        ));
        assert_eq!(forged.payload, before);
    }

    #[test]
    fn challenge_round_trip() {
        let key = data_key();
        let agent = SessionCipher::for_agent(&key).unwrap();
        let client = SessionCipher::for_client(&key).unwrap();
        let (issued, request) = agent.issue_challenge().unwrap();
        assert_eq!(request.challenge.len(), 124);
        assert_eq!(
            BASE64.decode(&request.challenge).unwrap().len(),
            CHALLENGE_LEN + OVERHEAD
        );
        let response = client.answer_challenge(&request).unwrap();
        assert_eq!(response.challenge.len(), 124);
        assert_ne!(response.challenge, request.challenge);
        issued.verify(&agent, &response).unwrap();
    }

    #[test]
    fn challenge_failures() {
        let key = data_key();
        let agent = SessionCipher::for_agent(&key).unwrap();
        let client = SessionCipher::for_client(&key).unwrap();
        let (issued, request) = agent.issue_challenge().unwrap();

        // Echoing the request back is sealed under the wrong key.
        assert!(matches!(
            issued.verify(&agent, &request),
            Err(CryptoError::Authentication)
        ));
        // A well-formed answer to another challenge.
        let (_, other) = agent.issue_challenge().unwrap();
        let wrong = client.answer_challenge(&other).unwrap();
        assert!(matches!(
            issued.verify(&agent, &wrong),
            Err(CryptoError::ChallengeMismatch)
        ));
        // The right length matters too.
        let short = EncryptionChallenge {
            challenge: BASE64.encode(client.encrypt(&[0; 10])),
        };
        assert!(matches!(
            issued.verify(&agent, &short),
            Err(CryptoError::ChallengeLength { actual: 10 })
        ));
        // A client with another data key cannot answer.
        let stranger = SessionCipher::for_client(&[9; 64]).unwrap();
        assert!(matches!(
            stranger.answer_challenge(&request),
            Err(CryptoError::Authentication)
        ));
        // Not base64.
        let garbage = EncryptionChallenge {
            challenge: "not base64!".to_owned(),
        };
        assert!(matches!(
            client.answer_challenge(&garbage),
            Err(CryptoError::Base64 { .. })
        ));
        assert!(matches!(
            issued.verify(&agent, &garbage),
            Err(CryptoError::Base64 { .. })
        ));
    }

    #[test]
    fn context_with_and_without_challenge() {
        let two = encryption_context("alice-0123", "i-0abc", None);
        assert_eq!(
            serde_json::to_string(&two).unwrap(),
            r#"{"aws:ssm:SessionId":"alice-0123","aws:ssm:TargetId":"i-0abc"}"#
        );
        let three = encryption_context("alice-0123", "i-0abc", Some("c2VjcmV0"));
        assert_eq!(three.len(), 3);
        assert_eq!(three[context_key::RANDOM_CHALLENGE], "c2VjcmV0");
    }

    #[test]
    fn random_challenges_are_16_bytes_and_fresh() {
        let a = random_challenge().unwrap();
        assert_eq!(BASE64.decode(&a).unwrap().len(), RANDOM_CHALLENGE_LEN);
        assert_ne!(a, random_challenge().unwrap());
    }

    #[test]
    fn client_and_agent_contexts_agree() {
        let with_challenge = KmsEncryptionParameters {
            kms_key_id: "alias/ssmx".to_owned(),
            challenge: Some("q83vEjRWeJA=".to_owned()),
        };
        let request = DataKeyRequest::for_client("s-1", "i-0abc", &with_challenge);
        assert!(request.challenge_acknowledged);
        assert_eq!(request.key_id, "alias/ssmx");
        let result = request.result(b"\x01\x02blob");
        assert_eq!(
            serde_json::to_string(&result).unwrap(),
            r#"{"KMSCipherTextKey":"AQJibG9i","KMSCipherTextHash":null,"ChallengeAcknowledgement":true}"#
        );
        let unwrap =
            DataKeyUnwrap::for_agent("s-1", "i-0abc", Some("q83vEjRWeJA="), &result, true).unwrap();
        assert_eq!(unwrap.ciphertext_blob, b"\x01\x02blob");
        assert_eq!(unwrap.encryption_context, request.encryption_context);

        // An older agent sends no challenge: two-key context, no acknowledgement, like the
        // reference client.
        for challenge in [None, Some(String::new())] {
            let params = KmsEncryptionParameters {
                kms_key_id: "k".to_owned(),
                challenge,
            };
            let request = DataKeyRequest::for_client("s-1", "i-0abc", &params);
            assert!(!request.challenge_acknowledged);
            assert_eq!(request.encryption_context.len(), 2);
            let result = request.result(b"blob");
            assert_eq!(
                serde_json::to_string(&result).unwrap(),
                r#"{"KMSCipherTextKey":"YmxvYg==","KMSCipherTextHash":null}"#
            );
            // The agent that sent a challenge leaves it out when not acknowledged ...
            let unwrap =
                DataKeyUnwrap::for_agent("s-1", "i-0abc", Some("q83vEjRWeJA="), &result, false)
                    .unwrap();
            assert_eq!(unwrap.encryption_context, request.encryption_context);
            // ... unless it requires it.
            assert!(matches!(
                DataKeyUnwrap::for_agent("s-1", "i-0abc", Some("q83vEjRWeJA="), &result, true),
                Err(CryptoError::ChallengeNotAcknowledged)
            ));
        }

        let bad = KmsEncryptionResult {
            kms_cipher_text_key: "%%%".to_owned(),
            kms_cipher_text_hash: None,
            challenge_acknowledgement: None,
        };
        assert!(matches!(
            DataKeyUnwrap::for_agent("s-1", "i-0abc", None, &bad, false),
            Err(CryptoError::Base64 { .. })
        ));
    }
}
