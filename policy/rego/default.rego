# The podvm default agent policy: what the agent enforces when no policy is measured in the
# initdata and none was set. It is meant for NON-confidential pods, where the host is trusted
# anyway; a confidential pod must carry its own policy in its initdata (`podvm policy generate`).
# See SECURITY.md ("Default policy").
#
# Allowed: the whole pod lifecycle, exec, logs, stdin, stats, image pulls and SetPolicy (so a
# trusted host may install a stricter policy). Restricted even here: CopyFile writes only below
# /run/podvm/shared/ (canonical paths). Denied: anything this file does not mention (default deny).
package agent_policy

default CheckRequest := true
default GuestDetailsRequest := true
default CreateSandboxRequest := true
default DestroySandboxRequest := true
default CreateContainerRequest := true
default StartContainerRequest := true
default RemoveContainerRequest := true
default ExecProcessRequest := true
default SignalProcessRequest := true
default WaitProcessRequest := true
default WriteStreamRequest := true
default ReadStreamRequest := true
default CloseStdinRequest := true
default TtyWinResizeRequest := true
default StatsContainerRequest := true
default PullImageRequest := true
default SetPolicyRequest := true

default CopyFileRequest := false

shared_dir := "/run/podvm/shared/"

CopyFileRequest if {
	canonical_below(input.path, shared_dir)
}

CopyFileRequest_reasons contains msg if {
	not canonical_below(input.path, shared_dir)
	msg := sprintf("CopyFileRequest.path %q is not a canonical path below %s", [object.get(input, "path", ""), shared_dir])
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
