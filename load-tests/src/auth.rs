//! Tokens for the load scenarios: the run's [`Credentials`] (given with `--token` for
//! `--target`, or minted in-process for the embedded server), and [`verification_cost`], the
//! time one token verification takes, for the `append` scenario's report.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use replicate::auth::jwt::{self, JwtVerifier, MintRequest};
use replicate::auth::{KeyFiles, Right};
use replicate_actors::{Clock, SystemClock};

/// The subject of minted load tokens; peers ack as `load:<peer>`.
pub const SUBJECT: &str = "load";

/// A bearer token and its subject (peers ack as `<subject>:<peer>`, as the server demands).
#[derive(Debug, Clone)]
pub struct Credentials {
    pub token: String,
    pub subject: String,
    /// The HS256 secret, when the token was minted here (so its verification can be timed).
    pub secret: Option<Vec<u8>>,
}

impl Credentials {
    /// A token someone else minted; its `sub` is read (not verified: the server does that).
    ///
    /// # Errors
    /// A token that is not a JWT with a string `sub`.
    pub fn given(token: &str) -> Result<Credentials> {
        let payload = token
            .split('.')
            .nth(1)
            .ok_or_else(|| anyhow!("--token is not a JWT (three dot-separated parts)"))?;
        let claims: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(payload.trim_end_matches('='))
                .context("--token payload is not base64url")?,
        )
        .context("--token payload is not JSON")?;
        let subject = claims["sub"]
            .as_str()
            .ok_or_else(|| anyhow!("--token has no string sub"))?
            .to_string();
        Ok(Credentials {
            token: token.to_string(),
            subject,
            secret: None,
        })
    }

    /// An `admin`-on-`*` token for [`SUBJECT`] signed with `secret`, valid for a day.
    ///
    /// # Errors
    /// If minting fails (an empty secret).
    pub fn mint(secret: &[u8]) -> Result<Credentials> {
        let grants = [("*".to_string(), Right::Admin)];
        let token = jwt::mint(
            secret,
            &MintRequest {
                subject: SUBJECT,
                grants: &grants,
                ttl: Duration::from_secs(86_400),
                issuer: None,
                audience: None,
            },
            SystemClock.now_millis(),
        )
        .map_err(anyhow::Error::msg)?;
        Ok(Credentials {
            token,
            subject: SUBJECT.to_string(),
            secret: Some(secret.to_vec()),
        })
    }

    /// The `Authorization` header value.
    pub fn header(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// The peer id `peer` acks as: one of the subject's devices.
    pub fn peer_id(&self, peer: &str) -> String {
        format!("{}:{peer}", self.subject)
    }
}

/// Mean time of one verification of `creds`' token by the server's verifier (same secret,
/// same code), over `n` verifications; `None` when the secret is not known (`--target`).
///
/// # Errors
/// If the verifier cannot be built or refuses the token.
pub fn verification_cost(creds: &Credentials, dir: &Path, n: u32) -> Result<Option<Duration>> {
    let Some(secret) = &creds.secret else {
        return Ok(None);
    };
    let file = dir.join("verify-secret");
    std::fs::write(&file, secret)?;
    let verifier = JwtVerifier::new(
        &KeyFiles {
            secret_file: Some(file),
            ..KeyFiles::default()
        },
        Arc::new(SystemClock),
    )
    .map_err(anyhow::Error::msg)?;
    verifier
        .verify(&creds.token)
        .map_err(|r| anyhow!("the load token does not verify: {}", r.message()))?;
    let started = Instant::now();
    for _ in 0..n {
        let _ = std::hint::black_box(verifier.verify(std::hint::black_box(&creds.token)));
    }
    Ok(Some(started.elapsed() / n.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_credentials_read_back_and_verify() {
        let minted = Credentials::mint(b"a load-test secret of 32 bytes!!").expect("mint");
        let given = Credentials::given(&minted.token).expect("a JWT");
        assert_eq!(given.subject, SUBJECT);
        assert_eq!(given.peer_id("peer-1"), "load:peer-1");
        assert!(Credentials::given("nonsense").is_err());
        let dir = tempfile::tempdir().expect("dir");
        let cost = verification_cost(&minted, dir.path(), 10).expect("verifies");
        assert!(cost.is_some());
        assert_eq!(verification_cost(&given, dir.path(), 10).expect("ok"), None);
    }
}
