# The podvm agent policy rules for one pod. `podvm policy generate` appends `policy_data` (the
# pod's containers, images, commands, env, mounts and the --allow-* switches) to this file; the
# result is the `policy.rego` of the pod's initdata, so rules and data are measured together.
#
# Input: the request as JSON, with the protobuf field names of the agent API (Kata's shapes:
# `input.OCI.Process.Args`, `input.OCI.Mounts[_].destination`, ...). State: `data.pstate`
# (`containers`: container_id -> container name), changed by the `ops` of allowed requests.
package agent_policy

default CheckRequest := true
default GuestDetailsRequest := true
default DestroySandboxRequest := true

default CreateSandboxRequest := false
default SignalProcessRequest := false
default WaitProcessRequest := false
default CloseStdinRequest := false
default TtyWinResizeRequest := false
default StatsContainerRequest := false

default CreateContainerRequest := false
default StartContainerRequest := false
default RemoveContainerRequest := false
default ExecProcessRequest := false
default WriteStreamRequest := false
default ReadStreamRequest := false
default CopyFileRequest := false
default PullImageRequest := false
default SetPolicyRequest := false

SetPolicyRequest_reasons := "the pod policy is measured in the initdata and cannot be replaced"

shared_dir := "/run/podvm/shared/"

containers := object.get(data, ["pstate", "containers"], {})

created(id) if {
	is_string(id)
	containers[id]
}

# ---------------------------------------------------------------- CreateContainer

CreateContainerRequest := {"allowed": true, "ops": ops} if {
	count(create_violations) == 0
	ops := array.concat(init_ops, [{
		"op": "add",
		"path": concat("", ["/containers/", input.container_id]),
		"value": container_label,
	}])
}

CreateContainerRequest_reasons contains msg if {
	some msg in create_violations
}

init_ops := [] if {
	data.pstate.containers
} else := [{"op": "add", "path": "/containers", "value": {}}]

annotations := object.get(input, ["OCI", "Annotations"], {})

oci_process := object.get(input, ["OCI", "Process"], {})

container_type := object.get(annotations, "io.kubernetes.cri.container-type", "")

container_name := object.get(annotations, "io.kubernetes.cri.container-name", "")

container_label := "sandbox" if {
	container_type == "sandbox"
} else := container_name

known_create_fields := {"container_id", "exec_id", "string_user", "devices", "storages", "OCI", "sandbox_pidns", "shared_mounts"}

create_violations contains msg if {
	some field, _ in input
	not field in known_create_fields
	msg := sprintf("CreateContainerRequest.%s is not a field the pod policy knows", [field])
}

create_violations contains msg if {
	id := object.get(input, "container_id", "")
	not valid_id(id)
	msg := sprintf("CreateContainerRequest.container_id %q is not a valid container id", [id])
}

create_violations contains msg if {
	created(input.container_id)
	msg := sprintf("CreateContainerRequest.container_id %q was already created", [input.container_id])
}

valid_id(id) if {
	is_string(id)
	id != ""
	not contains(id, "/")
	not contains(id, "~")
	not contains(id, "..")
}

create_violations contains msg if {
	got := object.get(annotations, "io.kubernetes.cri.sandbox-name", "")
	not sandbox_name_ok(got)
	msg := sprintf("OCI.Annotations[io.kubernetes.cri.sandbox-name] %q is not the pod %q", [got, policy_data.pod_name])
}

sandbox_name_ok(got) if {
	not policy_data.pod_name_is_prefix
	got == policy_data.pod_name
}

sandbox_name_ok(got) if {
	policy_data.pod_name_is_prefix
	startswith(got, concat("", [policy_data.pod_name, "-"]))
}

create_violations contains msg if {
	policy_data.namespace != ""
	got := object.get(annotations, "io.kubernetes.cri.sandbox-namespace", "")
	got != policy_data.namespace
	msg := sprintf("OCI.Annotations[io.kubernetes.cri.sandbox-namespace] %q is not %q", [got, policy_data.namespace])
}

# The pause container of the sandbox.
create_violations contains msg if {
	container_type == "sandbox"
	object.get(oci_process, "Args", []) != policy_data.pause_args
	msg := sprintf("OCI.Process.Args %v of the sandbox container is not %v", [object.get(oci_process, "Args", []), policy_data.pause_args])
}

create_violations contains msg if {
	container_type == "sandbox"
	some m in object.get(input, ["OCI", "Mounts"], [])
	not default_mount_ok(m)
	msg := sprintf("OCI.Mounts %v is not allowed for the sandbox container", [mount_text(m)])
}

create_violations contains msg if {
	container_type != "sandbox"
	container_type != "container"
	msg := sprintf("OCI.Annotations[io.kubernetes.cri.container-type] %q is neither sandbox nor container", [container_type])
}

# An application container: it must be one of the pod's.
create_violations contains msg if {
	container_type == "container"
	count([c | some c in policy_data.containers; c.name == container_name]) == 0
	msg := sprintf("OCI.Annotations[io.kubernetes.cri.container-name] %q is not a container of the pod", [container_name])
}

create_violations contains msg if {
	some c in policy_data.containers
	c.name == container_name
	container_type == "container"
	some msg in container_violations(c)
}

