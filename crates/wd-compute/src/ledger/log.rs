//! The ledger's file format: a log of JSON lines.
//!
//! The first line is a header (`{"version":3,"boot_id":"…"}`); each further
//! line is one record, `{"domain":"<uuid>","episode":{…}}` for an entry or
//! `{"domain":"<uuid>","episode":null}` for its end, applied in order. A
//! compaction rewrites the file as the header and one record per open
//! episode. Versions 1 and 2 were one JSON document rewritten whole
//! (`{"version":2,"boot_id":…,"episodes":{…}}`); they are read, and
//! rewritten as a log at the first write.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Entry;

/// The file format version written.
pub(super) const VERSION: u32 = 3;

#[derive(Serialize, Deserialize)]
struct Header {
    version: u32,
    /// The host boot the entries belong to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    boot_id: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Record {
    domain: Uuid,
    /// `None`: the episode ended.
    episode: Option<Entry>,
}

/// Versions 1 and 2: one JSON document.
#[derive(Deserialize)]
struct Document {
    version: u32,
    #[serde(default)]
    boot_id: Option<String>,
    episodes: BTreeMap<Uuid, Entry>,
}

/// A ledger file as read.
#[derive(Debug)]
pub(super) struct Loaded {
    pub(super) version: u32,
    pub(super) boot_id: Option<String>,
    pub(super) episodes: BTreeMap<Uuid, Entry>,
    /// Records in the log after its header.
    pub(super) records: usize,
    /// The last record was cut short (a write interrupted by a power cut or
    /// a full disk); it is ignored, and nothing may be appended after it.
    pub(super) torn: bool,
}

/// Reads a ledger file of any version up to [`VERSION`].
pub(super) fn parse(bytes: &[u8]) -> Result<Loaded, String> {
    if let Some(end) = bytes.iter().position(|&b| b == b'\n')
        && let Ok(h) = serde_json::from_slice::<Header>(&bytes[..end])
        && h.version >= VERSION
    {
        if h.version > VERSION {
            return Err(format!(
                "format version {} is not supported; allowed: 1 to {VERSION}",
                h.version
            ));
        }
        return parse_log(h, &bytes[end + 1..]);
    }
    let d: Document = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if !(1..VERSION).contains(&d.version) {
        return Err(format!(
            "format version {} is not supported as one JSON document; allowed: 1 or 2 (version {VERSION} is a log of JSON lines)",
            d.version
        ));
    }
    Ok(Loaded {
        version: d.version,
        boot_id: d.boot_id,
        episodes: d.episodes,
        records: 0,
        torn: false,
    })
}

fn parse_log(h: Header, body: &[u8]) -> Result<Loaded, String> {
    let mut episodes = BTreeMap::new();
    let mut records = 0;
    let mut rest = body;
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..end];
        rest = &rest[end + 1..];
        if line.is_empty() {
            continue;
        }
        records += 1;
        // A complete record that does not read is not a torn tail: skipping
        // it could lose the end of an episode (and a later pause of the
        // same run would be taken as already announced), so the whole file
        // is unreadable (set aside; the worst case is a duplicate).
        let r: Record = serde_json::from_slice(line)
            .map_err(|e| format!("record {records} is unreadable: {e}"))?;
        match r.episode {
            Some(e) => episodes.insert(r.domain, e),
            None => episodes.remove(&r.domain),
        };
    }
    Ok(Loaded {
        version: h.version,
        boot_id: h.boot_id,
        episodes,
        records,
        torn: !rest.is_empty(),
    })
}

/// The whole file: the header and one record per entry.
pub(super) fn render(
    boot_id: Option<&str>,
    entries: &BTreeMap<Uuid, Entry>,
) -> serde_json::Result<Vec<u8>> {
    let mut out = serde_json::to_vec(&Header {
        version: VERSION,
        boot_id: boot_id.map(str::to_owned),
    })?;
    out.push(b'\n');
    append(&mut out, entries.iter().map(|(d, e)| (*d, Some(*e))))?;
    Ok(out)
}

/// Records for `changes` (an entry, or `None` for its end), one a line.
pub(super) fn records(changes: &BTreeMap<Uuid, Option<Entry>>) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(changes.len() * 128);
    append(&mut out, changes.iter().map(|(d, e)| (*d, *e)))?;
    Ok(out)
}

fn append(
    out: &mut Vec<u8>,
    changes: impl Iterator<Item = (Uuid, Option<Entry>)>,
) -> serde_json::Result<()> {
    for (domain, episode) in changes {
        serde_json::to_writer(&mut *out, &Record { domain, episode })?;
        out.push(b'\n');
    }
    Ok(())
}
