//! Verification of AWS Signature Version 4 on incoming requests: the SSM API (service `ssm`),
//! ec2messages (`ec2messages`) and the agents' MGS calls (`ssmmessages`).
//!
//! Besides HMAC signatures, the variant the official agent signs its credential requests with is
//! verified too (OFFICIAL-AGENT.md §4.5): the same string to sign, signed with the instance's
//! RSA key (RSASSA-PSS, SHA-256, salt 32) and sent as base64 in `Signature=`.
//!
//! The canonical request is rebuilt by the `aws-sigv4` crate from exactly the headers the caller
//! listed in `SignedHeaders`, so unmodified aws-cli, boto3, the AWS SDKs and the Go agent verify.
//! On top of the signature itself: the date must be within [`SIGNATURE_WINDOW`] of the gateway's
//! clock, and for requests that mint secrets (StartSession, ResumeSession, CreateActivation,
//! CreateControlChannel, CreateDataChannel) a request is accepted only once (replay protection).
//! Read-only and idempotent requests skip that check: replaying them yields nothing the original
//! response did not.
//!
//! The replay key is the signature alone: headers the SDKs leave unsigned (such as
//! `amz-sdk-invocation-id`) can be rewritten by whoever captured the request, so they must not
//! make a used signature acceptable again. A signature covers the request's content and its
//! one-second timestamp, so two honest calls with the same parameters made within the same second
//! carry the same signature too; the second one is refused with `ThrottlingException`, which the
//! SDKs retry with a fresh signature. Against an attacker able to read requests in flight, TLS
//! (`[tls]`) is the protection.

use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4::SigningParams;
use base64::Engine as _;
use http::{HeaderMap, Method, Uri};

use crate::error::{ApiError, ErrorCode};
use crate::secrets::constant_time_eq;

/// How far a request's `X-Amz-Date` may be from the gateway's clock, either way; AWS's window.
pub const SIGNATURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Most signatures remembered for replay detection. A signature is remembered until its date
/// leaves the window (at most 30 minutes); this bounds memory at roughly 30 MB under a sustained
/// ~150 signed requests per second, far above what a Session Manager gateway sees. When full,
/// new requests are refused with `ThrottlingException` rather than forgetting signatures early.
pub const MAX_REMEMBERED_SIGNATURES: usize = 262_144;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const DATE_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// What a verified signature proves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The access key that signed.
    pub access_key_id: String,
    /// The region in the credential scope.
    pub region: String,
    /// The signer's clock minus the verifier's, in whole seconds (from `X-Amz-Date`).
    pub skew_seconds: i64,
}

/// Why a signature was refused. Each maps to the AWS error code a real endpoint returns.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    /// No Authorization header.
    #[error("the request is not signed (no Authorization header)")]
    Missing,
    /// The Authorization header or X-Amz-Date cannot be parsed.
    #[error("malformed signature: {0}")]
    Malformed(String),
    /// Signed for another service.
    #[error("the request is signed for service {found:?}; this endpoint expects {expected:?}")]
    WrongService {
        /// Service in the credential scope.
        found: String,
        /// Service this endpoint serves.
        expected: &'static str,
    },
    /// Signed for another region.
    #[error("Credential should be scoped to a valid region, not {found:?}; this endpoint serves {expected:?}")]
    WrongRegion {
        /// Region in the credential scope.
        found: String,
        /// Region this endpoint serves.
        expected: String,
    },
    /// An RSA signature on a request that needs an HMAC one, or the other way round.
    #[error("the request is signed with {found}; this operation needs {expected}")]
    WrongKind {
        /// What the request carries.
        found: &'static str,
        /// What the operation takes.
        expected: &'static str,
    },
    /// The access key id is not known.
    #[error("the security token included in the request is invalid (unknown access key {0})")]
    UnknownKey(String),
    /// The date is outside the window.
    #[error("signature date {date} is outside the {minutes}-minute window around the gateway's time {now}")]
    Expired {
        /// X-Amz-Date.
        date: String,
        /// The gateway's time, same format.
        now: String,
        /// Window in minutes.
        minutes: u64,
        /// The signer's clock minus the verifier's, in seconds.
        skew_seconds: i64,
    },
    /// The signature does not match the request.
    #[error("the request signature we calculated does not match the signature you provided; check your secret access key and signing method")]
    Mismatch,
    /// Temporary credentials without the session token issued with them.
    #[error("the security token included in the request is invalid (X-Amz-Security-Token does not belong to the access key)")]
    BadSessionToken,
    /// This exact signature was already used.
    #[error("this request signature was already used (replayed request); sign the request again")]
    Replayed,
    /// The replay cache is full.
    #[error("too many signed requests; retry later")]
    Busy,
}

