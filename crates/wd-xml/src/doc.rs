//! Reading a domain document: a checked event walker, and the scan that finds
//! what patching and reading back need (byte offsets, watchdogs, `<os><type>`).

use std::borrow::Cow;

use quick_xml::events::{BytesStart, Event};
use quick_xml::{NsReader, Reader};
use serde::{Deserialize, Serialize};
use wd_policy::WatchdogAction;

use crate::device::WatchdogDevice;
use crate::error::{Error, Result};

/// One step of a [`Walker`].
pub(crate) enum Item<'a> {
    /// A start tag or an empty-element tag spanning `start..end`. `depth` is
    /// the element's own depth: the root is 1.
    Open {
        tag: BytesStart<'a>,
        start: usize,
        end: usize,
        empty: bool,
        depth: usize,
    },
    /// An end tag spanning `start..end`, closing an element at `depth`.
    Close {
        start: usize,
        end: usize,
        depth: usize,
    },
    /// Character data inside the root, unescaped.
    Text { text: Cow<'a, str> },
    /// The end of a well-formed document.
    Eof,
}

/// A quick-xml reader over a string: the plain one, or the one that also
/// tracks namespaces (slower, so only Nova metadata uses it).
pub(crate) trait Events<'a> {
    fn over(xml: &'a str) -> Self;
    fn read(&mut self) -> quick_xml::Result<Event<'a>>;
    fn position(&self) -> u64;
    fn error_position(&self) -> u64;
}

impl<'a> Events<'a> for Reader<&'a [u8]> {
    fn over(xml: &'a str) -> Self {
        Reader::from_str(xml)
    }
    fn read(&mut self) -> quick_xml::Result<Event<'a>> {
        self.read_event()
    }
    fn position(&self) -> u64 {
        self.buffer_position()
    }
    fn error_position(&self) -> u64 {
        Reader::error_position(self)
    }
}

impl<'a> Events<'a> for NsReader<&'a [u8]> {
    fn over(xml: &'a str) -> Self {
        NsReader::from_str(xml)
    }
    fn read(&mut self) -> quick_xml::Result<Event<'a>> {
        self.read_event()
    }
    fn position(&self) -> u64 {
        self.buffer_position()
    }
    fn error_position(&self) -> u64 {
        Reader::error_position(self)
    }
}

/// Streams a domain document, checking what quick-xml leaves to its caller:
/// the root is `<domain>`, there is exactly one root, no text outside it,
/// every element is closed, and attributes and entity references are valid.
pub(crate) struct Walker<'a, R> {
    pub(crate) reader: R,
    xml: &'a str,
    /// Start offsets of the elements that are open.
    open: Vec<usize>,
    seen_root: bool,
}

fn parse_error(position: u64, source: impl Into<quick_xml::Error>) -> Error {
    Error::Parse {
        position,
        source: source.into(),
    }
}

/// The element name that starts at `start` (`<name …`), for messages.
fn name_at(xml: &str, start: usize) -> &str {
    let rest = xml.get(start + 1..).unwrap_or("");
    let len = rest
        .find(|c: char| c.is_ascii_whitespace() || c == '/' || c == '>')
        .unwrap_or(rest.len());
    &rest[..len]
}

