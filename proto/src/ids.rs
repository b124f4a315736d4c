//! ID newtypes: job ids, worker ids, model names, version numbers.
//!
//! Model names and version numbers end up in object keys, so they are validated when they are
//! made (and when they are deserialised): no path tricks can travel through them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// A job's id: a UUID (v7, so ids sort by submission time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(Uuid);

impl JobId {
    /// A new, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The id of an existing UUID.
    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// The UUID inside.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for JobId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| IdError::JobId(s.chars().take(64).collect()))
    }
}

/// One attempt at a job: a random UUID (v4) a worker draws for each delivery it takes. It names
/// the attempt's files (`models/<m>/v<N>/<attempt>/…`, `jobs/<job>/attempts/<attempt>/…`) and,
/// with the lease's fencing token, tells the coordinator which attempt an event comes from.
/// Random, so another process cannot guess it from the job's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AttemptId(Uuid);

impl AttemptId {
    /// A new, random id.
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }

    /// The id of an existing UUID.
    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }
}

impl Default for AttemptId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for AttemptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for AttemptId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| IdError::AttemptId(s.chars().take(64).collect()))
    }
}

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not a UUID.
    #[error("invalid job id {0:?}: expected a UUID")]
    JobId(String),
    /// Not a UUID.
    #[error("invalid attempt id {0:?}: expected a UUID")]
    AttemptId(String),
    /// Not a valid model name.
    #[error(
        "invalid model name {0:?}: use 1-64 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
    )]
    ModelName(String),
    /// Not a valid worker id.
    #[error("invalid worker id {0:?}: use 1-128 printable ASCII characters without '/' or spaces")]
    WorkerId(String),
    /// Not a valid version.
    #[error(
        "invalid version {0:?}: expected a number from 1 to 999999, optionally written v000042"
    )]
    Version(String),
    /// Not a valid alias.
    #[error(
        "invalid alias {0:?}: use 1-64 characters of a-z, 0-9, '-' and '_', starting with a letter"
    )]
    Alias(String),
}

/// Validates the shared "slug" grammar of model names and aliases.
fn is_slug(s: &str, first_may_be_digit: bool) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    let first_ok = first.is_ascii_lowercase() || (first_may_be_digit && first.is_ascii_digit());
    s.len() <= 64
        && first_ok
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

macro_rules! validated_string {
    ($(#[$meta:meta])* $name:ident, $check:expr, $err:ident) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps a string.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                let check: fn(&str) -> bool = $check;
                if check(&s) {
                    Ok(Self(s))
                } else {
                    Err(IdError::$err(s.chars().take(80).collect()))
                }
            }

            /// The string inside.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = String::deserialize(deserializer)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

validated_string!(
    /// A model's name: 1-64 characters of `a-z0-9-_`, starting with a letter or digit.
    ModelName,
    |s| is_slug(s, true),
    ModelName
);

validated_string!(
    /// A named pointer to a model version (`production`, `staging`): like a model name, but
    /// starting with a letter so it can never be mistaken for a version number.
    Alias,
    |s| is_slug(s, false),
    Alias
);

validated_string!(
    /// A worker's id, e.g. `hostname-1234-0`: 1-128 printable ASCII characters, no `/`.
    WorkerId,
    |s| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/'),
    WorkerId
);

/// A model version number, 1 to 999 999; written `v000042` in object keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Version(u32);

impl Version {
    /// The largest version number the key layout can hold.
    pub const MAX: u32 = 999_999;

    /// Validates a version number.
    pub fn new(n: u32) -> Result<Self, IdError> {
        if (1..=Self::MAX).contains(&n) {
            Ok(Self(n))
        } else {
            Err(IdError::Version(n.to_string()))
        }
    }

    /// The first version of a model.
    pub fn first() -> Self {
        Self(1)
    }

    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The version after this one.
    pub fn next(self) -> Result<Self, IdError> {
        Self::new(self.0 + 1)
    }

    /// The key segment: `v000042`.
    pub fn key_segment(self) -> String {
        format!("v{:06}", self.0)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

impl FromStr for Version {
    type Err = IdError;

    /// Accepts `42`, `v42` and `v000042`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix('v').unwrap_or(s);
        if digits.is_empty() || digits.len() > 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IdError::Version(s.chars().take(16).collect()));
        }
        let n: u32 = digits.parse().map_err(|_| IdError::Version(s.to_owned()))?;
        Self::new(n)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = u32::deserialize(deserializer)?;
        Self::new(n).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_reject_path_tricks() {
        for bad in [
            "",
            "..",
            "a/b",
            "../x",
            "A",
            "a b",
            "-a",
            "_a",
            "a\0",
            "ä",
            &"a".repeat(65),
        ] {
            assert!(ModelName::new(bad).is_err(), "{bad:?} must be rejected");
        }
        for good in ["financial", "fin-demo_2", "0day", &"a".repeat(64)] {
            assert!(ModelName::new(good).is_ok(), "{good:?} must be accepted");
        }
    }

    #[test]
    fn aliases_must_start_with_a_letter() {
        assert!(Alias::new("production").is_ok());
        assert!(Alias::new("1").is_err());
        assert!(Alias::new("prod/../x").is_err());
    }

    #[test]
    fn worker_ids_reject_slashes_and_spaces() {
        assert!(WorkerId::new("host-12-0").is_ok());
        assert!(WorkerId::new("a/b").is_err());
        assert!(WorkerId::new("a b").is_err());
        assert!(WorkerId::new("").is_err());
    }

    #[test]
    fn versions_parse_and_format() {
        assert_eq!("v000042".parse::<Version>().unwrap().get(), 42);
        assert_eq!("7".parse::<Version>().unwrap().key_segment(), "v000007");
        assert_eq!(Version::new(3).unwrap().to_string(), "v3");
        for bad in ["0", "v0", "v", "", "1000000", "-1", "v1.2", "v+1"] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?} must be rejected");
        }
        let v: Result<Version, _> = serde_json::from_str("0");
        assert!(v.is_err());
    }

    #[test]
    fn deserialising_validates_model_names() {
        let ok: ModelName = serde_json::from_str("\"financial\"").unwrap();
        assert_eq!(ok.as_str(), "financial");
        assert!(serde_json::from_str::<ModelName>("\"../etc\"").is_err());
    }

    #[test]
    fn job_ids_round_trip_through_strings() {
        let id = JobId::new();
        assert_eq!(id.to_string().parse::<JobId>().unwrap(), id);
        assert!("nope".parse::<JobId>().is_err());
    }
}
