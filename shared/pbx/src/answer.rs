//! Turning one PBX answer (status, headers, body) into a result.
//!
//! Pure: no I/O, so every answer a PBX, a proxy in front of it or a cut
//! connection can produce is testable (and fuzzed, see `tests/fuzz.rs`).
//! Only the status the contract lists for a call is success; its body must
//! have the contract's shape or the answer is [`PbxErrorKind::Malformed`].

use reqwest::header::{HeaderMap, CONTENT_TYPE, LOCATION};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::{PbxError, PbxErrorKind};
use crate::model::{Items, Number, PbxUser, Template, UsersPage};

/// Characters of a body quoted in an error, enough to recognise a proxy page.
const QUOTED_CHARS: usize = 120;

/// A body the contract describes, with the checks serde cannot make.
pub trait Shape: DeserializeOwned {
    /// What the contract says the body is, for error messages ("a user").
    const WHAT: &'static str;

    /// What is wrong with a body that decoded, if anything.
    fn problem(&self) -> Option<String> {
        None
    }
}

impl Shape for PbxUser {
    const WHAT: &'static str = "a user";

    fn problem(&self) -> Option<String> {
        self.id.trim().is_empty().then(|| "its id is empty".to_owned())
    }
}

impl Shape for UsersPage {
    const WHAT: &'static str = "a page of users";

    fn problem(&self) -> Option<String> {
        if self.next_cursor.as_deref().is_some_and(str::is_empty) {
            return Some("next_cursor is an empty string (null ends the listing)".to_owned());
        }
        self.items
            .iter()
            .enumerate()
            .find_map(|(index, user)| Some(format!("items[{index}]: {}", user.problem()?)))
    }
}

impl Shape for Items<Template> {
    const WHAT: &'static str = "a list of templates";
}

impl Shape for Items<Number> {
    const WHAT: &'static str = "a list of numbers";
}

/// One answer as it came off the wire.
#[derive(Debug, Clone)]
pub struct Answer {
    /// `METHOD /path` of the request, for messages (no host, no query).
    pub request: String,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as `T` when the status is `expected`, else the answer's error.
    pub fn json<T: Shape>(&self, expected: StatusCode) -> Result<T, PbxError> {
        if self.status != expected {
            return Err(self.error());
        }
        let value: T = serde_json::from_slice(&self.body).map_err(|err| self.malformed(&err, T::WHAT))?;
        match value.problem() {
            None => Ok(value),
            Some(problem) => Err(self.answer_error(
                PbxErrorKind::Malformed,
                format!(
                    "with JSON that is not {} as the contract has it: {problem}",
                    T::WHAT
                ),
            )),
        }
    }

    /// Success when the status is `expected` (the body is not looked at).
    pub fn empty(&self, expected: StatusCode) -> Result<(), PbxError> {
        if self.status == expected {
            Ok(())
        } else {
            Err(self.error())
        }
    }

    /// The error for an answer that is not the call's success: the contract's
    /// error for a status it lists, else an unexpected status.
    pub fn error(&self) -> PbxError {
        let kind = PbxErrorKind::from_status(self.status.as_u16(), &self.headers);
        if kind != PbxErrorKind::Unexpected {
            let body = String::from_utf8_lossy(&self.body);
            return PbxError::from_response(self.status, &self.headers, &body).with_request(&self.request);
        }
        let detail = if self.status.is_redirection() {
            let target = self
                .headers
                .get(LOCATION)
                .and_then(|value| value.to_str().ok())
                .unwrap_or("nowhere named");
            // Never followed: the token must not go to another host, and the
            // contract has no redirects, so the PBX URL is probably wrong.
            format!(
                "a redirect to {target} that the contract does not have; it was not followed (check the PBX API URL)"
            )
        } else {
            format!(
                "a status the contract does not list for this call ({}){}",
                self.body_summary(),
                self.quote()
            )
        };
        self.answer_error(PbxErrorKind::Unexpected, detail)
    }

    fn malformed(&self, err: &serde_json::Error, what: &str) -> PbxError {
        use serde_json::error::Category;
        let detail = match err.classify() {
            Category::Data => format!("with JSON that is not {what} as the contract has it: {err}"),
            Category::Eof if !self.body.is_empty() => format!(
                "with a body that ends before its JSON does, cut off? ({}): {err}{}",
                self.body_summary(),
                self.quote()
            ),
            _ => format!(
                "with a body that is not JSON ({}): {err}{}",
                self.body_summary(),
                self.quote()
            ),
        };
        self.answer_error(PbxErrorKind::Malformed, detail)
    }

    fn answer_error(&self, kind: PbxErrorKind, detail: String) -> PbxError {
        PbxError::answered(kind, self.status.as_u16(), detail).with_request(&self.request)
    }

    /// "text/html, 1.2 kB".
    fn body_summary(&self) -> String {
        let content_type = self
            .headers
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(|value| value.split(';').next().unwrap_or(value).trim())
            .filter(|value| !value.is_empty())
            .unwrap_or("no content type");
        format!("{content_type}, {}", size(self.body.len()))
    }

    /// `; it begins "<html>…"`, whitespace squeezed, or nothing for an empty body.
    fn quote(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let squeezed = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if squeezed.is_empty() {
            return String::new();
        }
        let quoted: String = squeezed.chars().take(QUOTED_CHARS).collect();
        let ellipsis = if squeezed.chars().count() > QUOTED_CHARS {
            "…"
        } else {
            ""
        };
        format!("; it begins {quoted:?}{ellipsis}")
    }
}

