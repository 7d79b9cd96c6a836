//! `GET /v1/worker-binaries/{version}/{arch}`: the bytes, with `ETag: "<sha256>"`,
//! `If-None-Match` (304), and one `Range` (206 + `Content-Range`; 416 when unsatisfiable).
//! Download faults corrupt (flip bytes, ETag unchanged) or slow the body.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use protocol::api::{error_codes, paths};
use serde_json::json;

use super::{caller, parse_arch, ApiError, Peer};
use crate::events::{kinds, NewEvent};
use crate::faults::DownloadFault;
use crate::rules::Core;

enum RangeSpec {
    Full,
    Part(u64, u64),
    Unsatisfiable,
}

/// Parses a single `bytes=` range; anything unparsable or multi-range serves the whole.
fn parse_range(header: Option<&str>, len: u64) -> RangeSpec {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeSpec::Full;
    };
    if spec.contains(',') {
        return RangeSpec::Full;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeSpec::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    match (a.parse::<u64>().ok(), b.parse::<u64>().ok()) {
        (None, Some(suffix)) if a.is_empty() => {
            if suffix == 0 || len == 0 {
                RangeSpec::Unsatisfiable
            } else {
                RangeSpec::Part(len.saturating_sub(suffix), len - 1)
            }
        }
        (Some(start), None) if b.is_empty() => {
            if start >= len {
                RangeSpec::Unsatisfiable
            } else {
                RangeSpec::Part(start, len - 1)
            }
        }
        (Some(start), Some(end)) if start <= end => {
            if start >= len {
                RangeSpec::Unsatisfiable
            } else {
                RangeSpec::Part(start, end.min(len - 1))
            }
        }
        _ => RangeSpec::Full,
    }
}

/// What a download request gets, before any transport: the HTTPS handler writes it as a
/// response, the in-process API (`super::direct`) hands the bytes over as they are.
pub(crate) enum Served {
    NotModified {
        etag: String,
    },
    Unsatisfiable {
        range: String,
        len: u64,
    },
    Bytes {
        partial: bool,
        start: u64,
        end: u64,
        len: u64,
        etag: String,
        body: Vec<u8>,
        /// A slow-download fault: `(chunk bytes, delay between chunks in ms)`.
        slow: Option<(usize, u64)>,
    },
}

/// The download rules: the caller's pool, the binary, `If-None-Match`, one `Range`, and
/// the download faults (recorded as events, like every answer).
pub(crate) fn serve(
    core: &Core,
    peer: &Peer,
    version: &str,
    arch: &str,
    range_header: Option<&str>,
    if_none_match: Option<&str>,
) -> Result<Served, ApiError> {
    let c = caller(core, peer, paths::BINARIES)?;
    let arch = parse_arch(arch)?;
    let rec = core.find_binary(version, arch).ok_or_else(|| {
        ApiError::new(
            404,
            error_codes::NOT_FOUND,
            format!("no worker binary {version} for {arch}"),
        )
    })?;
    let etag = format!("\"{}\"", rec.sha256);
    let record = |status: u16, range: Option<String>, bytes: u64, fault: Option<String>| {
        core.record(
            NewEvent::new(kinds::BINARY_DOWNLOAD)
                .pool(&c.pool)
                .data(json!({
                    "version": version, "arch": arch, "status": status, "range": range,
                    "bytes": bytes, "fault": fault,
                })),
        );
    };
    if if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*")) {
        record(304, None, 0, None);
        return Ok(Served::NotModified { etag });
    }
    let data = core
        .store
        .read_binary(&rec.sha256)
        .map_err(|e| ApiError::new(500, error_codes::INTERNAL, format!("reading binary: {e}")))?;
    let len = data.len() as u64;
    let (partial, start, end) = match parse_range(range_header, len) {
        RangeSpec::Full => (false, 0, len.saturating_sub(1)),
        RangeSpec::Part(s, e) => (true, s, e),
        RangeSpec::Unsatisfiable => {
            record(416, range_header.map(str::to_string), 0, None);
            return Ok(Served::Unsatisfiable {
                range: range_header.unwrap_or("").to_string(),
                len,
            });
        }
    };
    let mut body: Vec<u8> = if len == 0 {
        Vec::new()
    } else {
        data[start as usize..=end as usize].to_vec()
    };
    let fault = core.faults.take_download();
    let mut fault_note = None;
    let mut slow = None;
    match fault {
        Some(DownloadFault::Corrupt) if !body.is_empty() => {
            let mid = body.len() / 2;
            body[mid] ^= 0xFF;
            body[0] ^= 0x01;
            fault_note = Some("corrupt".to_string());
        }
        Some(DownloadFault::Slow {
            chunk_bytes,
            delay_ms,
        }) => {
            slow = Some((chunk_bytes, delay_ms));
            fault_note = Some(format!("slow {chunk_bytes}B/{delay_ms}ms"));
        }
        _ => {}
    }
    if let Some(f) = &fault_note {
        core.record(
            NewEvent::new(kinds::FAULT_TRIGGERED)
                .pool(&c.pool)
                .data(json!({
                    "fault": f, "version": version, "arch": arch,
                })),
        );
    }
    let status = if partial { 206 } else { 200 };
    record(
        status,
        range_header.map(str::to_string),
        body.len() as u64,
        fault_note,
    );
    Ok(Served::Bytes {
        partial,
        start,
        end,
        len,
        etag,
        body,
        slow,
    })
}

