//! Standard Webhooks signing and verification (symmetric, `v1`).
//!
//! The signed content is `{webhook-id}.{webhook-timestamp}.{body}`; the
//! signature is `v1,` followed by the base64 of HMAC-SHA256 over it, keyed with
//! the base64-decoded part of a `whsec_` secret. Several signatures are
//! separated by single spaces, which is how keys are rotated without downtime.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, Mac};
use reqwest::header::HeaderMap;
use sha2::Sha256;

use crate::error::{Error, Result};

/// The header carrying the message id (our CloudEvent id).
pub const HEADER_ID: &str = "webhook-id";
/// The header carrying the attempt time, integer Unix seconds.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// The header carrying the space-separated signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// The tolerance the specification's reference libraries use: five minutes.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

const PREFIX: &str = "whsec_";
/// Accepts the base64 of a secret with or without `=` padding.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

type HmacSha256 = Hmac<Sha256>;

/// A symmetric signing secret, written `whsec_<base64>`.
///
/// Its `Debug` output is redacted, and it has no `Display` and no `Serialize`,
/// so it cannot leak through logs, errors or configuration dumps.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    key: Vec<u8>,
}

impl Secret {
    /// Parses `whsec_<base64>`; the decoded key must be 24 to 64 bytes, as the
    /// specification requires.
    pub fn parse(text: &str) -> Result<Self> {
        let encoded = text.trim().strip_prefix(PREFIX).ok_or(Error::ParseSecret {
            reason: "it does not start with `whsec_`",
        })?;
        let key = LENIENT.decode(encoded).map_err(|_| Error::ParseSecret {
            reason: "the part after `whsec_` is not base64",
        })?;
        if !(24..=64).contains(&key.len()) {
            return Err(Error::ParseSecret {
                reason: "the decoded key is not 24 to 64 bytes long",
            });
        }
        Ok(Secret { key })
    }

    /// A secret from raw key bytes (24 to 64 of them).
    pub fn from_bytes(key: &[u8]) -> Result<Self> {
        if !(24..=64).contains(&key.len()) {
            return Err(Error::ParseSecret {
                reason: "the key is not 24 to 64 bytes long",
            });
        }
        Ok(Secret { key: key.to_vec() })
    }

    /// The secret in its `whsec_<base64>` form, for handing to the receiver.
    /// Deliberately a method rather than `Display`, so it is never printed by
    /// accident.
    pub fn expose(&self) -> String {
        format!("{PREFIX}{}", STANDARD.encode(&self.key))
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length, so this never fails.
        match HmacSha256::new_from_slice(&self.key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("hmac accepts keys of any length"),
        }
    }

