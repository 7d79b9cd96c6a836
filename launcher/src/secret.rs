//! Secret values (whitelisted and masked variables, registry credentials, credentials in
//! URLs). Their `Debug` never shows them, so no log line, error or `{:?}` of a struct that
//! holds one can leak it. The value comes out only through [`ExposeSecret::expose_secret`],
//! where it is needed: the container's Env, the masker, the registry auth header.

use std::fmt;

pub use secrecy::{ExposeSecret, SecretString};

/// A URL that may carry credentials (`https://user:token@host`). `Debug` and `Display`
/// show it with the user-info replaced by `<redacted>` (and not at all if it does not
/// parse); equality compares the whole value.
#[derive(Clone)]
pub struct SecretUrl(SecretString);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> SecretUrl {
        SecretUrl(SecretString::from(url.into()))
    }

    /// The URL without its user-info, safe to log.
    pub fn redacted(&self) -> String {
        match reqwest::Url::parse(self.0.expose_secret()) {
            Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
                let _ = url.set_username("");
                let _ = url.set_password(None);
                url.to_string().replacen("://", "://<redacted>@", 1)
            }
            Ok(url) => url.to_string(),
            Err(_) => "<unparsable URL>".to_string(),
        }
    }
}

impl ExposeSecret<str> for SecretUrl {
    fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl From<&str> for SecretUrl {
    fn from(url: &str) -> SecretUrl {
        SecretUrl::new(url)
    }
}

impl From<String> for SecretUrl {
    fn from(url: String) -> SecretUrl {
        SecretUrl::new(url)
    }
}

impl PartialEq for SecretUrl {
    fn eq(&self, other: &SecretUrl) -> bool {
        self.expose_secret() == other.expose_secret()
    }
}

impl Eq for SecretUrl {}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.redacted(), f)
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_credentials_never_shown() {
        let u = SecretUrl::new("https://bob:pa55word@ghe.internal:8443/api?x=1");
        for shown in [format!("{u:?}"), format!("{u}"), u.redacted()] {
            assert!(
                !shown.contains("bob") && !shown.contains("pa55word"),
                "{shown}"
            );
            assert!(
                shown.contains("https://<redacted>@ghe.internal:8443/api?x=1"),
                "{shown}"
            );
        }
        assert_eq!(
            u.expose_secret(),
            "https://bob:pa55word@ghe.internal:8443/api?x=1"
        );
        let token_only = SecretUrl::new("https://ghp_t0ken@github.example");
        assert!(!format!("{token_only}").contains("ghp_t0ken"));
        let plain = SecretUrl::new("http://ghe.internal");
        assert_eq!(format!("{plain}"), "http://ghe.internal/");
        assert_eq!(
            format!("{}", SecretUrl::new("not a url")),
            "<unparsable URL>"
        );
    }

    #[test]
    fn secret_string_debug_is_redacted() {
        let s = SecretString::from("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.expose_secret(), "hunter2");
    }
}
