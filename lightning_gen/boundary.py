"""The one boundary for configuration errors, and a launcher that prints errors, not advertisements.

Lightning, torch and jsonargparse refuse a bad value with their own exception (``ValueError``, ``TypeError``,
``MisconfigurationException``) from deep inside the object they were building. While the CLI builds the
data, model, trainer, callbacks, loggers and optimizers, ``rejected_options`` turns such an error into one
``ConfigValueError`` that names the option group, the option (found by its name or value in the library's
message) and keeps the library's words on what it accepts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import traceback
from typing import Any, Iterator, Sequence

from jsonargparse import Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.loggers import Logger
from torch.optim import Optimizer

from lightning_gen.errors import ConfigValueError, LightningGenError
from lightning_gen.runs import nearest_existing, probe_write

REJECTED = (ValueError, TypeError, MisconfigurationException)  # how these libraries refuse a value

# which option group built the object whose constructor refused (the outermost such object wins)
_GROUP_OF = ((Trainer, "trainer"), (Callback, "trainer.callbacks"), (Logger, "trainer.logger"),
             (LightningModule, "model"), (LightningDataModule, "data"), (Optimizer, "optimizer"))
_BUILT = {"trainer.callbacks": "callbacks", "trainer.logger": "logger", "optimizer": "optimizers", "trainer": "Trainer"}


@contextlib.contextmanager
def rejected_options(config: Namespace, group: str | None = None, typed: Sequence[str] = ()) -> Iterator[None]:
    """Turn a value refused inside the block into a ``ConfigValueError`` naming the option.

    ``config``: the parsed (not instantiated) config of the subcommand; ``group``: the option group being
    built (found from the failing constructor when ``None``); ``typed``: the command line, whose options
    break ties. Our own ``ConfigValueError`` gets the option's full path; our other errors pass unchanged,
    and errors of other kinds are bugs that keep their traceback.
    """
    try:
        yield
    except Exception as error:
        chain = _chain(error)
        ours = next((e for e in chain if isinstance(e, LightningGenError)), None)
        if (ours is not None and not isinstance(ours, ConfigValueError)) or not isinstance(chain[-1], REJECTED):
            raise
        group = group or _failed_group(chain) or "config"
        options = _options(config, group)
        if ours is not None:  # "latent_dim must be ..." -> "--model.init_args.latent_dim must be ..."
            name, message = str(ours).split(" ", 1)[0], str(ours)
            option = _find_option(message, {k: v for k, v in options.items() if _leaf(k) == name}, typed)
            if option is None:
                raise
            raise ConfigValueError(f"--{option[0]}{message[len(name):]}") from error
        message = " ".join(str(chain[-1]).split())
        option = _find_option(message, options, typed)
        where = f"--{option[0]} {option[1]}" if option else f"a --{group.split('.')[0]} option"
        built = _BUILT.get(group, group)
        raise ConfigValueError(f"{where} was refused while building the {built}: {message}") from error


def build_optimizers_once(model: LightningModule, config: Namespace, typed: Sequence[str] = ()) -> None:
    """A value torch refuses (``lr: -1``) stops ``fit`` before its run folder exists; Lightning builds the
    optimizers again when training starts. A ``configure_optimizers`` that needs the running Trainer fails
    here for that reason alone, and is left to ``fit``."""
    try:
        with rejected_options(config, "optimizer", typed):
            model.configure_optimizers()
    except LightningGenError:
        raise
    except Exception:  # noqa: BLE001 - not a refused value (see above)
        pass


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and the errors it was raised from, outermost first."""
    chain = [error]
    while (cause := error.__cause__ or (None if error.__suppress_context__ else error.__context__)) is not None:
        if cause in chain:
            break
        chain.append(error := cause)
    return chain


def _failed_group(chain: list[BaseException]) -> str | None:
    # the objects under construction are the ``self`` of the frames the error passed through
    for error in chain:
        for frame, _ in traceback.walk_tb(error.__traceback__):
            owner = frame.f_locals.get("self")
            for base, group in _GROUP_OF:
                if isinstance(owner, base):
                    return group
    return None


