//! `SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY`: a worker-side Rego initialization policy,
//! evaluated with [regorus](https://github.com/microsoft/regorus) before each run starts.
//!
//! Spacelift's initialization policies are `package spacelift` with `deny[msg] { ... }`
//! rules: any message in `data.spacelift.deny` blocks the run. Both Rego syntaxes are
//! accepted: v1 (`deny contains msg if { ... }`) and the v0 syntax of Spacelift's
//! documented examples (`deny[msg] { ... }`).
//!
//! The policy is parsed and prepared once, at startup ([`InitPolicy::load`]); a policy
//! that does not parse, is not `package spacelift`, has no `deny` rule or cannot be
//! evaluated is a configuration error. Each run then evaluates a clone of the prepared
//! engine ([`InitPolicy::evaluate`]) with [`PolicyInput`].
//!
//! Not supported: the `exec()` builtin Spacelift's own launcher offers to these policies
//! (regorus has none; a policy calling it is rejected at startup), and the input fields
//! the launcher does not know (`run.state`, `run.commit`, `run.user_provided_metadata`, ...);
//! they are undefined, as a missing field is in Rego.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::api::RunType;
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};
use serde::Serialize;

/// The query a policy answers.
pub const DENY_QUERY: &str = "data.spacelift.deny";
const PACKAGE: &str = "data.spacelift";
/// The longest one evaluation may take before it counts as an error.
pub const EVAL_LIMIT: Duration = Duration::from_secs(10);

/// A compiled initialization policy. Cheap to share (`Arc`); each evaluation works on a
/// clone of the prepared engine, so evaluations never see each other's input.
#[derive(Clone)]
pub struct InitPolicy {
    path: PathBuf,
    engine: Engine,
}

impl std::fmt::Debug for InitPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitPolicy")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// What the policy sees as `input`, shaped like Spacelift's initialization-policy input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyInput {
    pub run: PolicyRun,
    pub static_run_environment: StaticRunEnvironment,
    /// The runner image the run will use (the stack's, or the launcher's default).
    pub docker_image: String,
    /// The worker binary's version.
    pub worker_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyRun {
    /// The run ULID.
    pub id: String,
    /// Spacelift's spelling: `PROPOSED`, `TRACKED`, `TASK`, `DESTROY`, `TESTING`.
    #[serde(rename = "type")]
    pub run_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StaticRunEnvironment {
    pub run_ulid: String,
    pub run_type: String,
    pub stack_slug: String,
}

impl PolicyInput {
    pub fn new(
        run_ulid: &str,
        run_type: RunType,
        stack_id: &str,
        docker_image: &str,
        worker_version: &str,
    ) -> PolicyInput {
        let run_type = spacelift_run_type(run_type).to_string();
        PolicyInput {
            run: PolicyRun {
                id: run_ulid.to_string(),
                run_type: run_type.clone(),
            },
            static_run_environment: StaticRunEnvironment {
                run_ulid: run_ulid.to_string(),
                run_type,
                stack_slug: stack_id.to_string(),
            },
            docker_image: docker_image.to_string(),
            worker_version: worker_version.to_string(),
        }
    }
}

/// Spacelift's GraphQL `RunType` names (a module test case is `TESTING`).
pub fn spacelift_run_type(t: RunType) -> &'static str {
    match t {
        RunType::Proposed => "PROPOSED",
        RunType::Tracked => "TRACKED",
        RunType::Task => "TASK",
        RunType::Destroy => "DESTROY",
        RunType::Module => "TESTING",
    }
}

/// The policy's verdict on one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// The deny messages, sorted.
    Deny(Vec<String>),
}

impl InitPolicy {
    /// Reads and compiles the policy file. The error is a sentence about what is wrong
    /// (with regorus's own message), without the variable's name.
    pub fn load(path: &Path) -> Result<InitPolicy, String> {
        let source = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the policy file {}: {e}", path.display()))?;
        InitPolicy::from_source(path, &source)
    }

