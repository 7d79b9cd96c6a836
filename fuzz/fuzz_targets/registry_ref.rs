//! Image references: for every reference valid under Docker's grammar
//! (distribution/reference, modelled below without IPv6 literals), `registry_host` picks
//! the domain as `splitDockerDomain` does: the first `/`-separated component is a
//! registry host when it contains `.` or `:`, is `localhost`, or has an upper-case
//! letter; otherwise the image is on Docker Hub (`docker.io`). Docker Hub's aliases are
//! one registry; host names compare case-insensitively. For any string, `with_default_tag`
//! adds `:latest` only to names with neither a tag nor a digest, and is idempotent.
#![no_main]

use launcher::docker::with_default_tag;
use launcher::registry_auth::registry_host;
use libfuzzer_sys::fuzz_target;

const HUB: &[&str] = &[
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
];

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn path_component(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &s[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-')) {
            return false;
        }
    }
    true
}

/// `domain-component(\.domain-component)*(:[0-9]+)?`, component
/// `[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`.
fn domain(s: &str) -> bool {
    let (host, port) = match s.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()) {
            return false;
        }
    }
    host.split('.').all(|c| {
        let b = c.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
    })
}

fn valid_reference(s: &str) -> bool {
    let (name_tag, digest) = match s.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        // digest.Parse: a known algorithm with exactly its length of lower-case hex.
        let Some((alg, hex)) = d.split_once(':') else {
            return false;
        };
        let len = match alg {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            _ => return false,
        };
        if hex.len() != len || !hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return false;
        }
    }
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(t) = tag {
        let ok = (1..=128).contains(&t.len())
            && !t.starts_with(['.', '-'])
            && t.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c));
        if !ok {
            return false;
        }
    }
    // ParseNormalizedNamed refuses a whole reference that is a 64-hex identifier (an
    // image ID); with a tag or digest it is an ordinary Docker Hub name.
    if s.len() == 64 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return false;
    }
    let all_path = name.split('/').all(path_component);
    let with_domain = match name.split_once('/') {
        Some((d, rest)) => domain(d) && rest.split('/').all(path_component),
        None => false,
    };
    if !(all_path || with_domain) {
        return false;
    }
    // Only the normalised path counts towards the 255 limit (distribution/reference
    // v0.6.0): `alpine` is `library/alpine`, a registry's name is not counted.
    let path_len = match name.split_once('/') {
        Some((first, rest)) if is_registry(first) => rest.len(),
        Some(_) => name.len(),
        None => "library/".len() + name.len(),
    };
    path_len <= 255
}

/// splitDockerDomain: the first component names a registry.
fn is_registry(first: &str) -> bool {
    first.contains(['.', ':'])
        || first == "localhost"
        || first.chars().any(|c| c.is_ascii_uppercase())
}

fuzz_target!(|image: &str| {
    if valid_reference(image) {
        let host = registry_host(image);
        match image.split_once('/') {
            Some((first, _)) if is_registry(first) => {
                let first = first.to_ascii_lowercase();
                if !domain(&first) {
                    // Docker then reads the whole name as a path with no domain.
                    assert_eq!(host, None, "{image:?}: {first:?} is no host name");
                } else if HUB.contains(&first.as_str()) {
                    assert_eq!(host.as_deref(), Some("docker.io"), "{image:?}");
                } else {
                    assert_eq!(
                        host,
                        Some(first.clone()),
                        "{image:?} names registry {first:?}"
                    );
                }
            }
            _ => assert_eq!(
                host.as_deref(),
                Some("docker.io"),
                "{image:?} has no registry host"
            ),
        }
    } else {
        let host = registry_host(image);
        // Docker refuses it, so no credentials may go anywhere with it (IPv6 literals
        // are outside the model above).
        if !image.contains('[') {
            assert_eq!(host, None, "{image:?} is not a valid reference");
        }
    }

    let tagged = with_default_tag(image);
    assert_eq!(with_default_tag(&tagged), tagged, "not idempotent");
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        assert_eq!(tagged, image);
    } else {
        assert_eq!(tagged, format!("{image}:latest"));
    }
});
