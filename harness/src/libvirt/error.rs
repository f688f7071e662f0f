//! What can go wrong reading or mapping a libvirt definition: one enum, each variant naming
//! the element or attribute and where in which file it is.

use std::fmt;
use std::path::PathBuf;

/// A place in an XML file: `file:line:column` (1-based, as roxmltree counts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pos {
    /// The file as it was named.
    pub file: String,
    /// Line, from 1.
    pub line: u32,
    /// Column, from 1.
    pub col: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

/// Why an interface definition cannot be mapped, or cannot be run as mapped.
#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    /// The file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not well-formed XML.
    #[error("{file} is not well-formed XML")]
    Xml {
        /// The file.
        file: String,
        /// Where and why (roxmltree's message carries the position).
        #[source]
        source: roxmltree::Error,
    },
    /// The file's root (or the wrapper's child) is not what was expected.
    #[error("{at}: <{found}> found where {expected} was expected")]
    Unexpected {
        /// Where.
        at: Pos,
        /// The element found.
        found: String,
        /// What belongs there.
        expected: &'static str,
    },
    /// A required attribute or element is missing.
    #[error("{at}: <{element}> has no {what}{}", why_suffix(why))]
    Missing {
        /// Where the element is.
        at: Pos,
        /// The element.
        element: &'static str,
        /// The attribute (`attribute 'dev'`) or child (`<source>`) missing.
        what: String,
        /// Why it matters, if that is not obvious.
        why: String,
    },
    /// An element that may appear once appears again.
    #[error("{at}: a second <{element}> (vhostbench maps exactly one)")]
    Duplicate {
        /// Where the second one is.
        at: Pos,
        /// The element.
        element: &'static str,
    },
    /// An attribute's value is not one this mapping accepts.
    #[error("{at}: <{element} {attr}='{value}'>: {expected}")]
    BadValue {
        /// Where the attribute is.
        at: Pos,
        /// The element.
        element: &'static str,
        /// The attribute.
        attr: &'static str,
        /// Its value.
        value: String,
        /// What would have been accepted, and why.
        expected: String,
    },
    /// The model is not virtio: vhost-net serves only virtio-net devices.
    #[error(
        "{at}: <model type='{model}'>: vhost-net serves only virtio-net devices; \
         use <model type='virtio'/>"
    )]
    NotVirtio {
        /// Where the model is.
        at: Pos,
        /// The model asked for.
        model: String,
    },
    /// Something this harness has no mode for (an interface type, a macvtap mode, …).
    #[error("{at}: {what}: not supported by vhostbench: {why}")]
    NoMode {
        /// Where.
        at: Pos,
        /// What was asked (`<interface type='user'>`).
        what: String,
        /// Why there is no mode for it.
        why: String,
    },
    /// `<driver name='vhost'/>` forces vhost, and tap-vhost cannot run on this host.
    #[error("{at}: <driver name='vhost'> forces tap-vhost, which cannot run here: {reason}")]
    VhostUnavailable {
        /// Where the driver element is.
        at: Pos,
        /// The host probe's reason.
        reason: String,
    },
    /// A source names neither a network definition that was given nor a device on this host.
    #[error(
        "{at}: {attr}='{name}' names no network definition that was given (--network FILE) \
         and no device on this host ({probed})"
    )]
    NoSuchDevice {
        /// Where the source is.
        at: Pos,
        /// `network` or `bridge`.
        attr: &'static str,
        /// The name.
        name: String,
        /// What was looked at.
        probed: String,
    },
    /// `run --interface` was given things the interface asks for that vhostbench cannot honour.
    #[error("the interface asks for what vhostbench cannot honour:\n  {}", items.join("\n  "))]
    Unsupported {
        /// One line each, with its position and why.
        items: Vec<String>,
    },
    /// A run option contradicts what the interface file sets.
    #[error("{option} conflicts with {xml}: {xml_says}; leave the option out or change the file")]
    Conflict {
        /// The option as given (`--queue-size 512`).
        option: String,
        /// The XML that sets the same thing, with its position.
        xml: String,
        /// What the XML maps to (`queue size 1024`).
        xml_says: String,
    },
}

fn why_suffix(why: &str) -> String {
    if why.is_empty() {
        String::new()
    } else {
        format!(": {why}")
    }
}
