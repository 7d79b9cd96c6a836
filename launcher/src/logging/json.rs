//! The JSON lines of `SPACELIFT_LAUNCHER_LOG_FORMAT=json` (and of `auto` off a terminal):
//! Spacelift's field names, `ts`, `level`, `msg`, `caller`, then the fields of the event
//! and of the spans it is in (`run_ulid`, ...), flat. tracing-subscriber's own JSON
//! formatter cannot rename its keys (`timestamp`, `fields.message`, upper-case levels,
//! file and line apart), hence this small formatter.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Keys the line itself uses: an event or span field of the same name is written as
/// `fields.<name>` (logrus's convention) rather than overwrite them.
const RESERVED: &[&str] = &["ts", "level", "msg", "caller"];

/// Formats one event a line. Span fields are read from what [`JsonFields`] stored, so the
/// layer must use it as its field formatter.
///
/// [`JsonFields`]: tracing_subscriber::fmt::format::JsonFields
pub(super) struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // `log` records of dependencies carry their own file and line.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut fields = Map::new();
        // Outermost span first: an inner span's value wins, the event's own over all.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                let Some(stored) = ext.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(stored) {
                    for (name, value) in map {
                        insert(&mut fields, &name, value);
                    }
                }
            }
        }
        let mut visitor = Fields {
            map: &mut fields,
            msg: None,
        };
        event.record(&mut visitor);
        let msg = visitor.msg.unwrap_or_default();
        let caller = match (meta.file(), meta.line()) {
            (Some(file), Some(line)) => format!("{file}:{line}"),
            (Some(file), None) => file.to_string(),
            _ => meta.target().to_string(),
        };
        let line = line(&now(), level(meta.level()), &msg, &caller, &fields);
        writeln!(writer, "{line}")
    }
}

/// zap's lower-case spelling (Spacelift's launcher is Go): `warn`, not `warning`.
pub(super) fn level(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    }
}

/// RFC 3339 in UTC with microseconds, a fixed width so lines sort as text.
pub(super) fn now() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default()
}

/// One line, without its newline: the fixed keys first, in Spacelift's order.
pub(super) fn line(
    ts: &str,
    level: &str,
    msg: &str,
    caller: &str,
    fields: &Map<String, Value>,
) -> String {
    let text = |s: &str| Value::from(s).to_string();
    let mut out = format!(
        "{{\"ts\":{},\"level\":{},\"msg\":{},\"caller\":{}",
        text(ts),
        text(level),
        text(msg),
        text(caller)
    );
    for (name, value) in fields {
        out.push(',');
        out.push_str(&text(name));
        out.push(':');
        out.push_str(&value.to_string());
    }
    out.push('}');
    out
}

fn insert(map: &mut Map<String, Value>, name: &str, value: Value) {
    // tracing-log's copies of a `log` record's metadata, already in `caller`.
    if name.starts_with("log.") {
        return;
    }
    let key = if RESERVED.contains(&name) {
        format!("fields.{name}")
    } else {
        name.to_string()
    };
    map.insert(key, value);
}

struct Fields<'a> {
    map: &'a mut Map<String, Value>,
    msg: Option<String>,
}

impl Fields<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.msg = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            insert(self.map, field.name(), value);
        }
    }
}

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }
}
