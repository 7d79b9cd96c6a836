//! Request bodies decoded the way dockerd's Go code does: `json.Decoder` (the first value
//! counts, trailing bytes are ignored), typed structs (a wrong type is an
//! `UnmarshalTypeError` naming the Go field), and Go's wording for syntax errors.
//! dockerd 20.10 (API <= 1.41) answers all of these 500; later versions 400.

use std::collections::BTreeMap;

use serde_json::Value;

use super::Ctx;
use crate::error::{ApiError, ApiResult};

/// The first JSON value of `body`, as Go's `json.NewDecoder(r).Decode` reads it.
pub fn first_value(body: &[u8]) -> Result<Value, String> {
    let mut values = serde_json::Deserializer::from_slice(body).into_iter::<Value>();
    match values.next() {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(go_syntax_message(body, &e)),
        None => Err("EOF".into()),
    }
}

/// Go's message for a syntax error: `unexpected EOF`, or `invalid character 'x' ...`
/// (Go names the scanner state after the character; serde does not expose it, so the
/// generic "looking for beginning of value" stands in).
fn go_syntax_message(body: &[u8], e: &serde_json::Error) -> String {
    if e.is_eof() {
        return "unexpected EOF".into();
    }
    let text = String::from_utf8_lossy(body);
    let c = text
        .lines()
        .nth(e.line().saturating_sub(1))
        .and_then(|l| l.chars().nth(e.column().saturating_sub(1)));
    match c {
        Some('\'') => r"invalid character '\'' looking for beginning of value".into(),
        Some(c) => format!("invalid character '{c}' looking for beginning of value"),
        None => e.to_string(),
    }
}

/// A decoding failure as the daemon version in effect reports it.
pub fn decode_error(ctx: &Ctx, message: String) -> ApiError {
    if ctx.legacy() {
        ApiError::internal(message)
    } else {
        ApiError::bad_request(format!("invalid JSON: {message}"))
    }
}

/// Go types of the fields checked; each names itself in the error as Go does.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Bool,
    Int,
    /// `strslice.StrSlice`: a string or a list of strings; anything else is reported
    /// (whole value) against `string`, since its UnmarshalJSON retries as a string.
    StrSlice,
    StrList,
    StrMap,
    Object(&'static str),
    List,
}

const CONFIG_FIELDS: &[(&str, Kind)] = &[
    ("Hostname", Kind::Str),
    ("Domainname", Kind::Str),
    ("User", Kind::Str),
    ("AttachStdin", Kind::Bool),
    ("AttachStdout", Kind::Bool),
    ("AttachStderr", Kind::Bool),
    ("ExposedPorts", Kind::Object("nat.PortSet")),
    ("Tty", Kind::Bool),
    ("OpenStdin", Kind::Bool),
    ("StdinOnce", Kind::Bool),
    ("Env", Kind::StrList),
    ("Cmd", Kind::StrSlice),
    ("Healthcheck", Kind::Object("container.HealthConfig")),
    ("ArgsEscaped", Kind::Bool),
    ("Image", Kind::Str),
    ("Volumes", Kind::Object("map[string]struct {}")),
    ("WorkingDir", Kind::Str),
    ("Entrypoint", Kind::StrSlice),
    ("NetworkDisabled", Kind::Bool),
    ("MacAddress", Kind::Str),
    ("OnBuild", Kind::StrList),
    ("Labels", Kind::StrMap),
    ("StopSignal", Kind::Str),
    ("StopTimeout", Kind::Int),
    ("Shell", Kind::StrSlice),
];

const HOST_CONFIG_FIELDS: &[(&str, Kind)] = &[
    ("Binds", Kind::StrList),
    ("NetworkMode", Kind::Str),
    ("AutoRemove", Kind::Bool),
    ("Privileged", Kind::Bool),
    ("PublishAllPorts", Kind::Bool),
    ("ReadonlyRootfs", Kind::Bool),
    ("Init", Kind::Bool),
    ("Runtime", Kind::Str),
    ("CapAdd", Kind::StrSlice),
    ("CapDrop", Kind::StrSlice),
    ("Dns", Kind::StrList),
    ("ExtraHosts", Kind::StrList),
    ("Mounts", Kind::List),
    ("PortBindings", Kind::Object("nat.PortMap")),
    ("RestartPolicy", Kind::Object("container.RestartPolicy")),
    ("LogConfig", Kind::Object("container.LogConfig")),
];

fn go_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_error(found: &Value, field: &str, ty: &str) -> String {
    format!(
        "json: cannot unmarshal {} into Go struct field {field} of type {ty}",
        go_kind(found)
    )
}

