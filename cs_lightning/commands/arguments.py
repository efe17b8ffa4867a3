"""jsonargparse's argument errors (usage text and a tree of sub-errors) as one line that names the key and the
problem, with the closest valid key for an unknown one."""

from __future__ import annotations

import difflib
import importlib
import re
from pathlib import Path
from typing import Callable

from cs_lightning.errors import ConfigError, CSLightningError

_UNKNOWN_KEY = (re.compile(r"Subcommand '\w+' does not accept option '(?P<key>[^']+)'"),
                re.compile(r"Group '(?P<group>[^']+)' does not accept option '(?P<key>[^']+)'"),
                re.compile(r"Option '(?P<key>[^']+)' is not accepted before subcommand"),
                re.compile(r"unrecognized arguments: --(?P<key>[^\s=]+)"))
_PARSER_KEY = re.compile(r'Parser key "(?P<key>[^"]+)":[ \t]*(?P<rest>.*)', re.S)
_CLASS_PROBLEM = re.compile(r"Problem with given class_path '(?P<class_path>[^']+)':\s*(?P<rest>.*)", re.S)
_NOT_ACCEPTED = re.compile(r"\s*Option '(?P<name>[^']+)' is not accepted")
_INVALID_CHOICE = re.compile(r"argument (?P<what>\w+): invalid choice: '(?P<given>[^']*)' \(choose from (?P<of>.*)\)")
_MISSING = object()


def _import(class_path: str):
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _did_you_mean(given: str, candidates, prefix: str = "") -> str:
    match = difflib.get_close_matches(given, list(candidates), n=1, cutoff=0.6)
    return f"did you mean '{prefix}{match[0]}'?" if match else ""


def _on_command_line(argv: list[str], *keys: str) -> str | None:
    """The first of ``keys`` given on the command line (``--key value`` or ``--key=value``), as written."""
    given = {token.partition("=")[0][2:] for token in argv if token.startswith("--")}
    return next((key for key in keys if key in given), None)


def _in_config_file(argv: list[str], *keys: str) -> tuple[str, str] | None:
    """The ``--config`` file that holds one of the dotted ``keys``, with that key; None when none does."""
    import yaml

    files = [argv[i + 1] for i, token in enumerate(argv[:-1]) if token in ("-c", "--config")]
    files += [token.partition("=")[2] for token in argv if token.startswith("--config=")]
    for path in reversed(files):  # a later file overrides an earlier one
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        for key in keys:
            node = data
            for part in key.split("."):
                node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
            if node is not _MISSING:
                return path, key
    return None


def _init_arg_names(cls) -> list[str]:
    """The keys a class takes under ``init_args``, as jsonargparse resolves them (``**kwargs`` followed to parents)."""
    from jsonargparse import ArgumentParser

    try:
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, fail_untyped=False)
        return list(parser.get_defaults().keys())
    except Exception:  # noqa: BLE001 - only suggestions depend on it; the signature is a fair second best
        import inspect

        try:
            return [p for p in inspect.signature(cls).parameters if p not in ("args", "kwargs")]
        except (TypeError, ValueError):
            return []


def _block(message: str, start: int) -> str:
    """The rest of the line of ``message`` at ``start`` and the lines below it indented deeper: one sub-error of
    jsonargparse's tree, without its siblings (such as the ``Expected a NoneType`` of an optional section)."""
    line_start = message.rfind("\n", 0, start) + 1
    indent = len(message[line_start:]) - len(message[line_start:].lstrip(" -"))
    first, *below = message[start:].split("\n")
    kept = []
    for line in below:
        if line.strip() and len(line) - len(line.lstrip(" -")) <= indent:
            break
        kept.append(line)
    return "\n".join([first, *kept])


def _value_problem(text: str) -> str:
    """``expected int or null, got 'abc'`` from jsonargparse's account of the types a value failed to match."""
    expected: list[str] = []
    choices: list[str] = []  # the values of all Literal types, merged into one "one of {...}"
    for kind in re.findall(r"Expected a (.+?)(?:\. Got value: .*)?$", text, re.M):
        literal = re.fullmatch(r"typing\.Literal\[(.*)\]", kind)
        name = re.sub(r"<class '(?:[\w.]*\.)?(\w+)'>", r"\1", kind)
        if literal:
            choices += [value.strip(" '\"") for value in literal.group(1).split(",")]
        else:
            expected.append("null" if name == "NoneType" else name)
    if choices:
        expected.insert(0, "one of {" + ", ".join(dict.fromkeys(choices)) + "}")
    given = re.search(r"(?:Got value|Given value): (.*)$", text, re.M)
    if not expected:
        first = next((line.strip(" -") for line in text.splitlines() if line.strip(" -")), "invalid value")
        return first[0].lower() + first[1:]
    expected = list(dict.fromkeys(expected))
    wanted = expected[0] if len(expected) == 1 else ", ".join(expected[:-1]) + " or " + expected[-1]
    return f"expected {wanted}" + (f", got '{given.group(1).strip()}'" if given else "")


