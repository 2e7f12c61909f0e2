//! Broker URLs: AMQP URIs and oslo.messaging transport URLs.
//!
//! Two spellings are accepted:
//!
//! - `amqp://user:password@host:port/vhost` and `amqps://…`, the AMQP URI
//!   (query parameters such as `heartbeat` pass through to the client);
//! - `rabbit://user:password@host1:5672,user:password@host2:5672/vhost`,
//!   oslo.messaging's transport URL for a RabbitMQ cluster: one or more
//!   nodes, each with its own credentials, a vhost, and a query of
//!   `[oslo_messaging_rabbit]` options (`?ssl=1&ssl_ca_file=…`) that
//!   override `nova.conf`'s.
//!
//! The vhost of a `rabbit://` URL is read exactly as oslo.messaging and
//! kombu read it: everything after the first `/` of the path, percent-decoded
//! by oslo and then again by kombu; empty (or no path) is RabbitMQ's default
//! vhost `/`. So `…:5672/` and `…:5672//` (what kolla-ansible writes) both
//! mean `/`, `…//nova` (OpenStack-Ansible) means `/nova`, and `…/%2Fnova`
//! means `/nova` too.
//!
//! Both may name several nodes separated by commas; the notifier connects to
//! one that answers and fails over to the next when the connection is lost.
//! Each node is parsed with the `url` crate after the netloc is split.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A broker URL naming one or more RabbitMQ nodes. It holds passwords, so its
/// `Debug` and `Display` show it without credentials or query.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrl {
    scheme: Scheme,
    nodes: Vec<Node>,
    /// The path as written (percent-encoded), without the leading `/`.
    vhost: Option<String>,
    /// The query as written, without `?`.
    query: Option<String>,
    /// The query of a `rabbit://` URL as oslo reads it (`parse_qs`: each
    /// key once, repeated values joined by `,`), in first-seen order.
    options: Vec<(String, String)>,
    tls: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scheme {
    Amqp,
    Amqps,
    Rabbit,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Amqp => "amqp",
            Scheme::Amqps => "amqps",
            Scheme::Rabbit => "rabbit",
        }
    }
}

/// One broker node of an [`AmqpUrl`]. Its `Debug` hides the credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Node {
    /// Percent-encoded user name, as written.
    user: Option<String>,
    /// Percent-encoded password, as written.
    password: Option<String>,
    /// The host as the `url` crate normalised it (IPv6 in brackets).
    host: String,
    port: u16,
}

impl Node {
    /// `host:port`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Whether this node's credentials include a password.
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    fn redacted(&self) -> String {
        if self.user.is_some() || self.password.is_some() {
            format!("***@{}", self.address())
        } else {
            self.address()
        }
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Node({})", self.redacted())
    }
}

