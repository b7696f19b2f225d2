//! The servers a run talks to: `--target URL1,URL2,…` (e.g. two nodes on one PostgreSQL).
//! Peers are spread over them round-robin — peer `i` talks to target `i % n` — so writes on
//! one node must reach readers on another. Requests that are not a peer's (the verdict's view
//! of the server, compactions, raw requests) go to the first.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use awc::http::Uri;

/// At most this many targets.
pub const MAX_TARGETS: usize = 16;

/// One or more base URLs, each `http://host:port` (no path), in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets(Vec<String>);

impl Targets {
    /// A single server whose URL the run made itself (e.g. the in-process one).
    pub fn one(url: &str) -> Targets {
        Targets(vec![url.trim_end_matches('/').to_string()])
    }

    /// Parses a comma-separated list of base URLs.
    ///
    /// # Errors
    /// If the list is empty or longer than [`MAX_TARGETS`], or an entry is not an `http://`
    /// URL with a host and nothing after it but an optional `/`, or appears twice.
    pub fn parse(list: &str) -> Result<Targets> {
        let mut urls: Vec<String> = Vec::new();
        for entry in list.split(',') {
            let url = entry.trim().trim_end_matches('/');
            let Ok(uri) = url.parse::<Uri>() else {
                bail!("target {url:?} is not a URL");
            };
            if uri.scheme_str() != Some("http")
                || uri.host().is_none_or(str::is_empty)
                || !matches!(uri.path(), "" | "/")
                || uri.query().is_some()
            {
                bail!("target {url:?} is not a base URL like http://127.0.0.1:8080");
            }
            if urls.iter().any(|u| u == url) {
                bail!("target {url} is given twice");
            }
            urls.push(url.to_string());
        }
        if urls.len() > MAX_TARGETS {
            bail!("{} targets; at most {MAX_TARGETS}", urls.len());
        }
        Ok(Targets(urls))
    }

    /// The target peer `i` talks to: the `i % n`-th.
    pub fn for_peer(&self, i: u64) -> &str {
        &self.0[(i % self.0.len() as u64) as usize]
    }

    /// The target of everything that is not a peer's.
    pub fn first(&self) -> &str {
        &self.0[0]
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: there is at least one target.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

impl FromStr for Targets {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Targets> {
        Targets::parse(s)
    }
}

impl fmt::Display for Targets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_spreads_round_robin() {
        let t = Targets::parse("http://127.0.0.1:18081/, http://127.0.0.1:18082").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.first(), "http://127.0.0.1:18081");
        assert_eq!(t.for_peer(0), "http://127.0.0.1:18081");
        assert_eq!(t.for_peer(101), "http://127.0.0.1:18082");
        assert_eq!(
            t.to_string(),
            "http://127.0.0.1:18081,http://127.0.0.1:18082"
        );
        let one = Targets::parse("http://localhost:8080").unwrap();
        assert_eq!(one.for_peer(7), "http://localhost:8080");
    }

    #[test]
    fn rejects_what_is_not_a_list_of_base_urls() {
        for bad in [
            "",
            "http://a:1,",
            "127.0.0.1:8080",
            "https://a:1",
            "ftp://a:1",
            "http://a:1/v1",
            "http://a:1?x=1",
            "http://a:1,http://a:1/",
        ] {
            assert!(Targets::parse(bad).is_err(), "{bad:?} accepted");
        }
        let many = vec!["http://a:1"; MAX_TARGETS + 1]
            .iter()
            .enumerate()
            .map(|(i, u)| format!("{u}{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(Targets::parse(&many).is_err());
    }
}
