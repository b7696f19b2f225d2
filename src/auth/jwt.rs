//! [`JwtVerifier`], the default [`Authenticate`]: verifies JWT bearer tokens (RFC 7519) with
//! the `jsonwebtoken` crate against an HS256 shared secret and/or a JWKS file (RS256, ES256,
//! EdDSA; the token's `kid` selects the key), and turns their `replicate.grants` claim into a
//! [`Principal`]. Also [`mint`], the HS256 minting behind `replicate-server token`.
//!
//! # Invariants
//! - Keys are decoded once (at start, and on [`JwtVerifier::reload`]), never per request: a
//!   verification is one header parse, one signature check and one claims parse.
//! - The algorithm is the key's, never the token's choice: an HS256 token is checked only
//!   against the shared secret, any other only against the JWKS key its `kid` names, and
//!   only if that key is for the token's `alg`. `alg: none` does not parse.
//! - Time comes from the injected [`Clock`]; [`JwtVerifier::verify_at`] takes it as a number so
//!   tests pass one.
//! - Nothing here logs a token or says why a signature failed: a client sees
//!   [`Rejection::message`], an operator the failure's kind at debug level.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix_web::dev::RequestHead;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use replicate_actors::Clock;
use serde::Deserialize;
use serde_json::{json, Value};

use super::grants::{Grants, Right};
use super::{bearer_token, Authenticate, Principal, Rejection};

/// Longest token accepted, in bytes. Real tokens are well under 2 KiB; the cap bounds the
/// work an unauthenticated client can ask for (base64 and JSON decoding happen before the
/// signature is known to be good).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Clock skew tolerated for `nbf` and `iat`, in seconds. `exp` gets none: a token is refused
/// from its expiry on, so an event stream can end exactly then.
pub const LEEWAY_SECS: u64 = 60;

/// Largest JWKS file read, and most keys kept from it.
const MAX_JWKS_BYTES: u64 = 1024 * 1024;
const MAX_JWKS_KEYS: usize = 100;

/// Key configuration, read by the binary from its flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFiles {
    /// HS256 shared secret: the file's bytes, trailing newline trimmed.
    pub secret_file: Option<PathBuf>,
    /// A JWKS JSON file (`{"keys":[...]}`), re-read by [`JwtVerifier::reload`].
    pub jwks_file: Option<PathBuf>,
    /// When set, tokens must carry this `iss`.
    pub issuer: Option<String>,
    /// When set, tokens must carry this `aud` (or a list holding it).
    pub audience: Option<String>,
}

impl KeyFiles {
    /// Whether any key is configured (authentication is on).
    pub fn any(&self) -> bool {
        self.secret_file.is_some() || self.jwks_file.is_some()
    }
}

/// A decoded key and the one algorithm it verifies.
struct Key {
    key: DecodingKey,
    validation: Validation,
}

/// The JWT verifier. Cheap to share (`Arc`); [`Self::reload`] swaps the JWKS keys in place.
pub struct JwtVerifier {
    secret: Option<Key>,
    jwks_file: Option<PathBuf>,
    issuer: Option<String>,
    audience: Option<String>,
    jwks: RwLock<Arc<HashMap<String, Key>>>,
    clock: Arc<dyn Clock>,
}

/// The claims replicate reads; anything else in the token is ignored.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    /// NumericDate: seconds since the epoch, possibly fractional.
    exp: f64,
    #[serde(default)]
    nbf: Option<f64>,
    #[serde(default)]
    iat: Option<f64>,
    #[serde(default)]
    replicate: Option<ReplicateClaim>,
}

#[derive(Deserialize)]
struct ReplicateClaim {
    #[serde(default)]
    grants: BTreeMap<String, String>,
}

/// A NumericDate as epoch milliseconds; `None` when negative or not finite.
fn millis(secs: f64) -> Option<u64> {
    (secs.is_finite() && secs >= 0.0).then(|| (secs * 1000.0).min(u64::MAX as f64) as u64)
}

