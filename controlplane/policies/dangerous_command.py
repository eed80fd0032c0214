"""DangerousCommandPolicy: removes shell (and SQL) tool calls that match a maintained rule set of
destructive commands, and tells the agent which rule fired and why.

The rules are regular expressions over the command text, not a shell parser: they aim to catch
the usual spellings of each mistake while leaving everyday commands alone. Choices worth knowing:

* A command word counts only where a command can start: the start of the text, after ``;``,
  ``&``, ``|``, ``(``, ``{``, a backtick, a newline or an opening quote, and after wrappers such
  as ``sudo``, ``env VAR=1``, ``xargs``, ``nohup``, ``timeout 10`` or ``bash -lc``. So
  ``grep -r mkfs docs/`` is not ``mkfs``, but ``echo "mkfs /dev/sda"`` is: a quoted string may
  well be run (``sh -c``, ``ssh host '...'``, ``eval``), and blocking is the safer mistake.
* The SQL rules look anywhere in a shell command, quoted or not, because SQL reaches a database
  as a quoted argument (``psql -c "DROP TABLE users"``). ``echo "DROP TABLE is dangerous"`` is
  therefore blocked too.
* A force-push that names no branch is blocked: it pushes the current branch, which may be a
  protected one. The agent is told to name the branch.
"""

import fnmatch
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from controlplane.models import RequestMetadata
from controlplane.policies.chunks import ToolCall, decoded_text
from controlplane.policies.config_types import Regex
from controlplane.policies.tool_gate import ToolCallGate, Verdict

#: Tool names treated as shell tools (searched in the name, case-insensitively): Claude Code's
#: ``Bash``, Codex's ``shell``/``exec_command``/``local_shell``/``container.exec``, Gemini CLI's
#: ``run_shell_command``, Cursor's ``run_terminal_cmd``, and MCP-prefixed forms (``mcp__x__exec``).
DEFAULT_SHELL_TOOLS = (
    r"(?i)(?:^|__|[.:/])(?:bash|sh|shell|exec|exec_command|run_command|run_shell_command|"
    r"execute_command|run_terminal_cmd|run_in_terminal|terminal|local_shell|shell_command)$"
)
#: Tool names treated as SQL tools: the SQL rules run on every string in their arguments.
DEFAULT_SQL_TOOLS = r"(?i)(sql|query|database|\bdb\b)"
#: Argument keys that hold a shell tool's command (a string, or a list of strings joined by spaces).
COMMAND_KEYS = ("command", "cmd", "script", "code", "input")
MATCH_SHOWN = 200

# --- building blocks of the rules -------------------------------------------------------------

# Where a command word can start: the start of the text, after a separator or an opening quote.
_START = r"""(?:^|(?<=[;&|({`\n"']))\s*"""
# What may stand before the command word: wrappers and their options, variable assignments,
# shell keywords, and a shell running the rest (`bash -lc rm -rf /`, as Codex's argv reads joined).
# Atomic (no backtracking into it), so a long run of wrappers costs linear time.
_OPTION = r"(?:-{1,2}[\w-]+(?:=\S*)?)"
_WRAPPER = (
    r"(?:"
    rf"(?:sudo|doas)(?:\s+(?:-[ugCDhprtUT]\s+[^\s-]\S*|{_OPTION}))*\s+"
    rf"|env(?:\s+(?:-[uCS]\s+[^\s-]\S*|{_OPTION}))*\s+"
    rf"|(?:nice|ionice)(?:\s+(?:-[nc]\s+[^\s-]\S*|{_OPTION}))*\s+"
    rf"|xargs(?:\s+(?:-[InPdLs]\s+[^\s-]\S*|{_OPTION}))*\s+"
    rf"|stdbuf(?:\s+(?:-[ioe]\s+[^\s-]\S*|{_OPTION}))*\s+"
    rf"|timeout(?:\s+{_OPTION})*\s+\S+\s+"
    rf"|(?:nohup|time|command|builtin|exec|then|do|else|!)(?:\s+{_OPTION})*\s+"
    r"|[A-Za-z_]\w*=\S*\s+"
    r"|(?:/usr/bin/|/bin/)?(?:ba|z|k|da)?sh(?:\s+-\w+)+\s+"
    r")"
)
_CMD = _START + rf"(?>{_WRAPPER}*)" + r"(?:\\|(?:/usr)?(?:/local)?/s?bin/)?"
# The rest of one simple command, up to a separator, a quote, a parenthesis or a brace: scans
# stop there, so every scan is short and no text is scanned twice.
_ARG = r"""[^;&|\n`(){}"']"""
# After a word: the end of the text, whitespace, a separator or a closing quote.
_END = r"""(?=$|[\s;&|)`"'])"""
_SYSTEM_DIRS = (
    "bin|boot|dev|etc|home|lib|lib32|lib64|libx32|media|mnt|opt|proc|root|run|sbin|snap|srv|sys|usr|var"
    "|nix|private|System|Library|Applications|Users|Volumes"
)
_BROAD_TARGET = (
    r"(?P<detail>/\*?"  # / and /*
    r"|~(?:/[.*]?)?"  # ~ ~/ ~/. ~/*
    r"|\$\{?(?:HOME|PWD)\}?(?:/[.*]?)?"  # $HOME ${HOME}/ $PWD/*
    r"|\.\.?/?\*?"  # . .. ./ ../ ./* .*
    r"|\*"
    rf"|/(?:{_SYSTEM_DIRS})/?\*?"  # a top-level system directory or its contents
    r")"
)
_FETCH = r"\b(?:curl|wget)\b"
_SHELL = r"(?:/usr/local/bin/|/usr/bin/|/bin/)?(?:ba|z|k|da|fi)?sh"

