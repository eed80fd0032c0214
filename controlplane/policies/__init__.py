"""Built-in policies, addressable by class name in a policy file."""

from controlplane.policies.base import NoConfig, PolicyHandler
from controlplane.policies.composite import SelectPolicy, SerialPolicy
from controlplane.policies.noop import NoOpPolicy
from controlplane.policies.tool_call_blocklist import ToolCallBlocklistPolicy
from controlplane.policies.uppercase_nth_word import UppercaseNthWordPolicy

BUILTIN_POLICIES: dict[str, type[PolicyHandler]] = {
    cls.__name__: cls
    for cls in (
        NoOpPolicy,
        UppercaseNthWordPolicy,
        ToolCallBlocklistPolicy,
        SerialPolicy,
        SelectPolicy,
    )
}

__all__ = [
    "BUILTIN_POLICIES",
    "NoConfig",
    "NoOpPolicy",
    "PolicyHandler",
    "SelectPolicy",
    "SerialPolicy",
    "ToolCallBlocklistPolicy",
    "UppercaseNthWordPolicy",
]