/// "0 B", "812 B", "1.2 kB", "3.4 MB".
fn size(bytes: usize) -> String {
    match bytes {
        0..1000 => format!("{bytes} B"),
        1000..1_000_000 => format!("{:.1} kB", bytes as f64 / 1e3),
        _ => format!("{:.1} MB", bytes as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn answer(status: u16, content_type: &str, body: &str) -> Answer {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap());
        Answer {
            request: "POST /v1/companies/acme/users".into(),
            status: StatusCode::from_u16(status).unwrap(),
            headers,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn an_html_page_names_status_request_type_and_size() {
        let page = format!("<html><body>{}</body></html>", "Please log in. ".repeat(80));
        let err = answer(201, "text/html; charset=utf-8", &page)
            .json::<PbxUser>(StatusCode::CREATED)
            .unwrap_err();
        assert_eq!(err.kind, PbxErrorKind::Malformed);
        assert!(err.is_transient());
        let text = err.to_string();
        assert!(
            text.starts_with(
                "PBX answered 201 to POST /v1/companies/acme/users with a body that is not JSON (text/html, 1.2 kB): expected value"
            ),
            "{text}"
        );
        assert!(text.contains("it begins \"<html><body>Please log in."), "{text}");
    }

    #[test]
    fn a_user_without_its_id_or_with_a_wrong_type_names_the_field() {
        let missing = answer(201, "application/json", r#"{"alias":"a","version":1}"#)
            .json::<PbxUser>(StatusCode::CREATED)
            .unwrap_err();
        assert_eq!(missing.kind, PbxErrorKind::Malformed);
        assert!(
            missing
                .to_string()
                .contains("with JSON that is not a user as the contract has it: missing field `id`"),
            "{missing}"
        );
        let user = r#"{"id":"u1","alias":"a","first_name":"A","surname":"B","pstn_fixed":"4612345678","email":null,"caller_id":null,"template":null,"external_id":null,"version":"seven"}"#;
        let wrong = answer(201, "application/json", user)
            .json::<PbxUser>(StatusCode::CREATED)
            .unwrap_err();
        assert!(
            wrong
                .to_string()
                .contains("invalid type: string \"seven\", expected i64"),
            "{wrong}"
        );
        let empty_id = user.replace("\"u1\"", "\"\"").replace("\"seven\"", "1");
        let empty = answer(201, "application/json", &empty_id)
            .json::<PbxUser>(StatusCode::CREATED)
            .unwrap_err();
        assert!(empty.to_string().ends_with("its id is empty"), "{empty}");
    }

    #[test]
    fn a_list_without_items_is_malformed() {
        let err = answer(200, "application/json", r#"{"next_cursor":null}"#)
            .json::<UsersPage>(StatusCode::OK)
            .unwrap_err();
        assert_eq!(err.kind, PbxErrorKind::Malformed);
        assert!(err.to_string().contains("missing field `items`"), "{err}");
        let err = answer(200, "application/json", r#"{"items":[],"next_cursor":""}"#)
            .json::<UsersPage>(StatusCode::OK)
            .unwrap_err();
        assert!(
            err.to_string().contains("next_cursor is an empty string"),
            "{err}"
        );
    }

    #[test]
    fn a_body_cut_short_says_so() {
        let err = answer(200, "application/json", r#"{"items":[{"id":"t1","na"#)
            .json::<Items<Template>>(StatusCode::OK)
            .unwrap_err();
        assert!(err.to_string().contains("ends before its JSON does"), "{err}");
    }

    #[test]
    fn an_unlisted_status_is_an_error_naming_it_never_success() {
        let err = answer(418, "text/plain", "I'm a teapot")
            .json::<PbxUser>(StatusCode::CREATED)
            .unwrap_err();
        assert_eq!(err.kind, PbxErrorKind::Unexpected);
        assert_eq!(err.status, Some(418));
        assert_eq!(
            err.to_string(),
            "PBX answered 418 to POST /v1/companies/acme/users, a status the contract does not list for this call (text/plain, 12 B); it begins \"I'm a teapot\""
        );
        // Another success status than the call's is not success either.
        let err = answer(200, "application/json", "{}")
            .empty(StatusCode::NO_CONTENT)
            .unwrap_err();
        assert_eq!(err.kind, PbxErrorKind::Unexpected);
    }

    #[test]
    fn a_redirect_names_its_target_and_is_not_followed() {
        let mut redirect = answer(302, "text/html", "");
        redirect
            .headers
            .insert(LOCATION, HeaderValue::from_static("https://login.example/sso"));
        let err = redirect.json::<PbxUser>(StatusCode::CREATED).unwrap_err();
        assert_eq!(err.kind, PbxErrorKind::Unexpected);
        assert!(
            err.to_string()
                .contains("302 to POST /v1/companies/acme/users, a redirect to https://login.example/sso"),
            "{err}"
        );
    }

    #[test]
    fn documented_errors_keep_their_kind_and_name_the_request() {
        let body = r#"{"error":"unavailable","message":"down","field":null,"existing_id":null}"#;
        let err = answer(503, "application/json", body)
            .json::<PbxUser>(StatusCode::CREATED)
            .unwrap_err();
        assert_eq!(err.kind, PbxErrorKind::Unavailable);
        assert_eq!(err.request.as_deref(), Some("POST /v1/companies/acme/users"));
        assert_eq!(err.to_string(), "PBX answered 503 unavailable: down");
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(999), "999 B");
        assert_eq!(size(1234), "1.2 kB");
        assert_eq!(size(3_400_000), "3.4 MB");
    }
}
