//! What a user names as a result: a stored result's ID, a document file, or a scenario's
//! latest run-sets (`scenario:NAME@last-N`).

use std::{path::PathBuf, str::FromStr};

use super::{Document, Store};
use crate::error::{Context as _, Result, Within as _, refuse};

/// One side of a comparison, as named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// A result in the store.
    Id(i64),
    /// A document written by `-o json` (or exported from a store).
    File(PathBuf),
    /// The `last` most recent run-sets of a scenario in the store, pooled.
    Scenario {
        /// Its name.
        name: String,
        /// How many.
        last: usize,
    },
}

impl FromStr for Reference {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        if let Some(rest) = text.strip_prefix("scenario:") {
            let (name, last) = match rest.split_once('@') {
                None => (rest, 1),
                Some((name, count)) => {
                    let count = count.strip_prefix("last-").ok_or_else(|| {
                        format!("{text:?}: after @ comes last-N (e.g. scenario:{name}@last-5)")
                    })?;
                    let last =
                        count
                            .parse::<usize>()
                            .ok()
                            .filter(|n| *n >= 1)
                            .ok_or_else(|| {
                                format!("{text:?}: N in last-N must be a whole number from 1")
                            })?;
                    (name, last)
                }
            };
            if name.is_empty() {
                return Err(format!("{text:?}: no scenario name after scenario:"));
            }
            return Ok(Self::Scenario {
                name: name.to_owned(),
                last,
            });
        }
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return text
                .parse()
                .map(Self::Id)
                .map_err(|_| format!("{text:?} is too large for a result ID"));
        }
        if text.is_empty() {
            return Err(
                "an empty result reference (an ID, a file, or scenario:NAME@last-N)".into(),
            );
        }
        Ok(Self::File(PathBuf::from(text)))
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Id(id) => write!(f, "result {id}"),
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Scenario { name, last } => write!(f, "scenario:{name}@last-{last}"),
        }
    }
}

impl Reference {
    /// Whether reading it needs the store.
    pub fn needs_store(&self) -> bool {
        !matches!(self, Self::File(_))
    }

    /// The documents it names (several for `@last-N`, oldest first).
    pub fn load(&self, store: Option<&Store>) -> Result<Vec<Document>> {
        match self {
            Self::File(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                Ok(vec![
                    Document::parse(&text).within_with(|| path.display().to_string())?,
                ])
            }
            Self::Id(id) => {
                let store = store_for(self, store)?;
                Ok(vec![store.get(*id)?])
            }
            Self::Scenario { name, last } => {
                let store = store_for(self, store)?;
                store
                    .last_of_scenario(name, *last)?
                    .into_iter()
                    .map(|id| store.get(id))
                    .collect()
            }
        }
    }
}

fn store_for<'a>(reference: &Reference, store: Option<&'a Store>) -> Result<&'a Store> {
    match store {
        Some(store) => Ok(store),
        None => refuse!("{reference} names the results store, and there is none (--no-store?)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_as_ids_files_and_scenarios() {
        assert_eq!("42".parse(), Ok(Reference::Id(42)));
        assert_eq!(
            "run.json".parse(),
            Ok(Reference::File(PathBuf::from("run.json")))
        );
        assert_eq!(
            "scenario:mesh@last-5".parse(),
            Ok(Reference::Scenario {
                name: "mesh".into(),
                last: 5
            })
        );
        assert_eq!(
            "scenario:mesh".parse(),
            Ok(Reference::Scenario {
                name: "mesh".into(),
                last: 1
            })
        );
        for bad in [
            "scenario:mesh@5",
            "scenario:mesh@last-0",
            "scenario:@last-2",
            "",
        ] {
            assert!(bad.parse::<Reference>().is_err(), "{bad:?} parsed");
        }
    }
}
