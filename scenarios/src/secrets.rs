//! The secret oracle, checked after every scenario (fixed and random): no secret the world
//! knows may appear in anything the launcher printed (its tracing output, captured per
//! launcher node, and its exit errors) or in anything the backend received from it (run
//! logs, run reasons, events). Secrets: the pool keys (base64 as passed, the PEM body and
//! its lines, windows of the DER bytes in hex and as a decimal list), the token, every
//! `SPACELIFT_MASK_ENVS` value (whole and line by line) and registry credentials from a
//! configured `SPACELIFT_DOCKER_CONFIG_DIR`. A failure names the secret and where it
//! leaked, never the value.

use std::collections::BTreeMap;

use crate::world::World;
use base64::Engine;

/// Secrets shorter than this are not looked for (they would match by chance).
pub const MIN_LEN: usize = 4;

/// One spelling of one secret.
#[derive(Clone)]
struct Needle {
    label: String,
    text: String,
}

/// Every spelling of every secret the world knows.
#[derive(Clone, Default)]
pub struct Secrets {
    needles: Vec<Needle>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the values: a failing test's Debug output must not print them either.
        let labels: Vec<&str> = self.needles.iter().map(|n| n.label.as_str()).collect();
        f.debug_struct("Secrets").field("labels", &labels).finish()
    }
}

impl Secrets {
    fn push(&mut self, label: impl Into<String>, text: impl Into<String>) {
        let text = text.into();
        if text.trim().len() < MIN_LEN {
            return;
        }
        // JSON (events, bodies) escapes newlines and quotes: look for that spelling too.
        let json = serde_json::to_string(&text).unwrap_or_default();
        let json = json.trim_matches('"').to_string();
        let label = label.into();
        if json != text && json.len() >= MIN_LEN {
            self.needles.push(Needle {
                label: format!("{label} (JSON-escaped)"),
                text: json,
            });
        }
        self.needles.push(Needle { label, text });
    }

    /// A pool private key as given in `SPACELIFT_POOL_PRIVATE_KEY` (base64 of the PEM).
    pub fn add_pool_key(&mut self, label: &str, key_b64: &str) {
        self.push(format!("{label} (base64 as passed)"), key_b64.trim());
        let Ok(pem) = base64::engine::general_purpose::STANDARD.decode(key_b64.trim()) else {
            return;
        };
        let pem = String::from_utf8_lossy(&pem).into_owned();
        self.add_pem(label, &pem);
    }

