//! The kernel's drop reasons, as this kernel names them: `enum skb_drop_reason` grows with
//! every release, so the numbers are read off the `skb:kfree_skb` tracepoint's format, with
//! the offset of its `reason` field (which moved when `rx_sk` was added).

use std::collections::HashMap;

/// What the `skb:kfree_skb` format says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropFormat {
    /// Offset of `reason` in the tracepoint's record.
    pub reason_offset: u32,
    /// Reason names by number.
    pub names: HashMap<u32, String>,
}

impl DropFormat {
    /// Reads the format from tracefs; `None` when it cannot be read or has no `reason`.
    pub fn read() -> Option<Self> {
        let text = std::fs::read_to_string(format!(
            "{}/events/skb/kfree_skb/format",
            crate::mounts::TRACEFS
        ))
        .ok()?;
        Self::parse(&text)
    }

    /// Parses a format file's text.
    pub fn parse(text: &str) -> Option<Self> {
        let reason_offset = text
            .lines()
            .find(|line| line.contains("skb_drop_reason reason;"))
            .and_then(|line| line.split("offset:").nth(1))
            .and_then(|rest| rest.split(';').next())
            .and_then(|offset| offset.trim().parse().ok())?;
        // `__print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" }, ...)`
        let mut names = HashMap::new();
        let symbols = text
            .split("__print_symbolic(REC->reason")
            .nth(1)
            .unwrap_or("");
        for pair in symbols.split('{').skip(1) {
            let mut parts = pair.splitn(2, ',');
            let (Some(number), Some(name)) = (parts.next(), parts.next()) else {
                continue;
            };
            let name = name.split('"').nth(1);
            if let (Ok(number), Some(name)) = (number.trim().parse::<u32>(), name) {
                names.insert(number, name.to_owned());
            }
        }
        Some(Self {
            reason_offset,
            names,
        })
    }

    /// The name of a reason, or its number when this kernel's format does not list it.
    pub fn name(&self, reason: u32) -> String {
        self.names
            .get(&reason)
            .cloned()
            .unwrap_or_else(|| format!("reason {reason}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cut from this machine's kernel (6.18): `reason` at 36, after `rx_sk`.
    const FORMAT_6_18: &str = r#"name: kfree_skb
ID: 2310
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:void * skbaddr;	offset:8;	size:8;	signed:0;
	field:void * location;	offset:16;	size:8;	signed:0;
	field:void * rx_sk;	offset:24;	size:8;	signed:0;
	field:unsigned short protocol;	offset:32;	size:2;	signed:0;
	field:enum skb_drop_reason reason;	offset:36;	size:4;	signed:0;

print fmt: "skbaddr=%p rx_sk=%p protocol=%u location=%pS reason: %s", REC->skbaddr, REC->rx_sk, REC->protocol, REC->location, __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" }, { 12, "NETFILTER_DROP" }, { 128, "MAX" })"#;

    #[test]
    fn reads_the_offset_and_the_names() {
        let format = DropFormat::parse(FORMAT_6_18).expect("parsed");
        assert_eq!(format.reason_offset, 36);
        assert_eq!(format.name(12), "NETFILTER_DROP");
        assert_eq!(format.name(2), "NOT_SPECIFIED");
        assert_eq!(format.name(77), "reason 77");
        assert_eq!(format.names.len(), 4);
    }

    #[test]
    fn a_format_without_reason_is_refused() {
        assert_eq!(DropFormat::parse("name: kfree_skb\nformat:\n"), None);
    }
}