/// Checks one field's JSON against its Go type; `null` is Go's zero value, always fine.
fn check(v: &Value, field: &str, kind: Kind) -> Result<(), String> {
    let bad = |ty: &str| Err(type_error(v, field, ty));
    let all_strings = |a: &[Value]| a.iter().find(|x| !x.is_string() && !x.is_null()).cloned();
    match (kind, v) {
        (_, Value::Null) => Ok(()),
        (Kind::Str, Value::String(_)) | (Kind::Bool, Value::Bool(_)) => Ok(()),
        (Kind::Int, Value::Number(n)) if n.is_i64() => Ok(()),
        (Kind::Str, _) => bad("string"),
        (Kind::Bool, _) => bad("bool"),
        (Kind::Int, _) => bad("int"),
        (Kind::StrSlice, Value::String(_)) => Ok(()),
        (Kind::StrSlice, Value::Array(a)) if all_strings(a).is_none() => Ok(()),
        (Kind::StrSlice, _) => bad("string"),
        (Kind::StrList, Value::Array(a)) => match all_strings(a) {
            Some(x) => Err(type_error(&x, field, "string")),
            None => Ok(()),
        },
        (Kind::StrList, _) => bad("[]string"),
        (Kind::StrMap, Value::Object(m)) => match m.values().find(|x| !x.is_string()) {
            Some(x) if !x.is_null() => Err(type_error(x, field, "string")),
            _ => Ok(()),
        },
        (Kind::StrMap, _) => bad("map[string]string"),
        (Kind::Object(_), Value::Object(_)) | (Kind::List, Value::Array(_)) => Ok(()),
        (Kind::Object(ty), _) => bad(ty),
        (Kind::List, _) => bad("[]mount.Mount"),
    }
}

/// The container-create body, checked as dockerd 20.10 decodes `ContainerConfigWrapper`.
/// Returns the object; `Err` is the whole reply.
pub fn create_body(ctx: &Ctx, body: &[u8]) -> ApiResult<Value> {
    let empty = || {
        ApiError::bad_request(if ctx.legacy() {
            "Config cannot be empty in order to create a container"
        } else {
            "config cannot be empty in order to create a container"
        })
    };
    if !ctx.legacy() && body.iter().all(u8::is_ascii_whitespace) {
        return Err(empty());
    }
    let v = first_value(body).map_err(|m| decode_error(ctx, m))?;
    let obj = match &v {
        Value::Null => return Err(empty()),
        Value::Object(o) => o,
        other => {
            return Err(decode_error(
                ctx,
                format!(
                "json: cannot unmarshal {} into Go value of type runconfig.ContainerConfigWrapper",
                go_kind(other)
            ),
            ))
        }
    };
    for (name, kind) in CONFIG_FIELDS {
        if let Some(x) = obj.get(*name) {
            check(x, &format!("ContainerConfigWrapper.{name}"), *kind)
                .map_err(|m| decode_error(ctx, m))?;
        }
    }
    if let Some(hc) = obj.get("HostConfig") {
        check(
            hc,
            "ContainerConfigWrapper.HostConfig",
            Kind::Object("container.HostConfig"),
        )
        .map_err(|m| decode_error(ctx, m))?;
        for (name, kind) in HOST_CONFIG_FIELDS {
            if let Some(x) = hc.get(*name) {
                check(x, &format!("HostConfig.HostConfig.{name}"), *kind)
                    .map_err(|m| decode_error(ctx, m))?;
            }
        }
    }
    // The embedded *container.Config stays nil unless one of its fields was given.
    if !CONFIG_FIELDS
        .iter()
        .any(|(name, _)| obj.contains_key(*name))
    {
        return Err(empty());
    }
    Ok(v)
}

// Lenient readers for fields `create_body` has already type-checked.

/// A JSON field that must be absent/null or of the given shape (Go's unmarshal errors are 400).
pub fn strings(v: &Value, field: &str) -> ApiResult<Vec<String>> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "json: cannot unmarshal {x} into Go struct field .{field} of type string"
                    ))
                })
            })
            .collect(),
        Some(other) => Err(ApiError::bad_request(format!(
            "json: cannot unmarshal {} into Go struct field .{field} of type []string",
            go_kind(other)
        ))),
    }
}

pub fn string_map(v: &Value, field: &str) -> ApiResult<BTreeMap<String, String>> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => Ok(m
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()),
                )
            })
            .collect()),
        Some(other) => Err(ApiError::bad_request(format!(
            "json: cannot unmarshal {} into Go struct field .{field} of type map[string]string",
            go_kind(other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_value_ignores_trailing_bytes_like_a_go_decoder() {
        assert_eq!(first_value(br#"{"a":1} x"#).unwrap()["a"], 1);
        assert_eq!(first_value(b"").unwrap_err(), "EOF");
        assert_eq!(first_value(br#"{"a":"#).unwrap_err(), "unexpected EOF");
        assert_eq!(
            first_value(b"nope").unwrap_err(),
            "invalid character 'o' looking for beginning of value"
        );
    }

    #[test]
    fn type_errors_name_the_go_field() {
        let v: Value = serde_json::json!([5]);
        assert_eq!(
            check(&v, "ContainerConfigWrapper.Cmd", Kind::StrSlice).unwrap_err(),
            "json: cannot unmarshal array into Go struct field ContainerConfigWrapper.Cmd of type string"
        );
        assert_eq!(
            check(&v, "ContainerConfigWrapper.Env", Kind::StrList).unwrap_err(),
            "json: cannot unmarshal number into Go struct field ContainerConfigWrapper.Env of type string"
        );
        assert!(check(&Value::Null, "x", Kind::Bool).is_ok());
    }
}