RM_RF_BROAD = (
    _CMD
    + r"rm(?=\s)"
    + rf"(?={_ARG}*?\s(?:-[a-zA-Z]*[rR]|--recursive\b))"  # recursive, in any spelling
    + rf"(?={_ARG}*?\s(?:-[a-zA-Z]*f|--force\b))"  # and forced
    + rf"""{_ARG}*?\s["']?{_BROAD_TARGET}["']?{_END}"""
)
CURL_PIPE_SHELL = (
    r"(?:"
    # curl ... | [sudo] bash, through other pipes too (curl ... | tee x | sh); the scan stops at
    # the next curl/wget so a long run of them is not rescanned
    + _FETCH
    + rf"(?:(?!{_FETCH})[^;&\n]){{0,2000}}?(?<!\|)\|(?!\|)\s*"
    + r"(?:sudo(?:\s+-{1,2}[\w-]+)*\s+)?(?:env\s+(?:\w+=\S*\s+)*)?"
    + _SHELL
    + _END
    # bash <(curl ...), source <(curl ...), . <(curl ...)
    + r"|(?:\b(?:ba|z|k|da|fi)?sh|\bsource|(?:^|(?<=[\s;&|]))\.)\s+(?:-\S+\s+)*<\(\s*(?:sudo\s+)?"
    + _FETCH
    # sh -c "$(curl ...)", eval "`wget -O- ...`"
    + r"""|(?:\b(?:ba|z|k|da)?sh\s+(?:-\S+\s+)*|\beval\s+)["']?(?:\$\(|`)\s*"""
    + _FETCH
    + r")"
)
GIT_PUSH = _CMD + r"git(?>(?:\s+(?:-[cC]\s+\S+|--?[\w-]+(?:=\S+)?))*)\s+push\b(?P<args>[^;&|\n`)]{0,1000})"
CHMOD_777_RECURSIVE = (
    _CMD
    + r"chmod(?=\s)"
    + rf"(?={_ARG}*?\s(?:-[a-zA-Z]*R|--recursive\b))"  # -R (lower-case -r removes read permission)
    + rf"""{_ARG}*?\s["']?(?P<detail>[0-7]?0*777|(?:a|[ugo]{{3}})[+=]rw[xX])["']?(?=\s)"""
)
MKFS = _CMD + r"(?P<detail>mkfs(?:\.\w+)?|mke2fs)" + _END
FORK_BOMB = (  # name(){ name|name& }; name
    r"(?<![\w:.])(?P<fn>[A-Za-z_:.][\w:.]*)\s*\(\s*\)\s*"
    r"\{\s*(?P=fn)\s*\|\s*(?P=fn)\s*&\s*;?\s*\}\s*;?\s*(?P=fn)"
)
DD_TO_DISK = (
    _CMD
    + rf"""dd(?=\s){_ARG}*?\bof=["']?(?P<detail>/dev/(?:r?disk\d|sd[a-z]|hd[a-z]|vd[a-z]|xvd[a-z]|"""
    + r"""nvme\d|mmcblk\d|md\d|dm-\d|mapper/)[^\s;&|)`"']*)"""
)
_SQL_NAME = r"[\w.$\[\]]+"
SQL_DROP = rf"(?i)\b(?P<detail>DROP\s+(?:TABLE|DATABASE|SCHEMA)\b(?:\s+IF\s+EXISTS\b)?(?:\s+{_SQL_NAME})?)"
SQL_TRUNCATE = (
    r"(?i)\b(?P<detail>"
    # TRUNCATE TABLE name: always a statement
    rf"TRUNCATE\s+TABLE\b(?:\s+ONLY\b)?(?:\s+{_SQL_NAME})?"
    # TRUNCATE name: only where the statement visibly ends, so prose ("truncate long lines") passes
    rf"""|TRUNCATE\s+(?:ONLY\s+)?[\w$"`\[][\w.$\[\]"`]*"""
    r"""(?=\s*(?:$|[;,'"`)]|(?:CASCADE|RESTRICT|RESTART|CONTINUE)\b)))"""
)