impl JwtVerifier {
    /// Reads and decodes the configured keys.
    ///
    /// # Errors
    /// No key configured; a secret file that cannot be read or is empty; a JWKS file that
    /// cannot be read, is not a JWKS, or holds no usable key.
    pub fn new(files: &KeyFiles, clock: Arc<dyn Clock>) -> Result<JwtVerifier, String> {
        if !files.any() {
            return Err("no key configured: give --auth-secret-file or --auth-jwks-file".into());
        }
        let secret = match &files.secret_file {
            Some(path) => Some(Key {
                key: DecodingKey::from_secret(&read_secret(path)?)
                    .map_err(|e| format!("secret in {}: {e}", path.display()))?,
                validation: validation(Algorithm::HS256, files),
            }),
            None => None,
        };
        let jwks = match &files.jwks_file {
            Some(path) => load_jwks(path, files)?,
            None => HashMap::new(),
        };
        Ok(JwtVerifier {
            secret,
            jwks_file: files.jwks_file.clone(),
            issuer: files.issuer.clone(),
            audience: files.audience.clone(),
            jwks: RwLock::new(Arc::new(jwks)),
            clock,
        })
    }

    /// Re-reads the JWKS file (on SIGHUP): new keys verify from now on, removed ones no
    /// longer do. On any error the keys in use stay as they were. Answers how many keys are
    /// now in use (0 without a JWKS file).
    ///
    /// # Errors
    /// What [`Self::new`] says of a bad JWKS file.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(path) = &self.jwks_file else {
            return Ok(0);
        };
        let files = KeyFiles {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            ..KeyFiles::default()
        };
        let keys = load_jwks(path, &files)?;
        let n = keys.len();
        *self.jwks.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok(n)
    }

    /// Verifies `token` at the clock's current time.
    ///
    /// # Errors
    /// As [`Self::verify_at`].
    pub fn verify(&self, token: &str) -> Result<Principal, Rejection> {
        self.verify_at(token, self.clock.now_millis())
    }

    /// Verifies `token` as of `now_millis` (epoch milliseconds) and answers its principal.
    ///
    /// # Errors
    /// [`Rejection::TooLong`] over [`MAX_TOKEN_BYTES`]; [`Rejection::Expired`] from `exp` on;
    /// [`Rejection::NotYetValid`] for `nbf` or `iat` more than [`LEEWAY_SECS`] ahead;
    /// [`Rejection::BadGrants`] for a `replicate.grants` claim that is not pattern → right;
    /// [`Rejection::Invalid`] for everything else (malformed, `alg: none`, an algorithm the
    /// key is not for, unknown `kid`, bad signature, missing `sub` or `exp`, wrong `iss` or
    /// `aud`).
    pub fn verify_at(&self, token: &str, now_millis: u64) -> Result<Principal, Rejection> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Rejection::TooLong);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid("header", &e))?;
        let jwks;
        let key = if header.alg == Algorithm::HS256 {
            self.secret.as_ref().ok_or_else(|| {
                tracing::debug!("HS256 token but no shared secret configured");
                Rejection::Invalid
            })?
        } else {
            jwks = Arc::clone(&self.jwks.read().unwrap_or_else(|e| e.into_inner()));
            let kid = header.kid.as_deref().unwrap_or("");
            let key = jwks.get(kid).ok_or_else(|| {
                tracing::debug!(kid, "no key with this kid");
                Rejection::Invalid
            })?;
            if !key.validation.algorithms.contains(&header.alg) {
                tracing::debug!(kid, alg = ?header.alg, "the key is not for this algorithm");
                return Err(Rejection::Invalid);
            }
            key
        };
        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation)
            .map_err(|e| invalid("token", &e))?
            .claims;
        check_times(&claims, now_millis)?;
        if claims.sub.is_empty() {
            tracing::debug!("empty sub");
            return Err(Rejection::Invalid);
        }
        let grants = match &claims.replicate {
            Some(r) => Grants::from_claim(&r.grants).map_err(Rejection::BadGrants)?,
            None => Grants::none(),
        };
        Ok(Principal {
            subject: Some(claims.sub),
            grants,
            expires_at_millis: millis(claims.exp),
        })
    }
}

impl Authenticate for JwtVerifier {
    fn authenticate(&self, head: &RequestHead) -> Result<Principal, Rejection> {
        match bearer_token(head)? {
            Some(token) => self.verify(&token),
            None => Err(Rejection::Missing),
        }
    }
}

/// `exp` (no leeway), `nbf` and `iat` (with [`LEEWAY_SECS`]) against `now`.
fn check_times(claims: &Claims, now: u64) -> Result<(), Rejection> {
    let exp = millis(claims.exp).ok_or(Rejection::Invalid)?;
    if now >= exp {
        return Err(Rejection::Expired);
    }
    let ahead = now.saturating_add(LEEWAY_SECS * 1000);
    for (name, at) in [("nbf", claims.nbf), ("iat", claims.iat)] {
        if let Some(at) = at {
            let future = match millis(at) {
                Some(at) => at > ahead,
                None => true,
            };
            if future {
                tracing::debug!(claim = name, "token not valid yet");
                return Err(Rejection::NotYetValid);
            }
        }
    }
    Ok(())
}