container_violations(c) := {msg |
	got := object.get(annotations, "io.kubernetes.cri.image-name", "")
	got != c.image
	msg := sprintf("OCI.Annotations[io.kubernetes.cri.image-name] %q is not the pinned image %q of container %s", [got, c.image, c.name])
} | {msg |
	got := object.get(oci_process, "Args", [])
	got != c.args
	msg := sprintf("OCI.Process.Args %v is not the command %v of container %s", [got, c.args, c.name])
} | {msg |
	some e in object.get(oci_process, "Env", [])
	not env_ok(e, c)
	msg := sprintf("OCI.Process.Env %q is not allowed for container %s", [e, c.name])
} | {msg |
	some e in c.env
	not e in object.get(oci_process, "Env", [])
	msg := sprintf("OCI.Process.Env lacks %q of container %s", [e, c.name])
} | {msg |
	some m in object.get(input, ["OCI", "Mounts"], [])
	not mount_ok(m, c)
	msg := sprintf("OCI.Mounts %v is not allowed for container %s", [mount_text(m), c.name])
} | {msg |
	not c.privileged
	some cap in object.get(oci_process, ["Capabilities", "Bounding"], [])
	not cap in policy_data.default_capabilities
	msg := sprintf("OCI.Process.Capabilities.Bounding %q is not allowed: container %s is not privileged", [cap, c.name])
} | {msg |
	c.working_dir != ""
	got := object.get(oci_process, "Cwd", "")
	got != c.working_dir
	msg := sprintf("OCI.Process.Cwd %q is not %q of container %s", [got, c.working_dir, c.name])
}

env_name(e) := split(e, "=")[0]

env_ok(e, c) if e in c.env

env_ok(e, c) if env_name(e) in c.env_from_host

env_ok(e, _) if env_name(e) in policy_data.host_env_names

mount_text(m) := sprintf("%s (type %s, source %s, options %v)", [
	object.get(m, "destination", ""),
	object.get(m, "type", ""),
	object.get(m, "source", ""),
	object.get(m, "options", []),
])

default_mount_ok(m) if {
	some d in policy_data.default_mounts
	m.destination == d.destination
	object.get(m, "type", "") == d.type
	source_ok(object.get(m, "source", ""), d)
}

source_ok(src, d) if src == d.source

source_ok(src, d) if {
	d.source == ""
	canonical_below(src, shared_dir)
}

mount_ok(m, _) if default_mount_ok(m)

mount_ok(m, c) if {
	some v in c.mounts
	m.destination == v.destination
	object.get(m, "type", "") == "bind"
	canonical_below(object.get(m, "source", ""), shared_dir)
	readonly_ok(m, v)
}

readonly_ok(_, v) if not v.readonly

readonly_ok(m, v) if {
	v.readonly
	"ro" in object.get(m, "options", [])
}

# `path` is below `dir` and has no `.`/`..`/empty components.
canonical_below(path, dir) if {
	is_string(path)
	startswith(path, dir)
	rest := substring(path, count(dir), -1)
	rest != ""
	every part in split(rest, "/") {
		part != ""
		part != "."
		part != ".."
	}
}

# ---------------------------------------------------------------- sandbox

# The host may not load kernel modules, run guest hooks or mount storages into the sandbox.
CreateSandboxRequest if count(sandbox_violations) == 0

CreateSandboxRequest_reasons contains msg if {
	some msg in sandbox_violations
}

sandbox_violations contains msg if {
	some field in ["storages", "kernel_modules"]
	count(object.get(input, field, [])) > 0
	msg := sprintf("CreateSandboxRequest.%s must be empty under the pod policy", [field])
}

sandbox_violations contains msg if {
	object.get(input, "guest_hook_path", "") != ""
	msg := sprintf("CreateSandboxRequest.guest_hook_path %q: guest hooks are not allowed by the pod policy", [input.guest_hook_path])
}

# ---------------------------------------------------------------- container lifecycle

# Calls on a process of a container: only containers created under the policy.
SignalProcessRequest if created(input.container_id)

WaitProcessRequest if created(input.container_id)

CloseStdinRequest if created(input.container_id)

TtyWinResizeRequest if created(input.container_id)

StatsContainerRequest if created(input.container_id)

SignalProcessRequest_reasons := not_created("SignalProcessRequest")

WaitProcessRequest_reasons := not_created("WaitProcessRequest")

CloseStdinRequest_reasons := not_created("CloseStdinRequest")

TtyWinResizeRequest_reasons := not_created("TtyWinResizeRequest")

StatsContainerRequest_reasons := not_created("StatsContainerRequest")

not_created(request) := sprintf("%s.container_id %q was not created under the pod policy", [request, object.get(input, "container_id", "")])

StartContainerRequest if created(input.container_id)

StartContainerRequest_reasons := not_created("StartContainerRequest")

RemoveContainerRequest := {"allowed": true, "ops": [{"op": "remove", "path": concat("", ["/containers/", input.container_id])}]} if {
	created(input.container_id)
}

RemoveContainerRequest_reasons := not_created("RemoveContainerRequest")

# ---------------------------------------------------------------- exec, stdio, logs

ExecProcessRequest if {
	policy_data.allow_exec
	created(input.container_id)
	containers[input.container_id] != "sandbox"
}

ExecProcessRequest_reasons := "exec is not allowed by the pod policy" if {
	not policy_data.allow_exec
} else := sprintf("ExecProcessRequest.container_id %q is not an application container of the pod", [object.get(input, "container_id", "")])

WriteStreamRequest if policy_data.allow_exec

WriteStreamRequest_reasons := "writing to a process's stdin is not allowed by the pod policy (needs --allow-exec)"

ReadStreamRequest if policy_data.allow_logs

ReadStreamRequest_reasons := "reading container output (logs) is not allowed by the pod policy"

# ---------------------------------------------------------------- files and images

CopyFileRequest if canonical_below(input.path, shared_dir)

CopyFileRequest_reasons := sprintf("CopyFileRequest.path %q is not a canonical path below %s", [object.get(input, "path", ""), shared_dir])

PullImageRequest if input.image in policy_data.images

PullImageRequest_reasons := sprintf("PullImageRequest.image %q is not one of the pod's pinned images", [object.get(input, "image", "")])

# ---------------------------------------------------------------- the pod (generated)
