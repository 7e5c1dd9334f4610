//! Rate limiting (GCRA, `governor`) per caller and class of endpoint, before anything
//! else runs: a limited request never reaches a handler, the database or the
//! idempotency store, so a later retry with the same Idempotency-Key is a first try.
//!
//! The caller is the token's `sub` when the request carries a valid bearer token, else
//! the client IP; gateway callbacks (`/v1/gateways/...`, no token) are always keyed by
//! IP. Admin tokens are exempt unless `rate_limits.limit_admins`. Health, readiness,
//! metrics and the API docs are never limited. Every limited response carries the
//! IETF draft headers `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`;
//! a refusal is `429 rate_limited` with `Retry-After`.
use std::{
    net::SocketAddr,
    num::NonZeroU32,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    extract::{ConnectInfo, MatchedPath, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::Response,
};
use governor::{
    clock::{Clock, DefaultClock},
    middleware::StateInformationMiddleware,
    state::keyed::DefaultKeyedStateStore,
    Quota, RateLimiter,
};

use super::{
    auth::Auth,
    error::{ceil_secs, ApiError},
};
use crate::{
    config::{Limit, RateLimitSettings},
    domain::Caller,
    telemetry::metrics,
};

type Keyed = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// Which limit a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Money-moving and other state-changing requests (POST, PUT, PATCH, DELETE).
    Write,
    Read,
    /// Unauthenticated gateway callbacks, keyed by client IP.
    Callback,
    /// Never limited: health, readiness, metrics, API docs.
    Exempt,
}

impl Class {
    pub fn of(method: &Method, route: Option<&str>) -> Self {
        let path = route.unwrap_or("/v1/unmatched");
        if path.starts_with("/v1/gateways/") {
            Class::Callback
        } else if !path.starts_with("/v1/") {
            Class::Exempt
        } else if method == Method::GET || method == Method::HEAD {
            Class::Read
        } else {
            Class::Write
        }
    }

    fn label(self) -> &'static str {
        match self {
            Class::Write => "write",
            Class::Read => "read",
            Class::Callback => "callback",
            Class::Exempt => "exempt",
        }
    }
}

struct Bucket {
    limiter: Keyed,
    limit: u32,
    replenish: Duration,
}

impl Bucket {
    fn new(limit: &Limit) -> Option<Self> {
        let burst = NonZeroU32::new(limit.burst)?;
        if !(limit.per_second.is_finite() && limit.per_second > 0.0) {
            return None;
        }
        let replenish = Duration::from_secs_f64(1.0 / limit.per_second).max(Duration::from_nanos(1));
        let quota = Quota::with_period(replenish)?.allow_burst(burst);
        Some(Self {
            limiter: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            limit: burst.get(),
            replenish,
        })
    }
}

/// The limiters of one server.
pub struct RateLimits {
    auth: Auth,
    write: Option<Bucket>,
    read: Option<Bucket>,
    callback: Option<Bucket>,
    limit_admins: bool,
    checks: AtomicU64,
}

impl RateLimits {
    /// A class whose `burst` is 0 or `per_second` is not positive is not limited.
    pub fn new(settings: &RateLimitSettings, auth: Auth) -> Arc<Self> {
        let bucket = |limit: &Limit| if settings.enabled { Bucket::new(limit) } else { None };
        Arc::new(Self {
            auth,
            write: bucket(&settings.write),
            read: bucket(&settings.read),
            callback: bucket(&settings.callback),
            limit_admins: settings.limit_admins,
            checks: AtomicU64::new(0),
        })
    }

    fn bucket(&self, class: Class) -> Option<&Bucket> {
        match class {
            Class::Write => self.write.as_ref(),
            Class::Read => self.read.as_ref(),
            Class::Callback => self.callback.as_ref(),
            Class::Exempt => None,
        }
    }

    /// Forgets callers whose buckets are full again, now and then, so the key store
    /// does not grow with every caller ever seen.
    fn housekeeping(&self) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            for bucket in [&self.write, &self.read, &self.callback].into_iter().flatten() {
                bucket.limiter.retain_recent();
                bucket.limiter.shrink_to_fit();
            }
        }
    }
}

