"""The argument parser's errors: a bad option or config value is one line naming it, with the closest valid
name, instead of the usage text and jsonargparse's account of every type it tried."""

from __future__ import annotations

import contextlib
import difflib
import inspect
import re
import sys
from dataclasses import fields

from jsonargparse import ActionConfigFile, Namespace
from lightning.pytorch.cli import LightningArgumentParser

from lightning_gen.checkpoints import import_class
from lightning_gen.errors import debug_requested
from lightning_gen.metrics.registry import EvaluationSettings


class ConciseArgumentParser(LightningArgumentParser):
    """A bad option or config value ends in one message naming it (with the closest valid name) rather
    than the whole usage text and jsonargparse's account of every type it tried."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or debug_requested():
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"lightning-gen: error: {condense_parser_message(message, parser)}\n"
                         f"  (every option: {prog} --help; the resolved config: --print_config; "
                         "the parser's full message: --debug)\n")
        raise SystemExit(2)


def command_parser(prog: str, description: str) -> ConciseArgumentParser:
    """The parser of a command on finished runs or files (``compare``, ``dashboard``, ``configs``, ``evaluate
    --samples``): jsonargparse, as LightningCLI's subcommands are, so ``--help``, one-line errors naming the
    closest option, ``--config FILE`` (a YAML of the options) and ``--print_config`` work alike everywhere."""
    parser = ConciseArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of these options")
    return parser


def add_settings_options(parser: ConciseArgumentParser, skip: set[str], **defaults) -> None:
    """``EvaluationSettings``' fields as options (help from its docstring), but ``skip``; ``defaults`` replace
    the type's own where a command states a protocol of its own."""
    parser.add_class_arguments(EvaluationSettings, skip=skip | {"progress"}, instantiate=False,
                               sub_configs=False, as_group=True)
    parser.set_defaults(defaults)


def settings_from(options: Namespace, **fixed) -> EvaluationSettings:
    """The ``EvaluationSettings`` a command's parsed options name (see ``add_settings_options``), with ``fixed``."""
    given = {f.name: options[f.name] for f in fields(EvaluationSettings) if f.name in options}
    return EvaluationSettings(**{**given, **fixed})


_PARSER_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value type:",
                 "Given value:", "Expected a <class 'NoneType'>", "Expected a path but")


def condense_parser_message(message: str, parser=None) -> str:
    """jsonargparse's multi-line union report, cut to the lines that say what is wrong, plus a suggestion."""
    lines = [line.strip().removeprefix("- ") for line in message.splitlines()]
    kept = [line for line in lines if line and not line.startswith(_PARSER_NOISE)]
    text = " ".join(kept)
    unknown_init_arg = re.search(r"class_path '([\w.]+)'.*?Option '(\w+)' is not accepted", text)
    unknown_option = re.search(r"does not accept option '([\w.]+)'|unrecognized arguments: --([\w.]+)", text, re.I)
    choices: list[str] = []
    wrong = None
    if unknown_init_arg:
        wrong = unknown_init_arg[2]
        with contextlib.suppress(Exception):
            choices = _init_parameters(import_class(unknown_init_arg[1]))
    elif unknown_option and parser is not None:
        wrong = unknown_option[1] or unknown_option[2]
        choices = [action.dest for action in _all_actions(parser)]
    close = difflib.get_close_matches(wrong, choices, n=1, cutoff=0.7) if wrong else []
    return text + (f" Did you mean '{close[0]}'?" if close else "")


def _init_parameters(cls: type) -> list[str]:
    """The keyword arguments ``cls(...)`` accepts, following ``**kwargs`` passed on to base classes."""
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = list(inspect.signature(klass.__init__).parameters.values())[1:]
        names += [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters):
            break
    return names


def _all_actions(parser):
    """The parser's options and those of its subcommands."""
    yield from parser._actions
    for action in parser._actions:
        for subparser in getattr(action, "_name_parser_map", {}).values():
            yield from subparser._actions
