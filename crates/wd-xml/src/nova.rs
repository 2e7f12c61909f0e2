//! Nova's instance metadata in a domain document.

use quick_xml::NsReader;
use quick_xml::name::ResolveResult;
use serde::{Deserialize, Serialize};

use crate::doc::{Item, Walker, attr};
use crate::error::Result;

/// The namespaces of Nova's `<nova:instance>` metadata, newest first. Nova
/// writes 1.1 today; domains defined by older releases carry 1.0, with the
/// same elements this crate reads.
pub const NOVA_NAMESPACES: [&str; 2] = [
    "http://openstack.org/xmlns/libvirt/nova/1.1",
    "http://openstack.org/xmlns/libvirt/nova/1.0",
];

/// What a notification needs from a Nova-managed domain: the domain's
/// identity and the instance metadata Nova's libvirt driver writes
/// (`LibvirtConfigGuestMetaNovaInstance`):
///
/// ```xml
/// <domain type='kvm'>
///   <name>instance-0000002a</name>
///   <uuid>6a1b1fd3-54f0-4bdc-8d0a-1e2f3c4d5e6f</uuid>
///   <metadata>
///     <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
///       <nova:name>web-1</nova:name>
///       <nova:flavor name="m1.small">…</nova:flavor>
///       <nova:owner>
///         <nova:user uuid="…">alice</nova:user>
///         <nova:project uuid="…">web</nova:project>
///       </nova:owner>
///     </nova:instance>
///   </metadata>
///   …
/// ```
///
/// Elements are matched by namespace URI ([`NOVA_NAMESPACES`]), whatever the
/// prefix. Every field is optional because Nova omits parts (an owner without
/// a name, for example).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NovaMetadata {
    /// The domain's `<uuid>`, which Nova sets to the instance UUID.
    pub domain_uuid: Option<String>,
    /// The domain's `<name>`, e.g. `instance-0000002a`.
    pub domain_name: Option<String>,
    /// The namespace the metadata was found in, one of [`NOVA_NAMESPACES`].
    pub namespace: String,
    /// `<nova:name>`: the instance's display name.
    pub instance_name: Option<String>,
    /// `<nova:flavor name=…>`.
    pub flavor_name: Option<String>,
    /// `<nova:owner><nova:user uuid=…>`.
    pub user_uuid: Option<String>,
    /// The text of `<nova:owner><nova:user>`: the user's name.
    pub user_name: Option<String>,
    /// `<nova:owner><nova:project uuid=…>`.
    pub project_uuid: Option<String>,
    /// The text of `<nova:owner><nova:project>`: the project's name.
    pub project_name: Option<String>,
}

/// Where the walker is, as far as this parse cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    Domain,
    Name,
    Uuid,
    Metadata,
    Instance,
    NovaName,
    Flavor,
    Owner,
    User,
    Project,
    Other,
}

