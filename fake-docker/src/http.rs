//! HTTP helpers: request bodies, Docker-style JSON replies and errors, query parsing.

use std::collections::BTreeMap;
use std::convert::Infallible;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::error::{ApiError, ApiResult};

pub type Body = BoxBody<Bytes, Infallible>;
pub type Reply = Response<Body>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

pub fn json(status: StatusCode, v: &Value) -> Reply {
    let mut body = serde_json::to_vec(v).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub fn status_only(status: StatusCode) -> Reply {
    let mut r = Response::new(empty());
    *r.status_mut() = status;
    r
}

pub fn error(e: &ApiError) -> Reply {
    json(e.status, &serde_json::json!({ "message": e.message }))
}

/// Reads a request body of at most `limit` bytes (the daemon's `max_body_bytes`).
pub async fn read_body(limit: usize, body: Incoming) -> ApiResult<Bytes> {
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::bad_request(
            format!("request body too large: more than {limit} bytes"),
        )),
        Err(e) => Err(ApiError::bad_request(format!(
            "error reading request body: {e}"
        ))),
    }
}

/// A streaming body fed by a channel; the sender's task ends when the client goes away.
pub fn channel(content_type: &'static str) -> (mpsc::Sender<Bytes>, Reply) {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let stream = ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    (tx, r)
}

/// Query parameters; the first of duplicates wins, like Go's `r.Form.Get`.
#[derive(Debug, Default, Clone)]
pub struct Query(BTreeMap<String, String>);

impl Query {
    pub fn parse(q: Option<&str>) -> Self {
        let mut m = BTreeMap::new();
        for (k, v) in form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
            m.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
        Self(m)
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }
    pub fn str(&self, k: &str) -> &str {
        self.get(k).unwrap_or("")
    }
    /// dockerd's boolean: "", 0, no, false and none are false; anything else is true.
    pub fn bool(&self, k: &str) -> bool {
        match self.get(k) {
            None => false,
            Some(v) => !matches!(
                v.to_ascii_lowercase().as_str(),
                "" | "0" | "no" | "false" | "none"
            ),
        }
    }
    /// The `filters` parameter in either encoding: `{"k":["v"]}` (bollard) or `{"k":{"v":true}}` (CLI).
    pub fn filters(&self) -> Result<Filters, ApiError> {
        let raw = self.str("filters");
        let mut out = Filters::default();
        if raw.is_empty() {
            return Ok(out);
        }
        let v: Value = serde_json::from_str(raw)
            .map_err(|e| ApiError::bad_request(format!("invalid filter: {e}")))?;
        let Value::Object(map) = v else {
            return Err(ApiError::bad_request("invalid filter: expected an object"));
        };
        for (k, vals) in map {
            let list: Vec<String> = match vals {
                Value::Array(a) => a
                    .into_iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect(),
                Value::Object(o) => o
                    .into_iter()
                    .filter(|(_, on)| on.as_bool().unwrap_or(false))
                    .map(|(k, _)| k)
                    .collect(),
                _ => return Err(ApiError::bad_request(format!("invalid filter '{k}'"))),
            };
            out.0.insert(k, list);
        }
        Ok(out)
    }
}

#[derive(Debug, Default, Clone)]
pub struct Filters(pub BTreeMap<String, Vec<String>>);

impl Filters {
    pub fn get(&self, k: &str) -> &[String] {
        self.0.get(k).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every `label` filter (`k` or `k=v`) must hold.
    pub fn labels_match(&self, labels: &BTreeMap<String, String>) -> bool {
        self.get("label").iter().all(|f| match f.split_once('=') {
            Some((k, v)) => labels.get(k).is_some_and(|actual| actual == v),
            None => labels.contains_key(f.as_str()),
        })
    }

    /// True when `key` has no values or any value satisfies `pred`.
    pub fn any(&self, key: &str, pred: impl Fn(&str) -> bool) -> bool {
        let vals = self.get(key);
        vals.is_empty() || vals.iter().any(|v| pred(v))
    }
}
