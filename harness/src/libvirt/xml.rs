//! Reading a libvirt definition so that nothing in it goes unnoticed: every element and
//! attribute the mapping reads is marked, and [`Xml::leftovers`] reports the rest, each as
//! either harmless to leave unused or something vhostbench cannot honour, with the reason.

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::Path;

use roxmltree::{Document, Node, NodeId};

use super::error::{LibvirtError, Pos};

/// Reads `path` to a string.
pub fn read(path: &Path) -> Result<String, LibvirtError> {
    std::fs::read_to_string(path).map_err(|source| LibvirtError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses `text`, named `file` in messages.
pub fn parse<'i>(file: &str, text: &'i str) -> Result<Document<'i>, LibvirtError> {
    Document::parse(text).map_err(|source| LibvirtError::Xml {
        file: file.to_string(),
        source,
    })
}

/// The key under which an element's text is marked read (not an attribute name XML allows).
const TEXT: &str = "#text";

/// How a leftover is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Harmless to leave out here: "not used by vhostbench".
    Unused,
    /// Changes behaviour vhostbench cannot reproduce: a warning for `interface`, an error for
    /// `run --interface`.
    Unsupported,
}

/// One element or attribute the mapping did not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leftover {
    /// Unused or unsupported.
    pub class: Class,
    /// `<mac address='…'> at file:3:5: why`.
    pub line: String,
}

/// A parsed document, with what the mapping has read of it.
#[derive(Debug)]
pub struct Xml<'a, 'i> {
    doc: &'a Document<'i>,
    file: &'a str,
    read: RefCell<HashSet<(NodeId, Option<String>)>>,
}

impl<'a, 'i> Xml<'a, 'i> {
    /// Wraps `doc`, read from `file`.
    pub fn new(doc: &'a Document<'i>, file: &'a str) -> Self {
        Xml {
            doc,
            file,
            read: RefCell::new(HashSet::new()),
        }
    }

    /// Where `node` starts.
    pub fn pos(&self, node: Node) -> Pos {
        self.pos_at(node.range().start)
    }

    /// Where `node`'s attribute `name` is (the element, if it has none by that name).
    pub fn attr_pos(&self, node: Node, name: &str) -> Pos {
        match node.attribute_node(name) {
            Some(a) => self.pos_at(a.range().start),
            None => self.pos(node),
        }
    }

    fn pos_at(&self, at: usize) -> Pos {
        let p = self.doc.text_pos_at(at);
        Pos {
            file: self.file.to_string(),
            line: p.row,
            col: p.col,
        }
    }

    /// Marks `node` as read.
    pub fn mark(&self, node: Node) {
        self.read.borrow_mut().insert((node.id(), None));
    }

    /// `node`'s text, marked as read.
    pub fn text(&self, node: Node<'a, 'i>) -> Option<&'a str> {
        self.read
            .borrow_mut()
            .insert((node.id(), Some(TEXT.into())));
        node.text()
    }

    /// Attribute `name` of `node`, marked as read.
    pub fn attr(&self, node: Node<'a, 'i>, name: &str) -> Option<&'a str> {
        let v = node.attribute(name)?;
        self.read
            .borrow_mut()
            .insert((node.id(), Some(name.to_string())));
        Some(v)
    }

    /// The one child element of `node` called `name`, marked as read; an error if there are
    /// two.
    pub fn child(
        &self,
        node: Node<'a, 'i>,
        name: &'static str,
    ) -> Result<Option<Node<'a, 'i>>, LibvirtError> {
        let mut found = node.children().filter(|c| c.has_tag_name(name));
        let first = found.next();
        if let Some(second) = found.next() {
            return Err(LibvirtError::Duplicate {
                at: self.pos(second),
                element: name,
            });
        }
        if let Some(c) = first {
            self.mark(c);
        }
        Ok(first)
    }

    /// Every child element of `node` called `name`, marked as read.
    pub fn children(&self, node: Node<'a, 'i>, name: &'static str) -> Vec<Node<'a, 'i>> {
        let v: Vec<Node> = node.children().filter(|c| c.has_tag_name(name)).collect();
        for c in &v {
            self.mark(*c);
        }
        v
    }

    /// `<name a='v' …>` as written (attributes in file order).
    pub fn show(node: Node) -> String {
        let mut s = format!("<{}", node.tag_name().name());
        for a in node.attributes() {
            s.push_str(&format!(" {}='{}'", a.name(), a.value()));
        }
        s.push('>');
        s
    }

    /// What under `top` (itself marked) the mapping did not read, in file order: an element
    /// not read is reported once with its whole content; an attribute not read of an element
    /// that was, on its own. Text other than whitespace, inside an element that was read, is
    /// reported too. `skip` (an inline `<network>`, reported on its own) is left out.
    pub fn leftovers(&self, top: Node<'a, 'i>, skip: Option<Node<'a, 'i>>) -> Vec<Leftover> {
        let read = self.read.borrow();
        let mut out = Vec::new();
        let mut stack = vec![top];
        while let Some(node) = stack.pop() {
            for a in node.attributes() {
                if !read.contains(&(node.id(), Some(a.name().to_string()))) {
                    let (class, why) = classify_attr(node, a.name(), a.value());
                    out.push((
                        a.range().start,
                        class,
                        format!(
                            "<{} {}='{}'> at {}: {why}",
                            node.tag_name().name(),
                            a.name(),
                            a.value(),
                            self.pos_at(a.range().start)
                        ),
                    ));
                }
            }
            let mut kids = Vec::new();
            for c in node.children() {
                if Some(c) == skip {
                    continue;
                }
                if c.is_element() {
                    if read.contains(&(c.id(), None)) {
                        kids.push(c);
                    } else {
                        let (class, why) = classify_element(c);
                        out.push((
                            c.range().start,
                            class,
                            format!("{} at {}: {why}", Self::show(c), self.pos(c)),
                        ));
                    }
                } else if c.is_text()
                    && !c.text().unwrap_or("").trim().is_empty()
                    && !read.contains(&(node.id(), Some(TEXT.into())))
                {
                    let text = c.text().unwrap_or("");
                    let at = c.range().start + (text.len() - text.trim_start().len());
                    out.push((
                        at,
                        Class::Unsupported,
                        format!(
                            "text {:?} in <{}> at {}: not part of the libvirt schema",
                            text.trim(),
                            node.tag_name().name(),
                            self.pos_at(at)
                        ),
                    ));
                }
            }
            stack.extend(kids.into_iter().rev());
        }
        out.sort_by_key(|(at, _, _)| *at);
        out.into_iter()
            .map(|(_, class, line)| Leftover { class, line })
            .collect()
    }
}

