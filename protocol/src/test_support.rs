//! For the workspace's tests only (every crate depends on this one): what a test does when
//! a component it needs (Mosquitto, openssl, the docker CLI, a real dockerd) is missing.
//! On a developer machine it skips with the reason; under `CI=true` it fails, so a missing
//! install step cannot hide behind a green run.

/// Whether `ci` (the value of the `CI` variable) means "running in CI".
fn in_ci(ci: Option<&str>) -> bool {
    ci.map(str::trim)
        .is_some_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// The decision, with the environment passed in: `Ok(true)` run, `Ok(false)` skip (the
/// reason is printed), `Err(message)` fail.
pub fn decide(
    present: bool,
    component: &str,
    install: &str,
    ci: Option<&str>,
) -> Result<bool, String> {
    if present {
        return Ok(true);
    }
    if in_ci(ci) {
        return Err(format!(
            "{component} is missing and CI is set, so this test may not skip: {install}"
        ));
    }
    eprintln!("skipped: {component} is missing ({install})");
    Ok(false)
}

/// Whether the test may go on: true when `present`; false (skip, reason printed) when not,
/// outside CI; panics naming `component` and `install` when not, under `CI=true`.
pub fn require_component(present: bool, component: &str, install: &str) -> bool {
    require_component_in(
        present,
        component,
        install,
        std::env::var("CI").ok().as_deref(),
    )
}

/// [`require_component`] with the `CI` value given (so tests need not mutate the env).
pub fn require_component_in(
    present: bool,
    component: &str,
    install: &str,
    ci: Option<&str>,
) -> bool {
    match decide(present, component, install, ci) {
        Ok(go) => go,
        Err(msg) => panic!("{msg}"),
    }
}

/// Whether an executable is at one of `paths` or, by that name, on `PATH`.
pub fn executable_exists(name: &str, paths: &[&str]) -> bool {
    paths.iter().any(|p| std::path::Path::new(p).is_file())
        || std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
}

/// Install hints, named once.
pub const INSTALL_DEPS: &str = "install it with `sudo scripts/install-deps.sh`";
pub const START_DOCKERD: &str = "set TEST_DOCKER_HOST to a real dockerd: \
     `scripts/test.sh` starts one (scripts/dockerd.sh, after `sudo scripts/install-deps.sh`)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_components_always_run() {
        assert_eq!(decide(true, "mosquitto", INSTALL_DEPS, None), Ok(true));
        assert_eq!(
            decide(true, "mosquitto", INSTALL_DEPS, Some("true")),
            Ok(true)
        );
    }

    #[test]
    fn missing_outside_ci_skips() {
        for ci in [None, Some(""), Some("false"), Some("0")] {
            assert_eq!(
                decide(false, "openssl", INSTALL_DEPS, ci),
                Ok(false),
                "{ci:?}"
            );
        }
    }

    #[test]
    fn missing_under_ci_fails_naming_the_component_and_the_fix() {
        for ci in ["true", "1", "TRUE"] {
            let msg = decide(false, "mosquitto", INSTALL_DEPS, Some(ci)).unwrap_err();
            assert!(msg.contains("mosquitto"), "{msg}");
            assert!(msg.contains("scripts/install-deps.sh"), "{msg}");
        }
    }

    #[test]
    #[should_panic(expected = "TEST_DOCKER_HOST")]
    fn require_panics_under_ci() {
        require_component_in(
            false,
            "a real dockerd (TEST_DOCKER_HOST)",
            START_DOCKERD,
            Some("true"),
        );
    }

    #[test]
    fn require_skips_outside_ci() {
        assert!(!require_component_in(false, "openssl", INSTALL_DEPS, None));
    }
}
