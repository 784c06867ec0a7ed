//! [`AgentPolicy`]: the Rego engine that decides every request the host sends to the agent.
//!
//! A request named `<MessageName>` (the protobuf message name, as in Kata Containers:
//! `CreateContainerRequest`, `ExecProcessRequest`, ...) is allowed iff the rule
//! `data.agent_policy.<MessageName>` evaluates, with the request as `input`, to
//!
//! * `true`, or
//! * an object `{"allowed": true, "ops": [<RFC 6902 operations>]}`: the operations are applied to
//!   the policy state, which rules read as `data.pstate` (stateful rules, e.g. "only containers
//!   that were created may be started").
//!
//! Everything else denies: a rule the policy does not declare (default deny), `false`, an
//! undefined result, a malformed result, an engine error, a state patch that does not apply.
//!
//! Why a request was denied: the optional rule `data.agent_policy.<MessageName>_reasons` (a string
//! or a set of strings, evaluated with the same input) names the field and the broken constraint;
//! the [`Decision`] carries it in one line.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use regorus::{Engine, Value};
use serde::{Deserialize, Serialize};

/// The Rego package of every agent policy.
pub const POLICY_PACKAGE: &str = "agent_policy";

/// The policy the agent enforces until one is measured (initdata) or set: see `rego/default.rego`
/// and SECURITY.md.
pub const DEFAULT_POLICY: &str = include_str!("../rego/default.rego");

/// Suffix of the optional rule that explains a denial (`<MessageName>_reasons`).
pub const REASONS_SUFFIX: &str = "_reasons";

/// A policy that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {origin} does not compile: {message}")]
    Compile { origin: String, message: String },
    #[error(
        "policy {origin} declares package {got}; an agent policy must be `package {POLICY_PACKAGE}`"
    )]
    WrongPackage { origin: String, got: String },
    #[error("request log {path}: {source}")]
    Log {
        path: String,
        source: std::io::Error,
    },
}

/// The answer for one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The protobuf message name of the request (`ExecProcessRequest`).
    pub request_type: String,
    pub allowed: bool,
    /// The rule that decided (`data.agent_policy.ExecProcessRequest`).
    pub rule: String,
    /// Why it was denied (empty when allowed): names the field and the constraint.
    pub reason: String,
}

impl Decision {
    /// One line for the host: `ExecProcessRequest denied: exec is not allowed by the pod policy
    /// (rule data.agent_policy.ExecProcessRequest)`.
    pub fn message(&self) -> String {
        if self.allowed {
            format!("{} allowed by rule {}", self.request_type, self.rule)
        } else {
            format!(
                "{} denied: {} (rule {})",
                self.request_type, self.reason, self.rule
            )
        }
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

/// One line of the request log (JSON lines). Replaying a log through [`AgentPolicy::evaluate`]
/// and comparing `allowed` is a regression test: see `tests/replay.rs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub request_type: String,
    pub allowed: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// A test may name a fragment the denial reason must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_contains: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub request: serde_json::Value,
}

/// Where a policy came from, for messages and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyOrigin {
    /// The built-in default (`rego/default.rego`).
    Default,
    /// The `policy.rego` of the measured initdata.
    InitData,
    /// Set by the host through `SetPolicy` (allowed by the previous policy).
    SetPolicy,
    /// Anything else (tests, the generator).
    Other(String),
}

impl std::fmt::Display for PolicyOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicyOrigin::Default => f.write_str("default"),
            PolicyOrigin::InitData => f.write_str("initdata policy.rego"),
            PolicyOrigin::SetPolicy => f.write_str("SetPolicy"),
            PolicyOrigin::Other(s) => f.write_str(s),
        }
    }
}

/// The agent policy: a compiled Rego module plus its state.
pub struct AgentPolicy {
    engine: Engine,
    origin: PolicyOrigin,
    source_path: String,
    state: serde_json::Value,
    log: Option<BufWriter<File>>,
    rego: Arc<str>,
}

