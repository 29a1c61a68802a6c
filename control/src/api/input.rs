//! What the API accepts as input, checked at the boundary so handlers only see values they can
//! use: the JSON body extractor ([`JsonBody`]), the layer that refuses control characters in
//! the path and query ([`refuse_control_characters`]), and the bounds of the numbers routes
//! take (times, limits, durations). Every refusal is a 4xx naming the field and the bound.
//!
//! Why these checks and not fewer: PostgreSQL refuses text containing NUL (a 500 if it got
//! that far); JSON nesting deeper than serde_json's recursion limit (128) or numbers outside
//! their type are parse errors (400); times past year 9999 overflow date arithmetic; the body
//! limit (axum's default, 2 MiB, except for bundle pushes) answers 413.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::ApiError;

/// The latest time the API accepts, in unix milliseconds: 9999-12-31T23:59:59.999Z.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// A JSON request body of type `T`: `Content-Type: application/json`, at most the route's
/// body limit, well-formed, no string containing NUL, then deserialized into `T` (unknown
/// fields are refused where `T` says so). Refusals: 415, 413, 400.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .map(|value| {
                let value = value.trim().to_ascii_lowercase();
                value == "application/json"
                    || (value.starts_with("application/") && value.ends_with("+json"))
            })
            .unwrap_or(false);
        if !json {
            return Err(ApiError::UnsupportedMediaType(
                "send the body as JSON with `Content-Type: application/json`".into(),
            ));
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::BodyTooLarge(rejection.body_text())
            } else {
                ApiError::BadRequest(format!("cannot read the body: {}", rejection.body_text()))
            }
        })?;
        parse(&bytes).map(JsonBody)
    }
}

/// The checks of [`JsonBody`] on bytes already read.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(error) => {
            // Name the field when a typed read of the same bytes can tell where it failed.
            let mut typed = serde_json::Deserializer::from_slice(bytes);
            let at = match serde_path_to_error::deserialize::<_, T>(&mut typed) {
                Err(typed_error) if typed_error.path().to_string() != "." => {
                    format!(" at `{}`", typed_error.path())
                }
                _ => String::new(),
            };
            return Err(ApiError::BadRequest(format!("the body is not valid JSON{at}: {error}")));
        }
    };
    if let Some(path) = nul_in(&value, "") {
        return Err(ApiError::BadRequest(format!(
            "the body's `{path}` holds a NUL character, which no field accepts"
        )));
    }
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if path == "." {
            ApiError::BadRequest(format!("the body is not what this route takes: {inner}"))
        } else {
            ApiError::BadRequest(format!("the body's `{path}` is refused: {inner}"))
        }
    })
}