impl NovaMetadata {
    /// Reads the Nova metadata of a domain document; `Ok(None)` when it has
    /// none (a domain Nova does not manage).
    ///
    /// ```
    /// let xml = r#"<domain type='kvm'><name>instance-00000001</name>
    ///   <uuid>0b1c2d3e-0000-4000-8000-000000000001</uuid>
    ///   <metadata><n:instance xmlns:n="http://openstack.org/xmlns/libvirt/nova/1.1">
    ///     <n:name>web-1</n:name>
    ///     <n:owner><n:project uuid="p-1">web</n:project></n:owner>
    ///   </n:instance></metadata></domain>"#;
    /// let meta = wd_xml::NovaMetadata::parse(xml)?.expect("nova metadata");
    /// assert_eq!(meta.instance_name.as_deref(), Some("web-1"));
    /// assert_eq!(meta.project_uuid.as_deref(), Some("p-1"));
    /// assert_eq!(meta.domain_uuid.as_deref(), Some("0b1c2d3e-0000-4000-8000-000000000001"));
    /// assert!(wd_xml::NovaMetadata::parse("<domain/>")?.is_none());
    /// # Ok::<(), wd_xml::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// A document that is empty, malformed or not rooted at `<domain>`.
    pub fn parse(xml: &str) -> Result<Option<NovaMetadata>> {
        let mut walker = Walker::<NsReader<&[u8]>>::new(xml)?;
        let mut meta = NovaMetadata::default();
        let mut found = false;
        // Only the first `<nova:instance>` counts.
        let mut done = false;
        let mut stack: Vec<At> = Vec::with_capacity(8);
        loop {
            match walker.next()? {
                Item::Open {
                    tag, start, empty, ..
                } => {
                    let (ns, local) = walker.reader.resolve_element(tag.name());
                    let nova_ns = match ns {
                        ResolveResult::Bound(ns) => NOVA_NAMESPACES
                            .into_iter()
                            .find(|n| n.as_bytes() == ns.as_ref()),
                        _ => None,
                    };
                    let local = local.as_ref();
                    let here = match (stack.last(), nova_ns, local) {
                        (None, _, _) => At::Domain,
                        (Some(At::Domain), None, b"name") => At::Name,
                        (Some(At::Domain), None, b"uuid") => At::Uuid,
                        (Some(At::Domain), None, b"metadata") => At::Metadata,
                        (Some(At::Metadata), Some(ns), b"instance") if !done => {
                            found = true;
                            meta.namespace = ns.to_owned();
                            At::Instance
                        }
                        (Some(At::Instance), Some(_), b"name") => At::NovaName,
                        (Some(At::Instance), Some(_), b"flavor") => At::Flavor,
                        (Some(At::Instance), Some(_), b"owner") => At::Owner,
                        (Some(At::Owner), Some(_), b"user") => At::User,
                        (Some(At::Owner), Some(_), b"project") => At::Project,
                        _ => At::Other,
                    };
                    match here {
                        At::Flavor => meta.flavor_name = attr(&tag, "name", start)?.map(Into::into),
                        At::User => meta.user_uuid = uuid_attr(&tag, start)?,
                        At::Project => meta.project_uuid = uuid_attr(&tag, start)?,
                        At::Instance if empty => done = true,
                        _ => {}
                    }
                    if !empty {
                        stack.push(here);
                    }
                }
                Item::Close { .. } => {
                    if stack.pop() == Some(At::Instance) {
                        done = true;
                    }
                }
                Item::Text { text, .. } => {
                    let field = match stack.last() {
                        Some(At::Name) => &mut meta.domain_name,
                        Some(At::Uuid) => &mut meta.domain_uuid,
                        Some(At::NovaName) => &mut meta.instance_name,
                        Some(At::User) => &mut meta.user_name,
                        Some(At::Project) => &mut meta.project_name,
                        _ => continue,
                    };
                    field.get_or_insert_with(String::new).push_str(&text);
                }
                Item::Eof => break,
            }
        }
        if !found {
            return Ok(None);
        }
        // libvirt ignores whitespace around these; names are kept as written.
        for v in [&mut meta.domain_uuid, &mut meta.domain_name]
            .into_iter()
            .flatten()
        {
            *v = v.trim().to_owned();
        }
        Ok(Some(meta))
    }
}

