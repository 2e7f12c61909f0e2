//! The spool's on-disk format: encoding records and recovering them from
//! one segment's bytes. Pure functions, no I/O.

use std::ops::Range;

use crate::model::Notification;

/// The first 8 bytes of every segment file (`WDSPOOL1`; `1` is the format
/// version).
pub const SEGMENT_MAGIC: [u8; 8] = *b"WDSPOOL1";
/// The first 4 bytes of every record (`wdR1`), where a scan resynchronises
/// after damage.
pub const RECORD_MAGIC: [u8; 4] = *b"wdR1";
/// The size of a record's header.
pub const RECORD_HEADER_LEN: usize = 21;
/// The largest payload a record may carry (1 MiB).
pub const MAX_PAYLOAD: usize = 1 << 20;

const KIND_ENTRY: u8 = 1;
const KIND_ACK: u8 = 2;

/// One record recovered from a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Where the record starts in the segment.
    pub offset: usize,
    /// The record's whole length, header included.
    pub len: usize,
    /// The entry's sequence number, unique within a spool directory.
    pub seq: u64,
    /// What the record says.
    pub body: RecordBody,
}

/// What a record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordBody {
    /// A notification waiting for delivery.
    Entry(Box<Notification>),
    /// The entry with this `seq` is done with (delivered, or dropped).
    Ack,
}

/// Why a span of a segment was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SkipReason {
    /// The file does not start with [`SEGMENT_MAGIC`].
    BadHeader,
    /// An incomplete record at the end, as a crash mid-write leaves.
    TornTail,
    /// No record magic where a record should start.
    BadMagic,
    /// A length over [`MAX_PAYLOAD`], or an ack with a payload.
    BadLength,
    /// The checksum does not match.
    Checksum,
    /// A record kind this version does not know.
    UnknownKind,
    /// A checksummed payload that is not a version 1 notification.
    BadPayload,
}

/// A span of a segment that recovery skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The byte range skipped.
    pub range: Range<usize>,
    /// Why (for the first bad record in the span).
    pub reason: SkipReason,
}

/// What recovery found in one segment besides its records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Whether the file starts with [`SEGMENT_MAGIC`].
    pub header_ok: bool,
    /// The spans skipped, in file order.
    pub skipped: Vec<Skipped>,
}

/// Appends an entry record for `payload` (a notification's JSON form).
pub(crate) fn encode_entry(seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    encode(KIND_ENTRY, seq, payload, out);
}

/// Appends an ack record.
pub(crate) fn encode_ack(seq: u64, out: &mut Vec<u8>) {
    encode(KIND_ACK, seq, &[], out);
}

fn encode(kind: u8, seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&RECORD_MAGIC);
    // Callers keep payloads under MAX_PAYLOAD, far below u32::MAX.
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&seq.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[start + 4..start + 17]);
    crc.update(payload);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(payload);
}

enum Bad {
    Truncated,
    Reason(SkipReason),
}

fn parse_at(bytes: &[u8], pos: usize) -> Result<Record, Bad> {
    let rest = &bytes[pos..];
    if rest.len() < RECORD_HEADER_LEN {
        return Err(if RECORD_MAGIC.starts_with(&rest[..rest.len().min(4)]) {
            Bad::Truncated
        } else {
            Bad::Reason(SkipReason::BadMagic)
        });
    }
    if rest[..4] != RECORD_MAGIC {
        return Err(Bad::Reason(SkipReason::BadMagic));
    }
    let u32_at = |i: usize| u32::from_le_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
    let len = u32_at(4) as usize;
    let kind = rest[8];
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&rest[9..17]);
    let seq = u64::from_le_bytes(seq);
    let stored_crc = u32_at(17);
    if len > MAX_PAYLOAD {
        return Err(Bad::Reason(SkipReason::BadLength));
    }
    if rest.len() < RECORD_HEADER_LEN + len {
        return Err(Bad::Truncated);
    }
    let payload = &rest[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len];
    let mut crc = crc32fast::Hasher::new();
    crc.update(&rest[4..17]);
    crc.update(payload);
    if crc.finalize() != stored_crc {
        return Err(Bad::Reason(SkipReason::Checksum));
    }
    let body = match kind {
        KIND_ENTRY => {
            let n = std::str::from_utf8(payload)
                .ok()
                .and_then(|text| Notification::from_json(text).ok())
                .ok_or(Bad::Reason(SkipReason::BadPayload))?;
            RecordBody::Entry(Box::new(n))
        }
        KIND_ACK if len == 0 => RecordBody::Ack,
        KIND_ACK => return Err(Bad::Reason(SkipReason::BadLength)),
        _ => return Err(Bad::Reason(SkipReason::UnknownKind)),
    };
    Ok(Record {
        offset: pos,
        len: RECORD_HEADER_LEN + len,
        seq,
        body,
    })
}