impl SigV4Error {
    /// The AWS error code for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            SigV4Error::Missing => ErrorCode::MissingAuthenticationToken,
            SigV4Error::Malformed(_)
            | SigV4Error::WrongService { .. }
            | SigV4Error::WrongKind { .. } => ErrorCode::IncompleteSignature,
            SigV4Error::UnknownKey(_) | SigV4Error::BadSessionToken => {
                ErrorCode::UnrecognizedClient
            }
            SigV4Error::Expired { .. } | SigV4Error::Mismatch | SigV4Error::WrongRegion { .. } => {
                ErrorCode::InvalidSignature
            }
            // A retryable code: an SDK that happened to sign two identical requests within the
            // same second retries with a fresh signature, while a replayed capture is refused.
            SigV4Error::Replayed | SigV4Error::Busy => ErrorCode::Throttling,
        }
    }
}

impl From<SigV4Error> for ApiError {
    fn from(e: SigV4Error) -> Self {
        ApiError::new(e.code(), e.to_string())
    }
}

/// The parts of a request a signature covers.
#[derive(Clone, Copy, Debug)]
pub struct RequestParts<'a> {
    /// HTTP method.
    pub method: &'a Method,
    /// Path and query (and, for HTTP/2, the authority).
    pub uri: &'a Uri,
    /// All headers.
    pub headers: &'a HeaderMap,
    /// The body bytes (empty for GET).
    pub body: &'a [u8],
}

/// Parsed `Authorization` header.
struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: Signature<'a>,
}

impl Authorization<'_> {
    /// The credential scope, `<yyyymmdd>/<region>/<service>/aws4_request`.
    fn scope(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }
}

/// The `Signature=` of an Authorization header.
enum Signature<'a> {
    /// 64 lower-case hex digits of an HMAC-SHA256.
    Hmac(&'a str),
    /// An RSA signature: as sent (standard base64), and its bytes.
    Rsa { text: &'a str, bytes: Vec<u8> },
}

impl Signature<'_> {
    /// The signature as sent: what the replay cache remembers.
    fn text(&self) -> &str {
        match self {
            Signature::Hmac(text) | Signature::Rsa { text, .. } => text,
        }
    }
}

/// What a signature is checked against.
pub enum SigningKey {
    /// The secret access key of an HMAC signature.
    Hmac(String),
    /// The DER SubjectPublicKeyInfo of an RSA key: the key a managed instance registered.
    Rsa(Vec<u8>),
}

fn parse_authorization(value: &str) -> Result<Authorization<'_>, SigV4Error> {
    let malformed = |what: &str| SigV4Error::Malformed(what.to_owned());
    let rest = value
        .strip_prefix(ALGORITHM)
        .ok_or_else(|| malformed("Authorization must start with AWS4-HMAC-SHA256"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let credential = credential.ok_or_else(|| malformed("Authorization lacks Credential="))?;
    let signed = signed.ok_or_else(|| malformed("Authorization lacks SignedHeaders="))?;
    let signature = signature.ok_or_else(|| malformed("Authorization lacks Signature="))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, terminator] = scope[..] else {
        return Err(malformed(
            "Credential must be <key>/<date>/<region>/<service>/aws4_request",
        ));
    };
    if terminator != "aws4_request" || access_key_id.is_empty() {
        return Err(malformed(
            "Credential must be <key>/<date>/<region>/<service>/aws4_request",
        ));
    }
    let signature = if signature.len() == 64 && signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        Signature::Hmac(signature)
    } else {
        match base64::engine::general_purpose::STANDARD.decode(signature) {
            Ok(bytes) if bytes.len() >= 128 => Signature::Rsa {
                text: signature,
                bytes,
            },
            _ => {
                return Err(malformed(
                    "Signature must be 64 hex digits (HMAC) or the base64 of an RSA signature",
                ))
            }
        }
    };
    let signed_headers: Vec<&str> = signed.split(';').filter(|h| !h.is_empty()).collect();
    if !signed_headers.contains(&"host") {
        return Err(malformed("SignedHeaders must include host"));
    }
    Ok(Authorization {
        access_key_id,
        date,
        region,
        service,
        signed_headers,
        signature,
    })
}

