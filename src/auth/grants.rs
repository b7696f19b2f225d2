//! Rights and grants: what a principal may do to which collections. Pure data, no HTTP, no
//! tokens: [`Grants::right_on`] is the whole authorization rule, unit-tested with a table.
//!
//! A grant maps a *pattern* to a [`Right`]. A pattern is an exact collection name, or a prefix
//! ending in `*` (`team-a/*`, `*`). When several patterns match a collection, the highest right
//! applies: grants only ever add.

use std::collections::BTreeMap;
use std::fmt;

/// Most grants one principal may carry. A token is capped in size too, but a grant table
/// is walked on every request, so it gets its own bound.
pub const MAX_GRANTS: usize = 256;

/// What a grant allows, ordered: each right includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Right {
    /// `stream`, `events`, `state`, `recovery`, `ack`.
    Read,
    /// Read, plus `insert` / `update` / `delete`, and `compact` without `peerTimeout` or
    /// `snapshotBytes`.
    Write,
    /// Write, plus `compact` with any field and `/v1/{c}/stats`; on `*`, also `/stats` and
    /// `/metrics`.
    Admin,
}

impl Right {
    /// The claim value: `read`, `write` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Right::Read => "read",
            Right::Write => "write",
            Right::Admin => "admin",
        }
    }

    /// Parses a claim value.
    ///
    /// # Errors
    /// A message naming the value when it is not `read`, `write` or `admin`.
    pub fn parse(value: &str) -> Result<Right, String> {
        match value {
            "read" => Ok(Right::Read),
            "write" => Ok(Right::Write),
            "admin" => Ok(Right::Admin),
            other => Err(format!(
                "grant {:?} is not read, write or admin",
                other.chars().take(40).collect::<String>()
            )),
        }
    }
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A collection pattern: an exact name, or a prefix (the pattern without its final `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn parse(pattern: &str) -> Pattern {
        match pattern.strip_suffix('*') {
            Some(prefix) => Pattern::Prefix(prefix.to_string()),
            None => Pattern::Exact(pattern.to_string()),
        }
    }

    fn matches(&self, collection: &str) -> bool {
        match self {
            Pattern::Exact(name) => name == collection,
            Pattern::Prefix(prefix) => collection.starts_with(prefix.as_str()),
        }
    }

    /// Whether this pattern matches every collection (`*`).
    fn is_everything(&self) -> bool {
        matches!(self, Pattern::Prefix(p) if p.is_empty())
    }
}

/// A principal's grants: pattern → right.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants(Vec<(Pattern, Right)>);

impl Grants {
    /// No rights at all (an authenticated principal whose token carries no grants).
    pub fn none() -> Grants {
        Grants::default()
    }

    /// `admin` on `*`: what anonymous mode gives everyone.
    pub fn admin_everywhere() -> Grants {
        Grants(vec![(Pattern::Prefix(String::new()), Right::Admin)])
    }

    /// Builds grants from `(pattern, right)` pairs, as an embedding application's own
    /// [`crate::auth::Authenticate`] would.
    ///
    /// # Errors
    /// More than [`MAX_GRANTS`] pairs.
    pub fn new<'a>(pairs: impl IntoIterator<Item = (&'a str, Right)>) -> Result<Grants, String> {
        let mut grants = Vec::new();
        for (pattern, right) in pairs {
            if grants.len() == MAX_GRANTS {
                return Err(format!("more than {MAX_GRANTS} grants"));
            }
            grants.push((Pattern::parse(pattern), right));
        }
        Ok(Grants(grants))
    }

    /// Parses the `replicate.grants` claim (pattern → `read` | `write` | `admin`).
    ///
    /// # Errors
    /// More than [`MAX_GRANTS`] entries, or a value that is not a right.
    pub fn from_claim(claim: &BTreeMap<String, String>) -> Result<Grants, String> {
        if claim.len() > MAX_GRANTS {
            return Err(format!("more than {MAX_GRANTS} grants"));
        }
        let mut pairs = Vec::with_capacity(claim.len());
        for (pattern, right) in claim {
            pairs.push((pattern.as_str(), Right::parse(right)?));
        }
        Grants::new(pairs)
    }

    /// The highest right any pattern gives on `collection`, or `None`.
    pub fn right_on(&self, collection: &str) -> Option<Right> {
        self.0
            .iter()
            .filter(|(p, _)| p.matches(collection))
            .map(|(_, r)| *r)
            .max()
    }

    /// The right granted on `*` itself (what service-wide routes need): a grant on a prefix
    /// or a name covers only part of the service, so it never counts here.
    pub fn right_on_everything(&self) -> Option<Right> {
        self.0
            .iter()
            .filter(|(p, _)| p.is_everything())
            .map(|(_, r)| *r)
            .max()
    }

    /// How many patterns these grants hold.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(pairs: &[(&str, &str)]) -> Grants {
        let claim: BTreeMap<String, String> = pairs
            .iter()
            .map(|(p, r)| (p.to_string(), r.to_string()))
            .collect();
        Grants::from_claim(&claim).expect("valid grants")
    }

    /// (grants as pattern → right, collection, expected right)
    type Case = (
        &'static [(&'static str, &'static str)],
        &'static str,
        Option<Right>,
    );

    #[test]
    fn right_on_table() {
        use Right::*;
        let cases: &[Case] = &[
            (&[], "todos", None),
            (&[("todos", "write")], "todos", Some(Write)),
            (&[("todos", "write")], "todos2", None),
            (&[("todos", "write")], "todo", None),
            (&[("team-a/*", "read")], "team-a/x", Some(Read)),
            (&[("team-a/*", "read")], "team-a/", Some(Read)),
            (&[("team-a/*", "read")], "team-a", None),
            (&[("team-a/*", "read")], "team-b/x", None),
            (&[("*", "read")], "anything", Some(Read)),
            // the highest matching grant applies, whichever order
            (&[("*", "read"), ("todos", "admin")], "todos", Some(Admin)),
            (&[("*", "admin"), ("todos", "read")], "todos", Some(Admin)),
            (&[("t*", "write"), ("to*", "read")], "todos", Some(Write)),
            // a `*` inside a pattern is literal; only a final one makes a prefix
            (&[("a*b", "read")], "a*b", Some(Read)),
            (&[("a*b", "read")], "axb", None),
        ];
        for (pairs, collection, expected) in cases {
            assert_eq!(
                grants(pairs).right_on(collection),
                *expected,
                "{pairs:?} on {collection}"
            );
        }
    }

    #[test]
    fn only_a_grant_on_star_covers_everything() {
        assert_eq!(
            grants(&[("*", "admin")]).right_on_everything(),
            Some(Right::Admin)
        );
        assert_eq!(grants(&[("a*", "admin")]).right_on_everything(), None);
        assert_eq!(grants(&[("todos", "admin")]).right_on_everything(), None);
        assert_eq!(
            grants(&[("*", "read"), ("todos", "admin")]).right_on_everything(),
            Some(Right::Read)
        );
        assert_eq!(
            Grants::admin_everywhere().right_on_everything(),
            Some(Right::Admin)
        );
    }

    #[test]
    fn bad_claims_are_refused() {
        let bad: BTreeMap<String, String> = [("todos".to_string(), "owner".to_string())].into();
        assert!(Grants::from_claim(&bad)
            .unwrap_err()
            .contains("read, write or admin"));
        let many: BTreeMap<String, String> = (0..=MAX_GRANTS)
            .map(|i| (format!("c{i}"), "read".to_string()))
            .collect();
        assert!(Grants::from_claim(&many).unwrap_err().contains("more than"));
        let most: BTreeMap<String, String> = (0..MAX_GRANTS)
            .map(|i| (format!("c{i}"), "read".to_string()))
            .collect();
        assert_eq!(
            Grants::from_claim(&most).expect("at the cap").len(),
            MAX_GRANTS
        );
        assert_eq!(Right::parse("admin"), Ok(Right::Admin));
        assert!(Right::Read < Right::Write && Right::Write < Right::Admin);
    }
}
