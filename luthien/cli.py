"""The ``luthien`` command: reads the command line and runs the command it names."""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from certs import shell_exports
from luthien.agent_routes import route_of
from luthien.options import build_parser, ca_files, client_env, data_dir, existing_ca
from luthien.servers import serve_control_plane, serve_dashboard, serve_proxy, serve_sidecar


def _run(args: argparse.Namespace) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        print("luthien run: give a command, e.g. luthien run -- claude", file=sys.stderr)
        return 2
    route = route_of(argv, os.environ, Path.cwd())
    if route is not None and route.problem is not None:
        # First: an agent whose model calls would pass unseen is refused whatever else is ready.
        print(
            f"luthien run: refusing to run {route.agent}: {route.problem.detail}.\nfix: {route.problem.fix}",
            file=sys.stderr,
        )
        return 2
    env = client_env(args, existing_ca(args))
    if shutil.which(argv[0]) is None:
        print(f"luthien run: command not found: {argv[0]}", file=sys.stderr)
        return 127
    if not _listening("127.0.0.1", args.port):
        print(
            f"luthien run: no proxy listens on 127.0.0.1:{args.port}: start it (luthien up), "
            "or pass the --port it listens on",
            file=sys.stderr,
        )
        return 2
    return subprocess.call(argv, env={**os.environ, **env})


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _policy(args: argparse.Namespace) -> int:
    from controlplane.policies import BUILTIN_POLICIES
    from controlplane.policy_file import PolicyFileError, load_policy_file
    from controlplane.policy_schema import policy_file_schema

    if args.policy_command == "list":
        width = max(map(len, BUILTIN_POLICIES))
        for name, cls in sorted(BUILTIN_POLICIES.items()):
            print(f"{name:<{width}}  {cls.description}")
        return 0
    if args.policy_command == "replay":
        from luthien.replay import replay

        return replay(args)
    if args.policy_command in ("history", "activate", "rollback"):
        from luthien.policy_admin import policy_admin

        return policy_admin(args)
    if args.policy_command == "schema":
        print(json.dumps(policy_file_schema(), indent=2))
        return 0
    try:
        policy = load_policy_file(args.file)
    except PolicyFileError as exc:
        for problem in exc.problems:
            print(f"luthien: {problem}", file=sys.stderr)
        return 1
    print(f"{args.file}: OK ({type(policy).__name__})")
    return 0


def _login(args: argparse.Namespace) -> int:
    """``luthien login [--rotate]``: the dashboard's login link; a new token logs every browser out."""
    from dashboard.token import TokenFile
    from luthien.servers import dashboard_token, login_link

    token = dashboard_token(args)
    if args.rotate:
        if not isinstance(token, TokenFile):
            print(
                "luthien login: the token is LUTHIEN_DASHBOARD_TOKEN's: change that instead", file=sys.stderr
            )
            return 2
        token.rotate()
        print(
            "A new dashboard token: browsers logged in with the old one must log in again.", file=sys.stderr
        )
    print(login_link(args.dashboard_host, args.dashboard_port, token))
    return 0


def _certs_trust(args: argparse.Namespace) -> int:
    """``luthien certs install|uninstall``: the CA certificate (never its key) in the system store."""
    from certs.install import ROOT_ENV, SYSTEM_ROOT, install, uninstall

    root = args.root or (Path(os.environ[ROOT_ENV]) if os.environ.get(ROOT_ENV) else SYSTEM_ROOT)
    cert = ca_files(args).cert
    return (install if args.certs_command == "install" else uninstall)(cert, root=root)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "proxy" and args.control_plane:
        return serve_sidecar(args)
    if args.command in ("up", "proxy"):
        return serve_proxy(args, with_dashboard=args.command == "up")
    if args.command == "dashboard":
        return serve_dashboard(args)
    if args.command == "controlplane":
        return serve_control_plane(args)
    if args.command == "policy":
        return _policy(args)
    if args.command == "doctor":
        from luthien.doctor import doctor

        return doctor(data_dir(args), args.proxy, args.control_plane)
    if args.command == "certs" and args.certs_command in ("install", "uninstall"):
        return _certs_trust(args)
    if args.command == "certs":
        files = existing_ca(args)
        print(
            shell_exports(client_env(args, files)).rstrip("\n") if args.certs_command == "env" else files.cert
        )
        return 0
    if args.command == "login":
        return _login(args)
    return _run(args)
