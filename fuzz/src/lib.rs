//! Shared by the fuzz targets: fixed pool credentials and the secret-leak oracle.

use std::collections::HashSet;

use base64::Engine;
use protocol::token::{ApiConfig, BrokerConfig, Token};

/// A throw-away EC P-256 pool key (PKCS#8) and its self-signed certificate, made once
/// with openssl for these targets; they protect nothing.
pub const POOL_KEY_PEM: &str = include_str!("../data/pool.key.pem");
pub const POOL_CERT_PEM: &str = include_str!("../data/pool.cert.pem");

/// A valid `SPACELIFT_TOKEN` for [`POOL_CERT_PEM`].
pub fn token_text() -> String {
    Token {
        broker: BrokerConfig {
            endpoint: "mqtts://127.0.0.1:8883".into(),
        },
        api: ApiConfig {
            endpoint: "https://127.0.0.1:8443".into(),
        },
        pool_ulid: "01HZY0000000000000000POOL1".into(),
        certificate: POOL_CERT_PEM.into(),
        ca_certificate: None,
        topic_namespace: None,
    }
    .encode()
}

/// A valid `SPACELIFT_POOL_PRIVATE_KEY` for [`token_text`].
pub fn key_text() -> String {
    base64::engine::general_purpose::STANDARD.encode(POOL_KEY_PEM)
}

/// Windows this long are compared: shorter common substrings are mostly coincidence.
pub const WINDOW: usize = 8;

/// Digit runs become `#`, so "input byte 12" and "input byte 7" look alike and numbers
/// in a message never count as key bytes, while a list of byte values ("45, 45, 45")
/// still does.
pub fn normalize(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut in_digits = false;
    for &b in text.as_bytes() {
        if b.is_ascii_digit() {
            if !in_digits {
                out.push(b'#');
            }
            in_digits = true;
        } else {
            out.push(b);
            in_digits = false;
        }
    }
    out
}

fn windows(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes
        .windows(WINDOW)
        .map(|w| u64::from_le_bytes(w.try_into().expect("window is 8 bytes")))
}

/// The ways a secret's bytes can be spelled in a message: as text, Debug-escaped text,
/// base64, hex, and as a list of decimal byte values.
pub fn spellings(secret: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(secret).into_owned();
    let list: Vec<String> = secret.iter().map(u8::to_string).collect();
    vec![
        format!("{text:?}"),
        text,
        base64::engine::general_purpose::STANDARD.encode(secret),
        hex::encode(secret),
        hex::encode_upper(secret),
        list.join(", "),
        list.join(","),
    ]
}

/// The oracle: `output` (an error's Display or Debug) holds no [`WINDOW`]-byte piece of
/// any spelling of any secret, except pieces of `vocabulary` (the fixed words messages
/// are made of, which an input may of course also contain).
pub fn find_leak(output: &str, secrets: &[&[u8]], vocabulary: &[&str]) -> Option<String> {
    let out = normalize(output);
    let seen: HashSet<u64> = windows(&out).collect();
    if seen.is_empty() {
        return None;
    }
    let allowed: HashSet<u64> = vocabulary
        .iter()
        .flat_map(|v| windows(&normalize(v)).collect::<Vec<_>>())
        .collect();
    for secret in secrets {
        for spelling in spellings(secret) {
            let norm = normalize(&spelling);
            for (i, w) in windows(&norm).enumerate() {
                if seen.contains(&w) && !allowed.contains(&w) {
                    return Some(String::from_utf8_lossy(&norm[i..i + WINDOW]).into_owned());
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_decimal_byte_list() {
        let msg = "bad line [45, 45, 45, 45, 45, 66, 69]";
        assert!(find_leak(msg, &[b"-----BEGIN"], &[]).is_some());
        assert!(find_leak("input byte 12345678", &[b"byte 1234"], &["input byte 0"]).is_none());
    }
}
