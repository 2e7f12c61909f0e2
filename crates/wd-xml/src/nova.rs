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
///       <nova:flavor name="m1.small" id="2">
///         <nova:memory>2048</nova:memory>
///         <nova:disk>20</nova:disk>
///         <nova:swap>0</nova:swap>
///         <nova:ephemeral>0</nova:ephemeral>
///         <nova:vcpus>1</nova:vcpus>
///       </nova:flavor>
///       <nova:image uuid="…">…</nova:image>
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
/// a name, for example; older Novas write neither `<nova:image>` nor the
/// flavor's `id`, which Nova 34 writes).
///
/// The document is hostile input (a display name is chosen by the tenant):
/// the flavor's and image's strings are cut at [`MAX_FIELD`] bytes, and a
/// number that is not a non-negative decimal integer that fits `u32` is
/// left out, never an error.
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
    /// The rest of `<nova:flavor>`: its `id` and sizes.
    pub flavor: NovaFlavor,
    /// `<nova:image>`, or the image of `<nova:root type="image">`.
    pub image: NovaImage,
    /// `<nova:owner><nova:user uuid=…>`.
    pub user_uuid: Option<String>,
    /// The text of `<nova:owner><nova:user>`: the user's name.
    pub user_name: Option<String>,
    /// `<nova:owner><nova:project uuid=…>`.
    pub project_uuid: Option<String>,
    /// The text of `<nova:owner><nova:project>`: the project's name.
    pub project_name: Option<String>,
}

/// The most bytes kept of a flavor or image string (Nova's database columns
/// hold 255 characters).
pub const MAX_FIELD: usize = 255;

/// The flavor as `<nova:flavor>` gives it (`LibvirtConfigGuestMetaNovaFlavor`):
/// sizes as Nova's `Flavor` object holds them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NovaFlavor {
    /// `<nova:flavor id=…>`: the flavor's `flavorid` (a string in Nova).
    pub id: Option<String>,
    /// `<nova:memory>`: `memory_mb`.
    pub memory_mb: Option<u32>,
    /// `<nova:disk>`: `root_gb`.
    pub root_gb: Option<u32>,
    /// `<nova:swap>`: `swap`, in MiB.
    pub swap_mb: Option<u32>,
    /// `<nova:ephemeral>`: `ephemeral_gb`.
    pub ephemeral_gb: Option<u32>,
    /// `<nova:vcpus>`: `vcpus`.
    pub vcpus: Option<u32>,
}

/// The image the instance was booted from, as `<nova:image>`
/// (`LibvirtConfigGuestMetaImage`) gives it. Domains of older Novas have no
/// `<nova:image>`; their `<nova:root type="image" uuid=…>` still names the
/// image.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NovaImage {
    /// `uuid=…`: the image id; empty for an instance booted from a volume.
    pub uuid: Option<String>,
    /// `<nova:containerFormat>`.
    pub container_format: Option<String>,
    /// `<nova:diskFormat>`.
    pub disk_format: Option<String>,
    /// `<nova:minDisk>`, in GiB.
    pub min_disk: Option<u32>,
    /// `<nova:minRam>`, in MiB.
    pub min_ram: Option<u32>,
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
    /// A size inside `<nova:flavor>`, or a number or format inside
    /// `<nova:image>`: its text is collected, then read on close.
    Field(Field),
    Image,
    Owner,
    User,
    Project,
    Other,
}

/// A numeric or text child of `<nova:flavor>` or `<nova:image>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Memory,
    Disk,
    Swap,
    Ephemeral,
    Vcpus,
    ContainerFormat,
    DiskFormat,
    MinDisk,
    MinRam,
}

impl Field {
    fn of(parent: At, local: &[u8]) -> Option<Field> {
        Some(match (parent, local) {
            (At::Flavor, b"memory") => Field::Memory,
            (At::Flavor, b"disk") => Field::Disk,
            (At::Flavor, b"swap") => Field::Swap,
            (At::Flavor, b"ephemeral") => Field::Ephemeral,
            (At::Flavor, b"vcpus") => Field::Vcpus,
            (At::Image, b"containerFormat") => Field::ContainerFormat,
            (At::Image, b"diskFormat") => Field::DiskFormat,
            (At::Image, b"minDisk") => Field::MinDisk,
            (At::Image, b"minRam") => Field::MinRam,
            _ => return None,
        })
    }

