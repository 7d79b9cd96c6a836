//! `SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY`: a worker-side Rego initialization policy,
//! evaluated with [regorus](https://github.com/microsoft/regorus) before each run starts.
//!
//! Spacelift's initialization policies are `package spacelift` with `deny[msg] { ... }`
//! rules: any message in `data.spacelift.deny` blocks the run; without a deny rule every
//! run is allowed. A `sample` rule (`sample { true }`, Spacelift's documented example)
//! asks for the evaluation to be sampled: when `data.spacelift.sample` is true for a run,
//! the input and the deny messages are sent to the backend ([`Evaluation::sample`]).
//! Both Rego syntaxes are accepted: v1 (`deny contains msg if { ... }`) and the v0 syntax
//! of Spacelift's documented examples (`deny[msg] { ... }`).
//!
//! The policy is parsed and prepared once, at startup ([`InitPolicy::load`]); a policy
//! that does not parse, is not `package spacelift`, has neither a `deny` nor a `sample`
//! rule (it would do nothing: most likely a misspelt rule, or a policy of another type)
//! or cannot be evaluated is a configuration error. Each run then evaluates a clone of
//! the prepared engine ([`InitPolicy::evaluate`]) with [`PolicyInput`].
//!
//! Not supported: the `exec()` builtin Spacelift's own launcher offers to these policies
//! (regorus has none; a policy calling it is rejected at startup), and the input fields
//! the launcher does not know (`run.state`, `run.commit`, `run.user_provided_metadata`, ...);
//! they are undefined, as a missing field is in Rego.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::api::{policy_kinds, PolicySample, RunType};
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};
use serde::Serialize;

/// The queries a policy answers.
pub const DENY_QUERY: &str = "data.spacelift.deny";
pub const SAMPLE_QUERY: &str = "data.spacelift.sample";
const PACKAGE: &str = "data.spacelift";
/// The longest one evaluation may take before it counts as an error.
pub const EVAL_LIMIT: Duration = Duration::from_secs(10);

/// A compiled initialization policy. Cheap to share (`Arc`); each evaluation works on a
/// clone of the prepared engine, so evaluations never see each other's input.
#[derive(Clone)]
pub struct InitPolicy {
    path: PathBuf,
    engine: Engine,
    has_deny: bool,
    has_sample: bool,
}

impl std::fmt::Debug for InitPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitPolicy")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// What the policy sees as `input`, shaped like Spacelift's initialization-policy input.
/// It is also what a sample sends to the backend, so it holds no secret: nothing from the
/// run's environment, the launcher's (whitelisted or masked values), nor the pool's token
/// or key; only these identifiers, the image reference and the worker version.
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

/// One evaluation: the verdict, and the input if the policy asked for a sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub decision: Decision,
    /// Exactly the document the policy saw as `input`, when `sample` was true for it.
    pub sampled_input: Option<serde_json::Value>,
}

