//! Fuzzes the domain XML readers on arbitrary bytes: `watchdogs`,
//! `os_type` and `NovaMetadata::parse`. Checks: never panic, and the
//! watchdogs read back render as well-formed elements.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wd_xml::{NovaMetadata, os_type, watchdogs};

fuzz_target!(|data: &[u8]| {
    let Ok(xml) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(found) = watchdogs(xml) {
        for d in found {
            let one = format!("<domain><devices>{d}</devices></domain>");
            assert_eq!(watchdogs(&one).expect("a rendered device reads back"), [d]);
        }
    }
    let _ = os_type(xml);
    if let Ok(Some(meta)) = NovaMetadata::parse(xml) {
        let _ = format!("{meta:?}");
    }
});
