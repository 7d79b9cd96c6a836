//! Long-lived replies: wait, logs, attach (101 upgrade) and events.
//! Each registers its interest first, then flushes headers, then streams from a task
//! that ends when its condition is met or the client goes away.

use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Ctx;
use crate::clock::{parse_unix_ts, rfc3339_nano_fixed};
use crate::error::{ApiError, ApiResult};
use crate::http::{channel, empty, Reply};
use crate::state::{Daemon, LogEntry, Status};

const MUX: &str = "application/vnd.docker.multiplexed-stream";
const RAW: &str = "application/vnd.docker.raw-stream";

pub fn wait(ctx: &Ctx, given: &str) -> ApiResult<Reply> {
    #[derive(Clone, Copy)]
    enum Cond {
        NotRunning,
        NextExit,
        Removed,
    }
    let cond = match ctx.query.str("condition") {
        "" | "not-running" => Cond::NotRunning,
        "next-exit" => Cond::NextExit,
        "removed" => Cond::Removed,
        // dockerd 20.10 treats an unknown condition as the default; later versions refuse it.
        _ if ctx.legacy() => Cond::NotRunning,
        other => {
            return Err(ApiError::bad_request(format!(
                "invalid condition: \"{other}\""
            )))
        }
    };
    let d = ctx.daemon.clone();
    let mut changes = d.changes.subscribe();
    let (id, exits0) = {
        let st = d.lock();
        let id = Daemon::resolve_container(&st, given)?;
        let exits = st.containers.get(&id).map(|c| c.exits).unwrap_or_default();
        (id, exits)
    };
    let (tx, reply) = channel("application/json");
    tokio::spawn(async move {
        let result = loop {
            changes.borrow_and_update();
            {
                let st = d.lock();
                match (st.containers.get(&id), cond) {
                    (None, _) => {
                        break Some((st.removed.get(&id).copied().unwrap_or(0), String::new()))
                    }
                    (Some(c), Cond::NotRunning) if !c.running() => {
                        break Some((c.exit_code, c.error.clone()))
                    }
                    (Some(c), Cond::NextExit) if c.exits > exits0 => {
                        break Some((c.exit_code, c.error.clone()))
                    }
                    _ => {}
                }
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { break None },
                _ = tx.closed() => break None,
            }
        };
        if let Some((code, err)) = result {
            let error = if err.is_empty() {
                serde_json::Value::Null
            } else {
                json!({"Message": err})
            };
            let v = json!({"Error": error, "StatusCode": code});
            let mut b = serde_json::to_vec(&v).unwrap_or_default();
            b.push(b'\n');
            let _ = tx.send(Bytes::from(b)).await;
        }
    });
    Ok(reply)
}

struct Framing {
    stdout: bool,
    stderr: bool,
    timestamps: bool,
    tty: bool,
}

impl Framing {
    fn wanted(&self, e: &LogEntry) -> bool {
        match e.stream {
            crate::behaviour::Stream::Stdout => self.stdout,
            crate::behaviour::Stream::Stderr => self.stderr,
        }
    }
    fn encode(&self, e: &LogEntry) -> Bytes {
        let mut payload = BytesMut::new();
        if self.timestamps {
            payload.extend_from_slice(rfc3339_nano_fixed(e.at).as_bytes());
            payload.extend_from_slice(b" ");
        }
        payload.extend_from_slice(&e.data);
        if self.tty {
            payload.freeze()
        } else {
            crate::stream_frames::frame(e.stream.fd(), &payload)
        }
    }
}

