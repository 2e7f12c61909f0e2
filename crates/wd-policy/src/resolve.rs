//! Keys, precedence and operator rules.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::action::{NOVA_VALUES, Setting};
use crate::error::{Error, Result};

/// Flavor keys, in order of preference: Nova's extra spec, then the attribute.
pub const FLAVOR_KEYS: [&str; 2] = ["hw:watchdog_action", "watchdog"];
/// Image keys, in order of preference: Nova's property, then the attribute.
pub const IMAGE_KEYS: [&str; 2] = ["hw_watchdog_action", "watchdog"];

/// The object a key is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    /// A flavor's extra specs or attributes.
    Flavor,
    /// An image's properties.
    Image,
}

impl Layer {
    /// Describes a key on this object, e.g. `flavor extra spec hw:watchdog_action`.
    pub(crate) fn describe_key(self, key: &str) -> &'static str {
        match (self, key) {
            (Layer::Flavor, "hw:watchdog_action") => "flavor extra spec",
            (Layer::Flavor, _) => "flavor attribute",
            (Layer::Image, _) => "image property",
        }
    }

    fn keys(self) -> &'static [&'static str; 2] {
        match self {
            Layer::Flavor => &FLAVOR_KEYS,
            Layer::Image => &IMAGE_KEYS,
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layer::Flavor => "flavor",
            Layer::Image => "image",
        })
    }
}

/// Which layer decided a guest's setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Nothing applied: the watchdog is disabled, as in Nova.
    Default,
    /// The flavor's value.
    Flavor,
    /// The image's value.
    Image,
    /// The operator's default.
    Operator,
}

impl Source {
    /// The lowercase name used in JSON and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::Flavor => "flavor",
            Source::Image => "image",
            Source::Operator => "operator",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Source {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "default" => Ok(Source::Default),
            "flavor" => Ok(Source::Flavor),
            "image" => Ok(Source::Image),
            "operator" => Ok(Source::Operator),
            _ => Err(format!(
                "unknown source `{s}`; allowed: default, flavor, image, operator"
            )),
        }
    }
}

/// When an [`ImageRule`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleScope {
    /// Whatever the flavor says.
    #[default]
    Always,
    /// Only when the flavor (or, if it is silent, the operator default)
    /// enables a watchdog.
    WhenFlavorEnables,
}

impl RuleScope {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            RuleScope::Always => "",
            RuleScope::WhenFlavorEnables => " on a flavor that enables the watchdog",
        }
    }
}

/// An operator rule that forbids some image values.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRule {
    /// Values an image may not choose.
    pub deny: Vec<Setting>,
    /// When the rule applies.
    #[serde(default)]
    pub scope: RuleScope,
}

/// Operator policy on top of Nova's rules. The default changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OperatorPolicy {
    /// The setting when neither flavor nor image gives a value. `None` keeps
    /// Nova's behaviour: disabled.
    pub default: Option<Setting>,
    /// Rules that forbid image values.
    pub image_rules: Vec<ImageRule>,
}

impl OperatorPolicy {
    /// Sets the default for guests whose flavor and image are silent.
    #[must_use]
    pub fn with_default(mut self, setting: Setting) -> Self {
        self.default = Some(setting);
        self
    }

    /// Adds a rule that forbids images from choosing `deny` within `scope`.
    #[must_use]
    pub fn deny_image(mut self, deny: impl IntoIterator<Item = Setting>, scope: RuleScope) -> Self {
        self.image_rules.push(ImageRule {
            deny: deny.into_iter().collect(),
            scope,
        });
        self
    }

    fn forbids(&self, value: Setting, base_enabled: bool) -> Option<RuleScope> {
        self.image_rules
            .iter()
            .filter(|r| r.scope == RuleScope::Always || base_enabled)
            .find(|r| r.deny.contains(&value))
            .map(|r| r.scope)
    }
}

/// A resolved setting and where it came from.
///
/// `Display` gives the log line a driver wants, e.g.
/// `watchdog=pause (image property hw_watchdog_action)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Resolved {
    /// The setting to apply.
    pub setting: Setting,
    /// The layer that decided it.
    pub source: Source,
    /// The key that decided it, when a flavor or image did.
    pub key: Option<&'static str>,
}

