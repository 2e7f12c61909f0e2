//! Fuzzes the spool's recovery reader (`wd_notify::recover`) on arbitrary
//! segment contents. Checks: never panics; records and skipped spans lie
//! inside the input, in order, without overlapping.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wd_notify::recover;

fuzz_target!(|data: &[u8]| {
    let (records, report) = recover(data);
    let mut spans: Vec<(usize, usize)> = records.iter().map(|r| (r.offset, r.offset + r.len)).collect();
    spans.extend(report.skipped.iter().map(|s| (s.range.start, s.range.end)));
    spans.sort_unstable();
    let mut end = 0;
    for (s, e) in spans {
        assert!(s < e && e <= data.len(), "span {s}..{e} of {}", data.len());
        assert!(s >= end, "overlapping span at {s}");
        end = e;
    }
});
