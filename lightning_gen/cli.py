"""``python -m lightning_gen`` / ``lightning-gen``: LightningCLI with our links, run folders and summaries.

Every subcommand takes ``--config configs/<model>_<dataset>.yaml``; any key can be overridden on the
command line (``--model.init_args.latent_dim 32``) and ``--print_config`` shows every option.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import importlib
import inspect
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path

import torch
import yaml
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_gen.boundary import build_optimizers_once, rejected_options, silence_tips
from lightning_gen.callbacks.stop import GracefulStop
from lightning_gen.checkpoints import (
    DATAMODULE_KEY,
    MODEL_CLASS_KEY,
    check_model_class,
    import_class,
    read_checkpoint,
)
from lightning_gen.data.base import SplitDataModule
from lightning_gen.errors import CheckpointError, LightningGenError, RunFolderError, TrainingStopped, missing_extra
from lightning_gen.files import atomic_write
from lightning_gen.models.base import GenerativeModule
from lightning_gen.packaged_configs import resolve_config_options
from lightning_gen.runs import check_writable, checkpoint_space_needed, newest_last_checkpoint, run_folder
from lightning_gen.trainer import LightningGenTrainer, hide_unused_options

_CHECKPOINT_KEYWORDS = {"last", "best", "hpc", "registry"}


class LightningGenCLI(LightningCLI):
    def __init__(self, args=None, run: bool = True, **kwargs):
        command_line = sys.argv[1:] if args is None else args
        self._command_line = [str(arg) for arg in command_line] if isinstance(command_line, (list, tuple)) else []
        silence_tips()
        super().__init__(
            model_class=GenerativeModule,
            subclass_mode_model=True,
            datamodule_class=SplitDataModule,
            subclass_mode_data=True,
            auto_configure_optimizers=False,  # each model takes its optimizer(s) as init arguments
            trainer_class=LightningGenTrainer,
            save_config_callback=SaveConfigToLoggers,
            parser_class=ConciseArgumentParser,
            parser_kwargs=kwargs.pop("parser_kwargs", None) or {
                "prog": "python -m lightning_gen",
                "description": "Train, evaluate and compare generative models (AE, VAE, GAN, PixelCNN).",
                "epilog": "Commands on finished runs (no config needed): `compare RUN_OR_CKPT ...` (an offline "
                          "HTML/Markdown report) and `dashboard --entity E` (a W&B workspace and report); "
                          "`evaluate --samples NPZ_OR_PNG_FOLDER --data CONFIG` scores images from anywhere; "
                          "add --help to either for its options. Errors print one line; --debug (or "
                          "LIGHTNING_GEN_DEBUG=1) shows their traceback.",
            },
            args=args,
            run=run,
            **kwargs,
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "evaluate": {"model", "datamodule"}, "sample": {"model", "datamodule"}}

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict, subparser_kwargs: dict) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        for subcommand in ("evaluate", "sample") if add_subcommands else ():
            hide_unused_options(self._subcommand_parsers[subcommand])

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # shapes come from the data, never typed twice in a config
        parser.link_arguments("data.data_shape", "model.init_args.data_shape", apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="fit only: after training, run `test` on the best checkpoint and report its metrics",
        )

    def before_instantiate_classes(self) -> None:
        """A W&B run without a group joins its model family's (``vae``, ``gan``, ...): dashboards compare by it.
        A TensorBoard logger without a name takes the experiment's (the CSV logger's name, else the family):
        ``runs/tensorboard/<experiment>/version_N`` beside the run folder ``runs/<experiment>/version_M``."""
        config = self.config.get(str(self.subcommand), self.config)
        model, loggers = config.get("model"), config.get("trainer.logger")
        if not isinstance(model, Namespace) or not model.get("class_path"):
            return
        family = model.class_path.rsplit(".", 1)[-1].lower()  # VAE -> vae, PixelCNN -> pixelcnn
        loggers = [logger for logger in (loggers if isinstance(loggers, list) else [loggers])
                   if isinstance(logger, Namespace) and logger.get("class_path")]
        experiment = next((logger.init_args.name for logger in loggers
                           if logger.class_path.endswith(".CSVLogger") and logger.get("init_args.name")), family)
        for logger in loggers:
            if logger.class_path.endswith(".WandbLogger") and not logger.get("init_args.group"):
                logger.init_args.group = family
            if logger.class_path.endswith(".TensorBoardLogger") and not logger.get("init_args.name"):
                logger.init_args.name = experiment

    def instantiate_classes(self) -> None:
        """Build data, model, callbacks, loggers and trainer; a value they refuse is one message naming it."""
        with rejected_options(self._subcommand_config(), typed=self._command_line):
            super().instantiate_classes()

    def _subcommand_config(self) -> Namespace:
        return self.config.get(str(self.subcommand), self.config)

    def instantiate_trainer(self, **kwargs):
        """``--trainer.strategy ddp`` works for every model: a model whose training phases each reach only
        part of its parameters (the GAN: D's step leaves G without gradients and vice versa) declares
        ``ddp_find_unused_parameters = True`` and gets DDP with unused-parameter detection."""
        strategy = self._get(self.config_init, "trainer", default={}).get("strategy")
        if strategy == "ddp" and getattr(self.model, "ddp_find_unused_parameters", False):
            kwargs["strategy"] = "ddp_find_unused_parameters_true"
            rank_zero_info(f"{type(self.model).__name__} trains its parameters in separate phases: using "
                           "strategy ddp_find_unused_parameters_true for --trainer.strategy ddp")
        return super().instantiate_trainer(**kwargs)  # LightningGenTrainer installs the run policy itself

    # --- boundary checks before any work starts --------------------------------------------------
    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` before Lightning reads it.

        Lightning loads the checkpoint's hyperparameters into the config here, including its model
        class, so a checkpoint of another model would silently replace the configured model. We
        refuse that instead, and turn a missing or corrupt file into one clear message.
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and str(ckpt_path) not in _CHECKPOINT_KEYWORDS:
            configured = import_class(self.config[subcommand].model.class_path)
            check_model_class(read_checkpoint(ckpt_path), configured, ckpt_path)
        super()._parse_ckpt_path()
        # Lightning replaces the model's arguments with the checkpoint's: right over a config file (the
        # checkpoint says what was trained), wrong over an option typed on this command line, which the
        # user asked for explicitly (e.g. `sample --model.init_args.sampler reference`): put those back
        overrides = _model_overrides(self._command_line)
        if ckpt_path and overrides:
            model = {"class_path": self.config[subcommand].model.class_path, "init_args": overrides}
            self.config = self.parser.parse_object({subcommand: {"model": model}}, self.config)

    def _read_data_first(self, stage: str) -> None:
        """Missing, corrupt or undecodable data fails before Lightning creates a run folder for the run.

        Lightning's own order creates the logger's version folder before ``DataModule.setup``. In one
        process we run ``prepare_data`` and ``setup`` first (both are no-ops when Lightning repeats them);
        under DDP the processes must keep Lightning's order (rank 0 prepares, the others wait).
        """
        if self.datamodule is not None and self.trainer.world_size == 1:
            with rejected_options(self._subcommand_config(), "data", self._command_line):
                self.datamodule.prepare_data()
                self.datamodule.setup(stage)

    def before_validate(self) -> None:
        self._read_data_first("validate")

    def before_test(self) -> None:
        self._read_data_first("test")

    def before_predict(self) -> None:
        self._read_data_first("predict")

    def before_fit(self) -> None:
        self._read_data_first("fit")
        build_optimizers_once(self.model, self._subcommand_config(), self._command_line)
        # a read-only or full run folder fails here, before any training time is spent
        folders = {run_folder(self.trainer)} | {Path(c.dirpath) for c in self.trainer.checkpoint_callbacks
                                                if isinstance(c, ModelCheckpoint) and c.dirpath}
        for folder in folders:
            check_writable(folder, needed_bytes=checkpoint_space_needed(self.model))
        earlier_config = run_folder(self.trainer) / "config.yaml"  # Lightning refuses to replace it, but only later
        if earlier_config.is_file() and not self.trainer.fast_dev_run and not self.save_config_kwargs.get("overwrite"):
            raise RunFolderError(f"{earlier_config} exists: the run folder holds an earlier run (without a CSV or "
                                 "TensorBoard logger every run uses the same folder). Pass another "
                                 "--trainer.default_root_dir, or keep a logger: it gives each run a version folder.")
        if self.config_init.fit.get("ckpt_path") == "last":
            # Lightning looks for last.ckpt in this run's new version folder only, where there is none
            found = newest_last_checkpoint(self.trainer)
            if found is not None:
                rank_zero_info(f"--ckpt_path last: resuming from {found}")
                self.config_init.fit.ckpt_path = str(found)
        self._fit_started = time.perf_counter()

    # --- what the user sees at the end -----------------------------------------------------------
    def after_fit(self) -> None:
        fit_metrics = _scalar_metrics(self.trainer.callback_metrics)
        if self.trainer.is_global_zero:
            write_run_record(self.trainer, time.perf_counter() - self._fit_started)
        test_metrics = {}
        if self.config.fit.get("test_after_fit"):
            checkpoint = self.trainer.checkpoint_callback
            ckpt_path = "best" if checkpoint is not None and checkpoint.best_model_path else None
            results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path)
            test_metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
        if self.trainer.is_global_zero:
            print(run_summary(self.trainer, {**fit_metrics, **test_metrics}), flush=True)

    def after_validate(self) -> None:
        self._print_summary()

    def after_test(self) -> None:
        self._print_summary()

    def after_predict(self) -> None:
        predictions = self.trainer.predict_loop.predictions
        if self.trainer.is_global_zero and predictions:
            path = run_folder(self.trainer) / "predictions.pt"
            merged = {key: torch.cat([p[key] for p in predictions]) for key in predictions[0]}
            atomic_write(path, lambda temporary: torch.save(merged, temporary))
            print(f"predictions ({', '.join(f'{k} {tuple(v.shape)}' for k, v in merged.items())}) -> {path}")

    def _print_summary(self) -> None:
        if self.trainer.is_global_zero:
            print(run_summary(self.trainer, _scalar_metrics(self.trainer.callback_metrics)), flush=True)


class ConciseArgumentParser(LightningArgumentParser):
    """A bad option or config value ends in one message naming it (with the closest valid name) rather
    than the whole usage text and jsonargparse's account of every type it tried."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or _debug_requested():
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"lightning-gen: error: {condense_parser_message(message, parser)}\n"
                         f"  (every option: {prog} --help; the resolved config: --print_config; "
                         "the parser's full message: --debug)\n")
        raise SystemExit(2)


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


