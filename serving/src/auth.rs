//! Bearer API keys with scopes (ARCHITECTURE.md §7): `ingest` for `POST /v1/events`, `read` for the
//! `GET` routes, `admin` for erasure. A key holds only the scopes it lists.

use axum::http::{HeaderMap, StatusCode, header};
use tandem_common::config::{ApiKey, Scope};

use crate::error::ApiError;

/// The keys the server accepts.
#[derive(Debug, Clone)]
pub struct Keys {
    keys: Vec<(String, Vec<u8>, Vec<Scope>)>,
    enabled: bool,
}

impl Keys {
    /// Checks requests against `keys`.
    pub fn new(keys: &[ApiKey]) -> Self {
        Keys {
            keys: keys
                .iter()
                .map(|k| {
                    (
                        k.name.clone(),
                        k.key.expose().as_bytes().to_vec(),
                        k.scopes.clone(),
                    )
                })
                .collect(),
            enabled: true,
        }
    }

    /// Lets every request through (the demo's `--no-auth`).
    pub fn disabled() -> Self {
        Keys {
            keys: Vec::new(),
            enabled: false,
        }
    }

    /// Whether keys are checked.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The name of the key in `headers` if it holds `scope`; 401 without a known key, 403
    /// with a key that lacks the scope.
    pub fn check(&self, headers: &HeaderMap, scope: Scope) -> Result<Option<&str>, ApiError> {
        if !self.enabled {
            return Ok(None);
        }
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "missing `Authorization: Bearer <api key>` header",
                )
            })?;
        // Compare against every key in full, so the time taken does not tell which matched.
        let mut found = None;
        for (name, key, scopes) in &self.keys {
            if constant_time_eq(key, token.as_bytes()) {
                found = Some((name.as_str(), scopes));
            }
        }
        let (name, scopes) = found.ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown API key")
        })?;
        if !scopes.contains(&scope) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("API key `{name}` lacks the `{}` scope", scope_name(scope)),
            ));
        }
        Ok(Some(name))
    }
}

/// The config spelling of `scope`.
pub fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Ingest => "ingest",
        Scope::Read => "read",
        Scope::Admin => "admin",
        Scope::Sql => "sql",
    }
}

/// Whether the key `a` is the token `b`: a token of another length never is; one of the same
/// length is compared in constant time (`subtle`), so the time taken does not tell how many of
/// its bytes are right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_common::config::Secret;

    fn keys() -> Keys {
        Keys::new(&[
            ApiKey {
                name: "shop".into(),
                key: Secret::new("shop-key-0123456789"),
                scopes: vec![Scope::Ingest, Scope::Read],
            },
            ApiKey {
                name: "ops".into(),
                key: Secret::new("ops-key-0123456789"),
                scopes: vec![Scope::Admin],
            },
        ])
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn scopes_are_checked_per_key() {
        let k = keys();
        assert_eq!(
            k.check(&bearer("shop-key-0123456789"), Scope::Read)
                .unwrap(),
            Some("shop")
        );
        let e = k
            .check(&bearer("shop-key-0123456789"), Scope::Admin)
            .unwrap_err();
        assert_eq!((e.status(), e.code()), (StatusCode::FORBIDDEN, "forbidden"));
        let e = k
            .check(&bearer("ops-key-0123456789"), Scope::Read)
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            k.check(&bearer("ops-key-0123456789"), Scope::Admin)
                .unwrap(),
            Some("ops")
        );
    }

    #[test]
    fn missing_or_unknown_keys_are_401() {
        let k = keys();
        for h in [
            HeaderMap::new(),
            bearer("shop-key-012345678"),
            bearer("shop-key-01234567890"),
            bearer(""),
        ] {
            let e = k.check(&h, Scope::Read).unwrap_err();
            assert_eq!(e.status(), StatusCode::UNAUTHORIZED, "{h:?}");
        }
        assert_eq!(
            Keys::disabled()
                .check(&HeaderMap::new(), Scope::Admin)
                .unwrap(),
            None
        );
    }

    #[test]
    fn constant_time_eq_is_eq() {
        for (a, b) in [("", ""), ("a", "a"), ("a", "b"), ("ab", "a"), ("a", "ab")] {
            assert_eq!(
                constant_time_eq(a.as_bytes(), b.as_bytes()),
                a == b,
                "{a} {b}"
            );
        }
        // Lengths that differ by a multiple of 256 or 65,536 are still different: the key
        // followed by junk is not the key.
        let long = "x".repeat(256);
        assert!(!constant_time_eq(long.as_bytes(), b""));
        let key = "k3y";
        let padded = format!("{key}{}", "j".repeat(65_536));
        assert!(!constant_time_eq(key.as_bytes(), padded.as_bytes()));
        assert!(!constant_time_eq(padded.as_bytes(), key.as_bytes()));
    }
}