/// Signatures seen recently, each kept until its date leaves the window.
#[derive(Default)]
struct ReplayCache {
    by_expiry: BTreeSet<(SystemTime, String)>,
    seen: HashSet<String>,
}

impl ReplayCache {
    fn prune(&mut self, now: SystemTime) {
        while let Some(first) = self.by_expiry.first() {
            if first.0 > now {
                break;
            }
            let (_, sig) = self.by_expiry.pop_first().expect("non-empty");
            self.seen.remove(&sig);
        }
    }
}

/// Verifies signatures and remembers the ones it accepted.
#[derive(Default)]
pub struct Verifier {
    replay: Mutex<ReplayCache>,
}

impl Verifier {
    /// A verifier with an empty replay cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Verifies `request` as signed for `service` in `region` at `now`; `key_for` maps the
    /// credential's access key id (an instance id, for RSA signatures) to the key to check
    /// against. With `single_use`, the signature is remembered on success and refused if
    /// presented again, whatever the request's unsigned headers say.
    pub fn verify(
        &self,
        request: RequestParts<'_>,
        service: &'static str,
        region: &str,
        now: SystemTime,
        single_use: bool,
        key_for: impl FnOnce(&str) -> Option<SigningKey>,
    ) -> Result<Verified, SigV4Error> {
        let header = request
            .headers
            .get(http::header::AUTHORIZATION)
            .ok_or(SigV4Error::Missing)?
            .to_str()
            .map_err(|_| SigV4Error::Malformed("Authorization is not ASCII".into()))?;
        let auth = parse_authorization(header)?;
        if auth.service != service {
            return Err(SigV4Error::WrongService {
                found: auth.service.to_owned(),
                expected: service,
            });
        }
        if auth.region != region {
            return Err(SigV4Error::WrongRegion {
                found: auth.region.to_owned(),
                expected: region.to_owned(),
            });
        }
        let amz_date = request
            .headers
            .get("x-amz-date")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| SigV4Error::Malformed("X-Amz-Date header is missing".into()))?;
        let signed_at = chrono::NaiveDateTime::parse_from_str(amz_date, DATE_FORMAT)
            .map_err(|_| {
                SigV4Error::Malformed(format!("X-Amz-Date {amz_date:?} is not yyyymmddThhmmssZ"))
            })?
            .and_utc();
        if !amz_date.starts_with(auth.date) || auth.date.len() != 8 {
            return Err(SigV4Error::Malformed(
                "the credential scope date does not match X-Amz-Date".into(),
            ));
        }
        let signed_at: SystemTime = signed_at.into();
        // The signature is checked before the time, so that a refusal for a skewed clock is
        // known to come from the key's owner and can tell it how far off it is.
        let key = key_for(auth.access_key_id)
            .ok_or_else(|| SigV4Error::UnknownKey(auth.access_key_id.to_owned()))?;
        match (&key, &auth.signature) {
            (SigningKey::Hmac(secret), Signature::Hmac(given)) => {
                let expected = expected_signature(&request, &auth, secret, signed_at)?;
                if !constant_time_eq(expected.as_bytes(), given.as_bytes()) {
                    return Err(SigV4Error::Mismatch);
                }
            }
            (SigningKey::Rsa(public_key), Signature::Rsa { bytes: given, .. }) => {
                let to_sign =
                    rsa_string_to_sign(&request, &auth.signed_headers, &auth.scope(), amz_date)?;
                verify_rsa_pss(public_key, to_sign.as_bytes(), given)?;
            }
            (SigningKey::Hmac(_), Signature::Rsa { .. }) => {
                return Err(SigV4Error::WrongKind {
                    found: "an RSA signature",
                    expected: "an HMAC signature with an access key",
                })
            }
            (SigningKey::Rsa(_), Signature::Hmac(_)) => {
                return Err(SigV4Error::WrongKind {
                    found: "an HMAC signature",
                    expected: "the instance's RSA signature",
                })
            }
        }
        let (skew, skew_seconds) = match signed_at.duration_since(now) {
            Ok(ahead) => (ahead, ahead.as_secs() as i64),
            Err(behind) => (behind.duration(), -(behind.duration().as_secs() as i64)),
        };
        if skew > SIGNATURE_WINDOW {
            return Err(SigV4Error::Expired {
                date: amz_date.to_owned(),
                now: chrono::DateTime::<chrono::Utc>::from(now)
                    .format(DATE_FORMAT)
                    .to_string(),
                minutes: SIGNATURE_WINDOW.as_secs() / 60,
                skew_seconds,
            });
        }
        if single_use {
            self.remember(auth.signature.text(), signed_at + SIGNATURE_WINDOW, now)?;
        }
        Ok(Verified {
            access_key_id: auth.access_key_id.to_owned(),
            region: auth.region.to_owned(),
            skew_seconds,
        })
    }

    fn remember(&self, key: &str, expires: SystemTime, now: SystemTime) -> Result<(), SigV4Error> {
        let mut cache = self.replay.lock().unwrap_or_else(|p| p.into_inner());
        cache.prune(now);
        if cache.seen.contains(key) {
            return Err(SigV4Error::Replayed);
        }
        if cache.seen.len() >= MAX_REMEMBERED_SIGNATURES {
            return Err(SigV4Error::Busy);
        }
        cache.seen.insert(key.to_owned());
        cache.by_expiry.insert((expires, key.to_owned()));
        Ok(())
    }
}