_debug_flag = False  # --debug on the command line of the running main()


def _debug_requested() -> bool:
    return _debug_flag or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


class SaveConfigToLoggers(SaveConfigCallback):
    """Lightning's config.yaml in the run folder, and the same resolved config in the run config of
    loggers that keep one (W&B), so that a W&B run alone says how to reproduce it."""

    def save_config(self, trainer, pl_module, stage) -> None:
        resolved = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update(resolved, allow_val_change=True)


def _scalar_metrics(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1}


RUN_RECORD = "run.json"


def write_run_record(trainer, fit_seconds: float) -> None:
    """``<run folder>/run.json``: what ``compare`` needs that no logger keeps (wall time, processes)."""
    folder = run_folder(trainer)
    record = {"fit_seconds": round(fit_seconds, 2), "epochs": trainer.current_epoch,
              "global_step": trainer.global_step, "processes": trainer.world_size,
              "resumed_from": str(trainer.ckpt_path) if trainer.ckpt_path else None,
              "model_class": f"{type(trainer.lightning_module).__module__}.{type(trainer.lightning_module).__name__}"}
    atomic_write(folder / RUN_RECORD, lambda temporary: temporary.write_text(json.dumps(record, indent=1)))


def run_summary(trainer, metrics: dict[str, float]) -> str:
    """The closing lines of a run: where its files are and its final metrics."""
    folder = run_folder(trainer)
    lines = ["", f"run folder: {folder}"]
    if (folder / "config.yaml").is_file():
        lines.append(f"  config:      {folder / 'config.yaml'}")
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.best_model_path:
            score = callback.best_model_score
            score_text = f" ({callback.monitor}={float(score):.4f})" if score is not None else ""
            lines.append(f"  best ckpt:   {callback.best_model_path}{score_text}")
        if isinstance(callback, ModelCheckpoint) and (last := _last_checkpoint(callback)):
            lines.append(f"  last ckpt:   {last}")
    for name in ("metrics.csv",):
        if (folder / name).is_file():
            lines.append(f"  metrics:     {folder / name}")
    if (folder / "images").is_dir():
        lines.append(f"  pictures:    {folder / 'images'} ({len(list((folder / 'images').glob('*.png')))} PNG)")
    for callback in trainer.callbacks:
        share = callback.share_of_fit_time() if hasattr(callback, "share_of_fit_time") else None
        if share is not None:
            lines.append(f"  evaluation:  {callback.seconds_spent:.1f} s, {100 * share:.1f}% of the fit time")
    shown = {k: v for k, v in sorted(metrics.items()) if k.startswith(("val/", "test/"))}
    if shown:
        lines.append("final metrics (nats per image unless _bpd = bits/dim):")
        lines += [f"  {key:<16} {value:.4f}" for key, value in shown.items()]
    return "\n".join(lines)


