"""``luthien policy history | activate FILE | rollback [VERSION] | shadow FILE|VERSION | shadow
--clear | promote``: the stored policy versions and the shadow slot,
read and changed in the database directly (``--database-url``), as the operator running the
command. Running control planes and ``luthien up`` enforce a change within about a second
(at once with ``--redis-url``)."""

import argparse
import asyncio
import getpass
import sys
from pathlib import Path

from controlplane.policy_file import PolicyFileError, read_policy_document
from controlplane.policy_versions import FileIsTheSource, NoShadow, PolicyVersions, UnknownVersion
from controlplane.storage.base import PolicyActivation, ShadowSetting, StorageUnavailable
from luthien.backends import open_backends
from luthien.options import data_dir, policy_source
from luthien.replay import is_version


def operator() -> str:
    """The name a change from the command line is recorded under."""
    return f"luthien policy ({getpass.getuser()})"


def policy_admin(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except (FileIsTheSource, UnknownVersion, NoShadow, StorageUnavailable) as exc:
        print(f"luthien: {exc}", file=sys.stderr)
        return 1
    except PolicyFileError as exc:
        for problem in exc.problems:
            print(f"luthien: {problem}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace) -> int:
    source = policy_source(args)
    async with open_backends(args.database_url, args.redis_url, data_dir(args), record=False) as backends:
        versions = PolicyVersions(backends.storage, backends.nudge, source, args.policy)
        if args.policy_command == "history":
            _print_history(await backends.storage.policy_history(args.limit))
            return 0
        if args.policy_command == "shadow":
            return _said(await _shadow(args, versions))
        if args.policy_command == "promote":
            activation = await versions.promote(operator(), args.note, "cli")
            print(
                f"promoted: version {activation.version} activated (activation {activation.seq}); no shadow"
            )
            return 0
        if args.policy_command == "activate":
            document = read_policy_document(args.file)
            activation = await versions.activate_document(
                document, str(args.file), operator(), args.note, "cli"
            )
        else:
            version = args.version or await _previous(versions)
            if version is None:
                print("luthien: no earlier version to roll back to", file=sys.stderr)
                return 1
            activation = await versions.activate_stored(version, operator(), args.note, "cli")
    print(f"activated version {activation.version} (activation {activation.seq})")
    return 0


async def _shadow(args: argparse.Namespace, versions: PolicyVersions) -> ShadowSetting | None:
    """The change ``luthien policy shadow`` asks for; None when it asks for none it can make."""
    if args.clear == (args.candidate is not None):
        print("luthien: give a policy file or a stored version, or --clear", file=sys.stderr)
        return None
    if args.clear:
        return await versions.clear_shadow(operator(), args.note)
    if is_version(args.candidate):
        return await versions.shadow_stored(args.candidate, operator(), args.note)
    document = read_policy_document(Path(args.candidate))
    return await versions.shadow_document(document, args.candidate, operator(), args.note)


def _said(setting: ShadowSetting | None) -> int:
    if setting is None:
        return 2
    print(f"shadow: version {setting.version}" if setting.version else "shadow cleared")
    return 0


async def _previous(versions: PolicyVersions) -> str | None:
    """The version active before the current one: what a rollback without a version restores."""
    history = await versions.storage.policy_history(1000)
    for activation in history[1:]:
        if activation.version != history[0].version:
            return activation.version
    return None


def _print_history(history: list[PolicyActivation]) -> None:
    if not history:
        print("no policy version activated yet")
    for n, activation in enumerate(history):
        mark = "*" if n == 0 else " "
        when = f"{activation.activated_at:%Y-%m-%d %H:%M:%S}"
        note = f"  {activation.note}" if activation.note else ""
        print(
            f"{mark} {activation.seq:>4}  {activation.version}  {when}  {activation.source:<4}  "
            f"{activation.activated_by}{note}"
        )
