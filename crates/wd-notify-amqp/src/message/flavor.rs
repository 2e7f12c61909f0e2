//! Nova's `FlavorPayload`, the flavor inside the versioned payload.

use serde::Serialize;

use super::{FLAVOR_PAYLOAD_VERSION, NovaObject};

/// `FlavorPayload`'s fields, each left unset when unknown.
#[derive(Serialize)]
pub(super) struct FlavorData<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    flavorid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_mb: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vcpus: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    root_gb: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ephemeral_gb: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    swap: Option<u32>,
}

/// Nova's `FlavorPayload` (namespace `nova`) of `f`, with the fields Nova's
/// domain metadata holds; the others (`extra_specs`, `is_public`, …) are not
/// set, as o.vo allows.
pub(super) fn payload(f: &wd_notify::Flavor) -> NovaObject<FlavorData<'_>> {
    NovaObject {
        name: "FlavorPayload",
        namespace: "nova",
        version: FLAVOR_PAYLOAD_VERSION,
        data: FlavorData {
            flavorid: f.id.as_deref(),
            name: f.name.as_deref(),
            memory_mb: f.memory_mb,
            vcpus: f.vcpus,
            root_gb: f.root_gb,
            ephemeral_gb: f.ephemeral_gb,
            swap: f.swap_mb,
        },
    }
}