def _options(config: Namespace, group: str) -> dict[str, Any]:
    """``{"trainer.max_time": "00:00:5:00", "trainer.callbacks[0].init_args.monitor": ..., ...}``"""
    if group == "optimizer":  # the optimizers are arguments of the model
        return {k: v for k, v in _options(config, "model").items() if "optimizer" in k or "scheduler" in k}
    flat: dict[str, Any] = {}

    def walk(value, key):
        if isinstance(value, Namespace):
            value = value.as_dict()
        if isinstance(value, dict):
            for name, sub in value.items():
                walk(sub, f"{key}.{name}" if key else name)
        elif isinstance(value, list) and any(isinstance(v, (dict, Namespace)) for v in value):
            for index, sub in enumerate(value):
                walk(sub, f"{key}[{index}]")
        else:
            flat[key] = value

    with contextlib.suppress(KeyError, AttributeError):
        walk(config, "") if group == "config" else walk(config.get(group), group)
    return flat


def _find_option(message: str, options: dict[str, Any], typed: Sequence[str]) -> tuple[str, Any] | None:
    """The option the message is about: its name and its value in the message score one each, typed on
    the command line breaks ties; ``None`` unless one option scores best."""
    typed_keys = {_plain(arg[2:].split("=")[0]) for arg in typed if arg.startswith("--")}

    def score(item):
        key, value = item
        named = bool(re.search(rf"\b{re.escape(_leaf(key))}\b", message))
        shown = not isinstance(value, bool) and value is not None and any(
            re.search(rf"(?<![^\s'\"=(\[,]){re.escape(str(v))}(?![^\s'\"),\].;])", message)
            for v in (value if isinstance(value, (list, tuple)) else [value]))
        return named + shown, _plain(key) in typed_keys

    ranked = sorted(((score(item), item) for item in options.items()), key=lambda pair: pair[0], reverse=True)
    if not ranked or ranked[0][0][0] == 0 or (len(ranked) > 1 and ranked[1][0] == ranked[0][0]):
        return None
    return ranked[0][1]


def _leaf(key: str) -> str:
    return re.split(r"[.\]]", key)[-1]


def _plain(key: str) -> str:
    """``model.init_args.latent_dim`` and the shorthand ``model.latent_dim`` are the same option."""
    return key.replace(".init_args.", ".")


def check_output_folder(folder: str | os.PathLike, option: str, fix: str = "pass a writable folder") -> None:
    """Refuse an output folder that is a file, or in which files cannot be created, before the work that
    fills it."""
    existing = nearest_existing(folder)
    if not existing.is_dir():
        raise ConfigValueError(f"{option} {folder}: {existing} is a file, not a folder; pass a folder "
                               "(it is created if missing)")
    try:
        probe_write(existing)
    except OSError as error:
        raise ConfigValueError(f"{option} {folder}: cannot write in {existing} ({error.strerror}); {fix}") from None


class _NoTips(logging.Filter):
    """Lightning's "💡 Tip: ... try installing litlogger/litmodels" lines: advertisements, not warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


_NO_TIPS = _NoTips()


def silence_tips() -> None:
    # rank_zero_info logs through these two loggers (which one depends on import order); there is no
    # switch for the tips, and every other message of theirs stays
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_NO_TIPS)


class HeldStartupLines:
    """Lightning's start-up lines ("GPU available: ...", "Seed set to 0") held back until the command's own
    checks have passed, then written in their order: a command refused for bad input prints its one error
    line, not a banner of a run that never starts. Holds what Lightning's loggers would write through their
    own handlers (the launcher's case: no handler on the root logger)."""

    LOGGERS = ("lightning.pytorch", "lightning.fabric")

    def __init__(self) -> None:
        self._records: list[logging.LogRecord] = []
        self._handlers: dict[str, list[logging.Handler]] | None = None

    def hold(self) -> None:
        self._handlers = {name: logging.getLogger(name).handlers[:] for name in self.LOGGERS}
        for name, handlers in self._handlers.items():
            if handlers:
                logging.getLogger(name).handlers = [_Keep(self._records)]

    def release(self, write: bool = True) -> None:
        """Give the loggers their handlers back and, unless the command failed (``write=False``), write the
        lines held so far."""
        if self._handlers is None:
            return
        for name, handlers in self._handlers.items():
            logging.getLogger(name).handlers = handlers
        self._handlers = None
        records, self._records = self._records, []
        for record in records if write else ():
            logging.getLogger(record.name).handle(record)


class _Keep(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