fn uuid_attr(tag: &quick_xml::events::BytesStart<'_>, start: usize) -> Result<Option<String>> {
    Ok(attr(tag, "uuid", start)?.map(|v| v.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../tests/fixtures/nova-pc.xml");

    /// Parses and shows the outcome as `field=value` pairs, or the error.
    fn check(input: &str, expected: &str) {
        let got = match NovaMetadata::parse(input) {
            Ok(None) => "none".to_owned(),
            Ok(Some(m)) => {
                let fields = [
                    ("uuid", &m.domain_uuid),
                    ("domain", &m.domain_name),
                    ("name", &m.instance_name),
                    ("flavor", &m.flavor_name),
                    ("user", &m.user_name),
                    ("user_uuid", &m.user_uuid),
                    ("project", &m.project_name),
                    ("project_uuid", &m.project_uuid),
                ];
                let mut out = format!("ns={}", m.namespace.rsplit('/').next().unwrap_or(""));
                for (k, v) in fields {
                    if let Some(v) = v {
                        out.push_str(&format!(" {k}={v}"));
                    }
                }
                out
            }
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(got, expected, "{input}");
    }

    #[test]
    fn reads_the_nova_fixture() {
        check(
            FIXTURE,
            "ns=1.1 uuid=6a1b1fd3-54f0-4bdc-8d0a-1e2f3c4d5e6f domain=instance-0000002a name=web-1 flavor=m1.small user=alice user_uuid=9d3c2b1a-0f4e-4c5d-8a7b-6e5f4d3c2b1a project=web & api project_uuid=1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9",
        );
    }

    #[test]
    fn matches_by_namespace_uri_not_prefix() {
        let doc = |ns: &str, body: &str| {
            format!(
                "<domain><name> d </name><uuid>\n  u-1\n</uuid><metadata><x:instance xmlns:x=\"{ns}\">{body}</x:instance></metadata></domain>"
            )
        };
        let full = "<x:name>vm</x:name><x:flavor name='f'/><x:owner><x:user uuid='uu'>bob</x:user><x:project uuid=' pp '>p</x:project></x:owner>";
        check(
            &doc(NOVA_NAMESPACES[0], full),
            "ns=1.1 uuid=u-1 domain=d name=vm flavor=f user=bob user_uuid=uu project=p project_uuid=pp",
        );
        check(
            &doc(NOVA_NAMESPACES[1], full),
            "ns=1.0 uuid=u-1 domain=d name=vm flavor=f user=bob user_uuid=uu project=p project_uuid=pp",
        );
        // The default namespace works too.
        check(
            &format!(
                "<domain><metadata><instance xmlns='{}'><name>vm</name></instance></metadata></domain>",
                NOVA_NAMESPACES[0]
            ),
            "ns=1.1 name=vm",
        );
        // The `nova` prefix bound to another URI is not Nova's metadata.
        check(&doc("http://example.com/other", full), "none");
        check(
            &doc("http://openstack.org/xmlns/libvirt/nova/2.0", full),
            "none",
        );
        // Unprefixed children of the instance are not Nova's elements.
        check(
            &doc(
                NOVA_NAMESPACES[0],
                "<name>vm</name><x:owner><user uuid='u'>bob</user></x:owner>",
            ),
            "ns=1.1 uuid=u-1 domain=d",
        );
    }

    #[test]
    fn missing_metadata_is_none_and_bad_xml_is_an_error() {
        check("<domain><name>a</name><uuid>b</uuid></domain>", "none");
        check("<domain><metadata/></domain>", "none");
        // Elsewhere than `<metadata>`, it does not count.
        check(
            &format!(
                "<domain><devices><n:instance xmlns:n='{}'/></devices></domain>",
                NOVA_NAMESPACES[0]
            ),
            "none",
        );
        check(
            &format!(
                "<domain><metadata><n:instance xmlns:n='{}'/></metadata></domain>",
                NOVA_NAMESPACES[0]
            ),
            "ns=1.1",
        );
        check("", "error: domain XML is empty");
        check(
            "<instance/>",
            "error: root element is `instance`; expected `domain`",
        );
        check(
            &format!(
                "<domain><metadata><n:instance xmlns:n='{}'>",
                NOVA_NAMESPACES[0]
            ),
            "error: malformed domain XML at byte 84: element `n:instance` is not closed",
        );
    }

    #[test]
    fn only_the_first_instance_counts() {
        check(
            &format!(
                "<domain><metadata><a:instance xmlns:a='{}'><a:name>new</a:name></a:instance><b:instance xmlns:b='{}'><b:name>old</b:name><b:flavor name='f'/></b:instance></metadata></domain>",
                NOVA_NAMESPACES[0], NOVA_NAMESPACES[1]
            ),
            "ns=1.1 name=new",
        );
    }
}