    /// A PEM private key: its body whole and line by line, and windows of its DER bytes.
    pub fn add_pem(&mut self, label: &str, pem: &str) {
        let body: Vec<&str> = pem
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("-----") && !l.contains(':'))
            .collect();
        for (i, line) in body.iter().enumerate() {
            self.push(format!("{label} (PEM body line {})", i + 1), *line);
        }
        let joined = body.concat();
        self.push(format!("{label} (PEM body)"), joined.clone());
        let Ok(der) = base64::engine::general_purpose::STANDARD.decode(&joined) else {
            return;
        };
        // Windows inside the key material (past the ASN.1 headers every key shares).
        const WINDOW: usize = 16;
        for at in [der.len() / 4, der.len() / 2, der.len() * 3 / 4] {
            let Some(w) = der.get(at..at + WINDOW) else {
                continue;
            };
            self.push(format!("{label} (DER bytes at {at}, hex)"), hex(w));
            let decimal: Vec<String> = w.iter().map(u8::to_string).collect();
            self.push(
                format!("{label} (DER bytes at {at}, decimal list)"),
                decimal.join(", "),
            );
        }
    }

    /// A masked value: whole, and each line of a multi-line value (a container prints
    /// it as several lines).
    pub fn add_masked(&mut self, label: &str, value: &str) {
        self.push(label.to_string(), value);
        if value.contains('\n') {
            for (i, line) in value.lines().enumerate() {
                if !line.trim_start().starts_with("-----") {
                    self.push(format!("{label} (line {})", i + 1), line.trim());
                }
            }
        }
    }

    pub fn add(&mut self, label: &str, value: &str) {
        self.push(label.to_string(), value);
    }

    /// One message per secret found in `text`, naming `source` and the secret, not its value.
    pub fn leaks(&self, source: &str, text: &str) -> Vec<String> {
        self.leaked(text)
            .iter()
            .map(|label| format!("secret leaked: {label} appears in {source}"))
            .collect()
    }

    /// The labels of the secrets found in `text`, each once, in needle order.
    pub fn leaked(&self, text: &str) -> Vec<&str> {
        let mut seen = std::collections::BTreeSet::new();
        self.needles
            .iter()
            .filter(|n| text.contains(n.text.as_str()))
            .filter(|n| seen.insert(n.label.as_str()))
            .map(|n| n.label.as_str())
            .collect()
    }

    /// Replaces, in each of `texts`, every spelling of every secret with the launcher's
    /// mask, longest first (so a value is not half-replaced by one of its own lines).
    /// Secrets are looked for once in all the texts together, then only those found are
    /// replaced text by text: most texts hold none, and a search's setup costs the length
    /// of the secret (a pool key is kilobytes).
    pub fn redact_all(&self, texts: &mut [&mut String]) {
        let all = texts
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join("\u{0}");
        let mut found: Vec<&str> = self
            .needles
            .iter()
            .map(|n| n.text.as_str())
            .filter(|n| all.contains(n))
            .collect();
        found.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        for t in texts.iter_mut() {
            for n in &found {
                if t.contains(n) {
                    **t = t.replace(n, launcher::masking::MASK);
                }
            }
        }
    }

    /// Every secret `world` knows.
    pub fn of_world(world: &World) -> Secrets {
        let mut s = Secrets::default();
        s.add_pool_key("the pool private key", &world.key);
        s.add("the pool token", &world.token);
        for (i, (key, token)) in world.revoked.iter().enumerate() {
            s.add_pool_key(&format!("a revoked pool private key #{}", i + 1), key);
            s.add(&format!("a revoked pool token #{}", i + 1), token);
        }
        for (i, k) in world.other_keys().iter().enumerate() {
            s.add_pool_key(&format!("another pool's private key #{}", i + 1), k);
        }
        for (name, l) in &world.launchers {
            add_launcher_env(&mut s, name, &l.topology.env);
        }
        s
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Masked values and registry credentials a launcher's scenario env configures.
fn add_launcher_env(s: &mut Secrets, launcher: &str, env: &BTreeMap<String, String>) {
    for value in masked_values(env) {
        s.add_masked(&format!("launcher {launcher}'s masked value"), &value);
    }
    if let Some(dir) = env.get("SPACELIFT_DOCKER_CONFIG_DIR") {
        let path = std::path::Path::new(dir).join("config.json");
        if let Ok(text) = std::fs::read_to_string(&path) {
            add_registry_auths(s, launcher, &text);
        }
    }
}

/// The values `SPACELIFT_MASK_ENVS` names in `env` (plain, `ro_` and `wo_` spellings, as
/// the whitelist reads them).
pub fn masked_values(env: &BTreeMap<String, String>) -> Vec<String> {
    let Some(list) = env.get("SPACELIFT_MASK_ENVS") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        for key in [name.to_string(), format!("ro_{name}"), format!("wo_{name}")] {
            if let Some(v) = env.get(&key).filter(|v| !v.is_empty()) {
                out.push(v.clone());
            }
        }
    }
    out
}