def _last_checkpoint(callback: ModelCheckpoint) -> str:
    # test_after_fit restores the callback's state from the best checkpoint, written when last_model_path was
    # still empty or older: the file on disk is the truth
    if callback.last_model_path:
        return callback.last_model_path
    saved = callback.format_checkpoint_name({}, callback.CHECKPOINT_NAME_LAST) if callback.save_last else ""
    return saved if saved and Path(saved).is_file() else ""


_NOT_MODEL_ARGUMENTS = {"class_path", "init_args", "dict_kwargs", "help"}


def _model_overrides(args: list[str]) -> dict:
    """``--model.init_args.NAME VALUE`` and its shorthand ``--model.NAME VALUE`` (or ``=VALUE``) options of a
    command line, values parsed as YAML."""
    overrides = {}
    for i, arg in enumerate(args):
        if not arg.startswith("--model."):
            continue
        key, has_value, value = arg.removeprefix("--model.").removeprefix("init_args.").partition("=")
        if not has_value:
            if i + 1 >= len(args):
                continue
            value = args[i + 1]
        with contextlib.suppress(yaml.YAMLError):  # the parser has accepted the value; YAML is how it reads it
            value = yaml.safe_load(value)
        if key == "init_args" and isinstance(value, dict):  # --model.init_args '{"latent_dim": 8}'
            overrides.update(value)
        elif "." not in key and key not in _NOT_MODEL_ARGUMENTS:  # nested keys (an optimizer's) are the parser's
            overrides[key] = value
    return overrides