/// The next position at or after `from` where a valid record starts.
fn resync(bytes: &[u8], from: usize) -> Option<(usize, Record)> {
    let mut pos = from;
    while pos + RECORD_HEADER_LEN <= bytes.len() {
        let hit = bytes[pos..].windows(4).position(|w| w == RECORD_MAGIC)?;
        pos += hit;
        if let Ok(r) = parse_at(bytes, pos) {
            return Some((pos, r));
        }
        pos += 1;
    }
    None
}

/// Recovers the records of one segment file's contents.
///
/// Never fails and never panics: damaged spans are skipped and reported,
/// and every intact record after them is still returned. See the crate docs
/// for the layout and the rules.
pub fn recover(bytes: &[u8]) -> (Vec<Record>, RecoveryReport) {
    let mut records = Vec::new();
    let mut report = RecoveryReport::default();
    let mut pos;
    if bytes.len() >= SEGMENT_MAGIC.len() && bytes[..SEGMENT_MAGIC.len()] == SEGMENT_MAGIC {
        report.header_ok = true;
        pos = SEGMENT_MAGIC.len();
    } else if bytes.len() < SEGMENT_MAGIC.len() && SEGMENT_MAGIC.starts_with(bytes) {
        // A file created but not (fully) written before a crash.
        if !bytes.is_empty() {
            report.skipped.push(Skipped {
                range: 0..bytes.len(),
                reason: SkipReason::TornTail,
            });
        }
        return (records, report);
    } else {
        match resync(bytes, 0) {
            Some((at, _)) => {
                // A file that starts straight with a record lacks only its
                // header (`header_ok` says so): no bytes are skipped.
                if at > 0 {
                    report.skipped.push(Skipped {
                        range: 0..at,
                        reason: SkipReason::BadHeader,
                    });
                }
                pos = at;
            }
            None => {
                report.skipped.push(Skipped {
                    range: 0..bytes.len(),
                    reason: SkipReason::BadHeader,
                });
                return (records, report);
            }
        }
    }
    while pos < bytes.len() {
        match parse_at(bytes, pos) {
            Ok(r) => {
                pos += r.len;
                records.push(r);
            }
            Err(bad) => match resync(bytes, pos + 1) {
                Some((at, _)) => {
                    let reason = match bad {
                        // A record cut short by the next one: its length lies.
                        Bad::Truncated => SkipReason::BadLength,
                        Bad::Reason(r) => r,
                    };
                    report.skipped.push(Skipped {
                        range: pos..at,
                        reason,
                    });
                    pos = at;
                }
                None => {
                    let reason = match bad {
                        Bad::Truncated => SkipReason::TornTail,
                        Bad::Reason(r) => r,
                    };
                    report.skipped.push(Skipped {
                        range: pos..bytes.len(),
                        reason,
                    });
                    break;
                }
            },
        }
    }
    (records, report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::firing;

    fn segment(entries: &[Notification], acks: &[u64]) -> Vec<u8> {
        let mut out = SEGMENT_MAGIC.to_vec();
        for (i, n) in entries.iter().enumerate() {
            encode_entry(i as u64, n.to_json().as_bytes(), &mut out);
        }
        for seq in acks {
            encode_ack(*seq, &mut out);
        }
        out
    }

    /// Recovers `bytes` and compares (seqs of entries, acks, skip reasons).
    fn check(bytes: &[u8], entries: &[u64], acks: &[u64], skipped: &[SkipReason]) {
        let (records, report) = recover(bytes);
        let got_entries: Vec<u64> = records
            .iter()
            .filter(|r| matches!(r.body, RecordBody::Entry(_)))
            .map(|r| r.seq)
            .collect();
        let got_acks: Vec<u64> = records
            .iter()
            .filter(|r| r.body == RecordBody::Ack)
            .map(|r| r.seq)
            .collect();
        let reasons: Vec<SkipReason> = report.skipped.iter().map(|s| s.reason).collect();
        assert_eq!(
            (
                got_entries.as_slice(),
                got_acks.as_slice(),
                reasons.as_slice()
            ),
            (entries, acks, skipped)
        );
    }

    #[test]
    fn intact_segment_round_trips() {
        let ns = [firing(1), firing(2)];
        let bytes = segment(&ns, &[0]);
        let (records, report) = recover(&bytes);
        assert!(report.header_ok && report.skipped.is_empty());
        assert_eq!(records[0].body, RecordBody::Entry(Box::new(ns[0].clone())));
        assert_eq!(records[1].body, RecordBody::Entry(Box::new(ns[1].clone())));
        assert_eq!(records[2].offset + records[2].len, bytes.len());
    }

    #[test]
    fn damage_is_skipped_and_the_rest_recovered() {
        use SkipReason::*;
        let ns = [firing(1), firing(2), firing(3)];
        let good = segment(&ns, &[1]);
        let (records, _) = recover(&good);
        let second = records[1].offset;

        check(&good, &[0, 1, 2], &[1], &[]);
        check(b"", &[], &[], &[]);
        check(&SEGMENT_MAGIC[..3], &[], &[], &[TornTail]);
        // Torn tails at every cut inside the last record.
        for cut in records[3].offset + 1..good.len() {
            check(&good[..cut], &[0, 1, 2], &[], &[TornTail]);
        }
        // A flipped payload byte in the middle record.
        let mut bad = good.clone();
        bad[second + RECORD_HEADER_LEN + 5] ^= 0x40;
        check(&bad, &[0, 2], &[1], &[Checksum]);
        // A corrupt length in the middle record.
        let mut bad = good.clone();
        bad[second + 6] = 0xff;
        check(&bad, &[0, 2], &[1], &[BadLength]);
        // A corrupt header.
        let mut bad = good.clone();
        bad[0] = b'X';
        check(&bad, &[0, 1, 2], &[1], &[BadHeader]);
        // Garbage appended.
        let mut bad = good.clone();
        bad.extend_from_slice(&[0xAB; 40]);
        check(&bad, &[0, 1, 2], &[1], &[BadMagic]);
        // Garbage only.
        check(&[0x5A; 100], &[], &[], &[BadHeader]);
    }

    #[test]
    fn never_panics_on_any_single_byte_flip_or_cut() {
        let good = segment(&[firing(1), firing(2)], &[0]);
        for i in 0..good.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = good.clone();
                bad[i] ^= bit;
                let (records, _) = recover(&bad);
                // One flip damages at most one record (or the file header).
                assert!(records.len() >= 2, "flip at {i}: {records:?}");
            }
            let _ = recover(&good[..i]);
        }
    }

    /// Found by the `spool_recover` fuzz target: a file that starts with a
    /// valid record but no segment header was reported as an empty skipped
    /// span `0..0`. Every skipped span must be non-empty, in order, and
    /// inside the file.
    #[test]
    fn a_headerless_segment_reports_no_empty_span() {
        let crash: &[u8] = b"wdR1\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x04n\x82!1-2.4829\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff1\x13Z\x22}}wdR1\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x04n\x82!1-:T5912\x22}}wdR1\x00\x005-2e74142\x01";
        let mut ack_only = Vec::new();
        encode_ack(7, &mut ack_only);
        for bytes in [crash, &ack_only[..]] {
            let (records, report) = recover(bytes);
            assert!(!report.header_ok);
            assert_eq!(records[0].offset, 0);
            let mut end = 0;
            for s in &report.skipped {
                assert!(
                    s.range.start >= end && s.range.start < s.range.end,
                    "{report:?}"
                );
                assert!(s.range.end <= bytes.len(), "{report:?}");
                end = s.range.end;
            }
        }
        check(&ack_only, &[], &[7], &[]);
    }
}