pub fn logs(ctx: &Ctx, given: &str) -> ApiResult<Reply> {
    let q = &ctx.query;
    let (stdout, stderr) = (q.bool("stdout"), q.bool("stderr"));
    if !stdout && !stderr {
        return Err(ApiError::bad_request(
            "Bad parameters: you must choose at least one stream",
        ));
    }
    // dockerd: a tail that is not a number, or is negative, means all lines.
    let tail: Option<usize> = q
        .str("tail")
        .parse::<i64>()
        .ok()
        .and_then(|n| usize::try_from(n).ok());
    let d = ctx.daemon.clone();
    let (output, follow, tty, mut changes) = {
        let st = d.lock();
        let id = Daemon::resolve_container(&st, given)?;
        let Some(c) = st.containers.get(&id) else {
            return Err(ApiError::no_such_container(given));
        };
        let changes = c
            .output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .subscribe();
        (
            c.output.clone(),
            q.bool("follow") && c.running(),
            c.tty,
            changes,
        )
    };
    let since = go_timestamp(q.str("since"))?.and_then(|_| parse_unix_ts(q.str("since")));
    let until = go_timestamp(q.str("until"))?.and_then(|_| parse_unix_ts(q.str("until")));
    let framing = Framing {
        stdout,
        stderr,
        timestamps: q.bool("timestamps"),
        tty,
    };
    let ct = if tty || ctx.version < (1, 42) {
        RAW
    } else {
        MUX
    };
    let (tx, reply) = channel(ct);
    tokio::spawn(async move {
        let in_window =
            |e: &LogEntry| since.is_none_or(|s| e.at >= s) && until.is_none_or(|u| e.at <= u);
        let (first, mut idx) = {
            let out = output.lock().unwrap_or_else(|e| e.into_inner());
            let picked: Vec<Bytes> = out
                .entries
                .iter()
                .filter(|e| framing.wanted(e) && in_window(e))
                .map(|e| framing.encode(e))
                .collect();
            (picked, out.entries.len())
        };
        let skip = tail.map(|t| first.len().saturating_sub(t)).unwrap_or(0);
        for b in first.into_iter().skip(skip) {
            if tx.send(b).await.is_err() {
                return;
            }
        }
        if !follow {
            return;
        }
        loop {
            changes.borrow_and_update();
            let (new, closed) = take_new(&output, &mut idx, &framing);
            for b in new {
                if tx.send(b).await.is_err() {
                    return;
                }
            }
            if closed {
                return;
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    });
    Ok(reply)
}

/// Checks `since`/`until` as Go's `timetypes.ParseTimestamps` does (`seconds[.nanos]`,
/// each part a strconv.ParseInt); its error is returned unwrapped, hence 500.
fn go_timestamp(s: &str) -> ApiResult<Option<()>> {
    if s.is_empty() {
        return Ok(None);
    }
    let (secs, nanos) = s.split_once('.').unwrap_or((s, "0"));
    for part in [secs, nanos] {
        if part.parse::<i64>().is_err() {
            return Err(ApiError::internal(format!(
                "strconv.ParseInt: parsing \"{part}\": invalid syntax"
            )));
        }
    }
    Ok(Some(()))
}

fn take_new(
    output: &std::sync::Mutex<crate::state::Output>,
    idx: &mut usize,
    f: &Framing,
) -> (Vec<Bytes>, bool) {
    let out = output.lock().unwrap_or_else(|e| e.into_inner());
    let new = out
        .entries
        .get(*idx..)
        .unwrap_or(&[])
        .iter()
        .filter(|e| f.wanted(e))
        .map(|e| f.encode(e))
        .collect();
    *idx = out.entries.len();
    (new, out.closed)
}

pub fn attach(ctx: &Ctx, given: &str, mut req: Request<Incoming>) -> ApiResult<Reply> {
    let q = &ctx.query;
    let d = ctx.daemon.clone();
    let mut epoch = d.epoch.subscribe();
    let (output, tty, mut idx, mut changes) = {
        let st = d.lock();
        let id = Daemon::resolve_container(&st, given)?;
        let Some(c) = st.containers.get(&id) else {
            return Err(ApiError::no_such_container(given));
        };
        if matches!(c.status, Status::Exited | Status::Dead) && !q.bool("logs") {
            return Err(ApiError::conflict(
                "You cannot attach to a stopped container, start it first",
            ));
        }
        let (len, changes) = {
            let out = c.output.lock().unwrap_or_else(|e| e.into_inner());
            (out.entries.len(), out.subscribe())
        };
        (
            c.output.clone(),
            c.tty,
            if q.bool("logs") { 0 } else { len },
            changes,
        )
    };
    {
        let mut st = d.lock();
        if let Ok(id) = Daemon::resolve_container(&st, given) {
            d.container_event(&mut st, &id, "attach", &[]);
        }
    }
    let stream = q.bool("stream");
    let framing = Framing {
        stdout: q.bool("stdout"),
        stderr: q.bool("stderr"),
        timestamps: false,
        tty,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let (mut rd, mut wr) = tokio::io::split(TokioIo::new(upgraded));
        // Drain client input; EOF (the CLI half-closes without -i) must not end the stream.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
        });
        loop {
            changes.borrow_and_update();
            let (new, closed) = take_new(&output, &mut idx, &framing);
            for b in new {
                if wr.write_all(&b).await.is_err() {
                    reader.abort();
                    return;
                }
            }
            if wr.flush().await.is_err() {
                break;
            }
            if closed || !stream {
                break;
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { break },
                _ = epoch.changed() => { reader.abort(); return },
            }
        }
        let _ = wr.shutdown().await;
        reader.abort();
    });
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if tty { RAW } else { MUX }),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("tcp"));
    Ok(r)
}

pub fn events(ctx: &Ctx) -> ApiResult<Reply> {
    let q = &ctx.query;
    let filters = q.filters()?;
    // Unlike logs, an explicit `since=0` here means "from the beginning of history".
    let since = match q.str("since") {
        "" => None,
        s => Some(parse_unix_ts(s).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)),
    };
    let until = parse_unix_ts(q.str("until"));
    let d = ctx.daemon.clone();
    let mut changes = d.changes.subscribe();
    let mut idx = if since.is_some() {
        0
    } else {
        d.lock().log.all().len()
    };
    let (tx, reply) = channel("application/json");
    tokio::spawn(async move {
        let deadline = until.and_then(|u| {
            let ahead = u - d.clock.now();
            let ahead = std::time::Duration::try_from(ahead).unwrap_or_default();
            tokio::time::Instant::now().checked_add(ahead)
        });
        loop {
            changes.borrow_and_update();
            let batch: Vec<Bytes> = {
                let st = d.lock();
                let evs = st.log.since(idx);
                idx += evs.len();
                evs.iter()
                    .filter(|e| e.is_docker_event())
                    .filter(|e| {
                        e.at.is_some_and(|at| {
                            since.is_none_or(|s| at >= s) && until.is_none_or(|u| at <= u)
                        })
                    })
                    .filter(|e| filters.any("type", |t| t == e.kind))
                    .filter(|e| {
                        filters.any("event", |a| a == e.action)
                            && filters.any("action", |a| a == e.action)
                    })
                    .filter(|e| {
                        filters.any("container", |c| {
                            e.kind == "container"
                                && (e.id.starts_with(c)
                                    || e.attributes.get("name").is_some_and(|n| n == c))
                        })
                    })
                    .filter(|e| filters.labels_match(&e.attributes))
                    .map(|e| {
                        let mut b = serde_json::to_vec(&e.docker_json()).unwrap_or_default();
                        b.push(b'\n');
                        Bytes::from(b)
                    })
                    .collect()
            };
            for b in batch {
                if tx.send(b).await.is_err() {
                    return;
                }
            }
            if until.is_some_and(|u| d.clock.now() >= u) {
                return;
            }
            let sleep = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                _ = tx.closed() => return,
                _ = sleep => {},
            }
        }
    });
    Ok(reply)
}