/// `auths.*.auth` (base64 `user:password`), the password alone, and identity tokens.
fn add_registry_auths(s: &mut Secrets, launcher: &str, config_json: &str) {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(config_json) else {
        return;
    };
    let Some(auths) = v.get("auths").and_then(|a| a.as_object()) else {
        return;
    };
    for (host, a) in auths {
        let label = format!("launcher {launcher}'s registry credential for {host}");
        if let Some(auth) = a.get("auth").and_then(|x| x.as_str()) {
            s.add(&label, auth);
            if let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(auth) {
                let raw = String::from_utf8_lossy(&raw).into_owned();
                if let Some((_, password)) = raw.split_once(':') {
                    s.add(&format!("{label} (password)"), password);
                }
            }
        }
        for field in ["password", "identitytoken", "registrytoken"] {
            if let Some(x) = a.get(field).and_then(|x| x.as_str()) {
                s.add(&format!("{label} ({field})"), x);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN PRIVATE KEY-----\n\
        MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n\
        MzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu\n\
        NMoSfm76oqFvAp8Gy0iz5sxjZmSnXyCdPEovGhLa0VzMaQ8s+CLOyS56YyCFGeJZ\n\
        -----END PRIVATE KEY-----\n";

    fn secrets() -> Secrets {
        let mut s = Secrets::default();
        s.add_pool_key(
            "the pool private key",
            &base64::engine::general_purpose::STANDARD.encode(PEM),
        );
        s.add_masked("a masked value", "hunter2-very-secret");
        s.add_masked(
            "a multi-line masked value",
            "first-line-abc\nsecond-line-def",
        );
        s
    }

    #[test]
    fn a_captured_output_containing_a_secret_fails_the_verdict() {
        let s = secrets();
        assert!(s.leaks("out", "INFO registered worker 01ABC").is_empty());
        let leaks = s.leaks(
            "launcher l1's log output",
            "DEBUG env TOKEN=hunter2-very-secret",
        );
        assert_eq!(leaks.len(), 1, "{leaks:?}");
        assert!(leaks[0].contains("a masked value"), "{leaks:?}");
        assert!(leaks[0].contains("launcher l1's log output"), "{leaks:?}");
        assert!(
            !leaks[0].contains("hunter2"),
            "the report must not carry the value"
        );
    }

    #[test]
    fn every_spelling_of_the_key_is_caught() {
        let s = secrets();
        let b64 = base64::engine::general_purpose::STANDARD.encode(PEM);
        // base64 as passed; the PEM with its line breaks lost; one body line.
        assert!(!s.leaks("x", &format!("key={b64}")).is_empty());
        assert!(!s.leaks("x", &PEM.replace('\n', " ")).is_empty());
        assert!(!s
            .leaks(
                "x",
                "...NMoSfm76oqFvAp8Gy0iz5sxjZmSnXyCdPEovGhLa0VzMaQ8s+CLOyS56YyCFGeJZ"
            )
            .is_empty());
        // The DER bytes as a decimal list (Rust's Debug of a Vec<u8>) and as hex.
        let body: String = PEM.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        assert!(!s.leaks("x", &format!("bad key: {der:?}")).is_empty());
        assert!(!s.leaks("x", &hex(&der)).is_empty());
    }

    #[test]
    fn a_multi_line_value_is_caught_line_by_line_and_json_escaped() {
        let s = secrets();
        assert!(!s.leaks("x", "second-line-def").is_empty());
        assert!(!s
            .leaks("x", r#"{"msg":"first-line-abc\nsecond-line-def"}"#)
            .is_empty());
        assert!(s.leaks("x", "first-line").is_empty());
    }

    #[test]
    fn short_values_are_not_looked_for_and_debug_hides_values() {
        let mut s = Secrets::default();
        s.add_masked("tiny", "ab");
        assert!(s.leaks("x", "ab ab ab").is_empty());
        let s = secrets();
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn masked_values_follow_the_whitelist_spellings() {
        let env: BTreeMap<String, String> = [
            ("SPACELIFT_MASK_ENVS", "A, B"),
            ("A", "value-a"),
            ("ro_B", "value-b-ro"),
            ("C", "not-masked"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(masked_values(&env), vec!["value-a", "value-b-ro"]);
    }

    #[test]
    fn registry_credentials_are_secrets() {
        let auth = base64::engine::general_purpose::STANDARD.encode("user:pa55word-xyz");
        let mut s = Secrets::default();
        add_registry_auths(
            &mut s,
            "l1",
            &format!(r#"{{"auths":{{"r.io":{{"auth":"{auth}"}}}}}}"#),
        );
        assert!(!s.leaks("x", "login with pa55word-xyz").is_empty());
        assert!(!s.leaks("x", &auth).is_empty());
    }
}