impl fmt::Display for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "watchdog={} (", self.setting)?;
        match (self.source, self.key) {
            (Source::Flavor, Some(key)) => write!(f, "{} {key}", Layer::Flavor.describe_key(key))?,
            (Source::Image, Some(key)) => write!(f, "{} {key}", Layer::Image.describe_key(key))?,
            (Source::Operator, _) => f.write_str("operator default")?,
            _ => f.write_str("default")?,
        }
        f.write_str(")")
    }
}

/// Finds this layer's value, checking that its keys agree.
fn lookup<I, K, V>(layer: Layer, props: I) -> Result<Option<(&'static str, String)>>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut found: Option<(&'static str, String)> = None;
    for (k, v) in props {
        let Some(&key) = layer.keys().iter().find(|&&known| known == k.as_ref()) else {
            continue;
        };
        let value = v.as_ref();
        match &mut found {
            None => found = Some((key, value.to_owned())),
            Some((first_key, first_value)) if first_value != value => {
                return Err(Error::ConflictingKeys {
                    layer,
                    first_key,
                    first_value: std::mem::take(first_value),
                    second_key: key,
                    second_value: value.to_owned(),
                });
            }
            // Agreeing keys: report the preferred (Nova) spelling.
            Some(first) => {
                if layer.keys()[0] == key {
                    first.0 = key;
                }
            }
        }
    }
    Ok(found)
}

fn parse_value(layer: Layer, key: &'static str, value: String) -> Result<Setting> {
    Setting::from_nova_value(&value).ok_or(Error::UnsupportedValue { layer, key, value })
}