impl<'a, R: Events<'a>> Walker<'a, R> {
    pub(crate) fn new(xml: &'a str) -> Result<Self> {
        if xml.trim().is_empty() {
            return Err(Error::EmptyDocument);
        }
        Ok(Walker {
            reader: R::over(xml),
            xml,
            open: Vec::with_capacity(8),
            seen_root: false,
        })
    }

    pub(crate) fn next(&mut self) -> Result<Item<'a>> {
        loop {
            // Text is reported as its own event, so before a tag the position
            // is exactly at its `<`.
            let start = self.reader.position() as usize;
            let event = self
                .reader
                .read()
                .map_err(|e| parse_error(self.reader.error_position(), e))?;
            let end = self.reader.position() as usize;
            match event {
                Event::Start(tag) => return self.open(tag, start, end, false),
                Event::Empty(tag) => return self.open(tag, start, end, true),
                Event::End(_) => {
                    // quick-xml has checked that the name matches.
                    let depth = self.open.len();
                    self.open.pop();
                    return Ok(Item::Close { start, end, depth });
                }
                Event::Text(text) => {
                    if self.open.is_empty() {
                        if text.iter().all(u8::is_ascii_whitespace) {
                            continue;
                        }
                        return Err(Error::Malformed {
                            position: start,
                            problem: "text outside the root element".to_owned(),
                        });
                    }
                    // Most text has no references: borrow it from the
                    // document, which is UTF-8 already, and skip decoding.
                    let text = if text.contains(&b'&') {
                        text.unescape().map_err(|e| parse_error(start as u64, e))?
                    } else {
                        Cow::Borrowed(&self.xml[start..end])
                    };
                    return Ok(Item::Text { text });
                }
                Event::CData(data) => {
                    if self.open.is_empty() {
                        return Err(Error::Malformed {
                            position: start,
                            problem: "text outside the root element".to_owned(),
                        });
                    }
                    let text = data.decode().map_err(|e| parse_error(start as u64, e))?;
                    return Ok(Item::Text { text });
                }
                Event::Eof => {
                    if let Some(&open) = self.open.last() {
                        return Err(Error::Malformed {
                            position: self.xml.len(),
                            problem: format!("element `{}` is not closed", name_at(self.xml, open)),
                        });
                    }
                    if !self.seen_root {
                        return Err(Error::Malformed {
                            position: self.xml.len(),
                            problem: "no root element".to_owned(),
                        });
                    }
                    return Ok(Item::Eof);
                }
                Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
            }
        }
    }

    fn open(
        &mut self,
        tag: BytesStart<'a>,
        start: usize,
        end: usize,
        empty: bool,
    ) -> Result<Item<'a>> {
        if self.open.is_empty() {
            let name = String::from_utf8_lossy(tag.name().as_ref()).into_owned();
            if self.seen_root {
                return Err(Error::Malformed {
                    position: start,
                    problem: format!("second root element `{name}`"),
                });
            }
            if name != "domain" {
                return Err(Error::WrongRoot { found: name });
            }
            self.seen_root = true;
        }
        check_attributes(&tag, start)?;
        let depth = self.open.len() + 1;
        if !empty {
            self.open.push(start);
        }
        Ok(Item::Open {
            tag,
            start,
            end,
            empty,
            depth,
        })
    }
}

/// Checks an element's attributes: syntax, entity references, and no name
/// given twice. quick-xml's own duplicate check allocates for every element,
/// which costs a fifth of a whole scan, so names are compared here instead
/// (elements have few attributes).
fn check_attributes(tag: &BytesStart<'_>, start: usize) -> Result<()> {
    let mut seen: [&[u8]; 16] = [&[]; 16];
    let mut more: Vec<&[u8]> = Vec::new();
    for (i, attr) in tag.attributes().with_checks(false).enumerate() {
        let attr = attr.map_err(|e| parse_error(start as u64, e))?;
        let key = attr.key.into_inner();
        let earlier = &seen[..i.min(seen.len())];
        if earlier.contains(&key) || more.contains(&key) {
            return Err(Error::Malformed {
                position: start,
                problem: format!("attribute `{}` given twice", String::from_utf8_lossy(key)),
            });
        }
        match seen.get_mut(i) {
            Some(slot) => *slot = key,
            None => more.push(key),
        }
        if attr.value.contains(&b'&') {
            attr.unescape_value()
                .map_err(|e| parse_error(start as u64, e))?;
        }
    }
    Ok(())
}

/// An attribute's unescaped value, if present.
pub(crate) fn attr<'t>(
    tag: &'t BytesStart<'_>,
    name: &str,
    start: usize,
) -> Result<Option<Cow<'t, str>>> {
    match tag
        .try_get_attribute(name)
        .map_err(|e| parse_error(start as u64, e))?
    {
        Some(a) => Ok(Some(
            a.unescape_value()
                .map_err(|e| parse_error(start as u64, e))?,
        )),
        None => Ok(None),
    }
}

/// The guest's architecture and machine type as a document gives them in
/// `<os><type arch='…' machine='…'>`. libvirt fills in what is missing from
/// the host, so either may be absent.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OsType {
    /// `arch`, e.g. `x86_64`.
    pub arch: Option<String>,
    /// `machine`, e.g. `pc-q35-7.2`.
    pub machine: Option<String>,
}

