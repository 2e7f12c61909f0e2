//! Spawn time: which watchdog a guest gets, its XML, and where that came from.

use wd_policy::{OperatorPolicy, Resolved};
use wd_xml::{LibvirtVersion, Target, WatchdogDevice};

use crate::error::{Error, Result};

/// The watchdog a new guest gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchdogPlan {
    /// The resolved setting and its provenance.
    pub resolved: Resolved,
    /// The devices to add (empty when disabled, except where libvirt's
    /// implicit iTCO must be neutralised).
    pub devices: Vec<WatchdogDevice>,
    /// The device elements, one per line.
    pub xml: String,
}

impl WatchdogPlan {
    /// The line a driver logs, e.g.
    /// `watchdog=pause (image property hw_watchdog_action)`.
    pub fn log_line(&self) -> String {
        self.resolved.to_string()
    }
}

/// Resolves flavor, image and operator policy, and renders the devices for
/// `target`.
///
/// # Errors
///
/// A bad flavor or image value, a value the operator forbids, or an
/// architecture with no watchdog model.
///
/// ```
/// use wd_compute::spawn::plan;
/// use wd_policy::OperatorPolicy;
/// use wd_xml::{LibvirtVersion, Target};
///
/// let target = Target::new("x86_64", "pc", LibvirtVersion::new(9, 0, 0).unwrap());
/// let p = plan([("hw:watchdog_action", "reset")], [("hw_watchdog_action", "pause")],
///              &OperatorPolicy::default(), &target).unwrap();
/// assert_eq!(p.log_line(), "watchdog=pause (image property hw_watchdog_action)");
/// assert_eq!(p.xml, "<watchdog model='i6300esb' action='pause'/>");
/// ```
pub fn plan<F, FK, FV, I, IK, IV>(
    flavor: F,
    image: I,
    policy: &OperatorPolicy,
    target: &Target,
) -> Result<WatchdogPlan>
where
    F: IntoIterator<Item = (FK, FV)>,
    FK: AsRef<str>,
    FV: AsRef<str>,
    I: IntoIterator<Item = (IK, IV)>,
    IK: AsRef<str>,
    IV: AsRef<str>,
{
    let resolved = wd_policy::resolve(flavor, image, policy).map_err(Error::Policy)?;
    let devices = wd_xml::devices(resolved.setting, target).map_err(Error::Xml)?;
    let xml = devices
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    Ok(WatchdogPlan {
        resolved,
        devices,
        xml,
    })
}

/// Resolves the policy and patches a whole domain document, taking the
/// architecture and machine type from its `<os><type>`
/// ([`Target::for_domain`]: defaulting to `x86_64` and `pc`, as libvirt
/// would on an x86 host).
///
/// Returns the patched document and the resolved setting.
///
/// # Errors
///
/// A bad policy value, malformed XML, or an architecture with no watchdog
/// model.
pub fn patch_domain<F, FK, FV, I, IK, IV>(
    domain_xml: &str,
    flavor: F,
    image: I,
    policy: &OperatorPolicy,
    libvirt: LibvirtVersion,
) -> Result<(String, Resolved)>
where
    F: IntoIterator<Item = (FK, FV)>,
    FK: AsRef<str>,
    FV: AsRef<str>,
    I: IntoIterator<Item = (IK, IV)>,
    IK: AsRef<str>,
    IV: AsRef<str>,
{
    let resolved = wd_policy::resolve(flavor, image, policy).map_err(Error::Policy)?;
    let target = Target::for_domain(domain_xml, libvirt).map_err(Error::Xml)?;
    let patched = wd_xml::patch(domain_xml, resolved.setting, &target).map_err(Error::Xml)?;
    Ok((patched, resolved))
}
