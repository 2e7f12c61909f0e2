//! Watchdog models and the devices a guest gets for a setting.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use wd_policy::{Setting, WatchdogAction};

use crate::error::{Error, Result};
use crate::version::LibvirtVersion;

/// The architectures that have a watchdog model, in the order error messages
/// list them.
pub const SUPPORTED_ARCHES: [&str; 3] = ["x86_64", "i686", "s390x"];

/// A watchdog device model, spelled as in libvirt's `<watchdog model='…'/>`.
///
/// `FromStr`, `Display` and serde use libvirt's spelling and round-trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum WatchdogModel {
    /// Intel 6300ESB, a PCI device (`i6300esb`); what this crate gives x86 guests.
    I6300esb,
    /// iBase IB700, an ISA device (`ib700`); never rendered, only read back.
    Ib700,
    /// The s390 DIAG 288 watchdog (`diag288`).
    Diag288,
    /// The Intel TCO watchdog built into the q35 chipset (`itco`); libvirt
    /// 9.1.0 and later know it.
    Itco,
}

impl WatchdogModel {
    /// Every model, in libvirt's schema order.
    pub const ALL: [WatchdogModel; 4] = [
        WatchdogModel::I6300esb,
        WatchdogModel::Ib700,
        WatchdogModel::Diag288,
        WatchdogModel::Itco,
    ];

    /// libvirt's spelling of the model.
    pub const fn as_str(self) -> &'static str {
        match self {
            WatchdogModel::I6300esb => "i6300esb",
            WatchdogModel::Ib700 => "ib700",
            WatchdogModel::Diag288 => "diag288",
            WatchdogModel::Itco => "itco",
        }
    }

    /// The model a guest of this architecture gets (libvirt's spelling of the
    /// architecture, as in `<os><type arch='…'>`).
    ///
    /// # Errors
    ///
    /// An architecture outside [`SUPPORTED_ARCHES`], such as `aarch64`.
    pub fn for_arch(arch: &str) -> Result<Self> {
        match arch {
            "x86_64" | "i686" => Ok(WatchdogModel::I6300esb),
            "s390x" => Ok(WatchdogModel::Diag288),
            _ => Err(Error::UnsupportedArch {
                arch: arch.to_owned(),
            }),
        }
    }
}

impl fmt::Display for WatchdogModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WatchdogModel {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        WatchdogModel::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| Error::ParseModel {
                value: s.to_owned(),
            })
    }
}

impl Serialize for WatchdogModel {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for WatchdogModel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One `<watchdog>` device: a model and an action.
///
/// `Display` gives the element exactly as this crate writes it, in libvirt's
/// own style: `<watchdog model='i6300esb' action='pause'/>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WatchdogDevice {
    /// The device model.
    pub model: WatchdogModel,
    /// What libvirt does when it fires.
    pub action: WatchdogAction,
}

impl fmt::Display for WatchdogDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<watchdog model='{}' action='{}'/>",
            self.model, self.action
        )
    }
}

/// What a domain is rendered for: the guest's architecture and machine type
/// (libvirt's spellings, as in `<os><type arch='…' machine='…'>`) and the
/// libvirt version that will define it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The guest architecture, e.g. `x86_64`.
    pub arch: String,
    /// The machine type, e.g. `pc`, `q35` or `pc-q35-7.2`.
    pub machine: String,
    /// The libvirt version that will receive the XML.
    pub libvirt: LibvirtVersion,
}

impl Target {
    /// The architecture assumed when a domain's `<os><type>` does not say, as
    /// libvirt would on an x86 host.
    pub const DEFAULT_ARCH: &'static str = "x86_64";
    /// The machine type assumed when a domain's `<os><type>` does not say.
    pub const DEFAULT_MACHINE: &'static str = "pc";

