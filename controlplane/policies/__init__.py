"""Built-in policies, addressable by class name in a policy file."""

from controlplane.policies.all_caps import AllCapsPolicy
from controlplane.policies.base import NoConfig, PolicyHandler
from controlplane.policies.composite import SelectPolicy, SerialPolicy
from controlplane.policies.dangerous_command import DangerousCommandPolicy
from controlplane.policies.noop import NoOpPolicy
from controlplane.policies.secret_redaction import SecretRedactionPolicy
from controlplane.policies.string_replacement import StringReplacementPolicy
from controlplane.policies.tool_call_blocklist import ToolCallBlocklistPolicy
from controlplane.policies.tool_call_judge import ToolCallJudgePolicy
from controlplane.policies.uppercase_nth_word import UppercaseNthWordPolicy

BUILTIN_POLICIES: dict[str, type[PolicyHandler]] = {
    cls.__name__: cls
    for cls in (
        NoOpPolicy,
        AllCapsPolicy,
        UppercaseNthWordPolicy,
        StringReplacementPolicy,
        SecretRedactionPolicy,
        ToolCallBlocklistPolicy,
        DangerousCommandPolicy,
        ToolCallJudgePolicy,
        SerialPolicy,
        SelectPolicy,
    )
}

__all__ = [
    "BUILTIN_POLICIES",
    "AllCapsPolicy",
    "DangerousCommandPolicy",
    "NoConfig",
    "NoOpPolicy",
    "PolicyHandler",
    "SecretRedactionPolicy",
    "SelectPolicy",
    "SerialPolicy",
    "StringReplacementPolicy",
    "ToolCallBlocklistPolicy",
    "ToolCallJudgePolicy",
    "UppercaseNthWordPolicy",
]