def argument_error(message: str, argv: list[str], valid_keys: Callable[[], list[str]],
                   subcommand: str | None = None) -> CSLightningError:
    """jsonargparse's error ``message`` (usage and a tree of sub-errors) as one line that names the key and the
    problem, with the closest valid key for an unknown one.

    Args:
        message: the text of jsonargparse's ArgumentError.
        argv: the command line, to tell keys given there (named as written) from keys in ``--config`` files.
        valid_keys: gives the keys the (sub)command takes, for suggestions.
        subcommand: ``fit``, ``test``... for the help command named when there is nothing close to suggest.
    """
    command = f"cs-train {subcommand}" if subcommand else "cs-train"
    for pattern in _UNKNOWN_KEY:
        found = pattern.search(message)
        if found:
            key = ".".join(filter(None, (found.groupdict().get("group"), found.group("key"))))
            found = None if _on_command_line(argv, key) else _in_config_file(argv, key)
            where = f" in {found[0]}" if found else ""
            hint = _did_you_mean(key, valid_keys()) or f"see {command} --help"
            return CSLightningError(f"unknown key '{key}'{where} ({hint})")
    outer = _PARSER_KEY.search(message)
    problem = _CLASS_PROBLEM.search(message)
    if outer and problem:  # inside model/data/... init_args, whose keys depend on the class_path
        section, class_path = outer.group("key"), problem.group("class_path")
        rest = _block(message, problem.start("rest"))
        cls = _import(class_path)
        unknown = _NOT_ACCEPTED.match(rest)
        inner = _PARSER_KEY.match(rest.strip())
        if unknown or inner:
            name = unknown.group("name") if unknown else inner.group("key")
            key = _on_command_line(argv, f"{section}.{name}", f"{section}.init_args.{name}")
            found = None if key else _in_config_file(argv, f"{section}.init_args.{name}", f"{section}.{name}")
            key = key or (found[1] if found else f"{section}.init_args.{name}")
            where = f" in {found[0]}" if found else ""
            if inner:
                return CSLightningError(f"{key}{where}: {_value_problem(inner.group('rest'))}")
            if section == "data" and name == "task":
                return _task_key_error(key, where, cls)
            hint = (_did_you_mean(name, _init_arg_names(cls), key[: -len(name)]) if cls is not None else "") \
                or f"see {command} --{section}.help {class_path}"
            return CSLightningError(f"unknown key '{key}'{where} ({hint})")
        detail = next((line.strip() for line in rest.splitlines() if line.strip()), "cannot be used")
        module, _, name = class_path.rpartition(".")
        hint = ""
        if cls is None and module:
            try:
                hint = _did_you_mean(name, [n for n in dir(importlib.import_module(module)) if not n.startswith("_")],
                                     f"{module}.")
            except ImportError:
                pass
        return CSLightningError(f"{section}: class_path '{class_path}': {detail}" + (f" ({hint})" if hint else ""))
    if outer:
        return ConfigError(outer.group("key"), _value_problem(outer.group("rest")))
    choice = _INVALID_CHOICE.search(message)
    if choice:
        given, valid = choice.group("given"), re.findall(r"'([^']*)'", choice.group("of"))
        hint = _did_you_mean(given, valid) or f"choose from {', '.join(valid)}"
        return CSLightningError(f"unknown {choice.group('what')} '{given}' ({hint})")
    return CSLightningError(next((line.strip() for line in message.splitlines() if line.strip()), message))


def _task_key_error(key: str, where: str, data_class) -> CSLightningError:
    """``data.init_args.task`` is gone: each data module serves one task, the model's."""
    from cs_lightning.data import DOMAIN_MODULES

    modules = DOMAIN_MODULES.get(getattr(data_class, "domain", None), {})
    reply = modules["reply"].__name__ if "reply" in modules else "<Domain>DialogueDataModule"
    return CSLightningError(f"unknown key '{key}'{where}: the task now follows the data class (for replies use "
                            f"cs_lightning.data.{reply} or cs_lightning.data.DialogueDataModule; delete the key)")