/// Where in `value` a string (key or value) contains NUL, as a JSON path (`waves[0].size`).
fn nul_in(value: &Value, at: &str) -> Option<String> {
    let here = || if at.is_empty() { "$".to_string() } else { at.to_string() };
    match value {
        Value::String(text) => text.contains('\0').then(here),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(index, item)| nul_in(item, &format!("{at}[{index}]"))),
        Value::Object(fields) => fields.iter().find_map(|(key, item)| {
            let path = if at.is_empty() { key.clone() } else { format!("{at}.{key}") };
            if key.contains('\0') {
                Some(path.escape_debug().to_string())
            } else {
                nul_in(item, &path)
            }
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => None,
    }
}

/// The layer that refuses a request whose path or query, percent-decoded, holds a control
/// character (NUL, newline, escape, …): no id, name or filter the API knows contains one.
pub async fn refuse_control_characters(request: Request, next: Next) -> Response {
    let uri = request.uri();
    let decoded_has_control =
        |text: &str| percent_decoded(text).iter().any(|byte| byte.is_ascii_control());
    if decoded_has_control(uri.path()) || uri.query().is_some_and(decoded_has_control) {
        return ApiError::BadRequest(
            "the request path or query holds a control character (such as %00); no id, name \
             or filter accepts one"
                .into(),
        )
        .into_response();
    }
    next.run(request).await
}

/// `text` with `%XX` sequences decoded (and `+` left alone); malformed escapes stay as they are.
fn percent_decoded(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = (bytes[index] == b'%')
            .then(|| bytes.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                index += 3;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    out
}

/// A time in unix milliseconds between 1970 and the end of year 9999.
pub fn time_ms(name: &str, value: i64) -> Result<i64, ApiError> {
    if (0..=MAX_TIME_MS).contains(&value) {
        Ok(value)
    } else {
        Err(ApiError::BadRequest(format!(
            "{name} {value} is not a time between 0 (1970) and {MAX_TIME_MS} (year 9999) in unix \
             milliseconds"
        )))
    }
}

/// [`time_ms`] of an optional value.
pub fn optional_time_ms(name: &str, value: Option<i64>) -> Result<Option<i64>, ApiError> {
    value.map(|value| time_ms(name, value)).transpose()
}

/// A result count: `default` when absent, else 1 to `max`.
pub fn limit(name: &str, value: Option<u32>, default: u32, max: u32) -> Result<u32, ApiError> {
    match value {
        None => Ok(default),
        Some(value) if (1..=max).contains(&value) => Ok(value),
        Some(value) => {
            Err(ApiError::BadRequest(format!("{name} {value} must be between 1 and {max}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Example {
        #[allow(dead_code)]
        name: String,
        #[allow(dead_code)]
        count: u32,
    }

    fn refusal(body: &str) -> String {
        match parse::<Example>(body.as_bytes()) {
            Ok(value) => panic!("{body} was accepted as {value:?}"),
            Err(error) => {
                assert_eq!(error.status(), 400, "{body}");
                error.to_string()
            }
        }
    }

    #[test]
    fn bodies_are_refused_with_the_reason() {
        assert!(parse::<Example>(br#"{"name":"a","count":3}"#).is_ok());
        let cases = [
            (r#"{"name":"a","count":-1}"#, "`count` is refused: invalid value"),
            (r#"{"name":"a","count":4294967296}"#, "`count` is refused"),
            (r#"{"name":"a","count":1e999}"#, "not valid JSON at `count`"),
            (r#"{"name":"a","count":NaN}"#, "not valid JSON at `count`"),
            (r#"{"name":"a","count":1.5}"#, "`count` is refused: invalid type"),
            (r#"{"name":"a\u0000b","count":1}"#, "`name` holds a NUL"),
            (r#"{"name":"a","count":1,"extra":{"deep":["\u0000"]}}"#, "`extra.deep[0]`"),
            (r#"{"name":"a","count":1,"more":true}"#, "unknown field"),
            (r#"{"name":"a"}"#, "missing field `count`"),
            ("", "not valid JSON"),
            ("[]", "not what this route takes"),
        ];
        for (body, expected) in cases {
            let text = refusal(body);
            assert!(text.contains(expected), "{body}: {text}");
        }
        let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(refusal(&deep).contains("recursion limit"));
    }

    #[test]
    fn percent_decoding_finds_hidden_control_characters() {
        assert_eq!(percent_decoded("a%00b%2fc%zz%4"), b"a\0b/c%zz%4");
        assert!(percent_decoded("/v1/devices/%0A").iter().any(u8::is_ascii_control));
        assert!(!percent_decoded("/v1/devices/p%C3%BCmpe").iter().any(u8::is_ascii_control));
    }

    #[test]
    fn numbers_outside_their_bounds_are_named() {
        assert_eq!(time_ms("from_ms", 0).ok(), Some(0));
        assert!(time_ms("from_ms", -1).is_err());
        assert!(time_ms("to_ms", i64::MAX).expect_err("too late").to_string().contains("to_ms"));
        assert_eq!(limit("limit", None, 100, 1000).ok(), Some(100));
        assert!(limit("limit", Some(0), 100, 1000).is_err());
        assert!(limit("limit", Some(1001), 100, 1000).is_err());
    }
}
