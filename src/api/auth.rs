//! Bearer JWTs (HS256): `sub` is the user id, `role` is `user` or `admin`, `iss` and
//! `aud` must be the configured issuer and audience. Verification also accepts the
//! keys of `auth.previous_jwt_secrets`, so the signing key can rotate without logging
//! everyone out.
use std::time::Duration;

use axum::{extract::FromRequestParts, http::request::Parts};
use jsonwebtoken::{decode, encode, errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::{error::ApiError, AppState};
use crate::{
    config::AuthSettings,
    domain::{Caller, Role},
};

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: Role,
    iss: String,
    aud: String,
    exp: u64,
    iat: u64,
}

#[derive(Clone)]
pub struct Auth {
    encoding: EncodingKey,
    /// The current key first, then the previous ones.
    decoding: Vec<DecodingKey>,
    validation: Validation,
    issuer: String,
    audience: String,
}

impl Auth {
    pub fn from_settings(settings: &AuthSettings) -> Self {
        let current = settings.jwt_secret.expose_secret().as_bytes();
        let previous = settings.previous_jwt_secrets.iter().map(|s| s.expose_secret().as_bytes());
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        Self {
            encoding: EncodingKey::from_secret(current),
            decoding: std::iter::once(current).chain(previous).map(DecodingKey::from_secret).collect(),
            validation,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
        }
    }

    /// `secret` alone, with the default issuer and audience.
    pub fn new(secret: &str) -> Self {
        Self::from_settings(&AuthSettings::with_secret(secret))
    }

    pub fn token(&self, subject: &str, role: Role, ttl: Duration) -> anyhow::Result<String> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: subject.to_string(),
            role,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            exp: now + ttl.as_secs(),
        };
        Ok(encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?)
    }

    pub fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        let mut first_error = None;
        for key in &self.decoding {
            match decode::<Claims>(token, key, &self.validation) {
                Ok(data) => return Ok(Caller { subject: data.claims.sub, role: data.claims.role }),
                // Another key may have signed it.
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {
                    first_error.get_or_insert(e);
                }
                // Signed by this key but unacceptable (expired, wrong audience...).
                Err(e) => return Err(ApiError::unauthorized(format!("invalid bearer token: {e}"))),
            }
        }
        let detail = first_error.map_or_else(|| "no verification key".to_string(), |e| e.to_string());
        Err(ApiError::unauthorized(format!("invalid bearer token: {detail}")))
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        // Already verified by the rate limiter.
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        state.auth.verify(bearer_token(&parts.headers)?)
    }
}

/// The token of an `Authorization: Bearer <token>` header (the extractor above and the
/// rate limiter read it the same way).
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Result<&str, ApiError> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token> header"))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::unauthorized("Authorization header must be 'Bearer <token>'"))?;
    Ok(token.trim())
}

/// Admin-only endpoints.
pub fn require_admin(caller: &Caller) -> Result<(), ApiError> {
    if caller.is_admin() {
        Ok(())
    } else {
        Err(ApiError::forbidden("this endpoint is for admins"))
    }
}

/// A user may act only for themself; admins for anyone.
pub fn require_self_or_admin(caller: &Caller, user: &crate::domain::UserId) -> Result<(), ApiError> {
    if caller.may_act_for(user) {
        Ok(())
    } else {
        Err(ApiError::forbidden("you may only access your own wallets and transfers"))
    }
}