/// `chunks` of a body, the first at once and each next one `delay_ms` later (tokio time).
pub(crate) fn trickle(
    body: Vec<u8>,
    chunk: usize,
    delay_ms: u64,
) -> impl futures_util::Stream<Item = Bytes> + Send {
    let chunks: Vec<Bytes> = body
        .chunks(chunk.max(1))
        .map(Bytes::copy_from_slice)
        .collect();
    futures_util::stream::unfold(
        (chunks.into_iter(), true),
        move |(mut it, first)| async move {
            let next = it.next()?;
            if !first {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            Some((next, (it, false)))
        },
    )
}

pub(super) async fn download(
    State(core): State<Arc<Core>>,
    Extension(peer): Extension<Peer>,
    Path((version, arch)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let text = |h| headers.get(h).and_then(|v: &HeaderValue| v.to_str().ok());
    let served = serve(
        &core,
        &peer,
        &version,
        &arch,
        text(header::RANGE),
        text(header::IF_NONE_MATCH),
    )?;
    let (partial, start, end, len, etag, body, slow) = match served {
        Served::NotModified { etag } => {
            let mut r = StatusCode::NOT_MODIFIED.into_response();
            if let Ok(v) = HeaderValue::from_str(&etag) {
                r.headers_mut().insert(header::ETAG, v);
            }
            return Ok(r);
        }
        Served::Unsatisfiable { range, len } => {
            let mut r = ApiError::new(
                416,
                error_codes::BAD_REQUEST,
                format!("range {range:?} is outside the {len} bytes"),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
        Served::Bytes {
            partial,
            start,
            end,
            len,
            etag,
            body,
            slow,
        } => (partial, start, end, len, etag, body, slow),
    };
    let sent = body.len() as u64;
    let body = match slow {
        None => Body::from(body),
        Some((chunk, delay_ms)) => Body::from_stream(futures_util::StreamExt::map(
            trickle(body, chunk, delay_ms),
            Ok::<Bytes, std::io::Error>,
        )),
    };
    let status = if partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, etag)
        .header(header::CONTENT_LENGTH, sent);
    if partial {
        resp = resp.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
    }
    resp.body(body)
        .map_err(|e| ApiError::new(500, error_codes::INTERNAL, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert!(matches!(parse_range(None, 10), RangeSpec::Full));
        assert!(matches!(
            parse_range(Some("bytes=2-4"), 10),
            RangeSpec::Part(2, 4)
        ));
        assert!(matches!(
            parse_range(Some("bytes=8-"), 10),
            RangeSpec::Part(8, 9)
        ));
        assert!(matches!(
            parse_range(Some("bytes=-3"), 10),
            RangeSpec::Part(7, 9)
        ));
        assert!(matches!(
            parse_range(Some("bytes=5-100"), 10),
            RangeSpec::Part(5, 9)
        ));
        assert!(matches!(
            parse_range(Some("bytes=10-"), 10),
            RangeSpec::Unsatisfiable
        ));
        assert!(matches!(
            parse_range(Some("bytes=4-2"), 10),
            RangeSpec::Full
        ));
        assert!(matches!(
            parse_range(Some("bytes=0-1,3-4"), 10),
            RangeSpec::Full
        ));
    }
}
