//! Showing URLs in logs and errors without the credentials they may carry.

/// A URL (which need not parse) made safe to log: its userinfo becomes
/// `***`, the query (which may carry tokens or key passwords) becomes
/// `?***`, and the fragment is dropped.
///
/// The URL is parsed with the `url` crate. A password written without
/// percent-encoding may hold `/`, `?` or `#`, which end the authority for a
/// parser and would leave part of the password in the "path"; so whenever
/// the text has an `@` that the parser did not read as the end of the
/// userinfo, everything before the last `@` is hidden (a path that merely
/// contains `@` is hidden too: safe rather than sorry).
///
/// ```
/// use wd_notify::redact_url;
/// assert_eq!(redact_url("amqp://nova:s3cret@rabbit:5672/%2f"), "amqp://***@rabbit:5672/%2f");
/// assert_eq!(redact_url("https://h/hook?token=x#f"), "https://h/hook?***");
/// assert_eq!(redact_url("https://u:pa/ss?w#rd@h/x"), "https://***@h/x");
/// assert_eq!(redact_url("https://h/a"), "https://h/a");
/// ```
pub fn redact_url(raw: &str) -> String {
    let (scheme, rest) = match raw.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, raw),
    };
    if let Ok(url) = url::Url::parse(raw)
        && url.has_host()
    {
        let userinfo = !url.username().is_empty() || url.password().is_some();
        // An `@` the parser left outside the userinfo may end a password.
        let stray_at = url.path().contains('@')
            || url.query().is_some_and(|q| q.contains('@'))
            || url.fragment().is_some_and(|f| f.contains('@'));
        if !stray_at && (userinfo || !rest.contains('@')) {
            let mut shown = format!("{}://", url.scheme());
            if userinfo {
                shown.push_str("***@");
            }
            shown.push_str(url.host_str().unwrap_or(""));
            if let Some(port) = url.port() {
                shown.push_str(&format!(":{port}"));
            }
            shown.push_str(url.path());
            if url.query().is_some() {
                shown.push_str("?***");
            }
            return shown;
        }
    }
    // Unparsable or ambiguous: hide everything up to the last `@`.
    let (hidden, tail) = match rest.rsplit_once('@') {
        Some((_, after)) => (true, after),
        None => (false, rest),
    };
    let visible = tail.split(['?', '#']).next().unwrap_or("");
    let query = if tail.contains('?') { "?***" } else { "" };
    let at = if hidden { "***@" } else { "" };
    match scheme {
        Some(s) => format!("{s}://{at}{visible}{query}"),
        None => format!("{at}{visible}{query}"),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_show_whatever_they_contain() {
        let check = |raw: &str, expected: &str| assert_eq!(redact_url(raw), expected, "{raw}");
        check("amqp://u:p@h:5672/v", "amqp://***@h:5672/v");
        check("amqps://u:s3cr%2Ft@h/", "amqps://***@h/");
        check("https://u:pa/ss@h/hook", "https://***@h/hook");
        check("https://u:pa?ss@h/hook", "https://***@h/hook");
        check("https://u:pa#ss@h/hook", "https://***@h/hook");
        check("https://u:123/ss@h/hook", "https://***@h/hook");
        check("https://u:p@ss@h/hook?k=v", "https://***@h/hook?***");
        check("https://h/hook?token=x", "https://h/hook?***");
        check("https://h:8443/a/b", "https://h:8443/a/b");
        check("u:pw@h/x", "***@h/x");
        check("not a url", "not a url");
        check("", "");
        for raw in [
            "https://u:pa/ss@h/",
            "https://u:pa?ss@h/",
            "https://u:pa#ss@h/",
        ] {
            assert!(!redact_url(raw).contains("ss"), "{raw}");
        }
    }
}
