//! Patched Nova-style domains pass libvirt's own schema check
//! (`virt-xml-validate FILE domain`) for libvirt 9.0 targets.

use std::path::{Path, PathBuf};
use std::process::Command;

use wd_policy::{Setting, WatchdogAction};
use wd_xml::{LibvirtVersion, Target, patch, watchdogs};

const FIXTURE: &str = include_str!("fixtures/nova-pc.xml");

/// Finds `virt-xml-validate` on `PATH`; without it the test is skipped, unless
/// `WD_REQUIRE_REAL=1` asks for the real thing.
fn validator() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("virt-xml-validate"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("WD_REQUIRE_REAL").as_deref() != Ok("1"),
            "virt-xml-validate not found on PATH and WD_REQUIRE_REAL=1; install libvirt-clients and libxml2-utils"
        );
        eprintln!(
            "skipped: virt-xml-validate not found (install libvirt-clients and libxml2-utils)"
        );
    }
    found
}

/// Runs the validator on `xml`; returns whether it passed and its output.
fn validate(tool: &Path, dir: &Path, name: &str, xml: &str) -> (bool, String) {
    let file = dir.join(name);
    std::fs::write(&file, xml).unwrap();
    let out = Command::new(tool)
        .arg(&file)
        .arg("domain")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn patched_nova_domains_validate_for_libvirt_9_0() {
    let Some(tool) = validator() else { return };
    let dir = tempfile::tempdir().unwrap();
    let libvirt: LibvirtVersion = "9.0.0".parse().unwrap();

    // The validator really validates: a bad model is rejected.
    let bad = FIXTURE.replace("</devices>", "  <watchdog model='bogus'/>\n  </devices>");
    let (ok, _) = validate(&tool, dir.path(), "bad.xml", &bad);
    assert!(!ok, "virt-xml-validate accepted an unknown watchdog model");

    let settings = WatchdogAction::ALL
        .into_iter()
        .map(Setting::Enabled)
        .chain([Setting::Disabled]);
    let mut checked = 0;
    for setting in settings {
        for machine in ["pc", "pc-i440fx-7.2", "q35", "pc-q35-7.2"] {
            let input = FIXTURE.replace("machine=\"pc\"", &format!("machine=\"{machine}\""));
            // A document that already has watchdogs, to exercise replacement.
            let with_old = input.replace(
                "    <memballoon",
                "    <watchdog model='ib700' action='shutdown'/>\n    <memballoon",
            );
            for (label, doc) in [("fresh", &input), ("replaced", &with_old)] {
                let target = Target::new("x86_64", machine, libvirt);
                let out = patch(doc, setting, &target).unwrap();
                let found = watchdogs(&out).unwrap();
                assert_eq!(found.len(), usize::from(setting.is_enabled()), "{out}");
                let name = format!("{machine}-{setting}-{label}.xml");
                let (ok, text) = validate(&tool, dir.path(), &name, &out);
                assert!(ok, "{name} does not validate: {text}\n{out}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 8 * 4 * 2);
}
