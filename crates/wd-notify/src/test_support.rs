//! Helpers for this crate's unit tests: the shared fixtures of
//! [`crate::testing`], under their old names.

pub(crate) use crate::testing::{firing, firing_at};
