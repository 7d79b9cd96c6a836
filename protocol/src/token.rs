//! `SPACELIFT_TOKEN` and `SPACELIFT_POOL_PRIVATE_KEY` as text.
//!
//! The token is base64 of a JSON object. Spacelift documents only `.broker.endpoint`; the
//! other fields are ours (see `docs/protocol.md`). Unknown fields are ignored.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::error::ProtocolError;

/// Standard alphabet; padding optional, since people paste tokens with and without it.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The decoded `SPACELIFT_TOKEN`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub broker: BrokerConfig,
    pub api: ApiConfig,
    pub pool_ulid: String,
    /// The pool's client certificate (PEM), signed by the backend from the pool's CSR.
    pub certificate: String,
    /// Extra trust root (PEM) for the backend's and broker's server certificates; real
    /// Spacelift uses public roots, a self-hosted or fake backend its own CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<String>,
    /// MQTT topic namespace; `spacelift` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_namespace: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerConfig {
    /// `mqtts://host:port`, `tls://host:port` or `ssl://host:port`; port 8883 if absent.
    pub endpoint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiConfig {
    /// Base URL of the HTTPS API, e.g. `https://127.0.0.1:8443`.
    pub endpoint: String,
}

impl Token {
    /// Decodes the token from `SPACELIFT_TOKEN`'s text. `what` names the source in errors.
    pub fn decode(what: &str, text: &str) -> Result<Token, ProtocolError> {
        let bytes = decode_base64(what, text)?;
        let token: Token =
            serde_json::from_slice(&bytes).map_err(|source| ProtocolError::Json {
                what: what.to_string(),
                source,
            })?;
        token.validate(what)?;
        Ok(token)
    }

    /// Encodes the token as the backend hands it out.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("token serializes");
        base64::engine::general_purpose::STANDARD.encode(json)
    }

    pub fn namespace(&self) -> &str {
        self.topic_namespace
            .as_deref()
            .unwrap_or(crate::topics::DEFAULT_NAMESPACE)
    }

    /// Host and port of the broker endpoint.
    pub fn broker_host_port(&self) -> Result<(String, u16), ProtocolError> {
        parse_endpoint(&self.broker.endpoint, &["mqtts", "tls", "ssl"], 8883).map_err(|message| {
            ProtocolError::Invalid {
                what: "SPACELIFT_TOKEN .broker.endpoint".into(),
                message,
            }
        })
    }

    fn validate(&self, what: &str) -> Result<(), ProtocolError> {
        let missing = |field| ProtocolError::MissingField {
            what: what.to_string(),
            field,
        };
        if self.broker.endpoint.trim().is_empty() {
            return Err(missing(".broker.endpoint"));
        }
        if self.api.endpoint.trim().is_empty() {
            return Err(missing(".api.endpoint"));
        }
        if self.pool_ulid.trim().is_empty() {
            return Err(missing(".pool_ulid"));
        }
        if !self.certificate.contains("-----BEGIN CERTIFICATE-----") {
            return Err(ProtocolError::Invalid {
                what: what.to_string(),
                message: ".certificate is not a PEM certificate".into(),
            });
        }
        self.broker_host_port()?;
        check_api_endpoint(&self.api.endpoint).map_err(|detail| ProtocolError::Invalid {
            what: what.to_string(),
            message: format!(
                ".api.endpoint must be an https:// URL (https://host[:port][/prefix]); {detail}"
            ),
        })?;
        Ok(())
    }
}

/// The API is reached with the pool's client certificate and carries run secrets: plain
/// HTTP is refused. Only the scheme is quoted back.
fn check_api_endpoint(endpoint: &str) -> Result<(), String> {
    let Some((scheme, rest)) = endpoint.trim().split_once("://") else {
        return Err("it has no scheme".into());
    };
    if !scheme.eq_ignore_ascii_case("https") {
        let scheme: String = scheme.chars().take(16).collect();
        return Err(format!("got scheme {scheme:?}"));
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() {
        return Err("it has no host".into());
    }
    Ok(())
}

/// Splits `scheme://host:port[/]` into host and port, accepting only `schemes`.
pub fn parse_endpoint(
    endpoint: &str,
    schemes: &[&str],
    default_port: u16,
) -> Result<(String, u16), String> {
    let (scheme, rest) = endpoint.split_once("://").ok_or_else(|| {
        format!(
            "{endpoint:?} has no scheme (expected {}://host:port)",
            schemes[0]
        )
    })?;
    if !schemes.contains(&scheme) {
        return Err(format!(
            "{endpoint:?} has scheme {scheme:?} (expected one of {})",
            schemes.join(", ")
        ));
    }
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(format!("{endpoint:?} is not scheme://host:port"));
    }
    // Bracketed IPv6 literal.
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{endpoint:?} has an unclosed IPv6 bracket"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p
                .parse()
                .map_err(|_| format!("{endpoint:?} has a bad port"))?,
            None => default_port,
        };
        return Ok((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Ok((
            host.to_string(),
            port.parse()
                .map_err(|_| format!("{endpoint:?} has a bad port {port:?}"))?,
        )),
        None => Ok((authority.to_string(), default_port)),
    }
}