impl std::fmt::Debug for AgentPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentPolicy")
            .field("origin", &self.origin)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl AgentPolicy {
    /// Compiles `rego`, which must be `package agent_policy`.
    pub fn new(rego: &str, origin: PolicyOrigin) -> Result<Self, PolicyError> {
        let source_path = format!("{origin}.rego");
        let mut engine = Engine::new();
        let origin_text = origin.to_string();
        let compile = |message: String| PolicyError::Compile {
            origin: origin_text.clone(),
            message: first_line(&message),
        };
        let package = engine
            .add_policy(source_path.clone(), rego.to_string())
            .map_err(|e| compile(e.to_string()))?;
        let want = format!("data.{POLICY_PACKAGE}");
        if package != want {
            return Err(PolicyError::WrongPackage {
                origin: origin_text,
                got: package.trim_start_matches("data.").to_string(),
            });
        }
        let mut policy = AgentPolicy {
            engine,
            origin,
            source_path,
            state: serde_json::json!({}),
            log: None,
            rego: Arc::from(rego),
        };
        policy.reset_state().map_err(compile)?;
        // Compile every rule now, so a broken policy fails here and not on the first request.
        policy
            .engine
            .eval_query(format!("data.{POLICY_PACKAGE}"), false)
            .map(drop)
            .map_err(|e| compile(e.to_string()))?;
        Ok(policy)
    }

    /// The built-in default policy.
    pub fn default_policy() -> Self {
        AgentPolicy::new(DEFAULT_POLICY, PolicyOrigin::Default)
            .expect("the built-in default policy compiles (tested)")
    }

    /// Where this policy came from.
    pub fn origin(&self) -> &PolicyOrigin {
        &self.origin
    }

    /// The Rego text.
    pub fn rego(&self) -> &str {
        &self.rego
    }

    /// The policy state (`data.pstate`) after the requests evaluated so far.
    pub fn state(&self) -> &serde_json::Value {
        &self.state
    }

    /// Appends every decision to `path` as JSON lines ([`LogEntry`]).
    pub fn log_requests_to(&mut self, path: &Path) -> Result<(), PolicyError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| PolicyError::Log {
                path: path.display().to_string(),
                source,
            })?;
        self.log = Some(BufWriter::new(file));
        Ok(())
    }

    /// Takes over `previous`'s request log (when a policy replaces another one).
    pub fn inherit_log(&mut self, previous: &mut AgentPolicy) {
        if self.log.is_none() {
            self.log = previous.log.take();
        }
    }

    fn reset_state(&mut self) -> Result<(), String> {
        self.engine.clear_data();
        self.engine
            .add_data(Value::from(serde_json::json!({ "pstate": self.state })))
            .map_err(|e| e.to_string())
    }

    fn declares(&self, rule: &str) -> bool {
        // An error here (e.g. a name that is not a valid rule path) counts as "not declared",
        // which denies.
        self.engine
            .has_declared_rule_rooted_at(&self.source_path, rule)
            .unwrap_or(false)
    }

    /// Decides one request: `request_type` is the protobuf message name, `request` its JSON form.
    pub fn evaluate(&mut self, request_type: &str, request: &serde_json::Value) -> Decision {
        let decision = self.decide(request_type, request);
        if let Some(log) = self.log.as_mut() {
            let entry = LogEntry {
                request_type: request_type.to_string(),
                allowed: decision.allowed,
                reason: decision.reason.clone(),
                reason_contains: None,
                description: None,
                request: request.clone(),
            };
            // The log is a debugging aid: a failed write must not change the decision.
            if let Ok(line) = serde_json::to_string(&entry) {
                let _ = writeln!(log, "{line}").and_then(|()| log.flush());
            }
        }
        decision
    }

    fn decide(&mut self, request_type: &str, request: &serde_json::Value) -> Decision {
        let rule = format!("data.{POLICY_PACKAGE}.{request_type}");
        let deny = |reason: String| Decision {
            request_type: request_type.to_string(),
            allowed: false,
            rule: rule.clone(),
            reason,
        };
        let valid_name = !request_type.is_empty()
            && request_type
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            && request_type.starts_with(|c: char| c.is_ascii_alphabetic());
        if !valid_name || !self.declares(request_type) {
            return deny(format!(
                "the {} policy does not mention {request_type} (default deny)",
                self.origin
            ));
        }
        self.engine.set_input(Value::from(request.clone()));
        let result = match self.engine.eval_rule(rule.clone()) {
            Ok(v) => v,
            Err(e) => {
                return deny(format!(
                    "policy evaluation failed: {}",
                    first_line(&e.to_string())
                ));
            }
        };
        let ops = match interpret(&result) {
            Ok(Some(ops)) => ops,
            Ok(None) => {
                let reason = self
                    .reasons(request_type)
                    .unwrap_or_else(|| format!("{request_type} is not allowed by the pod policy"));
                return deny(reason);
            }
            Err(why) => return deny(why),
        };
        if !ops.is_empty() {
            let mut next = self.state.clone();
            if let Err(e) = json_patch::patch(&mut next, &ops) {
                return deny(format!("the policy's state update does not apply: {e}"));
            }
            let previous = std::mem::replace(&mut self.state, next);
            if let Err(e) = self.reset_state() {
                self.state = previous;
                let _ = self.reset_state();
                return deny(format!("the policy's state update does not apply: {e}"));
            }
        }
        Decision {
            request_type: request_type.to_string(),
            allowed: true,
            rule,
            reason: String::new(),
        }
    }

    /// The denial reasons of `<request_type>_reasons`, joined; `None` if the policy gives none.
    fn reasons(&mut self, request_type: &str) -> Option<String> {
        let name = format!("{request_type}{REASONS_SUFFIX}");
        if !self.declares(&name) {
            return None;
        }
        let value = self
            .engine
            .eval_rule(format!("data.{POLICY_PACKAGE}.{name}"))
            .ok()?;
        let json: serde_json::Value = serde_json::from_str(&value.to_json_str().ok()?).ok()?;
        let mut reasons: Vec<String> = match json {
            serde_json::Value::String(s) => vec![s],
            serde_json::Value::Array(items) => items
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        reasons.sort();
        reasons.dedup();
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }
}

