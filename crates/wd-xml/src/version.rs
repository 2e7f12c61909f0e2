//! The libvirt version a domain is rendered for.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// A libvirt release, such as `9.1.0`.
///
/// It is stored in libvirt's own integer encoding,
/// `major * 1_000_000 + minor * 1000 + micro` (what `virGetVersion` and
/// `virConnectGetLibVersion` return), so ordering is numeric. `FromStr`,
/// `Display` and serde use the text form `MAJOR.MINOR.MICRO` and round-trip
/// exactly.
///
/// ```
/// use wd_xml::LibvirtVersion;
///
/// let v: LibvirtVersion = "9.1.0".parse()?;
/// assert_eq!(v, LibvirtVersion::from_number(9_001_000));
/// assert_eq!(v.to_string(), "9.1.0");
/// assert!(v >= LibvirtVersion::IMPLICIT_ITCO);
/// # Ok::<(), wd_xml::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LibvirtVersion(u64);

impl LibvirtVersion {
    /// libvirt 9.1.0, the first release that adds an implicit `itco` watchdog
    /// to q35 machines and whose schema accepts `model='itco'`.
    pub const IMPLICIT_ITCO: LibvirtVersion = LibvirtVersion(9_001_000);

    /// A version from its parts.
    ///
    /// # Errors
    ///
    /// `minor` or `micro` of 1000 or more, which libvirt's encoding cannot hold.
    pub fn new(major: u64, minor: u64, micro: u64) -> Result<Self> {
        if minor >= 1000 || micro >= 1000 || major > u64::MAX / 1_000_000 - 1 {
            return Err(Error::ParseVersion {
                value: format!("{major}.{minor}.{micro}"),
            });
        }
        Ok(LibvirtVersion(major * 1_000_000 + minor * 1000 + micro))
    }

    /// A version from libvirt's integer encoding.
    pub const fn from_number(number: u64) -> Self {
        LibvirtVersion(number)
    }

    /// libvirt's integer encoding of this version.
    pub const fn number(self) -> u64 {
        self.0
    }

    /// The major release.
    pub const fn major(self) -> u64 {
        self.0 / 1_000_000
    }

    /// The minor release.
    pub const fn minor(self) -> u64 {
        self.0 / 1000 % 1000
    }

    /// The micro release.
    pub const fn micro(self) -> u64 {
        self.0 % 1000
    }
}

impl From<u32> for LibvirtVersion {
    fn from(number: u32) -> Self {
        LibvirtVersion(u64::from(number))
    }
}

impl fmt::Display for LibvirtVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major(), self.minor(), self.micro())
    }
}

/// Parses one decimal part: ASCII digits only, no sign, no leading zero.
fn part(s: &str) -> Option<u64> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if canonical { s.parse().ok() } else { None }
}

impl FromStr for LibvirtVersion {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::ParseVersion {
            value: s.to_owned(),
        };
        let mut parts = s.split('.');
        let (Some(major), Some(minor), Some(micro), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        match (part(major), part(minor), part(micro)) {
            (Some(major), Some(minor), Some(micro)) => {
                LibvirtVersion::new(major, minor, micro).map_err(|_| bad())
            }
            _ => Err(bad()),
        }
    }
}

impl Serialize for LibvirtVersion {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LibvirtVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &str) {
        let got = match input.parse::<LibvirtVersion>() {
            Ok(v) => format!("{v} = {}", v.number()),
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(got, expected, "{input:?}");
    }

    #[test]
    fn parses_and_round_trips() {
        check("9.1.0", "9.1.0 = 9001000");
        check("9.0.0", "9.0.0 = 9000000");
        check("10.10.999", "10.10.999 = 10010999");
        check("0.0.0", "0.0.0 = 0");
        check("1.2.3", "1.2.3 = 1002003");
        for v in ["9.1.0", "8.0.0", "11.2.33"] {
            let parsed: LibvirtVersion = v.parse().unwrap();
            assert_eq!(parsed.to_string(), v);
            assert_eq!(LibvirtVersion::from_number(parsed.number()), parsed);
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "9",
            "9.1",
            "9.1.0.1",
            "9.1.x",
            "9..0",
            "v9.1.0",
            "9.1.0 ",
            " 9.1.0",
            "+9.1.0",
            "9.-1.0",
            "9.01.0",
            "9.1000.0",
            "9.1.1000",
            "99999999999999999999.0.0",
        ] {
            check(
                bad,
                &format!(
                    "error: invalid libvirt version `{bad}`; expected MAJOR.MINOR.MICRO such as 9.1.0, minor and micro below 1000"
                ),
            );
        }
    }

    #[test]
    fn integer_encoding_orders_and_decodes() {
        let v = LibvirtVersion::from(9_000_000u32);
        assert_eq!((v.major(), v.minor(), v.micro()), (9, 0, 0));
        assert!(v < LibvirtVersion::IMPLICIT_ITCO);
        assert!(LibvirtVersion::from_number(10_000_000) > LibvirtVersion::IMPLICIT_ITCO);
        assert!(LibvirtVersion::from_number(9_000_999) < LibvirtVersion::IMPLICIT_ITCO);
        assert_eq!(
            LibvirtVersion::new(9, 1, 0).unwrap(),
            LibvirtVersion::IMPLICIT_ITCO
        );
    }

    #[test]
    fn serde_uses_the_text_form() {
        let v: LibvirtVersion = "9.1.2".parse().unwrap();
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, "\"9.1.2\"");
        assert_eq!(serde_json::from_str::<LibvirtVersion>(&json).unwrap(), v);
        assert!(serde_json::from_str::<LibvirtVersion>("\"9.1\"").is_err());
    }
}
