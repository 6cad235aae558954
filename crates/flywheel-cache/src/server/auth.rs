//! Who may do what: a token from `Authorization: Bearer TOKEN`, or the password of basic auth
//! (what Nix sends from its netrc file), looked up by its SHA-256.

use axum::http::{header, HeaderMap};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::{Cache, State};
use crate::index::{Scope, TokenRecord, Visibility};
use crate::token;

/// Why a request may not go on.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// No token, or one that is unknown or expired: 401.
    Unauthenticated(&'static str),
    /// A valid token without the needed scope on this cache: 403.
    Forbidden(String),
}

fn presented(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    if let Some(t) = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")) {
        return Some(t.trim().to_string());
    }
    let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    Some(password.to_string())
}

pub fn authorize(state: &State, cache: &Cache, headers: &HeaderMap, needed: Scope, now: i64) -> Result<(), Denied> {
    if needed == Scope::Read && cache.record.visibility == Visibility::Public {
        return Ok(());
    }
    let record = valid_token(state, headers, now)?;
    if record.cache != cache.record.name {
        return Err(Denied::Forbidden(format!("the token is for cache {}, not {}", record.cache, cache.record.name)));
    }
    if !record.scope.allows(needed) {
        return Err(Denied::Forbidden(format!("the token's scope is {}; this needs {}", record.scope, needed)));
    }
    Ok(())
}

/// Publishing a canary run: a token of the canary scope (or admin), of any cache, since runs
/// belong to the server's lanes rather than to a cache.
pub fn authorize_canary(state: &State, headers: &HeaderMap, now: i64) -> Result<(), Denied> {
    let record = valid_token(state, headers, now)?;
    if !record.scope.allows(Scope::Canary) {
        return Err(Denied::Forbidden(format!(
            "the token's scope is {}; publishing canary runs needs a canary token (flywheel cache token create --scope canary)",
            record.scope
        )));
    }
    Ok(())
}

/// The presented token, known and not expired.
fn valid_token(state: &State, headers: &HeaderMap, now: i64) -> Result<TokenRecord, Denied> {
    let Some(text) = presented(headers) else {
        return Err(Denied::Unauthenticated("this needs a token (Authorization: Bearer, or a netrc password)"));
    };
    let record = state
        .index()
        .token(&token::hash(&text))
        .map_err(|_| Denied::Unauthenticated("the token could not be checked"))?
        .ok_or(Denied::Unauthenticated("unknown token"))?;
    if record.expires_at.is_some_and(|t| t <= now) {
        return Err(Denied::Unauthenticated("the token has expired"));
    }
    Ok(record)
}