# --- rules ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandRule:
    """One rule: ``pattern`` is searched in a shell command; ``reason`` is shown to the agent and
    recorded, followed by what matched (the pattern's ``detail`` group, or what ``refine`` says)."""

    id: str
    pattern: re.Pattern[str]
    reason: str
    description: str = ""  # what the rule matches, for the documentation
    shell: bool = True  # applies to shell tools' commands
    sql: bool = False  # applies to every string in SQL tools' arguments
    # Decides about a pattern match using the config: a detail to block with, or None to pass.
    refine: Callable[[re.Match[str], "DangerousCommandPolicy.Config"], str | None] | None = None


@dataclass(frozen=True)
class RuleMatch:
    rule: CommandRule
    detail: str | None
    text: str  # the matched text

    @property
    def reason(self) -> str:
        return f"{self.rule.reason} ({self.detail})" if self.detail else self.rule.reason


def _is_protected(branch: str, config: "DangerousCommandPolicy.Config") -> bool:
    return any(fnmatch.fnmatchcase(branch, pattern) for pattern in config.protected_branches)


_PUSH_OPTIONS_WITH_VALUE = {"-o", "--push-option", "--repo", "--receive-pack", "--exec"}


def force_push_detail(match: re.Match[str], config: "DangerousCommandPolicy.Config") -> str | None:
    """What a ``git push`` does to a protected branch, or None if it leaves them alone."""
    if not config.protected_branches:
        return None
    force = mirror = delete = False
    positional: list[str] = []
    tokens = iter(t.strip("\"'") for t in match.group("args").split())
    for token in tokens:
        if token == "--":
            positional += list(tokens)
        elif token in _PUSH_OPTIONS_WITH_VALUE:
            next(tokens, None)
        elif token == "--force" or token.startswith("--force-with-lease") or token == "--mirror":
            force = True
            mirror = mirror or token == "--mirror"
        elif token in ("--delete", "-d"):
            delete = True
        elif re.fullmatch(r"-[a-zA-Z]+", token):
            force = force or "f" in token
            delete = delete or "d" in token
        elif not token.startswith("-") and token:
            positional.append(token)
    if mirror:
        return "--mirror overwrites every branch"
    refspecs = positional[1:]  # the first is the remote
    if not refspecs:
        return "no branch named: the current branch may be protected; name the branch" if force else None
    for refspec in refspecs:
        plus = refspec.startswith("+")
        source, _, destination = refspec.lstrip("+").rpartition(":")
        destination = destination.removeprefix("refs/heads/")
        if not source and ":" in refspec:  # `:main` deletes main
            delete = True
        if destination in ("HEAD", "@") and (force or plus):
            return "HEAD: the current branch may be protected; name the branch"
        if _is_protected(destination, config) and (delete or force or plus):
            return f"deletes {destination}" if delete and not (force or plus) else destination
    return None


def _rule(id: str, pattern: str, reason: str, description: str, **options: Any) -> CommandRule:
    return CommandRule(id, re.compile(pattern), reason, description, **options)


