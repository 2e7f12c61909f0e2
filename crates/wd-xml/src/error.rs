//! The crate's one error type.

/// What went wrong while rendering, patching or reading domain XML.
///
/// Messages name the bad value and what is allowed; byte positions count from
/// the start of the document.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The guest's architecture has no watchdog model.
    #[error("no watchdog model for architecture `{arch}`; supported: x86_64, i686, s390x")]
    UnsupportedArch {
        /// The architecture given.
        arch: String,
    },

    /// Text that is not a libvirt version.
    #[error(
        "invalid libvirt version `{value}`; expected MAJOR.MINOR.MICRO such as 9.1.0, minor and micro below 1000"
    )]
    ParseVersion {
        /// The text given.
        value: String,
    },

    /// Text that is not a watchdog model libvirt knows.
    #[error("unknown watchdog model `{value}`; allowed: i6300esb, ib700, diag288, itco")]
    ParseModel {
        /// The text given.
        value: String,
    },

    /// The document is empty or only whitespace.
    #[error("domain XML is empty")]
    EmptyDocument,

    /// The XML parser rejected the document.
    #[error("cannot parse domain XML at byte {position}")]
    Parse {
        /// Where the parser stopped.
        position: u64,
        /// The parser's error.
        #[source]
        source: quick_xml::Error,
    },

    /// The document is not well-formed in a way the parser does not report
    /// itself: an unclosed element, text outside the root, two roots.
    #[error("malformed domain XML at byte {position}: {problem}")]
    Malformed {
        /// Where the problem was found.
        position: usize,
        /// What is wrong.
        problem: String,
    },

    /// The root element is not `<domain>`.
    #[error("root element is `{found}`; expected `domain`")]
    WrongRoot {
        /// The root element's name.
        found: String,
    },

    /// A `<watchdog>` element in the document has a bad attribute.
    #[error("invalid watchdog element at byte {position}")]
    ReadWatchdog {
        /// Where the element starts.
        position: usize,
        /// What is wrong with it.
        #[source]
        source: Box<Error>,
    },

    /// A `<watchdog>` element whose action is not one of libvirt's.
    #[error("invalid watchdog action at byte {position}")]
    ReadWatchdogAction {
        /// Where the element starts.
        position: usize,
        /// The policy crate's parse error, which names the value.
        #[source]
        source: wd_policy::Error,
    },

    /// A `<watchdog>` element without the `model` attribute libvirt requires.
    #[error("watchdog element at byte {position} has no `model` attribute")]
    MissingModel {
        /// Where the element starts.
        position: usize,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