    /// Stores the collected `text` of this field in `meta`.
    fn store(self, meta: &mut NovaMetadata, text: &str) {
        let (f, i) = (&mut meta.flavor, &mut meta.image);
        match self {
            Field::Memory => f.memory_mb = number(text),
            Field::Disk => f.root_gb = number(text),
            Field::Swap => f.swap_mb = number(text),
            Field::Ephemeral => f.ephemeral_gb = number(text),
            Field::Vcpus => f.vcpus = number(text),
            Field::ContainerFormat => i.container_format = Some(bounded(text.trim())),
            Field::DiskFormat => i.disk_format = Some(bounded(text.trim())),
            Field::MinDisk => i.min_disk = number(text),
            Field::MinRam => i.min_ram = number(text),
        }
    }
}

/// A non-negative decimal integer that fits `u32`, or `None`.
fn number(text: &str) -> Option<u32> {
    let t = text.trim();
    if t.is_empty() || t.len() > 10 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// `text` cut to at most [`MAX_FIELD`] bytes, at a character boundary.
fn bounded(text: &str) -> String {
    let mut end = text.len().min(MAX_FIELD);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
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
        // The text of the open flavor or image field, bounded.
        let mut field_text = String::new();
        // `<nova:root type="image" uuid=…>`: the image when there is no
        // `<nova:image>`.
        let mut root_image: Option<String> = None;
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
                        (Some(At::Instance), Some(_), b"image") => At::Image,
                        (Some(&parent @ (At::Flavor | At::Image)), Some(_), local) => {
                            Field::of(parent, local).map_or(At::Other, At::Field)
                        }
                        (Some(At::Instance), Some(_), b"owner") => At::Owner,
                        (Some(At::Owner), Some(_), b"user") => At::User,
                        (Some(At::Owner), Some(_), b"project") => At::Project,
                        _ => At::Other,
                    };
                    match here {
                        At::Flavor => {
                            meta.flavor_name = attr(&tag, "name", start)?.map(Into::into);
                            meta.flavor.id = attr(&tag, "id", start)?.map(|v| bounded(v.trim()));
                        }
                        At::Image => {
                            meta.image.uuid = attr(&tag, "uuid", start)?.map(|v| bounded(v.trim()))
                        }
                        At::Other
                            if stack.last() == Some(&At::Instance)
                                && nova_ns.is_some()
                                && local == b"root"
                                && attr(&tag, "type", start)?.as_deref() == Some("image") =>
                        {
                            root_image = attr(&tag, "uuid", start)?.map(|v| bounded(v.trim()));
                        }
                        At::Field(_) => field_text.clear(),
                        At::User => meta.user_uuid = uuid_attr(&tag, start)?,
                        At::Project => meta.project_uuid = uuid_attr(&tag, start)?,
                        At::Instance if empty => done = true,
                        _ => {}
                    }
                    if !empty {
                        stack.push(here);
                    }
                }
                Item::Close { .. } => match stack.pop() {
                    Some(At::Instance) => done = true,
                    Some(At::Field(field)) => field.store(&mut meta, &field_text),
                    _ => {}
                },
                Item::Text { text, .. } => {
                    let field = match stack.last() {
                        Some(At::Name) => &mut meta.domain_name,
                        Some(At::Uuid) => &mut meta.domain_uuid,
                        Some(At::NovaName) => &mut meta.instance_name,
                        Some(At::User) => &mut meta.user_name,
                        Some(At::Project) => &mut meta.project_name,
                        Some(At::Field(_)) => {
                            // Enough for any valid value; the rest is junk.
                            if field_text.len() < 2 * MAX_FIELD {
                                field_text.push_str(&text);
                            }
                            continue;
                        }
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
        if meta.image.uuid.is_none() {
            meta.image.uuid = root_image;
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
    /// The metadata exactly as Nova 34's own code writes it.
    const NOVA_34: &str = include_str!("../tests/fixtures/nova-34.xml");

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
                let (f, i) = (&m.flavor, &m.image);
                let numbers = [
                    ("memory", f.memory_mb),
                    ("root", f.root_gb),
                    ("swap", f.swap_mb),
                    ("ephemeral", f.ephemeral_gb),
                    ("vcpus", f.vcpus),
                    ("min_disk", i.min_disk),
                    ("min_ram", i.min_ram),
                ];
                let more = [
                    ("flavor_id", &f.id),
                    ("image", &i.uuid),
                    ("container", &i.container_format),
                    ("disk_format", &i.disk_format),
                ];
                let mut out = format!("ns={}", m.namespace.rsplit('/').next().unwrap_or(""));
                for (k, v) in fields.into_iter().chain(more) {
                    if let Some(v) = v {
                        out.push_str(&format!(" {k}={v}"));
                    }
                }
                for (k, v) in numbers {
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
            "ns=1.1 uuid=6a1b1fd3-54f0-4bdc-8d0a-1e2f3c4d5e6f domain=instance-0000002a name=web-1 flavor=m1.small user=alice user_uuid=9d3c2b1a-0f4e-4c5d-8a7b-6e5f4d3c2b1a project=web & api project_uuid=1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9 \
             image=c0ffee00-1234-4567-89ab-cdef01234567 memory=2048 root=20 swap=0 ephemeral=0 vcpus=2",
        );
    }

    #[test]
    fn reads_what_nova_34_writes() {
        // The flavor id and `<nova:image>` (with extra specs and image
        // properties beside the fields read) as Nova's own code writes them.
        check(
            NOVA_34,
            "ns=1.1 uuid=6a1b1fd3-54f0-4bdc-8d0a-1e2f3c4d5e6f domain=instance-0000002b name=web-1 flavor=m1.small user=alice user_uuid=9d3c2b1a0f4e4c5d8a7b6e5f4d3c2b1a project=web & api project_uuid=1f2e3d4c5b6a49788695a4b3c2d1e0f9 \
             flavor_id=2 image=c0ffee00-1234-4567-89ab-cdef01234567 container=bare disk_format=qcow2 memory=2048 root=20 swap=0 ephemeral=0 vcpus=1 min_disk=20 min_ram=0",
        );
    }

    #[test]
    fn hostile_flavor_and_image_values_are_left_out_or_bounded() {
        let doc = |body: &str| {
            format!(
                "<domain><metadata><n:instance xmlns:n='{}'>{body}</n:instance></metadata></domain>",
                NOVA_NAMESPACES[0]
            )
        };
        let flavor = |memory: &str| {
            doc(&format!(
                "<n:flavor name='f'><n:memory>{memory}</n:memory><n:vcpus> 4 </n:vcpus></n:flavor>"
            ))
        };
        check(&flavor("2048"), "ns=1.1 flavor=f memory=2048 vcpus=4");
        // Not a non-negative decimal u32: left out, the rest still read.
        for bad in [
            "",
            " ",
            "-1",
            "+5",
            "1.5",
            "1e3",
            "0x10",
            "lots",
            "4294967296",
            "99999999999999999999",
            "٣",
            "2048<!-- c -->x",
        ] {
            check(&flavor(bad), "ns=1.1 flavor=f vcpus=4");
        }
        check(
            &flavor("4294967295"),
            "ns=1.1 flavor=f memory=4294967295 vcpus=4",
        );
        check(
            &flavor("<![CDATA[512]]>"),
            "ns=1.1 flavor=f memory=512 vcpus=4",
        );
        // A huge value is not collected without bound, and is no number.
        check(&flavor(&"9".repeat(100_000)), "ns=1.1 flavor=f vcpus=4");
        // Strings are cut at MAX_FIELD bytes, on a character boundary.
        let long = "é".repeat(200);
        let cut = "é".repeat(MAX_FIELD / 2);
        check(
            &doc(&format!(
                "<n:flavor name='f' id='{long}'/><n:image uuid='{long}'><n:diskFormat>{long}</n:diskFormat></n:image>"
            )),
            &format!("ns=1.1 flavor=f flavor_id={cut} image={cut} disk_format={cut}"),
        );
        // Children elsewhere, or of another namespace, do not count.
        check(
            &doc(
                "<n:memory>1</n:memory><n:flavor name='f'><memory>2</memory><n:extraSpecs><n:vcpus>3</n:vcpus></n:extraSpecs></n:flavor>",
            ),
            "ns=1.1 flavor=f",
        );
        // A nested element inside a number is junk around it.
        check(&flavor("1<n:x>2</n:x>"), "ns=1.1 flavor=f memory=1 vcpus=4");
    }

    #[test]
    fn the_image_comes_from_nova_image_or_an_image_root() {
        let doc = |body: &str| {
            format!(
                "<domain><metadata><n:instance xmlns:n='{}'>{body}</n:instance></metadata></domain>",
                NOVA_NAMESPACES[0]
            )
        };
        // Older Novas: only the root names the image.
        check(
            &doc("<n:root type='image' uuid=' i-1 '/>"),
            "ns=1.1 image=i-1",
        );
        // Booted from a volume: Nova writes an empty image uuid and a volume
        // root; the volume is no image.
        check(
            &doc("<n:image uuid=''/><n:root type='volume' uuid='v-1'/>"),
            "ns=1.1 image=",
        );
        check(&doc("<n:root type='volume' uuid='v-1'/>"), "ns=1.1");
        // `<nova:image>` wins over the root, wherever it is.
        check(
            &doc("<n:root type='image' uuid='old'/><n:image uuid='new'/>"),
            "ns=1.1 image=new",
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
