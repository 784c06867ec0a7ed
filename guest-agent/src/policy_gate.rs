//! The policy gate: every request the host sends is checked here before it is handled.
//!
//! 1. A request that carries protobuf fields this agent does not know (at any depth) is denied:
//!    the policy cannot judge what it cannot see.
//! 2. The request is turned into JSON with the protobuf field names (Kata's shapes) and decided by
//!    [`AgentPolicy::evaluate`] as `data.agent_policy.<message name>`.
//!
//! A denial is ttrpc `PERMISSION_DENIED` with the decision's one line. The policy is the
//! initdata's `policy.rego` when the pod has one, else the built-in default; `SetPolicy` replaces
//! it only if the current policy allows `SetPolicyRequest`.

use std::sync::Mutex;

use podvm_policy::{AgentPolicy, PolicyOrigin};
use podvm_protocols::agent::SetPolicyRequest;
use podvm_protocols::protobuf::MessageDyn;
use podvm_protocols::protobuf::MessageFull;
use podvm_protocols::protobuf::reflect::{ReflectFieldRef, ReflectValueRef};

/// Where the agent writes its request log, if `podvm.policy_log=1` is on the kernel command line.
pub const REQUEST_LOG_PATH: &str = "/run/podvm/policy-requests.jsonl";

/// The agent's policy and the checks around it.
pub struct PolicyGate {
    policy: Mutex<AgentPolicy>,
}

fn status(code: ttrpc::Code, message: String) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

/// The first unknown field in `m` or its sub-messages, as `Message.field #N`.
fn unknown_field(m: &dyn MessageDyn) -> Option<String> {
    let descriptor = m.descriptor_dyn();
    if let Some((number, _)) = m.special_fields_dyn().unknown_fields().iter().next() {
        return Some(format!("{} field #{number}", descriptor.name()));
    }
    let nested = |v: ReflectValueRef| match v {
        ReflectValueRef::Message(sub) => unknown_field(&*sub),
        _ => None,
    };
    for field in descriptor.fields() {
        let found = match field.get_reflect(m) {
            ReflectFieldRef::Optional(o) => o.value().and_then(nested),
            ReflectFieldRef::Repeated(r) => r.into_iter().find_map(nested),
            ReflectFieldRef::Map(map) => map.into_iter().find_map(|(_, v)| nested(v)),
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

/// The request as the policy sees it: JSON with the protobuf field names (`OCI`, `container_id`).
pub fn request_json(m: &dyn MessageDyn) -> Result<serde_json::Value, String> {
    let options = protobuf_json_mapping::PrintOptions {
        proto_field_name: true,
        always_output_default_values: true,
        ..Default::default()
    };
    let text = protobuf_json_mapping::print_to_string_with_options(m, &options)
        .map_err(|e| format!("cannot print the request as JSON: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("cannot read the request's JSON: {e}"))
}

impl PolicyGate {
    pub fn new(policy: AgentPolicy) -> Self {
        PolicyGate {
            policy: Mutex::new(policy),
        }
    }

    /// Where the current policy came from.
    pub fn origin(&self) -> PolicyOrigin {
        self.lock().origin().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AgentPolicy> {
        // A panic while deciding leaves the policy as it was before the request: keep using it.
        self.policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides `request`: `Ok` to handle it, else `PERMISSION_DENIED` with one line.
    pub fn check<M: MessageFull>(&self, request: &M) -> ttrpc::Result<()> {
        let name = M::descriptor().name().to_string();
        if let Some(field) = unknown_field(request) {
            let line = format!("{name} denied: it carries {field}, which this agent does not know");
            tracing::warn!("{line}");
            return Err(status(ttrpc::Code::PERMISSION_DENIED, line));
        }
        let json = request_json(request).map_err(|e| {
            status(
                ttrpc::Code::PERMISSION_DENIED,
                format!("{name} denied: {e}"),
            )
        })?;
        let decision = self.lock().evaluate(&name, &json);
        if decision.allowed {
            tracing::debug!("{decision}");
            Ok(())
        } else {
            tracing::warn!("{decision}");
            Err(status(ttrpc::Code::PERMISSION_DENIED, decision.message()))
        }
    }

    /// `SetPolicy`: checked by the current policy, then the new policy replaces it (the state of
    /// stateful rules starts empty).
    pub fn set_policy(&self, request: &SetPolicyRequest) -> ttrpc::Result<()> {
        self.check(request)?;
        let mut new = AgentPolicy::new(&request.policy, PolicyOrigin::SetPolicy).map_err(|e| {
            status(
                ttrpc::Code::INVALID_ARGUMENT,
                format!("SetPolicyRequest rejected: {e}"),
            )
        })?;
        let mut policy = self.lock();
        tracing::info!(previous = %policy.origin(), "the host set a new agent policy");
        new.inherit_log(&mut policy);
        *policy = new;
        Ok(())
    }

    /// Appends every decision to `path` (JSON lines, replayable by the policy crate's tests).
    pub fn log_requests_to(&self, path: &std::path::Path) -> Result<(), podvm_policy::PolicyError> {
        self.lock().log_requests_to(path)
    }
}