RULES: tuple[CommandRule, ...] = (
    _rule(
        "rm-rf-broad",
        RM_RF_BROAD,
        "recursive forced deletion of a broad path",
        "`rm` with recursive and force flags in any spelling (`-rf`, `-fr`, `-Rf`, `-r -f`, "
        "`--recursive --force`), with or without `sudo`, on `/`, `/*`, `~`, `~/`, `$HOME`, `$PWD`, "
        "`.`, `..`, `./`, `*`, `.*` or a top-level system directory (`/etc`, `/usr`, `/home`, "
        "`/var`, `/bin`, ..., or its `/*`). Deeper paths (`./build`, `/tmp/x`, `~/p/dist`) pass.",
    ),
    _rule(
        "curl-pipe-shell",
        CURL_PIPE_SHELL,
        "runs a script downloaded from the network without inspecting it; download it to a file "
        "and read it first",
        "`curl`/`wget` piped into `sh`, `bash`, `zsh`, `dash`, `ksh` or `fish` (also through "
        '`sudo` or other pipes), `bash <(curl ...)`, `source <(curl ...)`, `sh -c "$(curl ...)"`, '
        '`eval "$(wget ...)"`. Downloading to a file (`curl -o f URL`) passes.',
    ),
    _rule(
        "git-force-push-protected",
        GIT_PUSH,
        "force-push to a protected branch",
        "`git push` with `--force`, `-f`, `--force-with-lease` or a `+branch` refspec whose "
        "destination is a protected branch (`protected_branches`, globs allowed); also `--mirror`, "
        "deleting a protected branch (`--delete main`, `:main`), and a forced push that names no "
        "branch (it pushes the current one). Force-pushing another branch passes.",
        refine=force_push_detail,
    ),
    _rule(
        "chmod-777-recursive",
        CHMOD_777_RECURSIVE,
        "makes a whole directory tree world-writable",
        "`chmod` with `-R`/`--recursive` (before or after the mode) and mode `777`, `0777`, "
        "`1777`, `a+rwx`, `a=rwx` or `ugo+rwx`.",
    ),
    _rule(
        "mkfs",
        MKFS,
        "creates a filesystem, erasing the device",
        "`mkfs`, `mkfs.<type>` (`mkfs.ext4`, `mkfs.vfat`, ...) or `mke2fs` as a command "
        "(not as an argument: `grep -r mkfs docs/` passes).",
    ),
    _rule(
        "fork-bomb",
        FORK_BOMB,
        "a fork bomb",
        "`:(){ :|:& };:` and its spacing variants, under any function name (`bomb(){ bomb|bomb& };bomb`).",
    ),
    _rule(
        "dd-to-disk",
        DD_TO_DISK,
        "writes raw data over a disk device",
        "`dd` with `of=` a disk device: `/dev/sd*`, `/dev/nvme*`, `/dev/disk*`, `/dev/rdisk*`, "
        "`/dev/hd*`, `/dev/vd*`, `/dev/xvd*`, `/dev/mmcblk*`, `/dev/md*`, `/dev/dm-*`, `/dev/mapper/*`.",
    ),
    _rule(
        "sql-drop",
        SQL_DROP,
        "drops a table, database or schema",
        "`DROP TABLE`, `DROP DATABASE`, `DROP SCHEMA` (any case), anywhere in a shell command "
        "(quoted mentions included) or in any string of a SQL tool's arguments.",
        sql=True,
    ),
    _rule(
        "sql-truncate",
        SQL_TRUNCATE,
        "deletes every row of a table",
        "`TRUNCATE TABLE name`, or `TRUNCATE name` followed by the end of the statement (`;`, a "
        "quote, `CASCADE`, ...), any case, in shell commands and SQL tools. The coreutils "
        "`truncate -s 0 file` and prose like `truncate long lines` pass.",
        sql=True,
    ),
)
RULE_IDS = tuple(rule.id for rule in RULES)


# --- config -----------------------------------------------------------------------------------