fn invalid(what: &str, e: &jsonwebtoken::errors::Error) -> Rejection {
    // The kind only: jsonwebtoken's errors never hold the token itself.
    tracing::debug!(what, kind = ?e.kind(), "token refused");
    Rejection::Invalid
}

/// The checks jsonwebtoken does for one algorithm: signature, required `sub` and `exp`, and
/// `iss` / `aud` when configured. Times are checked by [`check_times`] with the injected
/// clock instead of jsonwebtoken's own.
fn validation(alg: Algorithm, files: &KeyFiles) -> Validation {
    let mut v = Validation::new(alg);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.leeway = 0;
    let mut required = vec!["exp", "sub"];
    if let Some(iss) = &files.issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    match &files.audience {
        Some(aud) => {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        // Identity providers put an `aud` in their tokens; with none configured it is not
        // ours to judge.
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&required);
    v
}

/// A secret file's bytes with trailing newlines (`\n`, `\r\n`) trimmed.
fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let mut bytes =
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    while matches!(bytes.last(), Some(b'\n' | b'\r')) {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    if bytes.len() < 32 {
        tracing::warn!(
            file = %path.display(),
            "the HS256 secret is shorter than 32 bytes; use a longer random one"
        );
    }
    Ok(bytes)
}

/// The algorithm a JWK verifies: its `alg` when given, else the one its key type implies.
fn jwk_algorithm(jwk: &Jwk) -> Result<Algorithm, String> {
    if let Some(alg) = jwk.common.key_algorithm {
        return Algorithm::try_from(alg).map_err(|_| format!("unsupported alg {alg:?}"));
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Ok(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Ok(Algorithm::ES256),
            EllipticCurve::P384 => Ok(Algorithm::ES384),
            ref other => Err(format!("unsupported curve {other:?}")),
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Ok(Algorithm::EdDSA)
        }
        _ => Err("unsupported key type".into()),
    }
}

/// Reads a JWKS file into kid → key. Keys without a `kid`, for encryption (`use: enc`), of
/// an unsupported type, or symmetric (use `--auth-secret-file`) are skipped with a warning.
fn load_jwks(path: &Path, files: &KeyFiles) -> Result<HashMap<String, Key>, String> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > MAX_JWKS_BYTES {
        return Err(format!(
            "{shown} is {len} bytes; a JWKS over {MAX_JWKS_BYTES} bytes is refused"
        ));
    }
    let set: Value = serde_json::from_reader(std::io::Read::take(file, MAX_JWKS_BYTES))
        .map_err(|e| format!("{shown} is not JSON: {e}"))?;
    let keys = set
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{shown} is not a JWKS: no \"keys\" array"))?;
    let mut out = HashMap::new();
    for (i, raw) in keys.iter().enumerate() {
        let skip = |why: String| tracing::warn!(file = %shown, key = i, "skipping JWKS key: {why}");
        let jwk: Jwk = match serde_json::from_value(raw.clone()) {
            Ok(jwk) => jwk,
            Err(e) => {
                skip(format!("not a JWK: {e}"));
                continue;
            }
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            skip("no kid".into());
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            skip(format!("kid {kid:?} is not for signatures"));
            continue;
        }
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            skip(format!(
                "kid {kid:?} is a symmetric key; give HS256 secrets with --auth-secret-file"
            ));
            continue;
        }
        let alg = match jwk_algorithm(&jwk) {
            Ok(alg) => alg,
            Err(why) => {
                skip(format!("kid {kid:?}: {why}"));
                continue;
            }
        };
        let key = match DecodingKey::from_jwk(&jwk) {
            Ok(key) => key,
            Err(e) => {
                skip(format!("kid {kid:?}: {e}"));
                continue;
            }
        };
        if out.len() == MAX_JWKS_KEYS {
            return Err(format!("{shown} holds more than {MAX_JWKS_KEYS} keys"));
        }
        let key = Key {
            key,
            validation: validation(alg, files),
        };
        if out.insert(kid.clone(), key).is_some() {
            return Err(format!("{shown}: kid {kid:?} appears twice"));
        }
    }
    if out.is_empty() {
        return Err(format!("{shown} holds no usable signing key"));
    }
    Ok(out)
}