/// Why an element the mapping does not read is harmless, or what it would change.
fn classify_element(node: Node) -> (Class, String) {
    use Class::{Unsupported, Unused};
    let parent = node.parent_element().map_or("", |p| p.tag_name().name());
    let (class, why): (Class, &str) = match (parent, node.tag_name().name()) {
        ("interface", "mac") | ("network", "mac") => (
            Unused,
            "a MAC address: the harness's test frames carry their own addresses",
        ),
        ("interface", "target") => (
            Unused,
            "the host-side device name: the harness names its own taps, in a private namespace",
        ),
        ("interface", "alias") => (Unused, "a name for the management API"),
        ("interface", "address") => (
            Unused,
            "the guest's PCI slot: there is no PCI bus here, the guest reaches the device \
             through its rings",
        ),
        ("interface", "boot") | ("interface", "rom") | ("interface", "acpi") => {
            (Unused, "guest firmware: there is no firmware here")
        }
        ("interface", "link") if node.attribute("state") != Some("down") => {
            (Unused, "the link is up, as it always is here")
        }
        ("interface", "link") => (
            Unsupported,
            "a link that starts down: the harness's device is always up",
        ),
        ("interface", "guest") => (
            Unused,
            "the guest-side device name: the guest here is a thread, not a kernel",
        ),
        ("network", "uuid") | ("network", "title") | ("network", "description") => {
            (Unused, "the network's identity for the management API")
        }
        ("network", "ip") | ("network", "dns") | ("network", "domain") | (_, "route") => (
            Unused,
            "host-side addressing (DHCP, DNS, routes): the harness's frames are not IP",
        ),
        (_, "bandwidth") => (
            Unsupported,
            "a rate limit: the harness offers load with --rate-pps, it does not shape traffic",
        ),
        (_, "vlan") => (
            Unsupported,
            "VLAN tagging: the harness's frames go untagged",
        ),
        (_, "virtualport") => (
            Unsupported,
            "an Open vSwitch or 802.1Qbh port: the harness has neither",
        ),
        (_, "portgroup") => (
            Unsupported,
            "port groups carry bandwidth and VLAN settings, which the harness cannot apply",
        ),
        (_, "mtu") => (Unsupported, "an MTU: frame sizes come from --sizes"),
        ("interface", "filterref") => (
            Unsupported,
            "nwfilter rules: the harness installs no packet filters",
        ),
        ("interface", "tune") => (
            Unsupported,
            "a tap send-buffer size: the harness leaves the tap's default",
        ),
        ("interface", "coalesce") => (
            Unsupported,
            "RX interrupt coalescing: the worker signals by event index only",
        ),
        ("interface", "script") | ("interface", "downscript") => (
            Unsupported,
            "a script run on the host: the harness builds its own topology",
        ),
        ("interface", "backend") => (
            Unsupported,
            "other tap or vhost device paths: the harness opens /dev/net/tun itself and is \
             its own vhost",
        ),
        ("interface", "port") => (
            Unsupported,
            "port isolation: the harness's bridge has no isolated ports",
        ),
        ("interface", "teaming") => (Unsupported, "failover teaming: the harness runs one device"),
        ("driver", "host") | ("driver", "guest") => (
            Unsupported,
            "per-offload switches: vhostbench negotiates one fixed feature set",
        ),
        _ => (Unsupported, "not known to vhostbench"),
    };
    (class, why.to_string())
}

