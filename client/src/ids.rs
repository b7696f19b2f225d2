//! Random identifiers: opIds, peer ids and yrs client ids.

use rand::Rng;

/// A fresh opId: 128 random bits, so it is unique across clients, restarts and server resets
/// without any coordination.
pub fn op_id() -> String {
    format!("op-{:032x}", rand::thread_rng().gen::<u128>())
}

/// A fresh peer id suffix (persisted once per database).
pub fn peer_suffix() -> String {
    format!("{:016x}", rand::thread_rng().gen::<u64>())
}

/// A yrs client id for one load of a document: random, non-zero and below 2^32, as the
/// JavaScript `yjs` package expects. A new one per load (as Yjs does per session) means a
/// document rebuilt from disk never reuses clocks it may already have used.
pub fn yrs_client_id() -> u64 {
    rand::thread_rng().gen_range(1..u64::from(u32::MAX))
}

/// The `sub` claim of a JWT, read without verifying it (the server verifies; the client only
/// needs it to name its peer as the server requires: `sub` or `sub:…`).
pub fn jwt_subject(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("sub")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_in_range() {
        assert_ne!(op_id(), op_id());
        for _ in 0..1000 {
            let id = yrs_client_id();
            assert!(id > 0 && id < 1 << 32);
        }
    }

    #[test]
    fn subject_of_a_token() {
        use base64::Engine as _;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let t = format!(
            "{}.{}.sig",
            e.encode(br#"{"alg":"HS256"}"#),
            e.encode(br#"{"sub":"alice","exp":1}"#)
        );
        assert_eq!(jwt_subject(&t).as_deref(), Some("alice"));
        assert_eq!(jwt_subject("garbage"), None);
    }
}