    /// The target of a whole domain document: the architecture and machine
    /// type of its `<os><type>`, each defaulting to
    /// [`DEFAULT_ARCH`](Target::DEFAULT_ARCH) and
    /// [`DEFAULT_MACHINE`](Target::DEFAULT_MACHINE) when absent, for
    /// `libvirt`. A caller with overrides (a command-line flag) sets the
    /// public fields afterwards.
    ///
    /// ```
    /// use wd_xml::{LibvirtVersion, Target};
    ///
    /// let v = LibvirtVersion::new(9, 0, 0).unwrap();
    /// let q35 = "<domain><os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os></domain>";
    /// assert_eq!(Target::for_domain(q35, v)?, Target::new("x86_64", "pc-q35-7.2", v));
    /// let bare = "<domain><os><type>hvm</type></os></domain>";
    /// assert_eq!(Target::for_domain(bare, v)?, Target::new("x86_64", "pc", v));
    /// # Ok::<(), wd_xml::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// A document that is empty, malformed or not rooted at `<domain>`.
    pub fn for_domain(domain_xml: &str, libvirt: LibvirtVersion) -> Result<Target> {
        let os = crate::doc::os_type(domain_xml)?;
        Ok(Target::new(
            os.arch.unwrap_or_else(|| Self::DEFAULT_ARCH.to_owned()),
            os.machine
                .unwrap_or_else(|| Self::DEFAULT_MACHINE.to_owned()),
            libvirt,
        ))
    }

    /// A target from its parts.
    pub fn new(
        arch: impl Into<String>,
        machine: impl Into<String>,
        libvirt: LibvirtVersion,
    ) -> Self {
        Target {
            arch: arch.into(),
            machine: machine.into(),
            libvirt,
        }
    }

    /// Whether libvirt will add an implicit `itco` watchdog to this guest:
    /// an x86 q35 machine on libvirt 9.1.0 or later.
    pub fn has_implicit_itco(&self) -> bool {
        matches!(self.arch.as_str(), "x86_64" | "i686")
            && is_q35(&self.machine)
            && self.libvirt >= LibvirtVersion::IMPLICIT_ITCO
    }
}

/// Whether a machine type is q35, by libvirt's own test: `q35` or `pc-q35-*`.
pub fn is_q35(machine: &str) -> bool {
    machine == "q35" || machine.starts_with("pc-q35-")
}

/// The watchdog devices a guest with this setting gets, in document order.
///
/// * Enabled: the architecture's model ([`WatchdogModel::for_arch`]) with the
///   action; on targets with an implicit iTCO
///   ([`Target::has_implicit_itco`]) also `itco` with the same action.
/// * Disabled: nothing, except `itco` with action `none` on targets with an
///   implicit iTCO. See the [crate docs](crate) for why.
///
/// ```
/// use wd_policy::{Setting, WatchdogAction};
/// use wd_xml::{devices, LibvirtVersion, Target};
///
/// let q35 = Target::new("x86_64", "pc-q35-8.2", LibvirtVersion::IMPLICIT_ITCO);
/// let devs = devices(Setting::Enabled(WatchdogAction::Pause), &q35)?;
/// let xml: Vec<String> = devs.iter().map(|d| d.to_string()).collect();
/// assert_eq!(xml, [
///     "<watchdog model='i6300esb' action='pause'/>",
///     "<watchdog model='itco' action='pause'/>",
/// ]);
/// # Ok::<(), wd_xml::Error>(())
/// ```
///
/// # Errors
///
/// An enabled setting for an architecture with no watchdog model. A disabled
/// setting needs no model, so it never fails.
pub fn devices(setting: Setting, target: &Target) -> Result<Vec<WatchdogDevice>> {
    let itco = target.has_implicit_itco();
    let mut out = Vec::with_capacity(2);
    match setting {
        Setting::Disabled => {
            if itco {
                out.push(WatchdogDevice {
                    model: WatchdogModel::Itco,
                    action: WatchdogAction::None,
                });
            }
        }
        Setting::Enabled(action) => {
            out.push(WatchdogDevice {
                model: WatchdogModel::for_arch(&target.arch)?,
                action,
            });
            if itco {
                out.push(WatchdogDevice {
                    model: WatchdogModel::Itco,
                    action,
                });
            }
        }
    }
    Ok(out)
}

