//! Property tests for `patch` on generated domain documents: patching is
//! idempotent, reading the watchdogs back gives exactly `devices(setting,
//! target)`, and every document `patch` accepts (including damaged ones) comes
//! out well-formed.

use proptest::prelude::*;
use quick_xml::Reader;
use quick_xml::events::Event;
use wd_policy::{Setting, WatchdogAction};
use wd_xml::{LibvirtVersion, Target, WatchdogModel, devices, patch, watchdogs};

const FIXTURE: &str = include_str!("fixtures/nova-pc.xml");

/// How a generated document is laid out.
#[derive(Debug, Clone)]
struct Style {
    /// One indentation step; empty for a compact document on one line.
    step: &'static str,
    quote: char,
}

/// One child of `<devices>`.
#[derive(Debug, Clone)]
enum Child {
    Disk,
    Comment,
    Watchdog {
        model: WatchdogModel,
        action: Option<WatchdogAction>,
        /// `<watchdog …></watchdog>` rather than `<watchdog …/>`.
        open_close: bool,
    },
}

#[derive(Debug, Clone)]
enum Devices {
    Missing,
    Empty,
    Children(Vec<Child>),
}

#[derive(Debug, Clone)]
struct Doc {
    style: Style,
    leading_comment: bool,
    devices: Devices,
    trailing_element: bool,
}

impl Doc {
    fn render(&self) -> String {
        let Style { step, quote: q } = &self.style;
        let nl = if step.is_empty() { "" } else { "\n" };
        let i1 = format!("{nl}{step}");
        let i2 = format!("{nl}{step}{step}");
        let mut s = format!("<domain type={q}kvm{q}>");
        if self.leading_comment {
            s += &format!("{i1}<!-- by nova & co -->");
        }
        s += &format!("{i1}<name>instance-0000002a</name>");
        s += &format!("{i1}<os>{i2}<type arch={q}x86_64{q} machine={q}pc{q}>hvm</type>{i1}</os>");
        match &self.devices {
            Devices::Missing => {}
            Devices::Empty => s += &format!("{i1}<devices/>"),
            Devices::Children(children) => {
                s += &format!("{i1}<devices>");
                for c in children {
                    s += &i2;
                    match c {
                        Child::Disk => {
                            s += &format!("<disk type={q}file{q}><target dev={q}vda{q}/></disk>")
                        }
                        Child::Comment => s += "<!-- <watchdog model='ib700'/> -->",
                        Child::Watchdog {
                            model,
                            action,
                            open_close,
                        } => {
                            s += &format!("<watchdog model={q}{model}{q}");
                            if let Some(a) = action {
                                s += &format!(" action={q}{a}{q}");
                            }
                            s += if *open_close { "></watchdog>" } else { "/>" };
                        }
                    }
                }
                s += &format!("{i1}</devices>");
            }
        }
        if self.trailing_element {
            s += &format!("{i1}<on_crash>destroy</on_crash>");
        }
        s += &format!("{nl}</domain>{nl}");
        s
    }
}

fn action() -> impl Strategy<Value = WatchdogAction> {
    proptest::sample::select(WatchdogAction::ALL.to_vec())
}

fn child() -> impl Strategy<Value = Child> {
    prop_oneof![
        2 => Just(Child::Disk),
        1 => Just(Child::Comment),
        3 => (
            proptest::sample::select(WatchdogModel::ALL.to_vec()),
            proptest::option::of(action()),
            any::<bool>(),
        )
            .prop_map(|(model, action, open_close)| Child::Watchdog {
                model,
                action,
                open_close
            }),
    ]
}

fn doc() -> impl Strategy<Value = Doc> {
    let style = (
        proptest::sample::select(vec!["", "  ", "    ", "\t"]),
        proptest::sample::select(vec!['\'', '"']),
    )
        .prop_map(|(step, quote)| Style { step, quote });
    let devices = prop_oneof![
        1 => Just(Devices::Missing),
        1 => Just(Devices::Empty),
        4 => proptest::collection::vec(child(), 0..6).prop_map(Devices::Children),
    ];
    (style, any::<bool>(), devices, any::<bool>()).prop_map(
        |(style, leading_comment, devices, trailing_element)| Doc {
            style,
            leading_comment,
            devices,
            trailing_element,
        },
    )
}

