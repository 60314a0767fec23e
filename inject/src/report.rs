//! The outcome of injection, item by item: the [`Report`] returned on success and carried
//! by errors from applying.

use std::fmt;

use crate::request::ItemKind;

/// The outcome of every item of a request, in the order they were handled.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// One entry per item; a files request has one entry per file.
    pub items: Vec<ItemReport>,
}

impl Report {
    /// Returns the items that ended in a warning.
    pub fn warnings(&self) -> impl Iterator<Item = &ItemReport> {
        self.items
            .iter()
            .filter(|item| matches!(item.outcome, Outcome::Warning { .. }))
    }
}

/// The outcome of one item.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ItemReport {
    /// The kind of item.
    pub kind: ItemKind,
    /// The guest paths the item writes, separated by `, ` when there are several.
    pub target: String,
    /// The outcome.
    pub outcome: Outcome,
}

/// The outcome of one item.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// The guest was changed as requested.
    Applied,
    /// The guest already was as requested, so nothing was written.
    Unchanged {
        /// The reason nothing was written.
        reason: String,
    },
    /// A best-effort item failed; nothing of it was written, or its files hold either their
    /// old or their new contents.
    Warning {
        /// The error, with its causes.
        reason: String,
    },
}

impl fmt::Display for ItemReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Applied => write!(f, "{}: applied to {}", self.kind, self.target),
            Outcome::Unchanged { reason } => {
                write!(f, "{}: {} unchanged: {reason}", self.kind, self.target)
            }
            Outcome::Warning { reason } => {
                write!(f, "{}: warning for {}: {reason}", self.kind, self.target)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_serializes_kind_names_and_outcome_tags() {
        let report = Report {
            items: vec![
                ItemReport {
                    kind: ItemKind::Network,
                    target: "/etc/network/interfaces".into(),
                    outcome: Outcome::Applied,
                },
                ItemReport {
                    kind: ItemKind::Key,
                    target: "/root/.ssh/authorized_keys".into(),
                    outcome: Outcome::Unchanged {
                        reason: "the key is already present".into(),
                    },
                },
            ],
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["items"][0]["kind"], "net");
        assert_eq!(json["items"][0]["outcome"]["status"], "applied");
        assert_eq!(json["items"][1]["outcome"]["status"], "unchanged");
        assert_eq!(
            json["items"][1]["outcome"]["reason"],
            "the key is already present"
        );
    }
}
