//! libvirt's watchdog actions and the enabled/disabled setting.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// An action libvirt can take when a guest's watchdog fires, spelled exactly
/// as in libvirt's domain XML (`<watchdog action='…'/>`).
///
/// `FromStr` and `Display` round-trip, and serde uses the same spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum WatchdogAction {
    /// Forcefully reset the guest (`reset`).
    Reset,
    /// Gracefully shut the guest down (`shutdown`); not recommended by libvirt.
    Shutdown,
    /// Forcefully power the guest off (`poweroff`).
    Poweroff,
    /// Pause the guest (`pause`).
    Pause,
    /// Do nothing (`none`); the event is still reported.
    None,
    /// Dump the guest's memory, then pause it (`dump`).
    Dump,
    /// Inject a non-maskable interrupt into the guest (`inject-nmi`).
    InjectNmi,
}

impl WatchdogAction {
    /// Every action, in libvirt's schema order.
    pub const ALL: [WatchdogAction; 7] = [
        WatchdogAction::Reset,
        WatchdogAction::Shutdown,
        WatchdogAction::Poweroff,
        WatchdogAction::Pause,
        WatchdogAction::None,
        WatchdogAction::Dump,
        WatchdogAction::InjectNmi,
    ];

    /// libvirt's spelling of the action.
    pub const fn as_str(self) -> &'static str {
        match self {
            WatchdogAction::Reset => "reset",
            WatchdogAction::Shutdown => "shutdown",
            WatchdogAction::Poweroff => "poweroff",
            WatchdogAction::Pause => "pause",
            WatchdogAction::None => "none",
            WatchdogAction::Dump => "dump",
            WatchdogAction::InjectNmi => "inject-nmi",
        }
    }

    /// Whether Nova lets a flavor or an image choose this action.
    pub const fn is_nova_value(self) -> bool {
        matches!(
            self,
            WatchdogAction::Reset
                | WatchdogAction::Poweroff
                | WatchdogAction::Pause
                | WatchdogAction::None
        )
    }
}

impl fmt::Display for WatchdogAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WatchdogAction {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        WatchdogAction::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| Error::ParseAction {
                value: s.to_owned(),
            })
    }
}

impl Serialize for WatchdogAction {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for WatchdogAction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The values a flavor or image may use, in the order error messages list them.
pub const NOVA_VALUES: [&str; 5] = ["disabled", "none", "pause", "poweroff", "reset"];

/// A guest's watchdog setting: no device at all, or a device with an action.
///
/// Its text form is `disabled` or the action's spelling, and it round-trips
/// through `FromStr`, `Display` and serde.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Setting {
    /// No watchdog device.
    Disabled,
    /// A watchdog device with this action.
    Enabled(WatchdogAction),
}

impl Setting {
    /// The action, or `None` when disabled.
    pub const fn action(self) -> Option<WatchdogAction> {
        match self {
            Setting::Disabled => None,
            Setting::Enabled(a) => Some(a),
        }
    }

    /// Whether a watchdog device is wanted.
    pub const fn is_enabled(self) -> bool {
        matches!(self, Setting::Enabled(_))
    }

    /// Parses a flavor or image value: exactly one of [`NOVA_VALUES`].
    pub(crate) fn from_nova_value(s: &str) -> Option<Setting> {
        match s {
            "disabled" => Some(Setting::Disabled),
            "none" => Some(Setting::Enabled(WatchdogAction::None)),
            "pause" => Some(Setting::Enabled(WatchdogAction::Pause)),
            "poweroff" => Some(Setting::Enabled(WatchdogAction::Poweroff)),
            "reset" => Some(Setting::Enabled(WatchdogAction::Reset)),
            _ => None,
        }
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Setting::Disabled => f.write_str("disabled"),
            Setting::Enabled(a) => a.fmt(f),
        }
    }
}

impl FromStr for Setting {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if s == "disabled" {
            return Ok(Setting::Disabled);
        }
        s.parse()
            .map(Setting::Enabled)
            .map_err(|_| Error::ParseSetting {
                value: s.to_owned(),
            })
    }
}

impl Serialize for Setting {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Setting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_round_trips_through_text_and_serde() {
        for action in WatchdogAction::ALL {
            let text = action.to_string();
            assert_eq!(text.parse::<WatchdogAction>().unwrap(), action);
            let json = serde_json::to_string(&action).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(
                serde_json::from_str::<WatchdogAction>(&json).unwrap(),
                action
            );
            let setting = Setting::Enabled(action);
            assert_eq!(setting.to_string().parse::<Setting>().unwrap(), setting);
        }
        assert_eq!("disabled".parse::<Setting>().unwrap(), Setting::Disabled);
        assert_eq!(
            serde_json::to_string(&Setting::Disabled).unwrap(),
            "\"disabled\""
        );
    }

    #[test]
    fn libvirt_spellings_are_exact() {
        let spelled: Vec<_> = WatchdogAction::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(
            spelled,
            [
                "reset",
                "shutdown",
                "poweroff",
                "pause",
                "none",
                "dump",
                "inject-nmi"
            ]
        );
    }

    #[test]
    fn bad_action_text_is_an_error_naming_the_value_and_the_allowed_ones() {
        let check = |input: &str| {
            let err = input.parse::<WatchdogAction>().unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "unknown watchdog action `{input}`; allowed: reset, shutdown, poweroff, pause, none, dump, inject-nmi"
                )
            );
        };
        for bad in ["", "RESET", "inject_nmi", " pause", "disabled"] {
            check(bad);
        }
        let err = "Pause".parse::<Setting>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown watchdog setting `Pause`; allowed: disabled, reset, shutdown, poweroff, pause, none, dump, inject-nmi"
        );
        assert!(serde_json::from_str::<WatchdogAction>("\"debug\"").is_err());
    }

    #[test]
    fn nova_values_are_the_ones_flavors_may_use() {
        let nova: Vec<_> = WatchdogAction::ALL
            .into_iter()
            .filter(|a| a.is_nova_value())
            .map(|a| a.as_str())
            .collect();
        assert_eq!(nova, ["reset", "poweroff", "pause", "none"]);
        for v in NOVA_VALUES {
            assert_eq!(Setting::from_nova_value(v).unwrap().to_string(), v);
        }
        for v in ["shutdown", "dump", "inject-nmi", "RESET", "pause ", ""] {
            assert_eq!(Setting::from_nova_value(v), None, "{v:?}");
        }
    }
}