/// The host a request was signed for: HTTP/2's authority, else the Host header.
fn authority(request: &RequestParts<'_>) -> Result<String, SigV4Error> {
    request
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            request
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .ok_or_else(|| SigV4Error::Malformed("the request has no Host".into()))
}

fn expected_signature(
    request: &RequestParts<'_>,
    auth: &Authorization<'_>,
    secret: &str,
    signed_at: SystemTime,
) -> Result<String, SigV4Error> {
    let authority = authority(request)?;
    let mut headers: Vec<(&str, String)> = Vec::with_capacity(auth.signed_headers.len());
    for &name in &auth.signed_headers {
        if name == "host" {
            headers.push(("host", authority.clone()));
            continue;
        }
        let mut any = false;
        for value in request.headers.get_all(name) {
            let value = value
                .to_str()
                .map_err(|_| SigV4Error::Malformed(format!("signed header {name} is not ASCII")))?;
            headers.push((name, value.to_owned()));
            any = true;
        }
        if !any {
            return Err(SigV4Error::Malformed(format!(
                "signed header {name} is not in the request"
            )));
        }
    }
    let path_and_query = request
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let url = format!("http://{authority}{path_and_query}");
    let signable = SignableRequest::new(
        request.method.as_str(),
        url,
        headers.iter().map(|(k, v)| (*k, v.as_str())),
        SignableBody::Bytes(request.body),
    )
    .map_err(|e| SigV4Error::Malformed(format!("cannot canonicalise the request: {e}")))?;
    let mut settings = SigningSettings::default();
    // Sign exactly what the caller listed: nothing excluded, nothing added.
    settings.excluded_headers = None;
    let identity = Credentials::new(auth.access_key_id, secret, None, None, "ssmx-gateway").into();
    let params = SigningParams::builder()
        .identity(&identity)
        .region(auth.region)
        .name(auth.service)
        .time(signed_at)
        .settings(settings)
        .build()
        .map_err(|e| SigV4Error::Malformed(format!("cannot build signing parameters: {e}")))?;
    let output = sign(signable, &params.into())
        .map_err(|e| SigV4Error::Malformed(format!("cannot compute the signature: {e}")))?;
    Ok(output.signature().to_owned())
}