/// `Ok(Some(ops))`: allowed (with state operations); `Ok(None)`: denied by the rule;
/// `Err`: a result the agent cannot interpret (denied too).
fn interpret(result: &Value) -> Result<Option<Vec<json_patch::PatchOperation>>, String> {
    match result {
        Value::Bool(true) => Ok(Some(Vec::new())),
        Value::Bool(false) | Value::Undefined => Ok(None),
        Value::Object(_) => {
            let json: serde_json::Value = result
                .to_json_str()
                .ok()
                .and_then(|s| serde_json::from_str(&s).ok())
                .ok_or("the rule's result is not JSON")?;
            match json.get("allowed") {
                Some(serde_json::Value::Bool(true)) => {}
                Some(serde_json::Value::Bool(false)) => return Ok(None),
                _ => return Err("the rule's result has no boolean `allowed`".to_string()),
            }
            match json.get("ops") {
                None | Some(serde_json::Value::Null) => Ok(Some(Vec::new())),
                Some(ops) => serde_json::from_value::<Vec<json_patch::PatchOperation>>(ops.clone())
                    .map(Some)
                    .map_err(|e| format!("the rule's `ops` is not a JSON patch: {e}")),
            }
        }
        other => Err(format!(
            "the rule's result must be a boolean or {{allowed, ops}}, got {}",
            other
                .to_json_str()
                .unwrap_or_else(|_| "a non-JSON value".into())
        )),
    }
}

fn first_line(s: &str) -> String {
    let line = s
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    line.to_string()
}
