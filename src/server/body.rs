//! Request bodies as JSON, refused in the API's own error format with a message that never
//! quotes what was sent: a body holds secret values, and serde's messages quote the value
//! they could not take (`invalid type: string "…"`).

use axum::body::Bytes;
use axum::extract::{FromRequest, OptionalFromRequest, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::error_response;

/// A JSON request body of type `T` (what `axum::Json` extracts, with safe refusals).
pub struct JsonBody<T>(pub T);

/// Why a body was refused.
pub struct Refused(StatusCode, &'static str, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        error_response(self.0, self.1, &self.2)
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Refused;

    async fn from_request(request: Request, state: &S) -> Result<Self, Refused> {
        // `application/json`, any case, with parameters (`; charset=utf-8`) or without.
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(Refused(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid",
                "the request body must be JSON: send Content-Type: application/json".into(),
            ));
        }
        let bytes =
            Bytes::from_request(request, state)
                .await
                .map_err(|rejection| match rejection.status() {
                    StatusCode::PAYLOAD_TOO_LARGE => Refused(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        "the request body is larger than the server takes (its --body-limit)".into(),
                    ),
                    status => Refused(status, "invalid", "the request body could not be read".into()),
                })?;
        parse(&bytes).map(JsonBody)
    }
}

impl<S: Send + Sync, T: DeserializeOwned> OptionalFromRequest<S> for JsonBody<T> {
    type Rejection = Refused;

    /// No body at all (no Content-Type) is `None`; a body is parsed as above.
    async fn from_request(request: Request, state: &S) -> Result<Option<Self>, Refused> {
        if !request.headers().contains_key(header::CONTENT_TYPE) {
            return Ok(None);
        }
        <Self as FromRequest<S>>::from_request(request, state)
            .await
            .map(Some)
    }
}

/// `bytes` as a `T`, or a refusal naming where and what kind of problem, never the content.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Refused> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        refusal(&path, e.into_inner())
    })?;
    // One document: anything after it but white space is refused, not ignored.
    deserializer.end().map_err(|e| refusal(".", e))?;
    Ok(value)
}

fn refusal(path: &str, inner: serde_json::Error) -> Refused {
    let at = format!("at line {}, column {}", inner.line(), inner.column());
    let message = match inner.classify() {
        serde_json::error::Category::Data => {
            let text = inner.to_string();
            // Field names are the API's own words; anything else may quote a value.
            let safe = [
                "missing field",
                "unknown field",
                "duplicate field",
                "duplicate key",
            ]
            .iter()
            .any(|s| text.starts_with(s));
            let what = if safe {
                text.split(" at line ").next().unwrap_or_default().to_owned()
            } else {
                match text.rsplit_once(", expected ") {
                    Some((_, expected)) => format!(
                        "a value of the wrong type or form (expected {})",
                        expected.split(" at line ").next().unwrap_or_default()
                    ),
                    None => "a value of the wrong type or form".to_owned(),
                }
            };
            if path == "." {
                format!("the request body has {what} ({at})")
            } else {
                format!("the request body has {what} in {path} ({at})")
            }
        }
        serde_json::error::Category::Eof => format!("the request body ends too early ({at})"),
        _ => format!("the request body is not valid JSON ({at})"),
    };
    Refused(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        #[serde(deserialize_with = "crate::validate::unique_keys")]
        values: std::collections::BTreeMap<String, String>,
    }

    fn refusal(text: &str) -> String {
        match parse::<Body>(text.as_bytes()) {
            Ok(body) => panic!("accepted {body:?}"),
            Err(Refused(status, _, message)) => {
                assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
                message
            }
        }
    }

    #[test]
    fn refusals_never_quote_what_was_sent() {
        for body in [
            r#"{"name": "a", "values": "LEAK-1"}"#,
            r#"{"name": "a", "values": {"pw": 12345678}}"#,
            r#"{"name": "a", "values": {"pw": ["LEAK-2"]}}"#,
            r#"{"name": "a", "values": {"pw": "LEAK-3"}"#,
            r#"{"name": "a", "values": {"pw": "LEAK-4" x}}"#,
            r#"{"name": "a", "values": "LEAK-7, expected LEAK-8"}"#,
        ] {
            let message = refusal(body);
            assert!(
                !message.contains("LEAK") && !message.contains("12345678"),
                "{message}"
            );
        }
        assert_eq!(
            refusal(r#"{"name": "a", "values": "LEAK-1"}"#),
            "the request body has a value of the wrong type or form (expected a map) in values (at line 1, column 32)"
        );
        assert!(refusal(r#"{"name": "a"}"#).contains("missing field `values`"));
        assert!(
            refusal(r#"{"name": "a", "values": {}} {"name": "b", "values": {}}"#).contains("not valid JSON")
        );
        let twice = refusal(r#"{"name": "a", "values": {"pw": "LEAK-5", "pw": "LEAK-6"}}"#);
        assert!(twice.contains("duplicate key `pw` in values"), "{twice}");
        assert!(!twice.contains("LEAK"), "{twice}");
        assert!(refusal(r#"{"name": "a", "values": {}, "nope": 1}"#).contains("unknown field `nope`"));
    }
}