/// The string to sign of an RSA-signed request, built as SigV4 builds it (OFFICIAL-AGENT.md §4.5
/// steps 1–2): `scope` is `<yyyymmdd>/<region>/<service>/aws4_request`. The `aws-sigv4` crate
/// computes only HMAC signatures, so the canonical request is built here; the unit tests check it
/// against that crate's HMAC signature of the same request, and the replay tests against the
/// official agent's signatures.
pub fn rsa_string_to_sign(
    request: &RequestParts<'_>,
    signed_headers: &[&str],
    scope: &str,
    amz_date: &str,
) -> Result<String, SigV4Error> {
    let authority = authority(request)?;
    let mut canonical = String::with_capacity(512);
    canonical.push_str(request.method.as_str());
    canonical.push('\n');
    canonical.push_str(request.uri.path());
    canonical.push('\n');
    let mut query: Vec<&str> = request
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .collect();
    query.sort_unstable();
    canonical.push_str(&query.join("&"));
    canonical.push('\n');
    for &name in signed_headers {
        let values: Vec<String> = if name == "host" {
            vec![authority.clone()]
        } else {
            request
                .headers
                .get_all(name)
                .iter()
                .map(|v| {
                    v.to_str().map(collapse_spaces).map_err(|_| {
                        SigV4Error::Malformed(format!("signed header {name} is not ASCII"))
                    })
                })
                .collect::<Result<_, _>>()?
        };
        if values.is_empty() {
            return Err(SigV4Error::Malformed(format!(
                "signed header {name} is not in the request"
            )));
        }
        canonical.push_str(name);
        canonical.push(':');
        canonical.push_str(&values.join(","));
        canonical.push('\n');
    }
    canonical.push('\n');
    canonical.push_str(&signed_headers.join(";"));
    canonical.push('\n');
    canonical.push_str(&hex::encode(ssmx_protocol::digest::sha256(request.body)));
    Ok(format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex::encode(ssmx_protocol::digest::sha256(canonical.as_bytes()))
    ))
}

/// A header value as canonical headers carry it: trimmed, runs of spaces made one.
fn collapse_spaces(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Checks an RSASSA-PSS (SHA-256, MGF1-SHA-256, salt 32) signature of `message` by the key in
/// `spki_der`.
fn verify_rsa_pss(spki_der: &[u8], message: &[u8], signature: &[u8]) -> Result<(), SigV4Error> {
    let public_key = rsa_public_key(spki_der)
        .ok_or_else(|| SigV4Error::Malformed("the registered public key is not RSA".into()))?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PSS_2048_8192_SHA256, public_key)
        .verify(message, signature)
        .map_err(|_| SigV4Error::Mismatch)
}