/// Why an attribute the mapping does not read is harmless, or what it would change.
fn classify_attr(node: Node, name: &str, value: &str) -> (Class, String) {
    use Class::{Unsupported, Unused};
    let on = value == "on";
    let (class, why): (Class, &str) = match (node.tag_name().name(), name) {
        ("driver", "txmode") => (
            Unsupported,
            "QEMU's userspace TX scheduling (timer or bottom half): the emulated loop sends \
             as soon as it is kicked",
        ),
        ("driver", "ioeventfd") if on => (
            Unused,
            "kicks are eventfds here already (ioeventfd on is what every mode does)",
        ),
        ("driver", "ioeventfd") => (
            Unsupported,
            "kicks without ioeventfd trap into QEMU's vCPU thread; every mode here kicks an \
             eventfd",
        ),
        ("driver", "packed") if !on => (Unused, "split rings, as here"),
        ("driver", "packed") => (
            Unsupported,
            "packed rings: the engine implements the split ring",
        ),
        ("driver", "iommu") | ("driver", "ats") if !on => (Unused, "no IOMMU translation, as here"),
        ("driver", "iommu") | ("driver", "ats") => (
            Unsupported,
            "an IOMMU in the data path: guest addresses here are translated by the region \
             table only",
        ),
        ("driver", "rss") | ("driver", "rss_hash_report") if !on => (Unused, "off, as here"),
        ("driver", "rss") | ("driver", "rss_hash_report") => (
            Unsupported,
            "receive-side scaling: the harness runs one queue pair",
        ),
        ("driver", "page_per_vq") => (
            Unused,
            "a PCI notification layout: there is no PCI transport here",
        ),
        ("host", _) | ("guest", _) => (
            Unsupported,
            "a per-offload switch: vhostbench negotiates one fixed feature set",
        ),
        ("bridge", _) => (
            Unused,
            "how libvirt sets up its bridge (STP, forward delay, MAC table): the tap modes \
             bring their own (STP off, no delay)",
        ),
        ("interface", "trustGuestRxFilters") => (
            Unused,
            "guest RX filter changes: the harness's guest never changes its filter",
        ),
        ("forward", "managed") | ("interface", "managed") => (
            Unused,
            "whether libvirt detaches the VF from its host driver: the pool's VFs are \
             stand-ins vhostbench makes and removes itself",
        ),
        _ => (Unsupported, "not known to vhostbench"),
    };
    (class, why.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_not_read_is_reported_in_file_order() {
        let text = "<interface type='bridge' x='1'>\n  <mac address='52:54:00:00:00:01'/>\n  \
                    <source bridge='br0'/>\n  <driver name='vhost' txmode='iothread'>\n    \
                    <host csum='off'/>\n  </driver>\n  <frobnicate/>\n  stray\n</interface>";
        let doc = parse("t.xml", text).expect("parse");
        let xml = Xml::new(&doc, "t.xml");
        let root = doc.root_element();
        xml.mark(root);
        assert_eq!(xml.attr(root, "type"), Some("bridge"));
        let src = xml.child(root, "source").expect("one").expect("some");
        assert_eq!(xml.attr(src, "bridge"), Some("br0"));
        let drv = xml.child(root, "driver").expect("one").expect("some");
        assert_eq!(xml.attr(drv, "name"), Some("vhost"));
        let left = xml.leftovers(root, None);
        let lines: Vec<&str> = left.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(left.len(), 6, "{lines:#?}");
        assert!(lines[0].starts_with("<interface x='1'> at t.xml:1:26: not known"));
        assert_eq!(left[1].class, Class::Unused);
        assert!(lines[1].starts_with("<mac address='52:54:00:00:00:01'> at t.xml:2:3: "));
        assert!(
            lines[2].starts_with("<driver txmode='iothread'> at t.xml:4:24: "),
            "{lines:#?}"
        );
        assert!(lines[3].starts_with("<host csum='off'> at t.xml:5:5: per-offload"));
        assert!(lines[4].starts_with("<frobnicate> at t.xml:7:3: not known"));
        assert!(lines[5].starts_with("text \"stray\" in <interface> at t.xml:8:3: "));
        assert!(left[2..].iter().all(|l| l.class == Class::Unsupported));
    }

    #[test]
    fn a_second_mapped_element_is_an_error() {
        let text = "<interface><model type='virtio'/>\n<model type='e1000'/></interface>";
        let doc = parse("t.xml", text).expect("parse");
        let xml = Xml::new(&doc, "t.xml");
        let e = xml.child(doc.root_element(), "model").expect_err("two");
        assert_eq!(
            e.to_string(),
            "t.xml:2:1: a second <model> (vhostbench maps exactly one)"
        );
    }
}