/// What [`mint`] puts in a token.
#[derive(Debug, Clone)]
pub struct MintRequest<'a> {
    pub subject: &'a str,
    pub grants: &'a [(String, Right)],
    pub ttl: Duration,
    pub issuer: Option<&'a str>,
    pub audience: Option<&'a str>,
}

/// An HS256 token for `req`, issued at `now_millis`: `sub`, `iat`, `exp` = iat + ttl,
/// `iss`/`aud` when given, and `replicate.grants`.
///
/// # Errors
/// An empty secret or subject, a zero ttl.
pub fn mint(secret: &[u8], req: &MintRequest<'_>, now_millis: u64) -> Result<String, String> {
    if req.subject.is_empty() {
        return Err("the subject must not be empty".into());
    }
    if req.ttl.is_zero() {
        return Err("the ttl must be longer than 0".into());
    }
    let iat = now_millis / 1000;
    let grants: serde_json::Map<String, Value> = req
        .grants
        .iter()
        .map(|(p, r)| (p.clone(), json!(r.as_str())))
        .collect();
    let mut claims = json!({
        "sub": req.subject,
        "iat": iat,
        "exp": iat.saturating_add(req.ttl.as_secs().max(1)),
        "replicate": { "grants": grants },
    });
    if let Some(iss) = req.issuer {
        claims["iss"] = json!(iss);
    }
    if let Some(aud) = req.audience {
        claims["aud"] = json!(aud);
    }
    let key = EncodingKey::from_secret(secret).map_err(|e| e.to_string())?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).map_err(|e| e.to_string())
}

/// Reads a secret file as the server does (for `replicate-server token`).
///
/// # Errors
/// As [`JwtVerifier::new`] for a secret file.
pub fn secret_from_file(path: &Path) -> Result<Vec<u8>, String> {
    read_secret(path)
}

#[cfg(test)]
mod tests {
    use replicate_actors::SystemClock;

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000_000;