    fn mac_over(&self, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let mut mac = self.mac();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl FromStr for Secret {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Secret::parse(s)
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Secret::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The `webhook-signature` value for `body`: one `v1,<base64>` per secret,
/// space-separated, in the order given.
pub fn sign(id: &str, timestamp: i64, body: &[u8], secrets: &[Secret]) -> String {
    secrets
        .iter()
        .map(|s| {
            let tag = s.mac_over(id, timestamp, body).finalize().into_bytes();
            format!("v1,{}", STANDARD.encode(tag))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a successful [`verify`] learned from the headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The `webhook-id`: deduplicate on it.
    pub id: String,
    /// The `webhook-timestamp`, Unix seconds.
    pub timestamp: i64,
}

/// Verifies a received webhook exactly as the Standard Webhooks specification
/// says: the three headers must be present, the timestamp within `tolerance`
/// of now, and at least one `v1` signature must match one of `secrets`
/// (compared in constant time). Signatures of other versions are ignored.
///
/// `body` must be the raw bytes received, not re-serialized JSON.
pub fn verify(
    headers: &HeaderMap,
    body: &[u8],
    secrets: &[Secret],
    tolerance: Duration,
) -> Result<Verified> {
    verify_at(headers, body, secrets, tolerance, SystemTime::now())
}

/// [`verify`] against a given `now`, for tests and replays of recorded traffic.
pub fn verify_at(
    headers: &HeaderMap,
    body: &[u8],
    secrets: &[Secret],
    tolerance: Duration,
    now: SystemTime,
) -> Result<Verified> {
    let header = |name: &'static str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(Error::MissingHeader { header: name })
    };
    let id = header(HEADER_ID)?;
    let raw_timestamp = header(HEADER_TIMESTAMP)?;
    let signatures = header(HEADER_SIGNATURE)?;

    let timestamp: i64 = raw_timestamp
        .trim()
        .parse()
        .map_err(|_| Error::InvalidTimestamp {
            value: raw_timestamp.chars().take(32).collect(),
        })?;
    let now_secs = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    let skew = now_secs.abs_diff(timestamp);
    if skew > tolerance.as_secs() {
        return Err(Error::TimestampOutOfTolerance {
            timestamp,
            skew_secs: skew,
            tolerance_secs: tolerance.as_secs(),
        });
    }

    for candidate in signatures.split(' ') {
        let Some(("v1", encoded)) = candidate.split_once(',') else {
            continue;
        };
        let Ok(tag) = STANDARD.decode(encoded) else {
            continue;
        };
        for secret in secrets {
            // `verify_slice` compares in constant time.
            if secret
                .mac_over(id, timestamp, body)
                .verify_slice(&tag)
                .is_ok()
            {
                return Ok(Verified {
                    id: id.to_owned(),
                    timestamp,
                });
            }
        }
    }
    Err(Error::NoMatchingSignature {
        secrets: secrets.len(),
    })
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    // The specification's published test vector (the reference libraries'
    // "sign function works" test).
    const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VECTOR_TIMESTAMP: i64 = 1614265330;
    const VECTOR_BODY: &str = r#"{"test": 2432232314}"#;
    const VECTOR_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn secret(s: &str) -> Secret {
        Secret::parse(s).unwrap()
    }

    fn other_secret() -> Secret {
        Secret::from_bytes(&[7u8; 32]).unwrap()
    }

    fn at(secs: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    }

    fn headers(id: Option<&str>, ts: Option<&str>, sig: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in [
            (HEADER_ID, id),
            (HEADER_TIMESTAMP, ts),
            (HEADER_SIGNATURE, sig),
        ] {
            if let Some(v) = value {
                h.insert(name, HeaderValue::from_str(v).unwrap());
            }
        }
        h
    }

    #[test]
    fn sign_matches_the_specification_test_vector() {
        let sig = sign(
            VECTOR_ID,
            VECTOR_TIMESTAMP,
            VECTOR_BODY.as_bytes(),
            &[secret(VECTOR_SECRET)],
        );
        assert_eq!(sig, VECTOR_SIGNATURE);
    }

    #[test]
    fn two_secrets_give_two_space_separated_signatures_in_order() {
        let sig = sign(
            VECTOR_ID,
            VECTOR_TIMESTAMP,
            VECTOR_BODY.as_bytes(),
            &[other_secret(), secret(VECTOR_SECRET)],
        );
        let parts: Vec<&str> = sig.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts[0].starts_with("v1,") && parts[0] != VECTOR_SIGNATURE);
        assert_eq!(parts[1], VECTOR_SIGNATURE);
    }

    /// Name, headers, body, now, receiver's secrets, expected outcome.
    type Case<'a> = (
        &'a str,
        HeaderMap,
        &'a str,
        i64,
        Vec<Secret>,
        Result<(), &'a str>,
    );

    #[test]
    fn verify_cases() {
        let ts = VECTOR_TIMESTAMP.to_string();
        let multi =
            format!("v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,abc {VECTOR_SIGNATURE}");
        let wrong_version = VECTOR_SIGNATURE.replacen("v1,", "v1a,", 1);
        let cases: Vec<Case<'_>> = vec![
            (
                "valid",
                headers(Some(VECTOR_ID), Some(&ts), Some(VECTOR_SIGNATURE)),
                VECTOR_BODY,
                VECTOR_TIMESTAMP,
                vec![secret(VECTOR_SECRET)],
                Ok(()),
            ),
            (
                "valid among others",
                headers(Some(VECTOR_ID), Some(&ts), Some(&multi)),
                VECTOR_BODY,
                VECTOR_TIMESTAMP,
                vec![secret(VECTOR_SECRET)],
                Ok(()),
            ),
            (
                "second of two keys",
                headers(Some(VECTOR_ID), Some(&ts), Some(VECTOR_SIGNATURE)),
                VECTOR_BODY,
                VECTOR_TIMESTAMP,
                vec![other_secret(), secret(VECTOR_SECRET)],
                Ok(()),
            ),
            (
                "edge of tolerance",
                headers(Some(VECTOR_ID), Some(&ts), Some(VECTOR_SIGNATURE)),
                VECTOR_BODY,
                VECTOR_TIMESTAMP + 300,
                vec![secret(VECTOR_SECRET)],
                Ok(()),
            ),
            (
                "too old",
                headers(Some(VECTOR_ID), Some(&ts), Some(VECTOR_SIGNATURE)),
                VECTOR_BODY,
                VECTOR_TIMESTAMP + 301,
                vec![secret(VECTOR_SECRET)],
                Err("webhook-timestamp 1614265330 is 301 s away from now; allowed: at most 300 s"),
            ),
            (
                "too new",
                headers(Some(VECTOR_ID), Some(&ts), Some(VECTOR_SIGNATURE)),
                VECTOR_BODY,
                VECTOR_TIMESTAMP - 301,
                vec![secret(VECTOR_SECRET)],
                Err("webhook-timestamp 1614265330 is 301 s away from now; allowed: at most 300 s"),
            ),
            (
                "tampered body",
                headers(Some(VECTOR_ID), Some(&ts), Some(VECTOR_SIGNATURE)),
                r#"{"test": 2432232315}"#,
                VECTOR_TIMESTAMP,
                vec![secret(VECTOR_SECRET)],
                Err("no v1 signature in webhook-signature matches any of the 1 configured secrets"),
            ),
            (
                "tampered id",
                headers(Some("msg_other"), Some(&ts), Some(VECTOR_SIGNATURE)),
                VECTOR_BODY,
                VECTOR_TIMESTAMP,
                vec![secret(VECTOR_SECRET)],
                Err("no v1 signature in webhook-signature matches any of the 1 configured secrets"),
            ),
            (
                "wrong key",
                headers(Some(VECTOR_ID), Some(&ts), Some(VECTOR_SIGNATURE)),
                VECTOR_BODY,
                VECTOR_TIMESTAMP,
                vec![other_secret()],
                Err("no v1 signature in webhook-signature matches any of the 1 configured secrets"),
            ),
            (
                "not v1",
                headers(Some(VECTOR_ID), Some(&ts), Some(&wrong_version)),
                VECTOR_BODY,
                VECTOR_TIMESTAMP,
                vec![secret(VECTOR_SECRET)],
                Err("no v1 signature in webhook-signature matches any of the 1 configured secrets"),
            ),
            (
                "partial signature",
                headers(Some(VECTOR_ID), Some(&ts), Some("v1,")),
                VECTOR_BODY,
                VECTOR_TIMESTAMP,
                vec![secret(VECTOR_SECRET)],
                Err("no v1 signature in webhook-signature matches any of the 1 configured secrets"),
            ),
            (
                "bad timestamp",
                headers(Some(VECTOR_ID), Some("hello"), Some(VECTOR_SIGNATURE)),
                VECTOR_BODY,
                VECTOR_TIMESTAMP,
                vec![secret(VECTOR_SECRET)],
                Err("webhook-timestamp `hello` is not integer unix seconds"),
            ),
            (
                "no id",
                headers(None, Some(&ts), Some(VECTOR_SIGNATURE)),
                VECTOR_BODY,
                VECTOR_TIMESTAMP,
                vec![secret(VECTOR_SECRET)],
                Err(
                    "webhook request has no `webhook-id` header; required: webhook-id, webhook-timestamp, webhook-signature",
                ),
            ),
            (
                "no timestamp",
                headers(Some(VECTOR_ID), None, Some(VECTOR_SIGNATURE)),
                VECTOR_BODY,
                VECTOR_TIMESTAMP,
                vec![secret(VECTOR_SECRET)],
                Err(
                    "webhook request has no `webhook-timestamp` header; required: webhook-id, webhook-timestamp, webhook-signature",
                ),
            ),
            (
                "no signature",
                headers(Some(VECTOR_ID), Some(&ts), None),
                VECTOR_BODY,
                VECTOR_TIMESTAMP,
                vec![secret(VECTOR_SECRET)],
                Err(
                    "webhook request has no `webhook-signature` header; required: webhook-id, webhook-timestamp, webhook-signature",
                ),
            ),
        ];
        for (name, h, body, now, secrets, expected) in cases {
            check(name, &h, body, now, &secrets, expected);
        }
    }

    fn check(
        name: &str,
        h: &HeaderMap,
        body: &str,
        now: i64,
        secrets: &[Secret],
        expected: Result<(), &str>,
    ) {
        let got = verify_at(h, body.as_bytes(), secrets, DEFAULT_TOLERANCE, at(now));
        match (got, expected) {
            (Ok(v), Ok(())) => {
                assert_eq!(v.timestamp, VECTOR_TIMESTAMP, "{name}");
            }
            (Err(e), Err(msg)) => assert_eq!(e.to_string(), msg, "{name}"),
            (got, expected) => panic!("{name}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn secret_parsing() {
        let long = format!("whsec_{}", STANDARD.encode([9u8; 64]));
        let padded = format!("whsec_{}", STANDARD.encode([9u8; 25]));
        let unpadded = padded.trim_end_matches('=').to_owned();
        let too_long = format!("whsec_{}", STANDARD.encode([9u8; 65]));
        let cases: [(&str, Result<usize, &str>); 9] = [
            (VECTOR_SECRET, Ok(24)),
            (&long, Ok(64)),
            (&padded, Ok(25)),
            (&unpadded, Ok(25)),
            (&too_long, Err("the decoded key is not 24 to 64 bytes long")),
            (
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                Err("it does not start with `whsec_`"),
            ),
            (
                "whsec_not base64!",
                Err("the part after `whsec_` is not base64"),
            ),
            (
                "whsec_c2hvcnQ=",
                Err("the decoded key is not 24 to 64 bytes long"),
            ),
            ("whsec_", Err("the decoded key is not 24 to 64 bytes long")),
        ];
        for (input, expected) in cases {
            match (Secret::parse(input), expected) {
                (Ok(s), Ok(len)) => {
                    assert_eq!(s.key.len(), len, "{input}");
                    assert_eq!(
                        Secret::parse(&s.expose()).unwrap(),
                        s,
                        "{input} round-trips"
                    );
                }
                (Err(Error::ParseSecret { reason }), Err(r)) => assert_eq!(reason, r, "{input}"),
                (got, expected) => panic!("{input}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn secrets_never_appear_in_debug_or_errors() {
        let s = secret(VECTOR_SECRET);
        let debug = format!("{s:?} {:?}", vec![s.clone()]);
        assert!(!debug.contains("MfKQ9r8G"), "{debug}");
        assert!(debug.contains("<redacted>"));
        // A near-miss secret must not be echoed back in the parse error.
        let err = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLa!!").unwrap_err();
        assert!(!err.to_string().contains("MfKQ9r8G"), "{err}");
        assert!(!format!("{err:?}").contains("MfKQ9r8G"), "{err:?}");
    }
}