/// A generated document, or the realistic Nova fixture.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        5 => doc().prop_map(|d| d.render()),
        1 => Just(FIXTURE.to_owned()),
    ]
}

fn setting() -> impl Strategy<Value = Setting> {
    prop_oneof![
        1 => Just(Setting::Disabled),
        4 => action().prop_map(Setting::Enabled),
    ]
}

fn target() -> impl Strategy<Value = Target> {
    (
        proptest::sample::select(vec!["x86_64", "i686", "s390x", "aarch64"]),
        proptest::sample::select(vec!["pc", "q35", "pc-q35-7.2", "s390-ccw-virtio"]),
        proptest::sample::select(vec![8_000_000u64, 9_000_000, 9_001_000, 10_000_000]),
    )
        .prop_map(|(arch, machine, v)| Target::new(arch, machine, LibvirtVersion::from_number(v)))
}

/// Checks that `xml` is one well-formed element tree: matching end tags,
/// exactly one root, nothing but whitespace outside it, valid attributes
/// and entity references.
fn well_formed(xml: &str) -> Result<(), String> {
    let mut r = Reader::from_str(xml);
    r.config_mut().check_end_names = true;
    let (mut depth, mut roots) = (0usize, 0usize);
    loop {
        let ev = r
            .read_event()
            .map_err(|e| format!("at {}: {e}", r.error_position()))?;
        match &ev {
            Event::Start(t) | Event::Empty(t) => {
                if depth == 0 {
                    roots += 1;
                }
                for a in t.attributes().with_checks(true) {
                    let a = a.map_err(|e| format!("attribute: {e}"))?;
                    a.unescape_value()
                        .map_err(|e| format!("attribute value: {e}"))?;
                }
                if matches!(ev, Event::Start(_)) {
                    depth += 1;
                }
            }
            Event::End(_) => depth = depth.checked_sub(1).ok_or("an unopened end tag")?,
            Event::Text(t) => {
                let text = t.unescape().map_err(|e| format!("text: {e}"))?;
                if depth == 0 && !text.trim().is_empty() {
                    return Err(format!("text outside the root: {text:?}"));
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    match (depth, roots) {
        (0, 1) => Ok(()),
        _ => Err(format!("{depth} elements left open, {roots} roots")),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    /// On valid documents: patch succeeds exactly when the target has a
    /// model for the setting, is idempotent, reads back as
    /// `devices(setting, target)`, and is well-formed.
    #[test]
    fn patch_is_idempotent_and_reads_back(xml in text(), setting in setting(), target in target()) {
        let want = devices(setting, &target);
        let patched = patch(&xml, setting, &target);
        prop_assert_eq!(patched.is_ok(), want.is_ok(), "{:?}", patched);
        let (Ok(patched), Ok(want)) = (patched, want) else { return Ok(()) };
        prop_assert_eq!(watchdogs(&patched).expect("read back"), want);
        prop_assert_eq!(patch(&patched, setting, &target).expect("patch again"), patched.clone());
        prop_assert_eq!(well_formed(&patched), Ok(()), "{}", patched);
    }

    /// Whatever damage a document has, what `patch` accepts comes out
    /// well-formed and reads back as wanted; patch never panics.
    #[test]
    fn accepted_documents_come_out_well_formed(
        xml in text(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..4, "[<>/&;'\"=a-z !\\-\\]\\[]{0,3}"), 1..4),
        setting in setting(),
        target in target(),
    ) {
        let mut bytes = xml.into_bytes();
        for (at, cut, insert) in edits {
            let at = at.index(bytes.len() + 1);
            let end = (at + cut).min(bytes.len());
            bytes.splice(at..end, insert.into_bytes());
        }
        let Ok(damaged) = String::from_utf8(bytes) else { return Ok(()) };
        if let Ok(patched) = patch(&damaged, setting, &target) {
            prop_assert_eq!(well_formed(&damaged), Ok(()), "accepted a damaged input: {}", damaged);
            prop_assert_eq!(well_formed(&patched), Ok(()), "{}", patched);
            prop_assert_eq!(watchdogs(&patched).expect("read back"), devices(setting, &target).expect("devices"));
            prop_assert_eq!(patch(&patched, setting, &target).expect("patch again"), patched);
        }
    }
}
