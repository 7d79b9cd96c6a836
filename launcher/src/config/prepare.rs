//! Acting on a validated configuration, apart from validating it: what needs the disk
//! (the initialization policy file, the Docker config.json) happens here, after
//! [`super::load_with`] and before any connection.

use std::sync::Arc;

use super::{invalid, vars, ConfigError, LauncherConfig};
use crate::init_policy::InitPolicy;

impl LauncherConfig {
    /// Reads and compiles the initialization policy into `settings.init_policy` (an
    /// unreadable or invalid policy is a configuration error), and warns when
    /// `SPACELIFT_DOCKER_CONFIG_DIR` holds no config.json.
    pub fn prepare(mut self) -> Result<LauncherConfig, ConfigError> {
        if let Some(path) = &self.init_policy_path {
            let policy = InitPolicy::load(path)
                .map_err(|e| invalid(vars::RUN_INITIALIZATION_POLICY.name, e))?;
            self.settings.init_policy = Some(Arc::new(policy));
        }
        if let Some(dir) = &self.settings.docker_config_dir {
            if !dir.join("config.json").is_file() {
                self.warnings.push(format!(
                    "{}: {} has no config.json; pulls will be anonymous",
                    vars::DOCKER_CONFIG_DIR.name,
                    dir.display()
                ));
            }
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_env::with;
    use super::super::{load, MapEnv};
    use super::*;

    fn prepared(pairs: &[(&str, &str)]) -> Result<LauncherConfig, ConfigError> {
        with(pairs)?.prepare()
    }

    #[test]
    fn initialization_policy_is_compiled_at_startup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("init.rego");
        std::fs::write(
            &path,
            "package spacelift\n\ndeny[\"no tasks\"] {\n  input.run.type == \"TASK\"\n}\n",
        )
        .unwrap();
        let c =
            prepared(&[(vars::RUN_INITIALIZATION_POLICY.name, path.to_str().unwrap())]).unwrap();
        let p = c.settings.init_policy.as_ref().expect("policy loaded");
        assert_eq!(p.path(), path);
        let task = crate::init_policy::PolicyInput::new(
            "01R",
            protocol::api::RunType::Task,
            "s",
            "img",
            "1",
        );
        assert_eq!(
            p.evaluate(&task).map(|e| e.decision),
            Ok(crate::init_policy::Decision::Deny(vec!["no tasks".into()]))
        );
        // Unset (or empty): no policy.
        assert!(prepared(&[]).unwrap().settings.init_policy.is_none());
        assert!(prepared(&[(vars::RUN_INITIALIZATION_POLICY.name, " ")])
            .unwrap()
            .settings
            .init_policy
            .is_none());
        let help = crate::config::env_help();
        assert!(!help.contains("NOT SUPPORTED"));
        assert!(help.contains("initialization_policy_denied"));
    }

    #[test]
    fn invalid_initialization_policy_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.rego");
        std::fs::write(&path, "package spacelift\n\ndeny[msg] {\n").unwrap();
        let p = path.to_str().unwrap();
        let e = prepared(&[(vars::RUN_INITIALIZATION_POLICY.name, p)]).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Invalid { var, .. } if var == vars::RUN_INITIALIZATION_POLICY.name)
        );
        // The variable, the file, and regorus's error with its position.
        assert_eq!(
            e.to_string(),
            format!(
                "SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY: invalid Rego policy {p}:\n\
                 --> {p}:3:11\n  |\n3 | deny[msg] {{\n  |           ^\nerror: expecting }}"
            )
        );

        std::fs::write(&path, "package other\n\ndeny[\"x\"] { true }\n").unwrap();
        assert_eq!(
            prepared(&[(vars::RUN_INITIALIZATION_POLICY.name, p)])
                .unwrap_err()
                .to_string(),
            format!(
                "SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY: the policy {p} is package other, \
                 but an initialization policy must be `package spacelift`"
            )
        );
    }

    #[test]
    fn missing_initialization_policy_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.rego");
        let p = path.to_str().unwrap();
        let e = prepared(&[(vars::RUN_INITIALIZATION_POLICY.name, p)])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY: cannot read the policy file {p}: "
            )),
            "{e}"
        );
        // Validation reads no file: the missing policy passes `load` (which names the
        // missing token first when nothing else is set), and `prepare` reports it.
        let c = with(&[(vars::RUN_INITIALIZATION_POLICY.name, p)]).unwrap();
        assert_eq!(c.init_policy_path.as_deref(), Some(path.as_path()));
        let e = load(&MapEnv::new([(vars::RUN_INITIALIZATION_POLICY.name, p)])).unwrap_err();
        assert!(
            e.to_string().starts_with("SPACELIFT_TOKEN is required"),
            "{e}"
        );
    }

    #[test]
    fn a_docker_config_dir_without_config_json_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let c = with(&[(vars::DOCKER_CONFIG_DIR.name, d)]).unwrap();
        assert!(c.warnings.is_empty(), "validation reads no file");
        let c = c.prepare().unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("pulls will be anonymous"));
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        let c = with(&[(vars::DOCKER_CONFIG_DIR.name, d)])
            .unwrap()
            .prepare()
            .unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }
}
