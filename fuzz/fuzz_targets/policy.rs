//! Fuzzes `wd_policy::resolve` and the setting parser. The input is read as
//! lines of `key=value`; a line `--` switches from flavor to image, and the
//! first byte picks an operator policy. Checks: never panics, a result is
//! one of Nova's values, and an image value wins whenever it resolves.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wd_policy::{IMAGE_KEYS, OperatorPolicy, RuleScope, Setting, Source, resolve};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let (mut flavor, mut image) = (Vec::new(), Vec::new());
    let mut in_image = false;
    for line in text.split('\n') {
        if line == "--" {
            in_image = true;
            continue;
        }
        let (k, v) = line.split_once('=').unwrap_or((line, ""));
        if in_image { &mut image } else { &mut flavor }.push((k.to_owned(), v.to_owned()));
    }
    let mut policy = OperatorPolicy::default();
    if first & 1 != 0 {
        policy = policy.with_default(Setting::Enabled(wd_policy::WatchdogAction::Pause));
    }
    if first & 2 != 0 {
        let scope = if first & 4 != 0 { RuleScope::Always } else { RuleScope::WhenFlavorEnables };
        policy = policy.deny_image([Setting::Disabled], scope);
    }
    if let Ok(r) = resolve(flavor.iter().map(|(k, v)| (k, v)), image.iter().map(|(k, v)| (k, v)), &policy) {
        let text = r.setting.to_string();
        assert_eq!(text.parse::<Setting>().ok(), Some(r.setting));
        assert!(wd_policy::NOVA_VALUES.contains(&text.as_str()), "{text}");
        let image_value = image.iter().find(|(k, _)| IMAGE_KEYS.contains(&k.as_str()));
        assert_eq!(r.source == Source::Image, image_value.is_some(), "{r}");
        let _ = r.to_string();
    }
    // The setting parser on the raw text.
    if let Ok(s) = text.parse::<Setting>() {
        assert_eq!(s.to_string(), text);
    }
});
