//! Property tests: `resolve` agrees with a plain model of Nova's precedence
//! rules on generated flavors, images and operator policies, never panics on
//! arbitrary keys and values, and ignores the order of properties.

use proptest::prelude::*;
use wd_policy::{
    FLAVOR_KEYS, IMAGE_KEYS, NOVA_VALUES, OperatorPolicy, RuleScope, Setting, Source, resolve,
};

/// A key: a watchdog key of either layer (so that the wrong layer's key is
/// tried too), an unrelated key, or an arbitrary string.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(vec![FLAVOR_KEYS[0], FLAVOR_KEYS[1], IMAGE_KEYS[0]])
            .prop_map(str::to_owned),
        1 => Just("hw:cpu_policy".to_owned()),
        1 => ".{0,12}",
    ]
}

/// A value: one of Nova's, a near miss, or an arbitrary string.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => proptest::sample::select(NOVA_VALUES.to_vec()).prop_map(str::to_owned),
        1 => proptest::sample::select(vec!["", "Pause", "shutdown", "dump", " reset", "inject-nmi"])
            .prop_map(str::to_owned),
        1 => ".{0,10}",
    ]
}

fn props() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec((key(), value()), 0..5)
}

fn setting() -> impl Strategy<Value = Setting> {
    proptest::sample::select(NOVA_VALUES.to_vec()).prop_map(|v| nova(v).expect("a Nova value"))
}

fn policy() -> impl Strategy<Value = OperatorPolicy> {
    let rule = (
        proptest::collection::vec(setting(), 0..3),
        prop_oneof![Just(RuleScope::Always), Just(RuleScope::WhenFlavorEnables)],
    );
    (
        proptest::option::of(setting()),
        proptest::collection::vec(rule, 0..2),
    )
        .prop_map(|(default, rules)| {
            let mut p = OperatorPolicy {
                default,
                ..OperatorPolicy::default()
            };
            for (deny, scope) in rules {
                p = p.deny_image(deny, scope);
            }
            p
        })
}

/// Nova's reading of a value: exactly one of [`NOVA_VALUES`].
fn nova(v: &str) -> Option<Setting> {
    NOVA_VALUES.contains(&v).then(|| v.parse().ok()).flatten()
}

/// The model: `Err(())` for any error, else the setting and its source.
fn model(
    flavor: &[(String, String)],
    image: &[(String, String)],
    policy: &OperatorPolicy,
) -> Result<(Setting, Source), ()> {
    // The layer's value; keys that disagree are an error.
    fn layer(props: &[(String, String)], keys: &[&str]) -> Result<Option<String>, ()> {
        let mut values = props
            .iter()
            .filter(|(k, _)| keys.contains(&k.as_str()))
            .map(|(_, v)| v.clone());
        let Some(first) = values.next() else {
            return Ok(None);
        };
        if values.all(|v| v == first) {
            Ok(Some(first))
        } else {
            Err(())
        }
    }
    let flavor = layer(flavor, &FLAVOR_KEYS)?;
    let image = layer(image, &IMAGE_KEYS)?;
    let base = match flavor.as_deref() {
        None | Some("") => match policy.default {
            Some(s) => (s, Source::Operator),
            None => (Setting::Disabled, Source::Default),
        },
        Some(v) => (nova(v).ok_or(())?, Source::Flavor),
    };
    let Some(v) = image else {
        return Ok(base);
    };
    let s = nova(&v).ok_or(())?;
    let forbidden = policy
        .image_rules
        .iter()
        .any(|r| (r.scope == RuleScope::Always || base.0.is_enabled()) && r.deny.contains(&s));
    if forbidden {
        Err(())
    } else {
        Ok((s, Source::Image))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// `resolve` gives exactly what the model says, or an error when the
    /// model says so; it never panics.
    #[test]
    fn resolve_matches_the_model(flavor in props(), image in props(), policy in policy()) {
        let got = resolve(flavor.clone(), image.clone(), &policy)
            .map(|r| (r.setting, r.source))
            .map_err(|_| ());
        prop_assert_eq!(got, model(&flavor, &image, &policy));
    }

    /// The order of properties never changes the setting or its source.
    #[test]
    fn property_order_does_not_matter(flavor in props(), image in props(), policy in policy()) {
        let forward = resolve(flavor.clone(), image.clone(), &policy).map(|r| (r.setting, r.source));
        let mut f = flavor;
        let mut i = image;
        f.reverse();
        i.reverse();
        let backward = resolve(f, i, &policy).map(|r| (r.setting, r.source));
        prop_assert_eq!(forward.is_ok(), backward.is_ok());
        if let (Ok(a), Ok(b)) = (forward, backward) {
            prop_assert_eq!(a, b);
        }
    }

    /// Settings round-trip through their text form; arbitrary text either
    /// fails to parse or round-trips.
    #[test]
    fn setting_text_round_trips(text in ".{0,12}", s in setting()) {
        prop_assert_eq!(s.to_string().parse::<Setting>().ok(), Some(s));
        if let Ok(parsed) = text.parse::<Setting>() {
            prop_assert_eq!(parsed.to_string(), text);
        }
    }
}