fn set_headers(headers: &mut HeaderMap, limit: u32, remaining: u32, reset: u64) {
    headers.insert("ratelimit-limit", HeaderValue::from(limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(remaining));
    headers.insert("ratelimit-reset", HeaderValue::from(reset));
}

/// The middleware (`axum::middleware::from_fn_with_state`). A verified caller is left
/// in the request's extensions, so the `Caller` extractor does not verify twice.
pub async fn enforce(State(limits): State<Arc<RateLimits>>, mut request: Request, next: Next) -> Response {
    let class = Class::of(request.method(), request.extensions().get::<MatchedPath>().map(MatchedPath::as_str));
    let Some(bucket) = limits.bucket(class) else { return next.run(request).await };
    let caller = if class == Class::Callback {
        None
    } else {
        super::auth::bearer_token(request.headers()).ok().and_then(|token| limits.auth.verify(token).ok())
    };
    let key = match &caller {
        Some(caller) if caller.is_admin() && !limits.limit_admins => {
            request.extensions_mut().insert(caller.clone());
            return next.run(request).await;
        }
        Some(caller) => format!("sub:{}", caller.subject),
        None => {
            let ip = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
            format!("ip:{}", ip.map_or_else(|| "unknown".to_string(), |ip| ip.to_string()))
        }
    };
    limits.housekeeping();
    match bucket.limiter.check_key(&key) {
        Ok(snapshot) => {
            if let Some(caller) = caller {
                request.extensions_mut().insert::<Caller>(caller);
            }
            let remaining = snapshot.remaining_burst_capacity();
            let reset = ceil_secs(bucket.replenish * bucket.limit.saturating_sub(remaining));
            let mut response = next.run(request).await;
            set_headers(response.headers_mut(), bucket.limit, remaining, reset);
            response
        }
        Err(not_until) => {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let secs = ceil_secs(wait).max(1);
            metrics::rate_limited(class.label());
            tracing::debug!(%key, class = class.label(), wait = secs, "rate limited");
            let mut response = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many requests; retry in {secs} s"),
            )
            .with_retry_after(wait);
            set_headers(response.headers_mut(), bucket.limit, 0, secs);
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_method_and_route() {
        assert_eq!(Class::of(&Method::POST, Some("/v1/transfers")), Class::Write);
        assert_eq!(Class::of(&Method::GET, Some("/v1/transfers/{transfer_id}")), Class::Read);
        assert_eq!(Class::of(&Method::POST, Some("/v1/gateways/{gateway}/callbacks")), Class::Callback);
        assert_eq!(Class::of(&Method::GET, Some("/health")), Class::Exempt);
        assert_eq!(Class::of(&Method::GET, Some("/metrics")), Class::Exempt);
        assert_eq!(Class::of(&Method::GET, None), Class::Read);
    }

    #[test]
    fn a_burst_is_allowed_then_refused_until_replenished() {
        // One token per 500 ms: slow enough that the checks below never straddle a
        // replenishment, even on a loaded machine.
        let bucket = Bucket::new(&Limit { per_second: 2.0, burst: 2 }).expect("bucket");
        let key = "sub:alice".to_string();
        assert_eq!(bucket.limiter.check_key(&key).map(|s| s.remaining_burst_capacity()).ok(), Some(1));
        assert_eq!(bucket.limiter.check_key(&key).map(|s| s.remaining_burst_capacity()).ok(), Some(0));
        assert!(bucket.limiter.check_key(&key).is_err());
        assert!(bucket.limiter.check_key(&"sub:bob".to_string()).is_ok(), "callers have their own buckets");
        std::thread::sleep(Duration::from_millis(600));
        assert!(bucket.limiter.check_key(&key).is_ok());
    }

    #[test]
    fn a_class_without_a_positive_rate_or_burst_is_not_limited() {
        assert!(Bucket::new(&Limit { per_second: 0.0, burst: 5 }).is_none());
        assert!(Bucket::new(&Limit { per_second: 5.0, burst: 0 }).is_none());
    }
}
