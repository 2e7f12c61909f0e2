//! Patching a whole domain document by splicing its original text.

use std::fmt::Write as _;

use wd_policy::Setting;

use crate::device::{Target, WatchdogDevice, devices};
use crate::doc::{Element, Scan, scan};
use crate::error::Result;

/// Where the whitespace that ends just before `pos` begins.
fn ws_start(xml: &str, pos: usize) -> usize {
    let bytes = xml.as_bytes();
    let mut i = pos;
    while i > 0 && matches!(bytes[i - 1], b' ' | b'\t' | b'\r' | b'\n') {
        i -= 1;
    }
    i
}

/// The whitespace just before `pos`: a sibling separator such as `"\n    "`.
fn sep_before(xml: &str, pos: usize) -> &str {
    &xml[ws_start(xml, pos)..pos]
}

/// The indentation a separator ends with, if it starts a new line.
fn indent(sep: &str) -> Option<&str> {
    sep.rfind('\n').map(|i| &sep[i + 1..])
}

/// The separator for the children of an element whose own separator is
/// `sep`, one indentation step deeper; `outer` is the separator of the
/// element's parent, used to infer the step. Compact documents (no newline)
/// stay compact.
fn child_sep(outer: &str, sep: &str) -> String {
    let Some(inner) = indent(sep) else {
        return String::new();
    };
    let outer = indent(outer).unwrap_or("");
    let step = match inner.strip_prefix(outer) {
        Some(step) if !step.is_empty() => step,
        _ => "  ",
    };
    format!("{sep}{step}")
}

/// Writes `sep` before each device.
fn push_devices(out: &mut String, sep: &str, want: &[WatchdogDevice]) {
    for d in want {
        out.push_str(sep);
        // Writing to a String cannot fail.
        let _ = write!(out, "{d}");
    }
}

/// An element's start tag, given its empty-element tag `<name …/>`.
fn opened(empty_tag: &str) -> String {
    let inner = empty_tag.strip_suffix("/>").unwrap_or(empty_tag).trim_end();
    format!("{inner}>")
}

/// Puts the watchdog devices for `setting` into a libvirt domain document and
/// returns the new document.
///
/// * Existing `<watchdog>` children of `<devices>` (there may be several) are
///   replaced: the first by the new device(s), the others removed, each with
///   the whitespace before it, so no blank lines are left.
/// * With none, the devices go at the end of `<devices>`, indented like their
///   siblings. `<devices/>` is expanded; a missing `<devices>` is created at
///   the end of `<domain>`.
/// * `disabled` removes every watchdog, except on targets with an implicit
///   iTCO, where it writes `<watchdog model='itco' action='none'/>` (see the
///   [crate docs](crate)).
/// * If the document already has exactly the wanted devices (same models and
///   actions, in order), it is returned unchanged, keeping their `<alias>` and
///   `<address>`.
///
/// Everything else is copied byte for byte: comments, quoting, whitespace,
/// namespaced metadata. Patching a patched document changes nothing.
///
/// ```
/// use wd_policy::{Setting, WatchdogAction};
/// use wd_xml::{patch, LibvirtVersion, Target};
///
/// let xml = "<domain type='kvm'>\n  <devices>\n    <disk/>\n  </devices>\n</domain>\n";
/// let target = Target::new("x86_64", "pc", "9.0.0".parse()?);
/// let out = patch(xml, Setting::Enabled(WatchdogAction::Pause), &target)?;
/// assert_eq!(out, "<domain type='kvm'>\n  <devices>\n    <disk/>\n    <watchdog model='i6300esb' action='pause'/>\n  </devices>\n</domain>\n");
/// # Ok::<(), wd_xml::Error>(())
/// ```
///
/// # Errors
///
/// An empty or malformed document, a root other than `<domain>`, two
/// `<devices>` elements, or an enabled setting for an architecture with no
/// watchdog model. On error nothing is returned.
pub fn patch(xml: &str, setting: Setting, target: &Target) -> Result<String> {
    let want = devices(setting, target)?;
    let scan = scan(xml)?;
    let have: Option<Vec<WatchdogDevice>> =
        scan.watchdogs.iter().map(|w| w.device().ok()).collect();
    if have.as_deref() == Some(&want[..]) {
        return Ok(xml.to_owned());
    }
    let edits = edits(xml, &scan, &want);
    let mut out = String::with_capacity(xml.len() + 128);
    let mut at = 0;
    for (start, end, text) in edits {
        out.push_str(&xml[at..start]);
        out.push_str(&text);
        at = end;
    }
    out.push_str(&xml[at..]);
    Ok(out)
}