/// Resolves a guest's watchdog setting from its flavor's extra specs (or
/// attributes), its image's properties and the operator's policy.
///
/// Keys other than the watchdog keys are ignored, so whole property maps can be
/// passed. See the [crate docs](crate) for the precedence rules.
///
/// # Errors
///
/// A value outside Nova's set, disagreeing keys on one object, an empty image
/// value, or an image value the operator forbids.
pub fn resolve<F, FK, FV, I, IK, IV>(
    flavor: F,
    image: I,
    policy: &OperatorPolicy,
) -> Result<Resolved>
where
    F: IntoIterator<Item = (FK, FV)>,
    FK: AsRef<str>,
    FV: AsRef<str>,
    I: IntoIterator<Item = (IK, IV)>,
    IK: AsRef<str>,
    IV: AsRef<str>,
{
    let flavor = match lookup(Layer::Flavor, flavor)? {
        // Nova treats an empty flavor value like a missing one.
        Some((_, value)) if value.is_empty() => None,
        Some((key, value)) => Some(Resolved {
            setting: parse_value(Layer::Flavor, key, value)?,
            source: Source::Flavor,
            key: Some(key),
        }),
        None => None,
    };
    let base = flavor.unwrap_or(match policy.default {
        Some(setting) => Resolved {
            setting,
            source: Source::Operator,
            key: None,
        },
        None => Resolved {
            setting: Setting::Disabled,
            source: Source::Default,
            key: None,
        },
    });

    let Some((key, value)) = lookup(Layer::Image, image)? else {
        return Ok(base);
    };
    if value.is_empty() {
        return Err(Error::EmptyImageValue { key });
    }
    let setting = parse_value(Layer::Image, key, value)?;
    if let Some(scope) = policy.forbids(setting, base.setting.is_enabled()) {
        let allowed: Vec<&str> = NOVA_VALUES
            .into_iter()
            .filter(|v| {
                Setting::from_nova_value(v)
                    .is_some_and(|s| policy.forbids(s, base.setting.is_enabled()).is_none())
            })
            .collect();
        return Err(Error::ForbiddenImageValue {
            key,
            value: setting.to_string(),
            scope,
            allowed: if allowed.is_empty() {
                "nothing (remove the property)".to_owned()
            } else {
                allowed.join(", ")
            },
        });
    }
    Ok(Resolved {
        setting,
        source: Source::Image,
        key: Some(key),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WatchdogAction::{None as NoneAction, Pause, Poweroff, Reset};

    type Props<'a> = &'a [(&'a str, &'a str)];

    fn check(flavor: Props<'_>, image: Props<'_>, policy: &OperatorPolicy, expected: &str) {
        let got = match resolve(flavor.iter().copied(), image.iter().copied(), policy) {
            Ok(r) => r.to_string(),
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(got, expected, "flavor={flavor:?} image={image:?}");
    }

    fn nova() -> OperatorPolicy {
        OperatorPolicy::default()
    }

    #[test]
    fn precedence() {
        let p = nova();
        check(&[], &[], &p, "watchdog=disabled (default)");
        check(
            &[("hw:watchdog_action", "pause")],
            &[],
            &p,
            "watchdog=pause (flavor extra spec hw:watchdog_action)",
        );
        check(
            &[("watchdog", "reset")],
            &[],
            &p,
            "watchdog=reset (flavor attribute watchdog)",
        );
        check(
            &[],
            &[("hw_watchdog_action", "poweroff")],
            &p,
            "watchdog=poweroff (image property hw_watchdog_action)",
        );
        check(
            &[],
            &[("watchdog", "none")],
            &p,
            "watchdog=none (image property watchdog)",
        );
        check(
            &[("hw:watchdog_action", "reset")],
            &[("hw_watchdog_action", "pause")],
            &p,
            "watchdog=pause (image property hw_watchdog_action)",
        );
        check(
            &[("hw:watchdog_action", "reset")],
            &[("hw_watchdog_action", "disabled")],
            &p,
            "watchdog=disabled (image property hw_watchdog_action)",
        );
        check(
            &[("hw:watchdog_action", "disabled")],
            &[],
            &p,
            "watchdog=disabled (flavor extra spec hw:watchdog_action)",
        );
        // An empty flavor value counts as silent.
        check(
            &[("hw:watchdog_action", "")],
            &[],
            &p,
            "watchdog=disabled (default)",
        );
        check(
            &[("hw:watchdog_action", "")],
            &[("hw_watchdog_action", "reset")],
            &p,
            "watchdog=reset (image property hw_watchdog_action)",
        );
        // Unrelated keys are ignored.
        check(
            &[
                ("hw:cpu_policy", "dedicated"),
                ("hw_watchdog_action", "reset"),
            ],
            &[("hw:watchdog_action", "pause"), ("os_distro", "debian")],
            &p,
            "watchdog=disabled (default)",
        );
    }

    #[test]
    fn both_spellings() {
        let p = nova();
        // Agreeing keys resolve and report Nova's key, whatever the order.
        check(
            &[("watchdog", "pause"), ("hw:watchdog_action", "pause")],
            &[],
            &p,
            "watchdog=pause (flavor extra spec hw:watchdog_action)",
        );
        check(
            &[],
            &[("hw_watchdog_action", "reset"), ("watchdog", "reset")],
            &p,
            "watchdog=reset (image property hw_watchdog_action)",
        );
        check(
            &[("hw:watchdog_action", "pause"), ("watchdog", "reset")],
            &[],
            &p,
            "error: flavor extra spec hw:watchdog_action=pause conflicts with watchdog=reset; give one key, or the same value for both",
        );
        check(
            &[],
            &[("watchdog", "reset"), ("hw_watchdog_action", "pause")],
            &p,
            "error: image property watchdog=reset conflicts with hw_watchdog_action=pause; give one key, or the same value for both",
        );
        check(
            &[("watchdog", "reset"), ("watchdog", "pause")],
            &[],
            &p,
            "error: flavor attribute watchdog=reset conflicts with watchdog=pause; give one key, or the same value for both",
        );
    }

    #[test]
    fn bad_values() {
        let p = nova();
        for bad in [
            "shutdown",
            "dump",
            "inject-nmi",
            "RESET",
            "Pause",
            " pause",
            "pause\n",
            "explode",
        ] {
            check(
                &[("hw:watchdog_action", bad)],
                &[],
                &p,
                &format!(
                    "error: Provided watchdog action ({bad}) is not supported: flavor extra spec hw:watchdog_action; allowed: disabled, none, pause, poweroff, reset"
                ),
            );
            check(
                &[],
                &[("watchdog", bad)],
                &p,
                &format!(
                    "error: Provided watchdog action ({bad}) is not supported: image property watchdog; allowed: disabled, none, pause, poweroff, reset"
                ),
            );
        }
        check(
            &[("watchdog", "dump")],
            &[],
            &p,
            "error: Provided watchdog action (dump) is not supported: flavor attribute watchdog; allowed: disabled, none, pause, poweroff, reset",
        );
        check(
            &[("hw:watchdog_action", "reset")],
            &[("hw_watchdog_action", "")],
            &p,
            "error: image property hw_watchdog_action is empty; allowed: disabled, none, pause, poweroff, reset",
        );
    }

    #[test]
    fn operator_default() {
        let p = nova().with_default(Setting::Enabled(Pause));
        check(&[], &[], &p, "watchdog=pause (operator default)");
        check(
            &[("watchdog", "")],
            &[],
            &p,
            "watchdog=pause (operator default)",
        );
        check(
            &[("watchdog", "reset")],
            &[],
            &p,
            "watchdog=reset (flavor attribute watchdog)",
        );
        check(
            &[],
            &[("hw_watchdog_action", "disabled")],
            &p,
            "watchdog=disabled (image property hw_watchdog_action)",
        );
        let r = resolve([("a", "b")], [("c", "d")], &p).unwrap();
        assert_eq!((r.source, r.key), (Source::Operator, None));
    }

    #[test]
    fn operator_restrictions() {
        let p = nova().deny_image(
            [Setting::Disabled, Setting::Enabled(Poweroff)],
            RuleScope::WhenFlavorEnables,
        );
        check(
            &[("hw:watchdog_action", "reset")],
            &[("hw_watchdog_action", "disabled")],
            &p,
            "error: image property hw_watchdog_action=disabled is forbidden by operator policy on a flavor that enables the watchdog; allowed: none, pause, reset",
        );
        check(
            &[("hw:watchdog_action", "pause")],
            &[("watchdog", "poweroff")],
            &p,
            "error: image property watchdog=poweroff is forbidden by operator policy on a flavor that enables the watchdog; allowed: none, pause, reset",
        );
        check(
            &[("hw:watchdog_action", "pause")],
            &[("watchdog", "none")],
            &p,
            "watchdog=none (image property watchdog)",
        );
        // The flavor does not enable a watchdog: the rule does not apply.
        check(
            &[],
            &[("watchdog", "poweroff")],
            &p,
            "watchdog=poweroff (image property watchdog)",
        );
        check(
            &[("hw:watchdog_action", "disabled")],
            &[("watchdog", "disabled")],
            &p,
            "watchdog=disabled (image property watchdog)",
        );
        // The operator default counts as the flavor enabling it.
        let p2 = p.clone().with_default(Setting::Enabled(Reset));
        check(
            &[],
            &[("watchdog", "disabled")],
            &p2,
            "error: image property watchdog=disabled is forbidden by operator policy on a flavor that enables the watchdog; allowed: none, pause, reset",
        );
        let always = nova().deny_image([Setting::Enabled(NoneAction)], RuleScope::Always);
        check(
            &[],
            &[("watchdog", "none")],
            &always,
            "error: image property watchdog=none is forbidden by operator policy; allowed: disabled, pause, poweroff, reset",
        );
        let all = nova().deny_image(
            crate::NOVA_VALUES
                .iter()
                .map(|v| v.parse::<Setting>().unwrap()),
            RuleScope::Always,
        );
        check(
            &[],
            &[("watchdog", "pause")],
            &all,
            "error: image property watchdog=pause is forbidden by operator policy; allowed: nothing (remove the property)",
        );
    }

    #[test]
    fn provenance_fields() {
        let r = resolve([("watchdog", "pause")], [("x", "y")], &nova()).unwrap();
        assert_eq!(r.setting, Setting::Enabled(Pause));
        assert_eq!(r.source, Source::Flavor);
        assert_eq!(r.key, Some("watchdog"));
        for s in [
            Source::Default,
            Source::Flavor,
            Source::Image,
            Source::Operator,
        ] {
            assert_eq!(s.to_string().parse::<Source>().unwrap(), s);
        }
        assert_eq!(
            "vendor".parse::<Source>().unwrap_err(),
            "unknown source `vendor`; allowed: default, flavor, image, operator"
        );
    }

    #[test]
    fn operator_policy_deserializes_strictly() {
        let p: OperatorPolicy = serde_json::from_str(
            r#"{"default":"pause","image_rules":[{"deny":["disabled","poweroff"],"scope":"when-flavor-enables"}]}"#,
        )
        .unwrap();
        assert_eq!(
            p,
            nova().with_default(Setting::Enabled(Pause)).deny_image(
                [Setting::Disabled, Setting::Enabled(Poweroff)],
                RuleScope::WhenFlavorEnables
            )
        );
        let err = serde_json::from_str::<OperatorPolicy>(r#"{"defualt":"pause"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `defualt`"), "{err}");
        let err = serde_json::from_str::<OperatorPolicy>(r#"{"default":"explode"}"#).unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown watchdog setting `explode`"),
            "{err}"
        );
    }
}