/// Percent-decodes `s` as Python's `urllib.parse.unquote` does: invalid
/// escapes stay as written, and decoded bytes that are not UTF-8 become U+FFFD.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            // Both digits are below 16, so this fits a byte.
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes every byte of `s` except RFC 3986's unreserved ones, so
/// the AMQP URI parser decodes it back to exactly `s`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// oslo.config's spelling of true for `ssl=`.
pub(crate) fn truthy(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

impl AmqpUrl {
    /// Parses an `amqp://`, `amqps://` or `rabbit://` URL with one or more
    /// comma-separated nodes.
    pub fn new(url: impl Into<String>) -> Result<Self> {
        let raw: String = url.into();
        let bad = |reason: String| Error::InvalidUrl {
            url: wd_notify::redact_url(&raw),
            reason,
        };
        let Some((scheme, rest)) = raw.split_once("://") else {
            return Err(bad("it has no scheme".into()));
        };
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "amqp" => Scheme::Amqp,
            "amqps" => Scheme::Amqps,
            "rabbit" => Scheme::Rabbit,
            other => {
                return Err(bad(format!(
                    "scheme `{other}` is not amqp, amqps or rabbit"
                )));
            }
        };
        if rest.contains('#') {
            return Err(bad("a fragment (`#…`) is not allowed".into()));
        }
        let netloc_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (netloc, tail) = rest.split_at(netloc_end);
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, Some(q.to_owned())),
            None => (tail, None),
        };
        let vhost = path.strip_prefix('/').map(str::to_owned);
        if scheme != Scheme::Rabbit && vhost.as_deref().is_some_and(|v| v.contains('/')) {
            return Err(bad(
                "the vhost has a `/`; write it percent-encoded (`%2f`)".into()
            ));
        }

        let mut tls = scheme == Scheme::Amqps;
        let mut options: Vec<(String, String)> = Vec::new();
        if scheme == Scheme::Rabbit
            && let Some(q) = &query
        {
            // As Python's `parse_qs`: blank values are dropped, and a key
            // given twice keeps both values joined by `,`.
            for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
                if v.is_empty() {
                    continue;
                }
                match options.iter_mut().find(|(key, _)| *key == k) {
                    Some((_, value)) => {
                        value.push(',');
                        value.push_str(&v);
                    }
                    None => options.push((k.into_owned(), v.into_owned())),
                }
            }
            if let Some((_, v)) = options.iter().find(|(k, _)| k == "ssl") {
                tls = truthy(v).ok_or_else(|| {
                    bad(format!(
                        "query `ssl={v}` is not a boolean; allowed: 1, 0, true, false, yes, no"
                    ))
                })?;
            }
        }
        // oslo's transport URL defaults to 5672 even with TLS
        // (`_transform_transport_url`); the AMQP URI to 5671 for amqps.
        let default_port = if tls && scheme != Scheme::Rabbit {
            5671
        } else {
            5672
        };

        let mut nodes = Vec::new();
        for (i, part) in netloc.split(',').enumerate() {
            if part.is_empty() {
                if netloc.is_empty() {
                    break;
                }
                return Err(bad(format!("node {} of the host list is empty", i + 1)));
            }
            // Each node on its own is a plain URL authority.
            let parsed = url::Url::parse(&format!("amqp://{part}/")).map_err(|e| {
                bad(format!(
                    "node {} (`{}`) is not host[:port] with optional user:password@: {e}",
                    i + 1,
                    part.rsplit_once('@').map_or(part, |(_, h)| h)
                ))
            })?;
            let host = parsed
                .host_str()
                .filter(|h| !h.is_empty())
                .ok_or_else(|| bad(format!("node {} names no host", i + 1)))?
                .to_owned();
            let user = Some(parsed.username().to_owned()).filter(|u| !u.is_empty());
            let password = parsed.password().map(str::to_owned);
            nodes.push(Node {
                user,
                password,
                host,
                port: parsed.port().unwrap_or(default_port),
            });
        }
        if nodes.is_empty() {
            return Err(bad("it names no broker host".into()));
        }
        Ok(AmqpUrl {
            scheme,
            nodes,
            vhost,
            query,
            options,
            tls,
        })
    }

    /// The `[oslo_messaging_rabbit]` options in the query of a `rabbit://`
    /// URL, decoded, in the order given (empty for `amqp://`).
    pub fn options(&self) -> &[(String, String)] {
        &self.options
    }

    /// The value of query option `key` of a `rabbit://` URL.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether this is an oslo `rabbit://` transport URL.
    pub fn is_oslo(&self) -> bool {
        self.scheme == Scheme::Rabbit
    }

    /// The vhost connections open, decoded: for `rabbit://` as oslo and
    /// kombu read it (see the module docs), for `amqp://` as the AMQP URI
    /// specification does (`None`: the client's default, `/`).
    pub fn vhost(&self) -> Option<String> {
        match self.scheme {
            Scheme::Rabbit => {
                let raw = self.vhost.as_deref().unwrap_or("");
                // oslo's TransportURL.parse unquotes once, kombu once more.
                let once = percent_decode(raw);
                let twice = percent_decode(&once);
                Some(if twice.is_empty() {
                    "/".to_owned()
                } else {
                    twice
                })
            }
            Scheme::Amqp | Scheme::Amqps => self.vhost.as_deref().map(percent_decode),
        }
    }

    /// The broker nodes, in the order given.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Whether connections use TLS (`amqps://`, or `?ssl=1` on `rabbit://`).
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The same nodes over TLS, as oslo's `[oslo_messaging_rabbit] ssl`.
    #[must_use]
    pub fn with_tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// The same nodes without TLS (the query's `ssl=0` over the file's).
    #[must_use]
    pub fn without_tls(mut self) -> Self {
        self.tls = self.scheme == Scheme::Amqps;
        self
    }

    /// Whether any node carries a password.
    pub fn has_password(&self) -> bool {
        self.nodes.iter().any(Node::has_password)
    }

    /// Gives `password` to every node that names a user but no password.
    /// Fails when no node names a user to give it to.
    pub fn with_password(mut self, password: &str) -> Result<Self> {
        let encoded: String =
            url::form_urlencoded::byte_serialize(password.as_bytes()).collect::<String>();
        // form_urlencoded writes a space as `+`, which userinfo does not decode.
        let encoded = encoded.replace('+', "%20");
        let mut given = false;
        for node in &mut self.nodes {
            if node.user.is_some() && node.password.is_none() {
                node.password = Some(encoded.clone());
                given = true;
            }
        }
        if given {
            Ok(self)
        } else {
            Err(Error::InvalidUrl {
                url: self.redacted(),
                reason: "no node names a user without a password to give the password to \
                         (write scheme://USER@HOST/VHOST)"
                    .into(),
            })
        }
    }

    /// The AMQP URI of node `index`, credentials included, for connecting.
    pub fn node_uri(&self, index: usize) -> Option<String> {
        let node = self.nodes.get(index)?;
        let scheme = if self.tls { "amqps" } else { "amqp" };
        let userinfo = match (&node.user, &node.password) {
            (Some(u), Some(p)) => format!("{u}:{p}@"),
            (Some(u), None) => format!("{u}@"),
            (None, Some(p)) => format!(":{p}@"),
            (None, None) => String::new(),
        };
        let (vhost, query) = match self.scheme {
            // oslo: an empty vhost is RabbitMQ's default, `/`.
            Scheme::Rabbit => (
                format!("/{}", percent_encode(&self.vhost().unwrap_or_default())),
                String::new(),
            ),
            Scheme::Amqp | Scheme::Amqps => (
                self.vhost
                    .as_deref()
                    .map_or(String::new(), |v| format!("/{v}")),
                self.query
                    .as_deref()
                    .map_or(String::new(), |q| format!("?{q}")),
            ),
        };
        Some(format!(
            "{scheme}://{userinfo}{}{vhost}{query}",
            node.address()
        ))
    }

    /// The redacted name of node `index`, for logs: `amqp://***@host:port/vhost`.
    pub fn node_name(&self, index: usize) -> String {
        self.node_uri(index)
            .map(|u| wd_notify::redact_url(&u))
            .unwrap_or_default()
    }

    /// The URL without credentials or query.
    pub fn redacted(&self) -> String {
        let nodes: Vec<String> = self.nodes.iter().map(Node::redacted).collect();
        let vhost = self
            .vhost
            .as_deref()
            .map_or(String::new(), |v| format!("/{v}"));
        let query = if self.query.is_some() { "?***" } else { "" };
        format!(
            "{}://{}{vhost}{query}",
            self.scheme.as_str(),
            nodes.join(",")
        )
    }
}