/// Decodes base64 text (whitespace around it ignored), naming the first bad byte.
pub fn decode_base64(what: &str, text: &str) -> Result<Vec<u8>, ProtocolError> {
    let trimmed = text.trim();
    let lead = text.len() - text.trim_start().len();
    if trimmed.is_empty() {
        return Err(ProtocolError::Invalid {
            what: what.to_string(),
            message: "is empty".into(),
        });
    }
    LENIENT.decode(trimmed).map_err(|e| {
        let offset = match e {
            base64::DecodeError::InvalidByte(offset, _) => offset,
            base64::DecodeError::InvalidLastSymbol(offset, _) => offset,
            base64::DecodeError::InvalidLength(len) => len,
            base64::DecodeError::InvalidPadding => trimmed.len(),
        };
        ProtocolError::Base64 {
            what: what.to_string(),
            offset: offset + lead,
        }
    })
}

/// Decodes `SPACELIFT_POOL_PRIVATE_KEY`: base64 of a whole PEM private key (PKCS#8
/// `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`). Returns the PEM text; the caller parses it.
pub fn decode_private_key_pem(what: &str, text: &str) -> Result<String, ProtocolError> {
    let bytes = decode_base64(what, text)?;
    let pem = String::from_utf8(bytes).map_err(|_| ProtocolError::Invalid {
        what: what.to_string(),
        message: "decodes to binary data, not a PEM text (base64 the whole .key file: base64 -w0 spacelift.key)".into(),
    })?;
    let accepted = [
        "-----BEGIN PRIVATE KEY-----",
        "-----BEGIN RSA PRIVATE KEY-----",
    ];
    if !accepted.iter().any(|m| pem.contains(m)) {
        let message = if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            "is an encrypted private key; generate it with -nodes".to_string()
        } else if pem.contains("-----BEGIN CERTIFICATE") {
            "holds a certificate or CSR, not the private key (spacelift.key)".to_string()
        } else {
            "does not hold a PEM private key (expected BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY)"
                .to_string()
        };
        return Err(ProtocolError::Invalid {
            what: what.to_string(),
            message,
        });
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Token {
        Token {
            broker: BrokerConfig {
                endpoint: "mqtts://127.0.0.1:8883".into(),
            },
            api: ApiConfig {
                endpoint: "https://127.0.0.1:8443".into(),
            },
            pool_ulid: "01HZY0000000000000000POOL1".into(),
            certificate: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            ca_certificate: None,
            topic_namespace: None,
        }
    }

    #[test]
    fn round_trips_and_tolerates_unknown_fields() {
        let t = sample();
        assert_eq!(Token::decode("SPACELIFT_TOKEN", &t.encode()).unwrap(), t);
        let mut json: serde_json::Value = serde_json::to_value(&t).unwrap();
        json["future_field"] = serde_json::json!({"x": 1});
        let text = base64::engine::general_purpose::STANDARD.encode(json.to_string());
        assert_eq!(Token::decode("SPACELIFT_TOKEN", &text).unwrap(), t);
    }

    #[test]
    fn bad_base64_names_variable_and_offset() {
        let err = Token::decode("SPACELIFT_TOKEN", "abcd*efg").unwrap_err();
        assert_eq!(
            err.to_string(),
            "SPACELIFT_TOKEN: unable to base64 decode: illegal base64 data at input byte 4"
        );
    }

    #[test]
    fn missing_broker_endpoint_is_named() {
        let mut t = sample();
        t.broker.endpoint = " ".into();
        let err = Token::decode("SPACELIFT_TOKEN", &t.encode()).unwrap_err();
        assert!(err.to_string().contains(".broker.endpoint"), "{err}");
    }

    #[test]
    fn api_endpoint_must_be_https() {
        for endpoint in [
            "http://127.0.0.1:8443",
            "HTTP://api.example",
            "127.0.0.1:8443",
            "https://",
        ] {
            let mut t = sample();
            t.api.endpoint = endpoint.into();
            let err = Token::decode("SPACELIFT_TOKEN", &t.encode())
                .expect_err(endpoint)
                .to_string();
            assert!(
                err.starts_with("SPACELIFT_TOKEN: .api.endpoint must be an https:// URL"),
                "{endpoint}: {err}"
            );
        }
        for endpoint in [
            "https://127.0.0.1:8443",
            "https://api.example/prefix/",
            "HTTPS://h",
        ] {
            let mut t = sample();
            t.api.endpoint = endpoint.into();
            Token::decode("SPACELIFT_TOKEN", &t.encode()).expect(endpoint);
        }
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            parse_endpoint("tls://example.com:1984", &["tls"], 8883).unwrap(),
            ("example.com".into(), 1984)
        );
        assert_eq!(
            parse_endpoint("mqtts://example.com", &["mqtts"], 8883).unwrap(),
            ("example.com".into(), 8883)
        );
        assert_eq!(
            parse_endpoint("mqtts://[::1]:9", &["mqtts"], 8883).unwrap(),
            ("::1".into(), 9)
        );
        assert!(parse_endpoint("http://x:1", &["mqtts"], 8883).is_err());
        assert!(parse_endpoint("x:1", &["mqtts"], 8883).is_err());
    }

    #[test]
    fn private_key_must_be_pem_key() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let ok = b64("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
        assert!(decode_private_key_pem("K", &ok).is_ok());
        let csr = b64("-----BEGIN CERTIFICATE REQUEST-----\n");
        assert!(decode_private_key_pem("K", &csr)
            .unwrap_err()
            .to_string()
            .contains("not the private key"));
        let err = decode_private_key_pem("SPACELIFT_POOL_PRIVATE_KEY", "  ab!d").unwrap_err();
        assert!(err.to_string().contains("input byte 4"), "{err}");
    }
}
