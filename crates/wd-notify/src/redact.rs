//! Showing URLs in logs and errors without the credentials they may carry.

/// A URL (which need not parse) made safe to log: whatever precedes the last
/// `@` of the authority becomes `***`, the query (which may carry tokens or
/// key passwords) becomes `?***`, and the fragment is dropped.
///
/// ```
/// assert_eq!(wd_notify::redact_url("amqp://nova:s3cret@rabbit:5672/%2f"), "amqp://***@rabbit:5672/%2f");
/// assert_eq!(wd_notify::redact_url("https://h/hook?token=x#f"), "https://h/hook?***");
/// assert_eq!(wd_notify::redact_url("https://h/a@b"), "https://h/a@b");
/// ```
pub fn redact_url(raw: &str) -> String {
    let (scheme, rest) = match raw.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, raw),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_owned(),
    };
    let path = tail.split(['?', '#']).next().unwrap_or("");
    let query = if tail.contains('?') { "?***" } else { "" };
    match scheme {
        Some(s) => format!("{s}://{authority}{path}{query}"),
        None => format!("{authority}{path}{query}"),
    }
}