/// The PKCS#1 RSAPublicKey inside a DER SubjectPublicKeyInfo, if it holds an RSA key.
pub fn rsa_public_key(spki_der: &[u8]) -> Option<&[u8]> {
    use spki::der::Decode as _;
    const RSA_ENCRYPTION: spki::ObjectIdentifier =
        spki::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
    let info = spki::SubjectPublicKeyInfoRef::from_der(spki_der).ok()?;
    (info.algorithm.oid == RSA_ENCRYPTION)
        .then(|| info.subject_public_key.as_bytes())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sigv4::http_request::SigningSettings;

    const KEY: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn signed(body: &[u8], at: SystemTime, secret: &str) -> (HeaderMap, Uri) {
        let identity = Credentials::new(KEY, secret, None, None, "test").into();
        let params = SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("ssm")
            .time(at)
            .settings(SigningSettings::default())
            .build()
            .unwrap();
        let headers = [
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", "AmazonSSM.DescribeSessions"),
            ("host", "127.0.0.1:9"),
        ];
        let req = SignableRequest::new(
            "POST",
            "http://127.0.0.1:9/",
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )
        .unwrap();
        let (instructions, _) = sign(req, &params.into()).unwrap().into_parts();
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(k, v.parse().unwrap());
        }
        for (k, v) in instructions.headers() {
            map.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        (map, Uri::from_static("/"))
    }

    fn check(
        v: &Verifier,
        headers: &HeaderMap,
        uri: &Uri,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, SigV4Error> {
        let parts = RequestParts {
            method: &Method::POST,
            uri,
            headers,
            body,
        };
        v.verify(parts, "ssm", "us-east-1", now, true, |k| {
            (k == KEY).then(|| SigningKey::Hmac(SECRET.to_owned()))
        })
    }

    #[test]
    fn accepts_once_then_refuses_replay() {
        let now = SystemTime::now();
        let (h, u) = signed(b"{}", now, SECRET);
        let v = Verifier::new();
        assert_eq!(check(&v, &h, &u, b"{}", now).unwrap().access_key_id, KEY);
        assert_eq!(check(&v, &h, &u, b"{}", now), Err(SigV4Error::Replayed));
    }

    #[test]
    fn a_replay_with_new_unsigned_headers_is_still_refused() {
        let now = SystemTime::now();
        let (mut h, u) = signed(b"{}", now, SECRET);
        let v = Verifier::new();
        h.insert("amz-sdk-invocation-id", "first".parse().unwrap());
        check(&v, &h, &u, b"{}", now).unwrap();
        h.insert("amz-sdk-invocation-id", "second".parse().unwrap());
        h.insert("user-agent", "replayer".parse().unwrap());
        assert_eq!(check(&v, &h, &u, b"{}", now), Err(SigV4Error::Replayed));
        assert_eq!(SigV4Error::Replayed.code(), ErrorCode::Throttling);
    }

    #[test]
    fn refuses_another_region() {
        let now = SystemTime::now();
        let (h, u) = signed(b"{}", now, SECRET);
        let parts = RequestParts {
            method: &Method::POST,
            uri: &u,
            headers: &h,
            body: b"{}",
        };
        let refused = Verifier::new()
            .verify(parts, "ssm", "eu-west-1", now, false, |_| {
                Some(SigningKey::Hmac(SECRET.into()))
            })
            .unwrap_err();
        assert!(
            matches!(refused, SigV4Error::WrongRegion { .. }),
            "{refused:?}"
        );
        assert_eq!(refused.code(), ErrorCode::InvalidSignature);
    }

    #[test]
    fn refuses_tampering_wrong_secret_and_stale_dates() {
        let now = SystemTime::now();
        let v = Verifier::new();
        let (h, u) = signed(b"{}", now, SECRET);
        assert_eq!(
            check(&v, &h, &u, b"{\"x\":1}", now),
            Err(SigV4Error::Mismatch)
        );
        let (h, u) = signed(b"{}", now, "not-the-secret");
        assert_eq!(check(&v, &h, &u, b"{}", now), Err(SigV4Error::Mismatch));
        let old = now - Duration::from_secs(16 * 60);
        let (h, u) = signed(b"{}", old, SECRET);
        assert!(matches!(
            check(&v, &h, &u, b"{}", now),
            Err(SigV4Error::Expired {
                skew_seconds: -961..=-960,
                ..
            })
        ));
        let (ahead_h, ahead_u) = signed(b"{}", now + Duration::from_secs(120), SECRET);
        // X-Amz-Date has whole seconds, so the skew is known to a second.
        let ahead = check(&v, &ahead_h, &ahead_u, b"{}", now).map(|ok| ok.skew_seconds);
        assert!(matches!(ahead, Ok(119..=120)), "{ahead:?}");
        let mut h = h;
        h.remove(http::header::AUTHORIZATION);
        assert_eq!(check(&v, &h, &u, b"{}", now), Err(SigV4Error::Missing));
    }

    #[test]
    fn malformed_headers_are_typed_errors() {
        for bad in [
            "Basic abc",
            "AWS4-HMAC-SHA256 Credential=A/2020/us/ssm, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=A/20200101/us-east-1/ssm/aws4_request, SignedHeaders=x-amz-date, Signature=0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert!(matches!(
                parse_authorization(bad),
                Err(SigV4Error::Malformed(_))
            ));
        }
    }

    /// A throwaway key made for these tests (PKCS#1, as the official agent keeps its key, and its SubjectPublicKeyInfo).
    const TEST_KEY_PKCS1: &[u8] = include_bytes!("../testdata/test-instance-key.der");
    const TEST_KEY_SPKI: &[u8] = include_bytes!("../testdata/test-instance-key.spki");

    /// A token request as the official agent sends it, RSA-signed at `at`.
    fn rsa_signed(body: &[u8], at: SystemTime) -> HeaderMap {
        let date = chrono::DateTime::<chrono::Utc>::from(at)
            .format(DATE_FORMAT)
            .to_string();
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            "application/x-amz-json-1.1".parse().unwrap(),
        );
        headers.insert("host", "127.0.0.1:8443".parse().unwrap());
        headers.insert("x-amz-date", date.parse().unwrap());
        headers.insert(
            "x-amz-target",
            "AmazonSSM.RequestManagedInstanceRoleToken".parse().unwrap(),
        );
        let credential = format!(
            "mi-0123456789abcdef0/{}/us-east-1/ssm/aws4_request",
            &date[..8]
        );
        let unsigned = format!(
            "{ALGORITHM} Credential={credential}, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature={}",
            "0".repeat(64)
        );
        let auth = parse_authorization(&unsigned).unwrap();
        let parts = RequestParts {
            method: &Method::POST,
            uri: &Uri::from_static("/"),
            headers: &headers,
            body,
        };
        let to_sign =
            rsa_string_to_sign(&parts, &auth.signed_headers, &auth.scope(), &date).unwrap();
        let key = ring::signature::RsaKeyPair::from_der(TEST_KEY_PKCS1).unwrap();
        let mut signature = vec![0; key.public().modulus_len()];
        key.sign(
            &ring::signature::RSA_PSS_SHA256,
            &ring::rand::SystemRandom::new(),
            to_sign.as_bytes(),
            &mut signature,
        )
        .unwrap();
        let header = unsigned.replace(
            &"0".repeat(64),
            &base64::engine::general_purpose::STANDARD.encode(signature),
        );
        headers.insert(http::header::AUTHORIZATION, header.parse().unwrap());
        headers
    }

    fn check_rsa(
        v: &Verifier,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, SigV4Error> {
        let parts = RequestParts {
            method: &Method::POST,
            uri: &Uri::from_static("/"),
            headers,
            body,
        };
        v.verify(parts, "ssm", "us-east-1", now, true, |id| {
            (id == "mi-0123456789abcdef0").then(|| SigningKey::Rsa(TEST_KEY_SPKI.to_vec()))
        })
    }

    #[test]
    fn the_rsa_canonical_request_is_the_one_sigv4_signs() {
        // Our canonicalisation, HMAC-signed, must give the aws-sigv4 crate's signature.
        let now = SystemTime::now();
        let (headers, uri) = signed(b"{\"a\":  1}", now, SECRET);
        let header = headers[http::header::AUTHORIZATION].to_str().unwrap();
        let auth = parse_authorization(header).unwrap();
        let date = headers["x-amz-date"].to_str().unwrap();
        let parts = RequestParts {
            method: &Method::POST,
            uri: &uri,
            headers: &headers,
            body: b"{\"a\":  1}",
        };
        let to_sign =
            rsa_string_to_sign(&parts, &auth.signed_headers, &auth.scope(), date).unwrap();
        let key = aws_sigv4::sign::v4::generate_signing_key(SECRET, now, "us-east-1", "ssm");
        let ours = aws_sigv4::sign::v4::calculate_signature(key, to_sign.as_bytes());
        assert!(matches!(auth.signature, Signature::Hmac(given) if given == ours));
    }

    #[test]
    fn an_rsa_signature_verifies_once_and_only_for_its_request() {
        let now = SystemTime::now();
        let body = br#"{"Fingerprint":"b862bd03-1d27-4c95-be00-fd7a86cb2077"}"#;
        let headers = rsa_signed(body, now);
        let v = Verifier::new();
        let ok = check_rsa(&v, &headers, body, now).unwrap();
        assert_eq!(ok.access_key_id, "mi-0123456789abcdef0");
        assert_eq!(
            check_rsa(&v, &headers, body, now),
            Err(SigV4Error::Replayed)
        );
        let headers = rsa_signed(body, now + Duration::from_secs(1));
        assert_eq!(
            check_rsa(&v, &headers, br#"{"Fingerprint":"other"}"#, now),
            Err(SigV4Error::Mismatch)
        );
        let old = now - Duration::from_secs(20 * 60);
        assert!(matches!(
            check_rsa(&v, &rsa_signed(body, old), body, now),
            Err(SigV4Error::Expired { .. })
        ));
    }

    #[test]
    fn signature_kinds_do_not_cross() {
        let now = SystemTime::now();
        let v = Verifier::new();
        let headers = rsa_signed(b"{}", now);
        let parts = RequestParts {
            method: &Method::POST,
            uri: &Uri::from_static("/"),
            headers: &headers,
            body: b"{}",
        };
        let hmac_key = v.verify(parts, "ssm", "us-east-1", now, false, |_| {
            Some(SigningKey::Hmac(SECRET.into()))
        });
        assert!(matches!(hmac_key, Err(SigV4Error::WrongKind { .. })));
        let (headers, _) = signed(b"{}", now, SECRET);
        let rsa_key = v.verify(
            RequestParts {
                headers: &headers,
                ..parts
            },
            "ssm",
            "us-east-1",
            now,
            false,
            |_| Some(SigningKey::Rsa(TEST_KEY_SPKI.to_vec())),
        );
        assert!(matches!(rsa_key, Err(SigV4Error::WrongKind { .. })));
        assert!(rsa_public_key(TEST_KEY_SPKI).is_some());
        assert!(rsa_public_key(b"not der").is_none());
    }
}