/// A span of the document: an element's start tag and, unless it is an
/// empty-element tag, where its end tag starts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Element {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) close: Option<usize>,
}

/// A `<watchdog>` child of `<devices>`, spanning `start..end` in the document.
#[derive(Debug, Clone)]
pub(crate) struct RawWatchdog {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) model: Option<String>,
    pub(crate) action: Option<String>,
}

impl RawWatchdog {
    pub(crate) fn device(&self) -> Result<WatchdogDevice> {
        let position = self.start;
        let model = self
            .model
            .as_deref()
            .ok_or(Error::MissingModel { position })?
            .parse()
            .map_err(|e| Error::ReadWatchdog {
                position,
                source: Box::new(e),
            })?;
        let action = match &self.action {
            // libvirt's default when the attribute is absent.
            None => WatchdogAction::Reset,
            Some(a) => a
                .parse()
                .map_err(|source| Error::ReadWatchdogAction { position, source })?,
        };
        Ok(WatchdogDevice { model, action })
    }
}

/// What one pass over a domain document finds.
#[derive(Debug)]
pub(crate) struct Scan {
    pub(crate) root: Element,
    pub(crate) root_last_child: Option<usize>,
    pub(crate) devices: Option<Element>,
    pub(crate) devices_last_child: Option<usize>,
    pub(crate) watchdogs: Vec<RawWatchdog>,
    pub(crate) os: OsType,
}

pub(crate) fn scan(xml: &str) -> Result<Scan> {
    let mut walker = Walker::<Reader<&[u8]>>::new(xml)?;
    let mut root = None;
    let mut root_last_child = None;
    let mut devices: Option<Element> = None;
    let mut devices_last_child = None;
    let mut watchdogs = Vec::new();
    let mut pending: Option<RawWatchdog> = None;
    let mut os = OsType::default();
    let mut seen_os_type = false;
    let (mut in_devices, mut in_os) = (false, false);
    loop {
        match walker.next()? {
            Item::Open {
                tag,
                start,
                end,
                empty,
                depth,
            } => {
                let element = Element {
                    start,
                    end,
                    close: None,
                };
                let name = tag.name();
                match depth {
                    1 => root = Some(element),
                    2 => {
                        root_last_child = Some(start);
                        match name.as_ref() {
                            b"devices" => {
                                if devices.is_some() {
                                    return Err(Error::Malformed {
                                        position: start,
                                        problem: "more than one `devices` element".to_owned(),
                                    });
                                }
                                devices = Some(element);
                                in_devices = !empty;
                            }
                            b"os" => in_os = !empty,
                            _ => {}
                        }
                    }
                    3 if in_devices => {
                        devices_last_child = Some(start);
                        if name.as_ref() == b"watchdog" {
                            let raw = RawWatchdog {
                                start,
                                end,
                                model: attr(&tag, "model", start)?.map(Cow::into_owned),
                                action: attr(&tag, "action", start)?.map(Cow::into_owned),
                            };
                            if empty {
                                watchdogs.push(raw);
                            } else {
                                pending = Some(raw);
                            }
                        }
                    }
                    3 if in_os && !seen_os_type && name.as_ref() == b"type" => {
                        seen_os_type = true;
                        os.arch = attr(&tag, "arch", start)?.map(Cow::into_owned);
                        os.machine = attr(&tag, "machine", start)?.map(Cow::into_owned);
                    }
                    _ => {}
                }
            }
            Item::Close { start, end, depth } => match depth {
                1 => {
                    if let Some(r) = &mut root {
                        r.close = Some(start);
                    }
                }
                2 => {
                    if in_devices && let Some(d) = &mut devices {
                        d.close = Some(start);
                    }
                    in_devices = false;
                    in_os = false;
                }
                3 => {
                    if let Some(mut raw) = pending.take() {
                        raw.end = end;
                        watchdogs.push(raw);
                    }
                }
                _ => {}
            },
            Item::Text { .. } => {}
            Item::Eof => break,
        }
    }
    let root = root.ok_or_else(|| Error::Malformed {
        position: xml.len(),
        problem: "no root element".to_owned(),
    })?;
    Ok(Scan {
        root,
        root_last_child,
        devices,
        devices_last_child,
        watchdogs,
        os,
    })
}

