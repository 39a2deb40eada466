//! Every refusal as JSON: `{"error": CODE, "message": TEXT}`, or for a tenant
//! file with problems `{"errors": [{"field", "message"}]}` (422).

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;
use usersync_admin::AdminError;
use usersync_core::Problem;

/// An error body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable code: `unauthorized`, `not_found`, `stale_version`, `too_large`, …
    pub error: String,
    /// What went wrong and what to do.
    pub message: String,
}

/// One problem of a tenant file.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FieldProblem {
    /// The field, as a path: `provider_settings.client_id`, `field_mapping.alias`.
    pub field: String,
    pub message: String,
}

/// Every problem of a refused tenant file; nothing was saved.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProblemsBody {
    pub errors: Vec<FieldProblem>,
}

/// A refused body that may hold a tenant file: its problems by field, or why
/// the body itself is not usable (a body of the wrong shape).
/// Only the document uses it: [`ApiError`] writes both shapes.
#[allow(dead_code)]
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum RefusedBody {
    Problems(ProblemsBody),
    Unusable(ErrorBody),
}

#[derive(Debug)]
pub enum ApiError {
    Plain {
        status: StatusCode,
        code: &'static str,
        message: String,
        retry_after: Option<u64>,
    },
    Problems(Vec<Problem>),
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::Plain {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// The same answer for a tenant that does not exist and one the token may
    /// not see, so ids cannot be probed.
    pub fn no_tenant(id: &str) -> ApiError {
        ApiError::from(usersync_admin::no_tenant(id))
    }

    pub fn rate_limited(retry_after: u64) -> ApiError {
        ApiError::Plain {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "rate_limited",
            message: format!("too many requests with this token; try again in {retry_after} s"),
            retry_after: Some(retry_after),
        }
    }

    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the request body is over {limit} bytes; send a smaller one (a tenant file is a few KB)"),
        )
    }
}

impl From<AdminError> for ApiError {
    fn from(err: AdminError) -> Self {
        match err {
            AdminError::NotFound(text) => ApiError::new(StatusCode::NOT_FOUND, "not_found", text),
            AdminError::Conflict(text) => ApiError::new(StatusCode::CONFLICT, "conflict", text),
            AdminError::Invalid(problems) => ApiError::Problems(problems),
            AdminError::Stale(text) => ApiError::new(StatusCode::PRECONDITION_FAILED, "stale_version", text),
            AdminError::Upstream(text) => ApiError::new(StatusCode::BAD_GATEWAY, "pbx_unavailable", text),
            AdminError::Other(err) => {
                // The cause goes to the log only: it may name internals.
                tracing::error!(error = format!("{err:#}"), "request failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the request could not be completed (the database or broker did not answer); try again",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Plain {
                status,
                code,
                message,
                retry_after,
            } => {
                let mut response = (
                    status,
                    Json(ErrorBody {
                        error: code.to_owned(),
                        message,
                    }),
                )
                    .into_response();
                if let Some(secs) = retry_after {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                }
                if status == StatusCode::UNAUTHORIZED {
                    response
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                }
                response
            }
            ApiError::Problems(problems) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(ProblemsBody {
                    errors: problems
                        .into_iter()
                        .map(|p| FieldProblem {
                            field: p.field,
                            message: p.message,
                        })
                        .collect(),
                }),
            )
                .into_response(),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
