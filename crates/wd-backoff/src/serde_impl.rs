//! Deserializing a [`Backoff`] from a config file (the `serde` feature).

use std::time::Duration;

use serde::Deserialize;

use crate::{Backoff, Error};

/// The config-file form: delays in (fractional) seconds.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Raw {
    initial_secs: f64,
    max_secs: f64,
    #[serde(default = "two")]
    factor: f32,
    #[serde(default = "yes")]
    jitter: bool,
}

fn two() -> f32 {
    2.0
}

fn yes() -> bool {
    true
}

fn secs(key: &str, value: f64) -> Result<Duration, Error> {
    Duration::try_from_secs_f64(value).map_err(|_| Error::Seconds {
        key: key.to_owned(),
        value,
    })
}

impl TryFrom<Raw> for Backoff {
    type Error = Error;

    fn try_from(raw: Raw) -> Result<Self, Error> {
        Ok(Backoff {
            initial: secs("initial_secs", raw.initial_secs)?,
            max: secs("max_secs", raw.max_secs)?,
            factor: raw.factor,
            jitter: raw.jitter,
        })
    }
}
