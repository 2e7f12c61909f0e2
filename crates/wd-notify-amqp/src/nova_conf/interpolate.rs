//! oslo.config's `$` interpolation of option values.
//!
//! oslo.config runs every string value through Python's
//! `string.Template.safe_substitute`: `$name` and `${name}` are replaced by
//! the value of option `name` in the same section (or, failing that, in
//! `[DEFAULT]`), `${section.name}` by that section's option, `$$` (or `\$`)
//! is a literal `$`, and a `$` not followed by a name stays as written. A
//! referenced value is itself interpolated. A name that is set nowhere is
//! an error in oslo (an option it does not know) and here too (wd resolves
//! only options written in the file).

/// How deep references may nest before they are called a loop.
const MAX_DEPTH: usize = 16;

/// Looks up the raw value of `(section, key)`.
pub(super) type Lookup<'a> = dyn Fn(&str, &str) -> Option<String> + 'a;

/// Interpolates `value`, read in `[section]`.
pub(super) fn interpolate(
    value: &str,
    section: &str,
    lookup: &Lookup<'_>,
) -> Result<String, String> {
    expand(value, section, lookup, 0)
}

fn is_name_start(c: char) -> bool {
    c == '_' || c.is_ascii_alphabetic()
}

fn is_name(c: char) -> bool {
    c == '_' || c == '.' || c.is_ascii_alphanumeric()
}

fn expand(value: &str, section: &str, lookup: &Lookup<'_>, depth: usize) -> Result<String, String> {
    if !value.contains('$') {
        return Ok(value.to_owned());
    }
    if depth > MAX_DEPTH {
        return Err(format!(
            "`$` references nest deeper than {MAX_DEPTH} levels (a reference loop?)"
        ));
    }
    let value = value.replace("\\$", "$$");
    let chars: Vec<char> = value.chars().collect();
    let mut out = String::with_capacity(value.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '$' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let next = chars.get(i + 1).copied();
        let (name, end) = match next {
            Some('$') => {
                out.push('$');
                i += 2;
                continue;
            }
            Some('{') => {
                let start = i + 2;
                let mut j = start;
                while j < chars.len() && is_name(chars[j]) {
                    j += 1;
                }
                if j > start && is_name_start(chars[start]) && chars.get(j) == Some(&'}') {
                    (chars[start..j].iter().collect::<String>(), j + 1)
                } else {
                    // Not a placeholder: safe_substitute leaves it.
                    out.push('$');
                    i += 1;
                    continue;
                }
            }
            Some(c) if is_name_start(c) => {
                let start = i + 1;
                let mut j = start;
                while j < chars.len() && is_name(chars[j]) {
                    j += 1;
                }
                (chars[start..j].iter().collect::<String>(), j)
            }
            _ => {
                out.push('$');
                i += 1;
                continue;
            }
        };
        let (group, key) = match name.split_once('.') {
            Some((g, k)) => (g.to_owned(), k.to_owned()),
            None => (section.to_owned(), name.clone()),
        };
        let found = lookup(&group, &key)
            .map(|v| (group.clone(), v))
            .or_else(|| lookup("DEFAULT", &name).map(|v| ("DEFAULT".to_owned(), v)));
        let Some((in_section, raw)) = found else {
            return Err(format!(
                "`${name}` refers to an option this file does not set; write a literal `$` as `$$`"
            ));
        };
        out.push_str(&expand(&raw, &in_section, lookup, depth + 1)?);
        i = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(value: &str, expected: Result<&str, &str>) {
        let table = [
            ("DEFAULT", "my_ip", "10.0.0.5"),
            ("DEFAULT", "user", "nova"),
            ("oslo_messaging_rabbit", "pw", "s3cret"),
            ("oslo_messaging_rabbit", "host", "$my_ip"),
            ("DEFAULT", "loop", "$loop"),
        ];
        let lookup = |s: &str, k: &str| {
            table
                .iter()
                .find(|(ts, tk, _)| *ts == s && *tk == k)
                .map(|(_, _, v)| (*v).to_owned())
        };
        let got = interpolate(value, "oslo_messaging_rabbit", &lookup);
        match expected {
            Ok(e) => assert_eq!(got.as_deref(), Ok(e), "{value}"),
            Err(needle) => {
                let e = got.unwrap_err();
                assert!(e.contains(needle), "{value}: {e}");
            }
        }
    }

    #[test]
    fn oslo_template_rules() {
        check("plain", Ok("plain"));
        check(
            "rabbit://$user:$pw@$host:5672/",
            Ok("rabbit://nova:s3cret@10.0.0.5:5672/"),
        );
        check("${user}x ${DEFAULT.my_ip}", Ok("novax 10.0.0.5"));
        check("pa$$word", Ok("pa$word"));
        check("pa\\$word", Ok("pa$word"));
        check("a$ b$1 c$%", Ok("a$ b$1 c$%"));
        check("${not closed", Ok("${not closed"));
        check(
            "$nothere",
            Err("`$nothere` refers to an option this file does not set"),
        );
        check("$loop", Err("nest deeper"));
    }
}