class ExtraRule(BaseModel):
    """A site-specific rule, searched in shell commands as written (add ``(?i)`` to ignore case)."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[\w.-]+$", description="Letters, digits, '_', '.', '-'.")
    pattern: Regex = Field(min_length=1)
    reason: str = Field(min_length=1, description="Shown to the agent and recorded.")


class DangerousCommandPolicy(ToolCallGate):
    """Removes shell and SQL tool calls that match a maintained rule set of destructive commands."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        disabled_rules: list[str] = Field(default_factory=list, description="Built-in rule ids to turn off.")
        protected_branches: list[str] = Field(
            default_factory=lambda: ["main", "master"], description="Glob patterns, e.g. 'release/*'."
        )
        shell_tools: Regex | None = Field(
            default=DEFAULT_SHELL_TOOLS, description="Regex searched in tool names; null turns it off."
        )
        sql_tools: Regex | None = Field(
            default=DEFAULT_SQL_TOOLS, description="Regex searched in tool names; null turns it off."
        )
        extra_rules: list[ExtraRule] = Field(default_factory=list)

        @field_validator("disabled_rules")
        @classmethod
        def _known_rules(cls, ids: list[str]) -> list[str]:
            for rule_id in ids:
                if rule_id not in RULE_IDS:
                    raise ValueError(f"unknown rule {rule_id!r} (the rules are: {', '.join(RULE_IDS)})")
            return ids

        @field_validator("shell_tools", "sql_tools")
        @classmethod
        def _tool_regex(cls, pattern: str | None) -> str | None:
            if pattern is None:
                return None
            if not pattern:
                raise ValueError("an empty regex matches every tool; use null to turn this off")
            return pattern

        @model_validator(mode="after")
        def _unique_extra_ids(self) -> "DangerousCommandPolicy.Config":
            seen = set(RULE_IDS)
            for rule in self.extra_rules:
                if rule.id in seen:
                    raise ValueError(f"extra_rules: the id {rule.id!r} is already taken")
                seen.add(rule.id)
            return self

    config: Config
    description = "Removes shell and SQL tool calls that match known destructive commands; explains why."
    RULES: ClassVar[tuple[CommandRule, ...]] = RULES

    def __init__(self, config: BaseModel | None = None) -> None:
        super().__init__(config)
        extra = [
            CommandRule(rule.id, re.compile(rule.pattern), rule.reason, "site rule")
            for rule in self.config.extra_rules
        ]
        rules = [r for r in RULES if r.id not in self.config.disabled_rules] + extra
        self._shell_rules = [r for r in rules if r.shell]
        self._sql_rules = [r for r in rules if r.sql]
        self._shell_tools = re.compile(self.config.shell_tools) if self.config.shell_tools else None
        self._sql_tools = re.compile(self.config.sql_tools) if self.config.sql_tools else None

    def matches(self, command: str, *, sql: bool = False) -> list[RuleMatch]:
        """Every rule ``command`` matches (as a shell command, or as a SQL tool's string)."""
        found = []
        for rule in self._sql_rules if sql else self._shell_rules:
            for match in rule.pattern.finditer(command):
                if rule.refine is not None:
                    detail = rule.refine(match, self.config)
                    if detail is None:
                        continue
                else:
                    detail = _detail(match)
                found.append(RuleMatch(rule, detail, match.group(0).strip()))
                break
        return found

    def match_command(self, command: str) -> RuleMatch | None:
        """The first rule a shell command matches, or None."""
        found = self.matches(command)
        return found[0] if found else None

    def match_call(self, name: str, arguments: str) -> RuleMatch | None:
        """The first rule a tool call matches (shell rules for shell tools, SQL rules for SQL tools)."""
        parsed = _parsed(arguments)
        if self._shell_tools is not None and self._shell_tools.search(name):
            for command in shell_commands(parsed):
                if found := self.matches(command):
                    return found[0]
        if self._sql_tools is not None and self._sql_tools.search(name):
            for text in _strings(parsed):
                if found := self.matches(text, sql=True):
                    return found[0]
        return None

    async def judge(self, call: ToolCall, metadata: RequestMetadata) -> Verdict | None:
        found = self.match_call(call.name, call.arguments)
        if found is None:
            return None
        return Verdict(
            reason=f"rule {found.rule.id}: {found.reason}",
            rule_id=found.rule.id,
            details={"matched": found.text[:MATCH_SHOWN]},
        )


def _detail(match: re.Match[str]) -> str | None:
    detail = match.groupdict().get("detail")
    return detail.strip("\"'`") if detail else None


def _parsed(arguments: str) -> object:
    """The arguments as JSON; when they are not one JSON value (truncated: a lenient client may
    still read them) or repeat a key (parsers differ on which value wins), their decoded text, so
    that every command they could mean is checked."""
    try:
        return json.loads(arguments, object_pairs_hook=_unique_keys)
    except ValueError:
        return decoded_text(arguments)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({key for key, _ in pairs}) != len(pairs):
        raise ValueError("a repeated key")
    return dict(pairs)


def _strings(value: object) -> Iterator[str]:
    """Every string in a JSON value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def shell_commands(arguments: object) -> list[str]:
    """The commands in a shell tool's (parsed) arguments: the ``command``/``cmd``/``script``/
    ``code``/``input`` values (a list of strings, like Codex's ``["bash", "-lc", "..."]``, is
    joined with spaces) and each of a ``commands`` list, looked for in nested objects too;
    failing those, every string (so an unknown argument layout is still checked)."""
    found: list[str] = []

    def visit(value: object) -> None:
        if isinstance(value, dict):
            for key in COMMAND_KEYS:
                command = value.get(key)
                if isinstance(command, str):
                    found.append(command)
                elif isinstance(command, list) and all(isinstance(part, str) for part in command):
                    found.append(" ".join(command))
            commands = value.get("commands")  # the Responses shell tool: several commands
            if isinstance(commands, list):
                found.extend(command for command in commands if isinstance(command, str))
            for item in value.values():
                if isinstance(item, dict):
                    visit(item)

    visit(arguments)
    return found or list(_strings(arguments))
