//! The API's one error type: every refusal is an HTTP status with a stable `error` code and a
//! human message, as JSON.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{message}")]
    Unauthorized { code: &'static str, message: String },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    #[error("rate limit exceeded; retry in {retry_after_secs} s")]
    TooManyRequests { retry_after_secs: u64 },
    #[error("storage failed: {0}")]
    Store(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Internal(String),
    /// Something the request needs is down or used up for now; retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    /// Any other refusal with a code of its own.
    #[error("{message}")]
    Refused { status: StatusCode, code: &'static str, message: String },
}

/// Whether a storage error means the database cannot be reached (503), not a fault (500).
fn unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        // A connection cut during its handshake reads as a protocol error.
        | sqlx::Error::Protocol(_) => true,
        // PostgreSQL's own "not now": connection exceptions (08), shutting down or starting up
        // (57P01-57P03), too many connections (53300).
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest { code, message: message.into() }
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::Unauthorized { code, message: message.into() }
    }

    pub fn refused(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self::Refused { status, code, message: message.into() }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Refused { status, .. } => *status,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Store(e) if unreachable(e) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Store(_) | Self::Migrate(_) | Self::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The stable machine-readable code (docs/api.md lists them).
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. } | Self::Unauthorized { code, .. } => code,
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::TooManyRequests { .. } => "rate_limited",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::Refused { code, .. } => code,
            Self::Unavailable(_) => "unavailable",
            Self::Store(e) if unreachable(e) => "storage_unavailable",
            Self::Store(_) | Self::Migrate(_) => "storage_error",
            Self::Internal(_) => "internal_error",
        }
    }
}

pub use cliscale_core::protocol::ErrorBody;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        // Internal details stay in the log, not in the response.
        let message = if status.is_server_error() {
            "the server could not complete the request".to_string()
        } else {
            self.to_string()
        };
        let body = ErrorBody::new(self.code(), message);
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if let Self::TooManyRequests { retry_after_secs } = self {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&retry_after_secs.max(1).to_string()).expect("digits"),
            );
        }
        response
    }
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;