/// The splices that turn the document into the patched one, as
/// non-overlapping `(start, end, replacement)` in document order.
fn edits(xml: &str, scan: &Scan, want: &[WatchdogDevice]) -> Vec<(usize, usize, String)> {
    let mut edits = Vec::with_capacity(scan.watchdogs.len().max(1));
    if let Some((first, rest)) = scan.watchdogs.split_first() {
        if want.is_empty() {
            edits.push((ws_start(xml, first.start), first.end, String::new()));
        } else {
            let sep = sep_before(xml, first.start);
            let mut text = String::with_capacity(64 * want.len());
            push_devices(&mut text, sep, want);
            // The first device takes the old element's place, after its
            // separator.
            text.drain(..sep.len());
            edits.push((first.start, first.end, text));
        }
        for w in rest {
            edits.push((ws_start(xml, w.start), w.end, String::new()));
        }
        return edits;
    }
    if want.is_empty() {
        return edits;
    }
    let root_sep = sep_before(xml, scan.root.start);
    match (scan.devices, scan.root.close) {
        // `<devices>…</devices>`: append after the last child.
        (
            Some(
                devices @ Element {
                    close: Some(close), ..
                },
            ),
            _,
        ) => {
            let sep = match scan.devices_last_child {
                Some(child) => sep_before(xml, child).to_owned(),
                None => child_sep(root_sep, sep_before(xml, devices.start)),
            };
            let at = ws_start(xml, close);
            let mut text = String::new();
            push_devices(&mut text, &sep, want);
            edits.push((at, at, text));
        }
        // `<devices/>`: expand it.
        (Some(devices), _) => {
            let sep = sep_before(xml, devices.start);
            let mut text = opened(&xml[devices.start..devices.end]);
            push_devices(&mut text, &child_sep(root_sep, sep), want);
            if indent(sep).is_some() {
                text.push_str(sep);
            }
            text.push_str("</devices>");
            edits.push((devices.start, devices.end, text));
        }
        // No `<devices>`: add one at the end of `<domain>`.
        (None, Some(close)) => {
            let sep = match scan.root_last_child {
                Some(child) => sep_before(xml, child).to_owned(),
                None => child_sep("", root_sep),
            };
            let at = ws_start(xml, close);
            let mut text = format!("{sep}<devices>");
            push_devices(&mut text, &child_sep(root_sep, &sep), want);
            text.push_str(&sep);
            text.push_str("</devices>");
            edits.push((at, at, text));
        }
        // `<domain/>`: expand it around a new `<devices>`.
        (None, None) => {
            let mut text = opened(&xml[scan.root.start..scan.root.end]);
            text.push_str("<devices>");
            push_devices(&mut text, "", want);
            text.push_str("</devices></domain>");
            edits.push((scan.root.start, scan.root.end, text));
        }
    }
    edits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::LibvirtVersion;

    const FIXTURE: &str = include_str!("../tests/fixtures/nova-pc.xml");

    fn target(machine: &str, libvirt: &str) -> Target {
        Target::new(
            "x86_64",
            machine,
            libvirt.parse::<LibvirtVersion>().unwrap(),
        )
    }

    /// Patches `input` and compares the outcome; also checks that patching
    /// the output again changes nothing.
    fn check(input: &str, setting: &str, target: &Target, expected: &str) {
        let setting: Setting = setting.parse().unwrap();
        let got = match patch(input, setting, target) {
            Ok(out) => {
                let again = patch(&out, setting, target).unwrap();
                assert_eq!(again, out, "patching twice differs for {input:?}");
                out
            }
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(got, expected, "{setting} on {input:?}");
    }

    const PRETTY: &str = "<domain type='kvm'>\n  <name>a</name>\n  <devices>\n    <disk type='file'/>\n    <memballoon model='virtio'/>\n  </devices>\n</domain>\n";

    #[test]
    fn inserts_at_the_end_of_devices_with_sibling_indentation() {
        let pc = target("pc", "9.0.0");
        for action in ["none", "pause", "poweroff", "reset"] {
            check(
                PRETTY,
                action,
                &pc,
                &PRETTY.replace(
                    "    <memballoon model='virtio'/>\n",
                    &format!(
                        "    <memballoon model='virtio'/>\n    <watchdog model='i6300esb' action='{action}'/>\n"
                    ),
                ),
            );
        }
        check(PRETTY, "disabled", &pc, PRETTY);
        // Tabs and CRLF line ends are copied from the siblings.
        let tabs = "<domain>\r\n\t<devices>\r\n\t\t<disk/>\r\n\t</devices>\r\n</domain>";
        check(
            tabs,
            "pause",
            &pc,
            "<domain>\r\n\t<devices>\r\n\t\t<disk/>\r\n\t\t<watchdog model='i6300esb' action='pause'/>\r\n\t</devices>\r\n</domain>",
        );
        // A one-line document stays on one line.
        check(
            "<domain><devices><disk/></devices></domain>",
            "reset",
            &pc,
            "<domain><devices><disk/><watchdog model='i6300esb' action='reset'/></devices></domain>",
        );
    }

    #[test]
    fn q35_with_libvirt_9_1_gets_itco_with_the_same_action() {
        let q35 = target("pc-q35-7.2", "9.1.0");
        check(
            PRETTY,
            "pause",
            &q35,
            &PRETTY.replace(
                "    <memballoon model='virtio'/>\n",
                "    <memballoon model='virtio'/>\n    <watchdog model='i6300esb' action='pause'/>\n    <watchdog model='itco' action='pause'/>\n",
            ),
        );
        check(
            PRETTY,
            "disabled",
            &q35,
            &PRETTY.replace(
                "    <memballoon model='virtio'/>\n",
                "    <memballoon model='virtio'/>\n    <watchdog model='itco' action='none'/>\n",
            ),
        );
        // libvirt 9.0 rejects `itco`: never emitted there.
        let q35_old = target("q35", "9.0.0");
        check(PRETTY, "disabled", &q35_old, PRETTY);
        check(
            PRETTY,
            "poweroff",
            &q35_old,
            &PRETTY.replace(
                "    <memballoon model='virtio'/>\n",
                "    <memballoon model='virtio'/>\n    <watchdog model='i6300esb' action='poweroff'/>\n",
            ),
        );
    }

    const SEVERAL: &str = "<domain>\n  <devices>\n    <watchdog model='ib700' action='reset'/>\n    <disk/>\n    <watchdog model=\"i6300esb\" action=\"pause\">\n      <alias name='watchdog0'/>\n    </watchdog>\n    <watchdog model='itco' action='pause'/>\n  </devices>\n</domain>";

    #[test]
    fn replaces_several_existing_watchdogs() {
        let pc = target("pc", "9.0.0");
        check(
            SEVERAL,
            "poweroff",
            &pc,
            "<domain>\n  <devices>\n    <watchdog model='i6300esb' action='poweroff'/>\n    <disk/>\n  </devices>\n</domain>",
        );
        check(
            SEVERAL,
            "disabled",
            &pc,
            "<domain>\n  <devices>\n    <disk/>\n  </devices>\n</domain>",
        );
        let q35 = target("q35", "10.0.0");
        check(
            SEVERAL,
            "disabled",
            &q35,
            "<domain>\n  <devices>\n    <watchdog model='itco' action='none'/>\n    <disk/>\n  </devices>\n</domain>",
        );
        check(
            SEVERAL,
            "reset",
            &q35,
            "<domain>\n  <devices>\n    <watchdog model='i6300esb' action='reset'/>\n    <watchdog model='itco' action='reset'/>\n    <disk/>\n  </devices>\n</domain>",
        );
    }

    #[test]
    fn wanted_devices_already_present_are_left_alone() {
        // Same models and actions: addresses and quoting are kept.
        let xml = "<domain>\n  <devices>\n    <watchdog model=\"i6300esb\">\n      <address type='pci' slot='0x05'/>\n    </watchdog>\n  </devices>\n</domain>";
        check(xml, "reset", &target("pc", "9.0.0"), xml);
        // A different action replaces the whole element, address included.
        check(
            xml,
            "pause",
            &target("pc", "9.0.0"),
            "<domain>\n  <devices>\n    <watchdog model='i6300esb' action='pause'/>\n  </devices>\n</domain>",
        );
    }

    #[test]
    fn creates_or_expands_devices() {
        let pc = target("pc", "9.0.0");
        check(
            "<domain type='kvm'>\n  <name>a</name>\n</domain>",
            "pause",
            &pc,
            "<domain type='kvm'>\n  <name>a</name>\n  <devices>\n    <watchdog model='i6300esb' action='pause'/>\n  </devices>\n</domain>",
        );
        check(
            "<domain type='kvm'>\n  <name>a</name>\n  <devices/>\n</domain>",
            "none",
            &pc,
            "<domain type='kvm'>\n  <name>a</name>\n  <devices>\n    <watchdog model='i6300esb' action='none'/>\n  </devices>\n</domain>",
        );
        check(
            "<domain><devices /></domain>",
            "none",
            &pc,
            "<domain><devices><watchdog model='i6300esb' action='none'/></devices></domain>",
        );
        check(
            "<domain>\n  <devices>\n  </devices>\n</domain>",
            "reset",
            &pc,
            "<domain>\n  <devices>\n    <watchdog model='i6300esb' action='reset'/>\n  </devices>\n</domain>",
        );
        check(
            "<domain type='kvm'/>",
            "reset",
            &pc,
            "<domain type='kvm'><devices><watchdog model='i6300esb' action='reset'/></devices></domain>",
        );
        // Nothing to add: no `<devices>` is created.
        check(
            "<domain>\n  <name>a</name>\n</domain>",
            "disabled",
            &pc,
            "<domain>\n  <name>a</name>\n</domain>",
        );
        check("<domain/>", "disabled", &pc, "<domain/>");
    }

    #[test]
    fn bad_input_is_an_error_and_never_partial_output() {
        let pc = target("pc", "9.0.0");
        check("", "reset", &pc, "error: domain XML is empty");
        check(
            "<domain>",
            "reset",
            &pc,
            "error: malformed domain XML at byte 8: element `domain` is not closed",
        );
        check(
            "<doman/>",
            "disabled",
            &pc,
            "error: root element is `doman`; expected `domain`",
        );
        check(
            "<domain><devices></domain>",
            "reset",
            &pc,
            "error: cannot parse domain XML at byte 17",
        );
        check(
            PRETTY,
            "reset",
            &Target::new("aarch64", "virt", LibvirtVersion::IMPLICIT_ITCO),
            "error: no watchdog model for architecture `aarch64`; supported: x86_64, i686, s390x",
        );
        check(
            "<domain><os><type arch='aarch64'/></os></domain>",
            "disabled",
            &Target::new("aarch64", "virt", LibvirtVersion::IMPLICIT_ITCO),
            "<domain><os><type arch='aarch64'/></os></domain>",
        );
    }

    #[test]
    fn the_nova_fixture_only_gains_the_device() {
        let anchor = "    <rng model=\"virtio\">\n      <backend model=\"random\">/dev/urandom</backend>\n    </rng>\n";
        assert!(FIXTURE.contains(anchor));
        for (machine, libvirt, setting, lines) in [
            (
                "pc",
                "9.0.0",
                "pause",
                &["<watchdog model='i6300esb' action='pause'/>"][..],
            ),
            (
                "pc",
                "9.1.0",
                "reset",
                &["<watchdog model='i6300esb' action='reset'/>"][..],
            ),
            ("pc", "9.1.0", "disabled", &[][..]),
            ("pc-q35-7.2", "9.0.0", "disabled", &[][..]),
            (
                "pc-q35-7.2",
                "9.1.0",
                "poweroff",
                &[
                    "<watchdog model='i6300esb' action='poweroff'/>",
                    "<watchdog model='itco' action='poweroff'/>",
                ][..],
            ),
            (
                "pc-q35-7.2",
                "9.1.0",
                "disabled",
                &["<watchdog model='itco' action='none'/>"][..],
            ),
        ] {
            let mut added = String::new();
            for l in lines {
                added.push_str(&format!("    {l}\n"));
            }
            let input = FIXTURE.replace("machine=\"pc\"", &format!("machine=\"{machine}\""));
            check(
                &input,
                setting,
                &target(machine, libvirt),
                &input.replace(anchor, &format!("{anchor}{added}")),
            );
        }
    }

    #[test]
    fn comments_and_namespaced_metadata_survive() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- generated -->
<domain type="kvm" xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:name>a &amp; b</nova:name>
    </nova:instance>
  </metadata>
  <devices>
    <!-- <watchdog model='ib700'/> stays a comment -->
    <watchdog model='ib700' action='reset'/><!-- trailing -->
    <console type='pty'><![CDATA[ raw <data> ]]></console>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-s'/>
  </qemu:commandline>
</domain>
<!-- after -->
"#;
        check(
            xml,
            "pause",
            &target("pc", "9.0.0"),
            &xml.replace(
                "<watchdog model='ib700' action='reset'/><!--",
                "<watchdog model='i6300esb' action='pause'/><!--",
            ),
        );
        check(
            xml,
            "disabled",
            &target("pc", "9.0.0"),
            &xml.replace("\n    <watchdog model='ib700' action='reset'/><!--", "<!--"),
        );
    }
}
