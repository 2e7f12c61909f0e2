//! Fuzzes `wd_xml::patch` on arbitrary bytes. The first byte picks the
//! setting and the target; the rest is the document. Checks: never panics,
//! and what it accepts reads back as `devices(setting, target)` and patches
//! again to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wd_policy::{Setting, WatchdogAction};
use wd_xml::{LibvirtVersion, Target, devices, patch, watchdogs};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let Ok(xml) = std::str::from_utf8(rest) else {
        return;
    };
    let setting = match first % 8 {
        7 => Setting::Disabled,
        n => Setting::Enabled(WatchdogAction::ALL[usize::from(n)]),
    };
    let arch = ["x86_64", "s390x", "aarch64", "i686"][usize::from(first >> 3) % 4];
    let machine = if first & 0x20 != 0 { "pc-q35-7.2" } else { "pc" };
    let libvirt = if first & 0x40 != 0 { LibvirtVersion::IMPLICIT_ITCO } else { LibvirtVersion::from_number(9_000_000) };
    let target = Target::new(arch, machine, libvirt);
    if let Ok(patched) = patch(xml, setting, &target) {
        let want = devices(setting, &target).expect("patch succeeded, so devices do");
        assert_eq!(watchdogs(&patched).expect("the patched document reads back"), want);
        assert_eq!(patch(&patched, setting, &target).expect("patch again"), patched);
    }
});