impl Evaluation {
    /// The sample to send to the backend, if the policy asked for one.
    pub fn sample(&self, worker_ulid: &str) -> Option<PolicySample> {
        let input = self.sampled_input.clone()?;
        Some(PolicySample {
            worker_ulid: worker_ulid.to_string(),
            policy: policy_kinds::INITIALIZATION.to_string(),
            input,
            deny: match &self.decision {
                Decision::Allow => Vec::new(),
                Decision::Deny(m) => m.clone(),
            },
        })
    }
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
        let invalid = |e: String| format!("invalid Rego policy {name}:\n{}", e.trim());
        let has_rule = |rule: &str| {
            engine
                .has_declared_rule_rooted_at(&name, rule)
                .map_err(|e| invalid(e.to_string()))
        };
        let (has_deny, has_sample) = (has_rule("deny")?, has_rule("sample")?);
        if !has_deny && !has_sample {
            return Err(format!(
                "the policy {name} has neither a deny nor a sample rule, so it would do \
                 nothing; an initialization policy blocks runs with deny[msg] rules and asks \
                 for samples with a sample rule"
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
        let policy = InitPolicy {
            path: path.to_path_buf(),
            engine,
            has_deny,
            has_sample,
        };
        let mut engine = policy.engine.clone();
        policy.run(&mut engine).map_err(|e| match e {
            RunError::Engine(e) => invalid(e),
            RunError::Value(e) => format!("invalid Rego policy {name}: {e}"),
        })?;
        Ok(policy)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it has a `deny` rule (without one, every run is allowed).
    pub fn can_deny(&self) -> bool {
        self.has_deny
    }

    /// Whether it has a `sample` rule.
    pub fn can_sample(&self) -> bool {
        self.has_sample
    }

    /// Evaluates `data.spacelift.deny` and `data.spacelift.sample` for one run (each when
    /// the policy has it). Synchronous and CPU-bound (bounded by [`EVAL_LIMIT`] per rule);
    /// the error is regorus's, or says what is wrong with a rule's value.
    pub fn evaluate(&self, input: &PolicyInput) -> Result<Evaluation, String> {
        let json = serde_json::to_value(input).map_err(|e| e.to_string())?;
        let mut engine = self.engine.clone();
        engine.set_input(Value::from(json.clone()));
        let (messages, sample) = self.run(&mut engine).map_err(RunError::into_message)?;
        Ok(Evaluation {
            decision: if messages.is_empty() {
                Decision::Allow
            } else {
                Decision::Deny(messages)
            },
            sampled_input: sample.then_some(json),
        })
    }

    /// The deny messages and the sample flag, from an engine holding the input.
    fn run(&self, engine: &mut Engine) -> Result<(Vec<String>, bool), RunError> {
        let mut eval = |query: &str| {
            engine
                .eval_rule(query.to_string())
                .map_err(|e| RunError::Engine(e.to_string()))
        };
        let messages = if self.has_deny {
            deny_messages(&eval(DENY_QUERY)?).map_err(RunError::Value)?
        } else {
            Vec::new()
        };
        let sample =
            self.has_sample && sample_flag(&eval(SAMPLE_QUERY)?).map_err(RunError::Value)?;
        Ok((messages, sample))
    }
}

/// Why an evaluation failed: regorus's error, or a rule's value of the wrong kind.
enum RunError {
    Engine(String),
    Value(String),
}

impl RunError {
    fn into_message(self) -> String {
        match self {
            RunError::Engine(m) | RunError::Value(m) => m,
        }
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

/// `sample` must be a boolean (undefined counts as false): anything else is more likely a
/// mistake than a wish to sample.
fn sample_flag(v: &Value) -> Result<bool, String> {
    match v {
        Value::Undefined => Ok(false),
        Value::Bool(b) => Ok(*b),
        other => Err(format!(
            "{SAMPLE_QUERY} must be true or false, got {}",
            other.to_json_str().unwrap_or_else(|_| format!("{other:?}"))
        )),
    }
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

    fn decide(p: &InitPolicy, i: &PolicyInput) -> Result<Decision, String> {
        p.evaluate(i).map(|e| e.decision)
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
            decide(
                &p,
                &input(
                    "public.ecr.aws/spacelift/runner-terraform:latest",
                    RunType::Task
                )
            ),
            Ok(Decision::Allow)
        );
        assert_eq!(
            decide(&p, &input("evil/image:1", RunType::Tracked)),
            Ok(Decision::Deny(vec![
                "image evil/image:1 is not allowed".into()
            ]))
        );
        let mut i = input("evil/image:1", RunType::Task);
        i.static_run_environment.stack_slug = "prod".into();
        assert_eq!(
            decide(&p, &i),
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
            decide(&p, &input("img", RunType::Proposed)),
            Ok(Decision::Allow)
        );
        let mut i = input("img", RunType::Proposed);
        i.worker_version = "0.0.1".into();
        assert_eq!(
            decide(&p, &i),
            Ok(Decision::Deny(vec!["worker too old".into()]))
        );
    }

    #[test]
    fn spacelifts_documented_example_denies_everything() {
        let p = policy("package spacelift\n\ndeny[\"you shall not pass\"] {\n  true\n}\n").unwrap();
        assert_eq!(
            decide(&p, &input("img", RunType::Tracked)),
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
        assert_eq!(
            e,
            "the policy init.rego has neither a deny nor a sample rule, so it would do \
             nothing; an initialization policy blocks runs with deny[msg] rules and asks for \
             samples with a sample rule"
        );
        let e = policy("package spacelift\nsample = \"yes\"").unwrap_err();
        assert!(
            e.contains("data.spacelift.sample must be true or false"),
            "{e}"
        );
        let e = policy("package spacelift\ndeny = true").unwrap_err();
        assert!(e.contains("must be a set"), "{e}");
        let e = policy("package spacelift\ndeny[x] { x := exec({\"cmd\": \"id\"}) }").unwrap_err();
        assert!(e.starts_with("invalid Rego policy init.rego:\n"), "{e}");
    }

    /// Spacelift's documented worker-side example: no deny rule, every run sampled.
    #[test]
    fn a_policy_with_only_a_sample_rule_allows_every_run_and_samples_it() {
        for src in [
            "package spacelift\n\nsample { true }\n",
            "package spacelift\n\nsample := true\n",
            "package spacelift\n\nsample if { true }\n",
        ] {
            let p = policy(src).unwrap_or_else(|e| panic!("{src}: {e}"));
            assert_eq!((p.can_deny(), p.can_sample()), (false, true));
            let i = input("img", RunType::Destroy);
            let e = p.evaluate(&i).unwrap();
            assert_eq!(e.decision, Decision::Allow, "{src}");
            // Exactly the document the policy saw.
            assert_eq!(e.sampled_input, Some(serde_json::to_value(&i).unwrap()));
            assert_eq!(
                e.sample("W1"),
                Some(PolicySample {
                    worker_ulid: "W1".into(),
                    policy: policy_kinds::INITIALIZATION.into(),
                    input: serde_json::to_value(&i).unwrap(),
                    deny: vec![],
                })
            );
        }
    }

    #[test]
    fn nothing_is_sampled_when_sample_is_false_or_undefined() {
        let p = policy("package spacelift\nsample { input.run.type == \"TASK\" }\n").unwrap();
        let e = p.evaluate(&input("img", RunType::Tracked)).unwrap();
        assert_eq!(
            (e.decision.clone(), e.sampled_input.clone()),
            (Decision::Allow, None)
        );
        assert_eq!(e.sample("W1"), None);
        assert!(p
            .evaluate(&input("img", RunType::Task))
            .unwrap()
            .sample("W1")
            .is_some());
        let p = policy("package spacelift\nsample = false\n").unwrap();
        assert_eq!(
            p.evaluate(&input("img", RunType::Task))
                .unwrap()
                .sample("W1"),
            None
        );
        // A policy without a sample rule never samples.
        let p = policy(V0).unwrap();
        assert_eq!(
            p.evaluate(&input("evil", RunType::Task))
                .unwrap()
                .sample("W1"),
            None
        );
    }

    #[test]
    fn a_denied_run_is_sampled_with_its_deny_messages() {
        let p = policy(&format!("{V0}\nsample {{ true }}\n")).unwrap();
        let i = input("evil/image:1", RunType::Tracked);
        let e = p.evaluate(&i).unwrap();
        let deny = vec!["image evil/image:1 is not allowed".to_string()];
        assert_eq!(e.decision, Decision::Deny(deny.clone()));
        let sample = e.sample("W1").unwrap();
        assert_eq!(sample.deny, deny);
        assert_eq!(sample.input, serde_json::to_value(&i).unwrap());
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
            decide(&p, &input("img", RunType::Tracked)),
            Ok(Decision::Allow)
        );
        let e = decide(&p, &input("img", RunType::Task)).unwrap_err();
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

#[cfg(test)]
#[path = "init_policy_tests.rs"]
mod run_tests;