/// Reads `<os><type arch='…' machine='…'>` from a domain document.
///
/// ```
/// let xml = "<domain type='kvm'><os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os></domain>";
/// let os = wd_xml::os_type(xml)?;
/// assert_eq!(os.arch.as_deref(), Some("x86_64"));
/// assert_eq!(os.machine.as_deref(), Some("pc-q35-7.2"));
/// # Ok::<(), wd_xml::Error>(())
/// ```
///
/// # Errors
///
/// A document that is empty, malformed or not rooted at `<domain>`.
pub fn os_type(xml: &str) -> Result<OsType> {
    scan(xml).map(|s| s.os)
}

/// Reads back the watchdog devices of a domain document (the `<watchdog>`
/// children of `<devices>`), in document order. A missing `action` is
/// `reset`, as in libvirt.
///
/// ```
/// use wd_policy::WatchdogAction;
/// use wd_xml::WatchdogModel;
///
/// let xml = "<domain><devices><watchdog model='i6300esb'/></devices></domain>";
/// let found = wd_xml::watchdogs(xml)?;
/// assert_eq!(found[0].model, WatchdogModel::I6300esb);
/// assert_eq!(found[0].action, WatchdogAction::Reset);
/// # Ok::<(), wd_xml::Error>(())
/// ```
///
/// # Errors
///
/// A document that is empty, malformed or not rooted at `<domain>`; a
/// watchdog with no model, or an unknown model or action.
pub fn watchdogs(xml: &str) -> Result<Vec<WatchdogDevice>> {
    scan(xml)?
        .watchdogs
        .iter()
        .map(RawWatchdog::device)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the checked scan and shows the outcome as one line.
    fn check(input: &str, expected: &str) {
        let got = match watchdogs(input) {
            Ok(found) => found
                .iter()
                .map(|d| format!("{}/{}", d.model, d.action))
                .collect::<Vec<_>>()
                .join(" "),
            Err(e) => {
                let mut msg = format!("error: {e}");
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    // quick-xml's errors repeat their source's message.
                    let s_msg = s.to_string();
                    if !msg.ends_with(&s_msg) {
                        msg.push_str(&format!(": {s_msg}"));
                    }
                    source = s.source();
                }
                msg
            }
        };
        assert_eq!(got, expected, "{input:?}");
    }

    #[test]
    fn malformed_documents_are_errors() {
        check("", "error: domain XML is empty");
        check(" \n\t", "error: domain XML is empty");
        check(
            "not xml at all",
            "error: malformed domain XML at byte 0: text outside the root element",
        );
        check(
            "<!-- only a comment -->",
            "error: malformed domain XML at byte 23: no root element",
        );
        check("<foo/>", "error: root element is `foo`; expected `domain`");
        check(
            "<x:domain xmlns:x='u'/>",
            "error: root element is `x:domain`; expected `domain`",
        );
        check(
            "<domain><devices>",
            "error: malformed domain XML at byte 17: element `devices` is not closed",
        );
        check(
            "<domain type='kvm'><name>x</na",
            "error: cannot parse domain XML at byte 26: syntax error: tag not closed: `>` not found before end of input",
        );
        check(
            "<domain type='kvm",
            "error: cannot parse domain XML at byte 0: syntax error: tag not closed: `>` not found before end of input",
        );
        check(
            "<domain><devices></domain>",
            "error: cannot parse domain XML at byte 17: ill-formed document: expected `</devices>`, but `</domain>` was found",
        );
        check(
            "<domain/></domain>",
            "error: cannot parse domain XML at byte 9: ill-formed document: close tag `</domain>` does not match any open tag",
        );
        check(
            "<domain/><domain/>",
            "error: malformed domain XML at byte 9: second root element `domain`",
        );
        check(
            "<domain/>trailing",
            "error: malformed domain XML at byte 9: text outside the root element",
        );
        check(
            "<domain a='1' a='2'/>",
            "error: malformed domain XML at byte 0: attribute `a` given twice",
        );
        let many: String = (0..20).map(|i| format!(" a{i}='{i}'")).collect();
        check(&format!("<domain{many}/>"), "");
        check(
            &format!("<domain{many} a17='x'/>"),
            "error: malformed domain XML at byte 0: attribute `a17` given twice",
        );
        check(
            &format!("<domain{many} a3='x'/>"),
            "error: malformed domain XML at byte 0: attribute `a3` given twice",
        );
        check(
            "<domain a=1/>",
            "error: cannot parse domain XML at byte 0: error while parsing attribute: position 9: attribute value must be enclosed in `\"` or `'`",
        );
        check(
            "<domain><name>a &bogus; b</name></domain>",
            "error: cannot parse domain XML at byte 14: at 3..8: unrecognized entity `bogus`",
        );
        check(
            "<domain><devices><watchdog action='pause'/></devices></domain>",
            "error: watchdog element at byte 17 has no `model` attribute",
        );
        check(
            "<domain><devices><watchdog model='iTCO'/></devices></domain>",
            "error: invalid watchdog element at byte 17: unknown watchdog model `iTCO`; allowed: i6300esb, ib700, diag288, itco",
        );
        check(
            "<domain><devices><watchdog model='itco' action='debug'/></devices></domain>",
            "error: invalid watchdog action at byte 17: unknown watchdog action `debug`; allowed: reset, shutdown, poweroff, pause, none, dump, inject-nmi",
        );
        check(
            "<domain><devices/><devices/></domain>",
            "error: malformed domain XML at byte 18: more than one `devices` element",
        );
    }

    #[test]
    fn watchdogs_read_back_in_order_with_libvirt_defaults() {
        check("<domain/>", "");
        check("<domain><devices/></domain>", "");
        check(
            "<domain><devices><watchdog model='i6300esb'/></devices></domain>",
            "i6300esb/reset",
        );
        check(
            r#"<?xml version="1.0"?>
<!-- a comment -->
<domain type='kvm'>
  <devices>
    <watchdog model="i6300esb" action="pause">
      <alias name='watchdog0'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x05' function='0x0'/>
    </watchdog>
    <watchdog model='itco' action='pause'/>
    <watchdog model='ib700' action='inject-nmi'></watchdog>
    <watchdog model='diag288' action='dump'/>
  </devices>
</domain>
"#,
            "i6300esb/pause itco/pause ib700/inject-nmi diag288/dump",
        );
        // Only `<watchdog>` children of the domain's `<devices>` count.
        check(
            "<domain><metadata><watchdog model='x'/></metadata><devices><hub><watchdog model='y'/></hub></devices></domain>",
            "",
        );
    }

    #[test]
    fn spans_point_at_the_elements() {
        let xml = "<domain>\n <devices>\n  <watchdog model='itco'>\n  </watchdog>\n  <watchdog model='i6300esb'/>\n </devices>\n</domain>";
        let s = scan(xml).unwrap();
        let spans: Vec<&str> = s.watchdogs.iter().map(|w| &xml[w.start..w.end]).collect();
        assert_eq!(
            spans,
            [
                "<watchdog model='itco'>\n  </watchdog>",
                "<watchdog model='i6300esb'/>"
            ]
        );
        let d = s.devices.unwrap();
        assert_eq!(&xml[d.start..d.end], "<devices>");
        assert_eq!(&xml[d.close.unwrap()..d.close.unwrap() + 10], "</devices>");
        assert_eq!(&xml[s.root.close.unwrap()..], "</domain>");
    }

    #[test]
    fn os_type_reads_arch_and_machine() {
        let check = |xml: &str, arch: Option<&str>, machine: Option<&str>| {
            let os = os_type(xml).unwrap();
            assert_eq!(
                (os.arch.as_deref(), os.machine.as_deref()),
                (arch, machine),
                "{xml}"
            );
        };
        check(
            "<domain><os><type arch='s390x' machine='s390-ccw-virtio'>hvm</type></os></domain>",
            Some("s390x"),
            Some("s390-ccw-virtio"),
        );
        check("<domain><os><type>hvm</type></os></domain>", None, None);
        check(
            "<domain><os><type machine=\"q35\"/></os></domain>",
            None,
            Some("q35"),
        );
        check("<domain/>", None, None);
        // Only `<os><type>` directly under the domain.
        check(
            "<domain><cpu><type arch='aarch64'/></cpu><os><type arch='i686'>hvm</type></os></domain>",
            Some("i686"),
            None,
        );
        assert!(os_type("<os/>").is_err());
    }
}