impl FromStr for AmqpUrl {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        AmqpUrl::new(s)
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpUrl({})", self.redacted())
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `input` parses to nodes whose connection URIs are `uris`, and shows as
    /// `shown`.
    fn check(input: &str, shown: &str, uris: &[&str]) {
        let url = AmqpUrl::new(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(url.to_string(), shown, "{input}");
        assert_eq!(format!("{url:?}"), format!("AmqpUrl({shown})"));
        let got: Vec<String> = (0..url.nodes().len())
            .map(|i| url.node_uri(i).unwrap())
            .collect();
        assert_eq!(got, uris, "{input}");
    }

    fn check_err(input: &str, expected: &str) {
        let e = AmqpUrl::new(input).unwrap_err().to_string();
        assert_eq!(e, expected, "{input}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn amqp_urls() {
        check(
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            "amqp://***@127.0.0.1:5672/%2f",
            &["amqp://guest:guest@127.0.0.1:5672/%2f"],
        );
        check(
            "amqps://u:p%40ss@rabbit.example/vh?heartbeat=10",
            "amqps://***@rabbit.example:5671/vh?***",
            &["amqps://u:p%40ss@rabbit.example:5671/vh?heartbeat=10"],
        );
        check(
            "amqp://rabbit",
            "amqp://rabbit:5672",
            &["amqp://rabbit:5672"],
        );
    }

    #[test]
    fn oslo_transport_urls() {
        check(
            "rabbit://nova:hunter2@10.0.0.1:5672,nova:hunter2@10.0.0.2:5672,nova:hunter2@10.0.0.3/",
            "rabbit://***@10.0.0.1:5672,***@10.0.0.2:5672,***@10.0.0.3:5672/",
            &[
                "amqp://nova:hunter2@10.0.0.1:5672/%2F",
                "amqp://nova:hunter2@10.0.0.2:5672/%2F",
                "amqp://nova:hunter2@10.0.0.3:5672/%2F",
            ],
        );
        check(
            "rabbit://a:x@h1,b:y@[::1]:5673/nova?ssl=1&heartbeat_timeout_threshold=60",
            "rabbit://***@h1:5672,***@[::1]:5673/nova?***",
            &["amqps://a:x@h1:5672/nova", "amqps://b:y@[::1]:5673/nova"],
        );
        check(
            "RABBIT://h1?ssl=false",
            "rabbit://h1:5672?***",
            &["amqp://h1:5672/%2F"],
        );
    }

    /// Every vhost spelling oslo.messaging accepts, read as oslo and kombu
    /// read it (checked against both in the venv): `/` and `//` are `/`.
    #[test]
    fn oslo_vhosts() {
        let cases = [
            ("rabbit://h", "/", "%2F"),
            ("rabbit://h/", "/", "%2F"),
            ("rabbit://h//", "/", "%2F"),
            ("rabbit://h//nova", "/nova", "%2Fnova"),
            ("rabbit://h/%2Fnova", "/nova", "%2Fnova"),
            ("rabbit://h/%2f", "/", "%2F"),
            ("rabbit://h/nova", "nova", "nova"),
            ("rabbit://h/nova/x", "nova/x", "nova%2Fx"),
            ("rabbit://h/a%2525b", "a%b", "a%25b"),
            ("rabbit://h/a%zz", "a%zz", "a%25zz"),
        ];
        for (input, vhost, encoded) in cases {
            let url = AmqpUrl::new(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(url.vhost().as_deref(), Some(vhost), "{input}");
            assert_eq!(
                url.node_uri(0).unwrap(),
                format!("amqp://h:5672/{encoded}"),
                "{input}"
            );
        }
        // The AMQP URI keeps its own rule: one segment.
        assert!(AmqpUrl::new("amqp://h/a/b").is_err());
    }

    /// The query as oslo's `parse_qs` reads it.
    #[test]
    fn query_options() {
        let url = AmqpUrl::new(
            "rabbit://h/?ssl=1&ssl_ca_file=%2Fetc%2Fca.pem&ssl_version=TLSv1_2&x=&heartbeat_rate=2&heartbeat_rate=4",
        )
        .unwrap();
        assert!(url.tls());
        assert_eq!(
            url.options(),
            [
                ("ssl".to_owned(), "1".to_owned()),
                ("ssl_ca_file".to_owned(), "/etc/ca.pem".to_owned()),
                ("ssl_version".to_owned(), "TLSv1_2".to_owned()),
                ("heartbeat_rate".to_owned(), "2,4".to_owned()),
            ]
        );
        assert_eq!(url.option("ssl_ca_file"), Some("/etc/ca.pem"));
        assert!(!url.clone().without_tls().tls());
        // oslo's port is 5672 with TLS too.
        assert_eq!(url.node_uri(0).unwrap(), "amqps://h:5672/%2F");
    }

    #[test]
    fn bad_urls() {
        check_err(
            "http://u:hunter2@h/",
            "broker url `http://***@h/` is not valid: scheme `http` is not amqp, amqps or rabbit; expected amqp://user:password@host:port/vhost, amqps://… or rabbit://user:password@host1:port,user:password@host2:port/vhost",
        );
        check_err(
            "u:hunter2@h",
            "broker url `***@h` is not valid: it has no scheme; expected amqp://user:password@host:port/vhost, amqps://… or rabbit://user:password@host1:port,user:password@host2:port/vhost",
        );
        let cases = [
            (
                "rabbit://u:hunter2@h1,,h2/",
                "node 2 of the host list is empty",
            ),
            ("rabbit:///", "it names no broker host"),
            ("rabbit://h:99999/", "node 1 (`h:99999`) is not host[:port]"),
            (
                "rabbit://h/?ssl=maybe",
                "query `ssl=maybe` is not a boolean",
            ),
            ("amqp://h/a/b", "the vhost has a `/`"),
            ("amqp://u:hunter2@h/#x", "a fragment"),
        ];
        for (input, part) in cases {
            let e = AmqpUrl::new(input).unwrap_err().to_string();
            assert!(e.contains(part), "{input}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn passwords() {
        let url = AmqpUrl::new("rabbit://nova@h1,nova@h2:5673/").unwrap();
        assert!(!url.has_password());
        let url = url.with_password("p@ss word:,").unwrap();
        assert!(url.has_password());
        assert_eq!(
            url.node_uri(1).unwrap(),
            "amqp://nova:p%40ss%20word%3A%2C@h2:5673/%2F"
        );
        assert!(!format!("{url} {url:?} {:?}", url.nodes()).contains("p%40ss"));
        let e = AmqpUrl::new("rabbit://h1/")
            .unwrap()
            .with_password("x")
            .unwrap_err();
        assert!(e.to_string().contains("no node names a user"), "{e}");
    }
}
