//! libvirt domain XML for guest watchdogs: render the `<watchdog>` device a
//! guest's setting calls for, patch it into a whole domain document, and read
//! watchdogs, `<os><type>` and Nova's instance metadata back.
//!
//! This crate builds on `wd-policy` and parses XML with `quick-xml`. It does
//! no I/O and must never depend on libvirt itself, on notifiers or on an
//! async runtime: the libvirt version it renders for is an input
//! ([`LibvirtVersion`]), not something it asks for.
//!
//! # Models
//!
//! x86_64 and i686 guests get `i6300esb`; s390x guests get `diag288`
//! ([`WatchdogModel::for_arch`]). Other architectures (aarch64, ppc64le, …)
//! have no watchdog model in libvirt's QEMU driver, so enabling a watchdog
//! there is an error naming the architecture; `disabled` needs no model and
//! works everywhere.
//!
//! # q35 and the implicit iTCO
//!
//! The q35 chipset (machine `q35` or `pc-q35-*`) has a built-in Intel TCO
//! watchdog that guests arm on their own (Linux loads `iTCO_wdt`). QEMU has
//! one watchdog action per guest, shared by all its watchdogs. libvirt 9.1.0
//! made this visible:
//!
//! * On x86 q35 guests it adds an implicit `<watchdog model='itco'/>` unless
//!   one is given. It takes the action of the first watchdog, or `reset` if
//!   there is none.
//! * It rejects a domain whose watchdogs have different actions ("watchdogs
//!   with different actions are not supported").
//!
//! So with libvirt 9.1.0 or later on q35 ([`Target::has_implicit_itco`]):
//!
//! * an enabled action `A` renders `<watchdog model='i6300esb' action='A'/>`
//!   followed by `<watchdog model='itco' action='A'/>`. The `i6300esb` comes
//!   first, so it is the watchdog whose action libvirt copies, and the `itco`
//!   is written out so that the document is what libvirt will report back
//!   (patching it again changes nothing), and so that no action is left to
//!   a libvirt default;
//! * `disabled` renders `<watchdog model='itco' action='none'/>`. With no
//!   watchdog element libvirt would add an `itco` with `reset`, and a guest
//!   that arms it would be reset against the operator's choice. With `none`
//!   its expiry only raises libvirt's watchdog event.
//!
//! Below 9.1.0 the `itco` model is never emitted: libvirt 9.0's schema
//! rejects it (its `model` choice is `i6300esb`, `ib700`, `diag288`). The
//! q35 TCO watchdog then lies outside libvirt's control.
//!
//! # Patching
//!
//! [`patch`] splices the original text: only the `<watchdog>` elements and
//! the whitespace before them change, so comments, attribute quoting,
//! indentation and namespaced metadata survive byte for byte, and patching
//! twice equals patching once.
//!
//! ```
//! use wd_policy::{resolve, OperatorPolicy};
//! use wd_xml::{patch, watchdogs, LibvirtVersion, Target};
//!
//! let resolved = resolve([("hw:watchdog_action", "pause")], [("os_distro", "debian")], &OperatorPolicy::default())?;
//! let xml = "<domain type='kvm'>\n  <!-- by nova -->\n  <devices>\n    <watchdog model='i6300esb'/>\n  </devices>\n</domain>";
//! let target = Target::new("x86_64", "pc-q35-8.2", LibvirtVersion::from_number(9_001_000));
//! let patched = patch(xml, resolved.setting, &target)?;
//! assert_eq!(patched, "<domain type='kvm'>\n  <!-- by nova -->\n  <devices>\n    <watchdog model='i6300esb' action='pause'/>\n    <watchdog model='itco' action='pause'/>\n  </devices>\n</domain>");
//! assert_eq!(patch(&patched, resolved.setting, &target)?, patched);
//! assert_eq!(watchdogs(&patched)?.len(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

mod device;
mod doc;
mod error;
mod nova;
mod patch;
mod version;

pub use device::{
    SUPPORTED_ARCHES, Target, WatchdogDevice, WatchdogModel, devices, is_q35, render,
};
pub use doc::{OsType, os_type, watchdogs};
pub use error::{Error, Result};
pub use nova::{MAX_FIELD, NOVA_NAMESPACES, NovaFlavor, NovaImage, NovaMetadata};
pub use patch::patch;
pub use version::LibvirtVersion;
