"""One line for a configuration mistake: the key, the file (or the command line) it came from, the closest valid key.

jsonargparse reports a bad nested key as a tree (`Parser key "model": ... Problem with given class_path ...: Option
'encder_name' is not accepted`) followed by the whole value it was given; `summarize` turns that into::

    segcentroids: error: model.init_args.segmodel.init_args.encder_name (in bad.yaml) is not an option of
    segcentroids.models.SegModel; did you mean encoder_name?
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from pathlib import Path

import yaml

_PARSER_KEY = re.compile(r'Parser key "([^"]+)"')
_CLASS_PATH = re.compile(r"Problem with given class_path '([^']+)'")
_NOT_ACCEPTED = re.compile(r"Option '([^']+)' is not accepted")
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (--?[^\s=]+)")
_NOT_ACCEPT_OPTION = re.compile(r"does not accept option '([^']+)'")
_EXPECTED = re.compile(r"- (Expected .*|Not a .*|.* does not .*)")
_GIVEN = re.compile(r"Given value: (.*)")


def load_class(class_path: str) -> type | None:
    """The class at a dotted path, or None when it cannot be imported."""
    module_name, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _class_options(class_path: str) -> list[str]:
    """The keyword arguments a class takes, through its bases when its `__init__` forwards `**kwargs`."""
    cls = load_class(class_path)
    if cls is None:
        return []
    options: list[str] = []
    for klass in inspect.getmro(cls):
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        options += [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                    and p.name != "self"]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return options


def _key_in(data: object, parts: list[str]) -> bool:
    for part in parts:
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def config_files(raw_args: list[str]) -> list[str]:
    """The files given with `-c` / `--config`, in order."""
    files = []
    for index, arg in enumerate(raw_args):
        if arg in ("-c", "--config") and index + 1 < len(raw_args):
            files.append(raw_args[index + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def source_of(key: str, raw_args: list[str]) -> str:
    """Where `key` was given: `the command line`, or the last config file that holds it."""
    if any(arg.lstrip("-").split("=", 1)[0] in (key, key.split(".")[-1]) for arg in raw_args if arg.startswith("--")):
        return "the command line"
    for file in reversed(config_files(raw_args)):
        try:
            data = yaml.safe_load(Path(file).read_text())
        except (OSError, yaml.YAMLError):
            continue
        parts = key.split(".")
        if _key_in(data, parts) or _key_in(data, parts[1:]):  # files given to a subcommand may omit its name
            return file
    return "the command line"


def _closest(name: str, options: list[str]) -> str | None:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return match[0] if match else None


def summarize(message: str, raw_args: list[str], parser_options: list[str]) -> str:
    """The first line of a jsonargparse error: key, source and closest valid key where they can be read off."""
    unknown = _UNRECOGNIZED.search(message) or _NOT_ACCEPT_OPTION.search(message)
    if unknown:
        key = unknown.group(1).lstrip("-")
        closest = _closest(key, parser_options)
        hint = f"; did you mean {closest}?" if closest else ""
        return f"{key} (in {source_of(key, raw_args)}) is not an option{hint}"
    keys = _PARSER_KEY.findall(message)
    if not keys:
        return message.strip().splitlines()[0] if message.strip() else "invalid configuration"
    classes = _CLASS_PATH.findall(message)
    option = _NOT_ACCEPTED.search(message)
    path = ".init_args.".join(keys)
    if option:
        key = f"{path}.init_args.{option.group(1)}" if classes else f"{path}.{option.group(1)}"
        owner = classes[-1] if classes else path
        closest = _closest(option.group(1), _class_options(classes[-1])) if classes else None
        hint = f"; did you mean {closest}?" if closest else ""
        return f"{key} (in {source_of(key, raw_args)}) is not an option of {owner}{hint}"
    expected = _EXPECTED.search(message)
    given = _GIVEN.search(message)
    reason = expected.group(1) if expected else message.strip().splitlines()[-1].strip()
    value = f" {given.group(1)!s}" if given else ""
    return f"{path} (in {source_of(path, raw_args)}): bad value{value}: {reason}"