    /// Compiles a policy from its text; `path` names it in messages.
    pub fn from_source(path: &Path, source: &str) -> Result<InitPolicy, String> {
        let name = path.display().to_string();
        // Rego v1 first; v0 (Spacelift's documented syntax) when v1 says the policy is
        // written in it. (Not both blindly: a v0 parse of a v1 policy prints warnings.)
        let compiled = match compile(&name, source, false) {
            Err(v1) if looks_v0(&v1) => compile(&name, source, true),
            other => other,
        };
        let (mut engine, package) =
            compiled.map_err(|e| format!("invalid Rego policy {name}:\n{}", e.trim()))?;
        if package != PACKAGE {
            return Err(format!(
                "the policy {name} is {}, but an initialization policy must be \
                 `package spacelift`",
                package.replacen("data.", "package ", 1)
            ));
        }
        let has_deny = engine
            .has_declared_rule_rooted_at(&name, "deny")
            .map_err(|e| format!("invalid Rego policy {name}:\n{}", e.to_string().trim()))?;
        if !has_deny {
            return Err(format!(
                "the policy {name} has no deny rule; an initialization policy blocks runs \
                 with deny[msg] rules"
            ));
        }
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit: EVAL_LIMIT,
            check_interval: NonZeroU32::new(64).expect("non-zero"),
        });
        // Prepare once (analysis, functions, imports), so a policy that can never be
        // evaluated fails now rather than on every run. The input is empty: its fields are
        // undefined, which no valid policy errs on.
        engine.set_input(Value::new_object());
        let v = engine
            .eval_rule(DENY_QUERY.to_string())
            .map_err(|e| format!("invalid Rego policy {name}:\n{}", e.to_string().trim()))?;
        deny_messages(&v).map_err(|e| format!("invalid Rego policy {name}: {e}"))?;
        Ok(InitPolicy {
            path: path.to_path_buf(),
            engine,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Evaluates `data.spacelift.deny` for one run. Synchronous and CPU-bound (bounded by
    /// [`EVAL_LIMIT`]); the error is regorus's.
    pub fn evaluate(&self, input: &PolicyInput) -> Result<Decision, String> {
        let json = serde_json::to_value(input).map_err(|e| e.to_string())?;
        let mut engine = self.engine.clone();
        engine.set_input(Value::from(json));
        let v = engine
            .eval_rule(DENY_QUERY.to_string())
            .map_err(|e| e.to_string())?;
        let messages = deny_messages(&v)?;
        Ok(if messages.is_empty() {
            Decision::Allow
        } else {
            Decision::Deny(messages)
        })
    }
}

fn compile(name: &str, source: &str, v0: bool) -> Result<(Engine, String), String> {
    let mut engine = Engine::new();
    engine.set_rego_v0(v0);
    let package = engine
        .add_policy(name.to_string(), source.to_string())
        .map_err(|e| e.to_string())?;
    Ok((engine, package))
}

/// Whether a Rego v1 parse error is about v0 syntax (so the v0 error is the useful one).
fn looks_v0(v1_error: &str) -> bool {
    let e = v1_error.to_ascii_lowercase();
    e.contains("`if` keyword") || e.contains("`contains` keyword") || e.contains("rego.v1")
}

/// `deny` must be a set (undefined counts as empty). Messages are strings; anything else
/// is shown as JSON.
fn deny_messages(v: &Value) -> Result<Vec<String>, String> {
    match v {
        Value::Undefined => Ok(Vec::new()),
        Value::Set(set) => {
            let mut out: Vec<String> = set
                .iter()
                .map(|m| match m {
                    Value::String(s) => s.to_string(),
                    other => other.to_json_str().unwrap_or_else(|_| format!("{other:?}")),
                })
                .collect();
            out.sort();
            Ok(out)
        }
        other => Err(format!(
            "{DENY_QUERY} must be a set of messages (deny[msg] rules), got {}",
            other.to_json_str().unwrap_or_else(|_| format!("{other:?}"))
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(src: &str) -> Result<InitPolicy, String> {
        InitPolicy::from_source(Path::new("init.rego"), src)
    }

    fn input(image: &str, run_type: RunType) -> PolicyInput {
        PolicyInput::new("01RUN", run_type, "my-stack", image, "1.2.3")
    }

    const V0: &str = r#"
package spacelift

deny[sprintf("image %s is not allowed", [input.docker_image])] {
  not startswith(input.docker_image, "public.ecr.aws/spacelift/")
}

deny["tasks are not allowed on stack prod"] {
  input.run.type == "TASK"
  input.static_run_environment.stack_slug == "prod"
}
"#;

    const V1: &str = r#"
package spacelift

deny contains msg if {
  input.worker_version == "0.0.1"
  msg := "worker too old"
}
"#;

    #[test]
    fn v0_policy_allows_and_denies() {
        let p = policy(V0).unwrap();
        assert_eq!(
            p.evaluate(&input(
                "public.ecr.aws/spacelift/runner-terraform:latest",
                RunType::Task
            )),
            Ok(Decision::Allow)
        );
        assert_eq!(
            p.evaluate(&input("evil/image:1", RunType::Tracked)),
            Ok(Decision::Deny(vec![
                "image evil/image:1 is not allowed".into()
            ]))
        );
        let mut i = input("evil/image:1", RunType::Task);
        i.static_run_environment.stack_slug = "prod".into();
        assert_eq!(
            p.evaluate(&i),
            Ok(Decision::Deny(vec![
                "image evil/image:1 is not allowed".into(),
                "tasks are not allowed on stack prod".into(),
            ]))
        );
    }

    #[test]
    fn v1_policy_allows_and_denies() {
        let p = policy(V1).unwrap();
        assert_eq!(
            p.evaluate(&input("img", RunType::Proposed)),
            Ok(Decision::Allow)
        );
        let mut i = input("img", RunType::Proposed);
        i.worker_version = "0.0.1".into();
        assert_eq!(
            p.evaluate(&i),
            Ok(Decision::Deny(vec!["worker too old".into()]))
        );
    }

    #[test]
    fn spacelifts_documented_example_denies_everything() {
        let p = policy("package spacelift\n\ndeny[\"you shall not pass\"] {\n  true\n}\n").unwrap();
        assert_eq!(
            p.evaluate(&input("img", RunType::Tracked)),
            Ok(Decision::Deny(vec!["you shall not pass".into()]))
        );
    }

    #[test]
    fn errors_come_from_the_syntax_the_policy_is_written_in() {
        // v0 syntax, broken: the v0 parser's error.
        let e = policy("package spacelift\ndeny[msg] {\n").unwrap_err();
        assert!(e.ends_with("error: expecting }"), "{e}");
        // v1 syntax, broken: the v1 parser's error, not v0's complaint about `if`.
        let e = policy("package spacelift\ndeny contains msg if {\n msg := 1 +\n}\n").unwrap_err();
        assert!(e.contains("init.rego:3:"), "{e}");
    }

    #[test]
    fn input_is_shaped_like_spacelifts() {
        let i = PolicyInput::new("01R", RunType::Module, "stk", "img:1", "9.9");
        assert_eq!(
            serde_json::to_value(&i).unwrap(),
            serde_json::json!({
                "run": {"id": "01R", "type": "TESTING"},
                "static_run_environment": {"run_ulid": "01R", "run_type": "TESTING", "stack_slug": "stk"},
                "docker_image": "img:1",
                "worker_version": "9.9",
            })
        );
    }

    #[test]
    fn bad_policies_are_refused_at_load() {
        let e = policy("package spacelift\ndeny[msg] {").unwrap_err();
        assert!(e.starts_with("invalid Rego policy init.rego:\n"), "{e}");
        let e = policy("package other\ndeny[\"x\"] { true }").unwrap_err();
        assert_eq!(
            e,
            "the policy init.rego is package other, but an initialization policy must be `package spacelift`"
        );
        let e = policy("package spacelift\nallow = true").unwrap_err();
        assert!(e.contains("has no deny rule"), "{e}");
        let e = policy("package spacelift\ndeny = true").unwrap_err();
        assert!(e.contains("must be a set"), "{e}");
        let e = policy("package spacelift\ndeny[x] { x := exec({\"cmd\": \"id\"}) }").unwrap_err();
        assert!(e.starts_with("invalid Rego policy init.rego:\n"), "{e}");
    }

    #[test]
    fn evaluation_errors_surface() {
        // A conflict between complete rules is an evaluation error, only for this input.
        let p = policy(
            r#"package spacelift
deny[m] { m := sprintf("x%v", [v]) }
v = 1 { input.run.type == "TASK" }
v = 2 { input.run.type == "TASK" }
"#,
        )
        .unwrap();
        assert_eq!(
            p.evaluate(&input("img", RunType::Tracked)),
            Ok(Decision::Allow)
        );
        let e = p.evaluate(&input("img", RunType::Task)).unwrap_err();
        assert!(!e.is_empty());
    }

    #[test]
    fn load_reads_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.rego");
        std::fs::write(&path, V0).unwrap();
        assert_eq!(InitPolicy::load(&path).unwrap().path(), path);
        let e = InitPolicy::load(&dir.path().join("missing.rego")).unwrap_err();
        assert!(e.starts_with("cannot read the policy file "), "{e}");
    }
}