/// The device elements for a setting, one per line (no trailing newline);
/// empty when the guest gets none.
///
/// # Errors
///
/// As [`devices`].
pub fn render(setting: Setting, target: &Target) -> Result<String> {
    let devices = devices(setting, target)?;
    let mut out = String::with_capacity(96);
    for (i, d) in devices.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        use fmt::Write as _;
        // Writing to a String cannot fail.
        let _ = write!(out, "{d}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wd_policy::WatchdogAction as A;

    fn v(s: &str) -> LibvirtVersion {
        s.parse().unwrap()
    }

    fn check(setting: &str, arch: &str, machine: &str, libvirt: &str, expected: &str) {
        let setting: Setting = setting.parse().unwrap();
        let target = Target::new(arch, machine, v(libvirt));
        let got = match render(setting, &target) {
            Ok(xml) => xml,
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(got, expected, "{setting} {arch} {machine} {libvirt}");
    }

    #[test]
    fn every_action_on_every_supported_arch() {
        for action in A::ALL {
            for (arch, model) in [
                ("x86_64", "i6300esb"),
                ("i686", "i6300esb"),
                ("s390x", "diag288"),
            ] {
                let machine = if arch == "s390x" {
                    "s390-ccw-virtio"
                } else {
                    "pc"
                };
                check(
                    action.as_str(),
                    arch,
                    machine,
                    "9.1.0",
                    &format!("<watchdog model='{model}' action='{action}'/>"),
                );
            }
        }
        check("disabled", "x86_64", "pc", "9.1.0", "");
        check("disabled", "s390x", "s390-ccw-virtio", "10.0.0", "");
    }

    #[test]
    fn architectures_without_a_model_are_errors_when_enabled() {
        for arch in ["aarch64", "ppc64le", "riscv64", "armv7l", "", "X86_64"] {
            check(
                "reset",
                arch,
                "virt",
                "9.1.0",
                &format!(
                    "error: no watchdog model for architecture `{arch}`; supported: x86_64, i686, s390x"
                ),
            );
            // No device is wanted, so no model is needed.
            check("disabled", arch, "virt", "9.1.0", "");
        }
    }

    #[test]
    fn q35_gets_itco_only_from_libvirt_9_1() {
        for machine in ["q35", "pc-q35-7.2", "pc-q35-rhel9.2.0"] {
            for arch in ["x86_64", "i686"] {
                check(
                    "disabled",
                    arch,
                    machine,
                    "9.1.0",
                    "<watchdog model='itco' action='none'/>",
                );
                check(
                    "disabled",
                    arch,
                    machine,
                    "10.5.0",
                    "<watchdog model='itco' action='none'/>",
                );
                check("disabled", arch, machine, "9.0.0", "");
                check("disabled", arch, machine, "8.0.0", "");
                for action in [
                    "none",
                    "pause",
                    "poweroff",
                    "reset",
                    "dump",
                    "inject-nmi",
                    "shutdown",
                ] {
                    check(
                        action,
                        arch,
                        machine,
                        "9.1.0",
                        &format!(
                            "<watchdog model='i6300esb' action='{action}'/>\n<watchdog model='itco' action='{action}'/>"
                        ),
                    );
                    check(
                        action,
                        arch,
                        machine,
                        "9.0.0",
                        &format!("<watchdog model='i6300esb' action='{action}'/>"),
                    );
                }
            }
        }
        // Not q35 by libvirt's test, so no implicit iTCO.
        for machine in ["pc", "pc-i440fx-7.2", "q35-like", "pc-q35", "microvm"] {
            check("disabled", "x86_64", machine, "9.1.0", "");
            check(
                "pause",
                "x86_64",
                machine,
                "9.1.0",
                "<watchdog model='i6300esb' action='pause'/>",
            );
        }
    }

    #[test]
    fn models_round_trip() {
        for m in WatchdogModel::ALL {
            assert_eq!(m.to_string().parse::<WatchdogModel>().unwrap(), m);
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, format!("\"{m}\""));
        }
        assert_eq!(
            "iTCO".parse::<WatchdogModel>().unwrap_err().to_string(),
            "unknown watchdog model `iTCO`; allowed: i6300esb, ib700, diag288, itco"
        );
        let d = WatchdogDevice {
            model: WatchdogModel::Diag288,
            action: A::InjectNmi,
        };
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"model":"diag288","action":"inject-nmi"}"#
        );
    }
}