def _option(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def args_from_checkpoint(args: list[str]) -> list[str]:
    """``evaluate``/``sample`` without a config: take the model class and the data from the checkpoint."""
    if not args or args[0] not in ("evaluate", "sample") or _option(args, "--config") or _option(args, "--model"):
        return args
    ckpt_path = _option(args, "--ckpt_path")
    if not ckpt_path:
        return args  # the subcommand itself says that --ckpt_path is needed
    checkpoint = read_checkpoint(ckpt_path)
    model_class = checkpoint.get(MODEL_CLASS_KEY)
    if model_class is None:
        raise CheckpointError(f"{ckpt_path} does not record its model class; pass --config with the run's config.yaml")
    extra = ["--model", model_class]
    data = checkpoint.get(DATAMODULE_KEY)
    if data and not _option(args, "--data"):
        extra += ["--data", json.dumps(data)]
    return [args[0], *extra, *args[1:]]


# commands that work on finished runs, not on one model: no LightningCLI, their own argument parsers
RUN_COMMANDS = {"compare": "lightning_gen.report.compare", "dashboard": "lightning_gen.report.dashboard",
                "configs": "lightning_gen.packaged_configs"}


DEBUG_VARIABLE = "LIGHTNING_GEN_DEBUG"
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}  # a write the disk refused


def main(args: list[str] | None = None) -> None:
    """Errors a user can fix print one line (``lightning-gen: error: ...``) and exit non-zero; with
    ``--debug`` (anywhere on the command line) or ``LIGHTNING_GEN_DEBUG=1`` they show their traceback."""
    args = sys.argv[1:] if args is None else list(args)
    global _debug_flag
    _debug_flag = "--debug" in args  # read by the argument parser's errors too
    args = [arg for arg in args if arg != "--debug"]
    debug = _debug_requested()
    try:
        if args and args[0] in RUN_COMMANDS:
            importlib.import_module(RUN_COMMANDS[args[0]]).main(args[1:])
            return
        if args[:1] == ["evaluate"] and _option(args, "--samples"):  # images from anywhere: no model to build
            importlib.import_module("lightning_gen.metrics.sample_files").main(args[1:])
            return
        args = args_from_checkpoint(resolve_config_options(args))
        # args may be sys.argv completed from a checkpoint, on purpose: not the mistake Lightning warns about
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        LightningGenCLI(args=args)
    except SIGTERMException:
        # Lightning's own SIGTERM stop (end of an epoch, inside validation) is a SystemExit with code 0:
        # a run that did not finish must not look like one that did
        print(f"lightning-gen: {GracefulStop.last_stop_message or 'stopped by SIGTERM'}", file=sys.stderr)
        raise SystemExit(128 + 15) from None
    except Exception as error:
        fixable = fixable_error(error)
        if fixable is None or debug:
            raise
        prefix = "lightning-gen:" if isinstance(fixable, TrainingStopped) else "lightning-gen: error:"
        print(f"{prefix} {fixable}", file=sys.stderr)
        raise SystemExit(fixable.exit_code) from None
    finally:
        _debug_flag = False


def fixable_error(error: BaseException) -> LightningGenError | None:
    """The error a user can fix from its message, if ``error`` is one or was raised because of one
    (jsonargparse wraps errors raised while it builds the classes), or a failed write to a full or
    read-only disk."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, LightningGenError):
            return error
        missing = missing_extra(error)
        if missing:
            return missing
        if isinstance(error, OSError) and error.errno in _DISK_ERRORS:
            return RunFolderError(
                f"cannot write {error.filename or 'a file of the run'} ({error.strerror}). Checkpoints already "
                "saved are whole (they are written atomically). Free disk space or make the folder writable, or "
                "point --trainer.default_root_dir and the logger's save_dir at another folder; then resume with "
                "--ckpt_path last.")
        error = error.__cause__ or error.__context__
    return None


if __name__ == "__main__":
    main()