    fn verifier(files: impl FnOnce(&mut KeyFiles)) -> (JwtVerifier, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, [SECRET, b"\n"].concat()).expect("write secret");
        let mut f = KeyFiles {
            secret_file: Some(secret),
            ..KeyFiles::default()
        };
        files(&mut f);
        (
            JwtVerifier::new(&f, Arc::new(SystemClock)).expect("keys load"),
            dir,
        )
    }

    fn token(claims: Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET).expect("key"),
        )
        .expect("encode")
    }

    #[test]
    fn claims_table() {
        let s = NOW / 1000;
        let g = json!({ "grants": { "todos": "write" } });
        // (what, claims, expected)
        let cases: Vec<(&str, Value, Result<(), Rejection>)> = vec![
            ("good", json!({"sub":"a","exp":s+60,"replicate":g}), Ok(())),
            (
                "fractional exp",
                json!({"sub":"a","exp":(s as f64)+0.5}),
                Ok(()),
            ),
            (
                "expired",
                json!({"sub":"a","exp":s}),
                Err(Rejection::Expired),
            ),
            (
                "long expired",
                json!({"sub":"a","exp":s-3600}),
                Err(Rejection::Expired),
            ),
            ("no exp", json!({"sub":"a"}), Err(Rejection::Invalid)),
            ("no sub", json!({"exp":s+60}), Err(Rejection::Invalid)),
            (
                "numeric sub",
                json!({"sub":7,"exp":s+60}),
                Err(Rejection::Invalid),
            ),
            (
                "empty sub",
                json!({"sub":"","exp":s+60}),
                Err(Rejection::Invalid),
            ),
            (
                "string exp",
                json!({"sub":"a","exp":"soon"}),
                Err(Rejection::Invalid),
            ),
            (
                "nbf within leeway",
                json!({"sub":"a","exp":s+600,"nbf":s+60}),
                Ok(()),
            ),
            (
                "nbf past leeway",
                json!({"sub":"a","exp":s+600,"nbf":s+61}),
                Err(Rejection::NotYetValid),
            ),
            (
                "iat within leeway",
                json!({"sub":"a","exp":s+600,"iat":s+60}),
                Ok(()),
            ),
            (
                "iat past leeway",
                json!({"sub":"a","exp":s+600,"iat":s+61}),
                Err(Rejection::NotYetValid),
            ),
            (
                "foreign aud ignored",
                json!({"sub":"a","exp":s+60,"aud":"x"}),
                Ok(()),
            ),
            (
                "bad grant",
                json!({"sub":"a","exp":s+60,"replicate":{"grants":{"todos":"owner"}}}),
                Err(Rejection::BadGrants(String::new())),
            ),
        ];
        let (v, _dir) = verifier(|_| {});
        for (what, claims, expected) in cases {
            let got = v.verify_at(&token(claims), NOW).map(|_| ());
            match (&got, &expected) {
                (Err(Rejection::BadGrants(_)), Err(Rejection::BadGrants(_))) => {}
                _ => assert_eq!(got, expected, "{what}"),
            }
        }
        let p = v
            .verify_at(&token(json!({"sub":"alice","exp":s+60,"replicate":g})), NOW)
            .expect("valid");
        assert_eq!(p.subject.as_deref(), Some("alice"));
        assert_eq!(p.grants.right_on("todos"), Some(Right::Write));
        assert_eq!(p.expires_at_millis, Some((s + 60) * 1000));
    }

    #[test]
    fn issuer_and_audience_when_configured() {
        let s = NOW / 1000;
        let (v, _dir) = verifier(|f| {
            f.issuer = Some("https://id.example".into());
            f.audience = Some("replicate".into());
        });
        let ok = json!({"sub":"a","exp":s+60,"iss":"https://id.example","aud":["x","replicate"]});
        assert!(v.verify_at(&token(ok), NOW).is_ok());
        for bad in [
            json!({"sub":"a","exp":s+60,"aud":"replicate"}),
            json!({"sub":"a","exp":s+60,"iss":"https://id.example"}),
            json!({"sub":"a","exp":s+60,"iss":"https://evil.example","aud":"replicate"}),
            json!({"sub":"a","exp":s+60,"iss":"https://id.example","aud":"other"}),
        ] {
            assert_eq!(
                v.verify_at(&token(bad.clone()), NOW),
                Err(Rejection::Invalid),
                "{bad}"
            );
        }
    }

    #[test]
    fn forged_and_oversized_tokens_are_refused() {
        let s = NOW / 1000;
        let (v, _dir) = verifier(|_| {});
        let good = token(json!({"sub":"a","exp":s+60}));
        let other_key = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub":"a","exp":s+60}),
            &EncodingKey::from_secret(b"another secret, 32 bytes long!!!").expect("key"),
        )
        .expect("encode");
        let (head, rest) = good.split_once('.').expect("three parts");
        let payload = rest.split_once('.').expect("three parts").0;
        // {"alg":"none","typ":"JWT"}
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        // {"alg":"HS512"}: an algorithm the secret is not configured for
        let hs512 = format!("eyJhbGciOiJIUzUxMiJ9.{rest}");
        let unsigned = format!("{head}.{payload}.");
        for (what, t) in [
            ("other key", other_key.as_str()),
            ("alg none", none.as_str()),
            ("alg HS512", hs512.as_str()),
            ("no signature", unsigned.as_str()),
            ("garbage", "not.a.token"),
            ("empty", ""),
        ] {
            assert_eq!(v.verify_at(t, NOW), Err(Rejection::Invalid), "{what}");
        }
        let long = format!("{good}{}", "A".repeat(MAX_TOKEN_BYTES));
        assert_eq!(v.verify_at(&long, NOW), Err(Rejection::TooLong));
    }

    #[test]
    fn minted_tokens_verify_and_the_secret_file_is_trimmed() {
        let (v, dir) = verifier(|_| {});
        let grants = vec![
            ("todos".to_string(), Right::Write),
            ("team-a/*".to_string(), Right::Read),
        ];
        let secret = secret_from_file(&dir.path().join("secret")).expect("read");
        assert_eq!(secret, SECRET, "trailing newline trimmed");
        let t = mint(
            &secret,
            &MintRequest {
                subject: "alice",
                grants: &grants,
                ttl: Duration::from_secs(3600),
                issuer: None,
                audience: None,
            },
            NOW,
        )
        .expect("mint");
        let p = v.verify_at(&t, NOW + 3_599_000).expect("valid");
        assert_eq!(p.grants.right_on("team-a/x"), Some(Right::Read));
        assert_eq!(v.verify_at(&t, NOW + 3_600_000), Err(Rejection::Expired));
    }
}
