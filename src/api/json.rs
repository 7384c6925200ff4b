//! A JSON body extractor whose refusals are the API's error body and name the
//! field that was wrong (`cpu: invalid type: string "2", expected u32`).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::ApiError;

pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            let status = rejection.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    status,
                    "payload_too_large",
                    format!("the body is larger than {} bytes", super::BODY_LIMIT),
                )
            } else {
                ApiError::bad_request(format!(
                    "the body cannot be read: {}",
                    rejection.body_text()
                ))
            }
        })?;
        parse(&bytes).map(JsonBody)
    }
}

/// `bytes` as a `T`; a refusal names the path of the field at fault.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = strip_position(&inner.to_string());
        if path.is_empty() || path == "." {
            ApiError::bad_request(format!("the body is not a valid request: {message}"))
        } else {
            ApiError::bad_request(format!("{path}: {message}"))
        }
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::bad_request(format!("trailing data after the JSON body: {e}")))?;
    Ok(value)
}

/// serde_json's " at line 1 column 20" says nothing a field name does not.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vms::CreateVm;

    fn refusal(json: &str) -> String {
        match parse::<CreateVm>(json.as_bytes()) {
            Ok(parsed) => panic!("{json} was accepted as {parsed:?}"),
            Err(err) => {
                assert_eq!(err.status, StatusCode::BAD_REQUEST);
                err.message
            }
        }
    }

    #[test]
    fn refusals_name_the_field() {
        let wrong_type = refusal(r#"{"name":"a","image":"x","storage":5,"cpu":"2"}"#);
        assert!(
            wrong_type.starts_with("cpu: invalid type: string"),
            "{wrong_type}"
        );
        let unknown = refusal(r#"{"name":"a","image":"x","storage":5,"disk":5}"#);
        assert!(unknown.contains("unknown field `disk`"), "{unknown}");
        assert!(
            unknown.contains("`storage`"),
            "lists the known fields: {unknown}"
        );
        let missing = refusal(r#"{"name":"a","image":"x"}"#);
        assert!(missing.contains("missing field `storage`"), "{missing}");
        let negative = refusal(r#"{"name":"a","image":"x","storage":-5}"#);
        assert!(negative.starts_with("storage: invalid value"), "{negative}");
        let not_json = refusal("name=a");
        assert!(
            not_json.starts_with("the body is not a valid request"),
            "{not_json}"
        );
        let trailing = refusal(r#"{"name":"a","image":"x","storage":5} {}"#);
        assert!(trailing.starts_with("trailing data"), "{trailing}");
    }

    #[test]
    fn a_good_body_parses() {
        let vm: CreateVm = parse(
            br#"{"name":"test-vm","image":"ubuntu22","server_type":"cx21","cpu":2,"memory":4,"storage":50,"namespace":"default"}"#,
        )
        .expect("the seed's example parses");
        assert_eq!(vm.storage, 50);
        assert_eq!(vm.server_type.as_deref(), Some("cx21"));
    }
}
