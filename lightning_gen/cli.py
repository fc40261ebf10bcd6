"""``python -m lightning_gen`` / ``lightning-gen``: the launcher. LightningCLI wired to our models, data and
Trainer (which owns the run policy), the subcommands that work on finished runs, and the one error boundary.

Every subcommand takes ``--config configs/<model>_<dataset>.yaml``; any key can be overridden on the
command line (``--model.init_args.latent_dim 32``) and ``--print_config`` shows every option.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings

import torch
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_gen.boundary import HeldStartupLines, build_optimizers_once, rejected_options, silence_tips
from lightning_gen.callbacks.save_config import SaveConfigToLoggers
from lightning_gen.callbacks.stop import GracefulStop
from lightning_gen.checkpoints import CheckpointFile, check_model_class, import_class, model_hyperparameters
from lightning_gen.command_line import (
    CHECKPOINT_KEYWORDS,
    args_from_checkpoint,
    command_checkpoint,
    model_overrides,
    option_value,
)
from lightning_gen.commands import hide_unused_options
from lightning_gen.data.base import SplitDataModule
from lightning_gen.errors import RunFolderError, TrainingStopped, debug_requested, debugging, fixable_error
from lightning_gen.files import atomic_write
from lightning_gen.models.base import GenerativeModule
from lightning_gen.packaged_configs import resolve_config_options
from lightning_gen.parser import ConciseArgumentParser
from lightning_gen.runs import run_folder
from lightning_gen.trainer import LightningGenTrainer


class LightningGenCLI(LightningCLI):
    def __init__(self, args=None, run: bool = True, checkpoint: CheckpointFile | None = None, **kwargs):
        """``checkpoint``: the ``--ckpt_path`` file as the command line's boundary read it (``cli.main``); a
        checkpoint named only in a config file is read here, once."""
        self._checkpoint = checkpoint
        command_line = sys.argv[1:] if args is None else args
        self._command_line = [str(arg) for arg in command_line] if isinstance(command_line, (list, tuple)) else []
        silence_tips()
        self._startup_lines = HeldStartupLines()  # written once the command's boundary checks pass
        self._startup_lines.hold()
        try:
            self._build_and_run(args, run, kwargs)
        except BaseException:
            self._startup_lines.release(write=False)
            raise
        self._startup_lines.release()

    def _build_and_run(self, args, run: bool, kwargs: dict) -> None:
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
                "description": "Train, evaluate and compare generative models (AE, VAE, GAN, PixelCNN, VQ-VAE, flow "
                               "matching, normalizing flows).",
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
        # evaluate's progress bars follow --trainer.enable_progress_bar: not an option of its own
        return {**LightningCLI.subcommands(), "evaluate": {"model", "datamodule", "progress"},
                "sample": {"model", "datamodule"}}

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

    # --- boundary checks before any work starts --------------------------------------------------
    def _parse_ckpt_path(self) -> None:
        """The model's arguments from ``--ckpt_path`` (Lightning's hook, which has no public counterpart),
        with two changes: a checkpoint of another model class is refused (Lightning would silently replace
        the configured model) and a missing or corrupt file is one clear message; and options typed on this
        command line win over the checkpoint's (``sample --model.init_args.sampler reference``), while the
        checkpoint wins over a config file (it says what was trained). One read of the file: ``evaluate`` and
        ``sample`` hand the boundary's ``CheckpointFile`` on to the Trainer to load the weights from. Replace this
        override when Lightning has a public hook: pytorch-lightning PRs #21408 (``adapt_checkpoint_hparams``)
        and #21455 (command-line values over the checkpoint's) are open."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or str(ckpt_path) in CHECKPOINT_KEYWORDS:
            return
        if self._checkpoint is None or not self._checkpoint.is_of(ckpt_path):
            self._checkpoint = CheckpointFile.read(ckpt_path)
        checkpoint = self._checkpoint.contents
        class_path = self.config[subcommand].model.class_path
        check_model_class(checkpoint, import_class(class_path), ckpt_path)
        arguments = {**model_hyperparameters(checkpoint), **model_overrides(self._command_line)}
        if subcommand not in ("evaluate", "sample"):
            self._checkpoint = None  # fit, validate, test, predict: Lightning loads the weights; keep no copy
        if arguments:
            model = {"class_path": class_path, "init_args": arguments}
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
        if stage != "fit":  # fit has more checks (before_fit)
            self._startup_lines.release()

    def before_validate(self) -> None:
        self._read_data_first("validate")

    def before_test(self) -> None:
        self._read_data_first("test")

    def before_predict(self) -> None:
        self._read_data_first("predict")

    def before_fit(self) -> None:
        self._read_data_first("fit")
        build_optimizers_once(self.model, self._subcommand_config(), self._command_line)
        earlier_config = run_folder(self.trainer) / "config.yaml"  # Lightning refuses to replace it, but only later
        if earlier_config.is_file() and not self.trainer.fast_dev_run and not self.save_config_kwargs.get("overwrite"):
            raise RunFolderError(f"{earlier_config} exists: the run folder holds an earlier run (without a CSV or "
                                 "TensorBoard logger every run uses the same folder). Pass another "
                                 "--trainer.default_root_dir, or keep a logger: it gives each run a version folder.")
        self._startup_lines.release()

    def before_evaluate(self) -> None:
        self.trainer.command_checkpoint = self._checkpoint
        self._startup_lines.release()

    def before_sample(self) -> None:
        self.trainer.command_checkpoint = self._checkpoint
        self._startup_lines.release()

    def after_fit(self) -> None:
        if self.config.fit.get("test_after_fit"):
            checkpoint = self.trainer.checkpoint_callback
            ckpt_path = "best" if checkpoint is not None and checkpoint.best_model_path else None
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path)

    def after_predict(self) -> None:
        predictions = self.trainer.predict_loop.predictions
        if self.trainer.is_global_zero and predictions:
            path = run_folder(self.trainer) / "predictions.pt"
            merged = {key: torch.cat([p[key] for p in predictions]) for key in predictions[0]}
            atomic_write(path, lambda temporary: torch.save(merged, temporary))
            print(f"predictions ({', '.join(f'{k} {tuple(v.shape)}' for k, v in merged.items())}) -> {path}")


# commands that work on finished runs, not on one model: no LightningCLI, their own argument parsers
RUN_COMMANDS = {"compare": "lightning_gen.report.compare", "dashboard": "lightning_gen.report.dashboard",
                "configs": "lightning_gen.packaged_configs"}


def _run(args: list[str]) -> None:
    if args and args[0] in RUN_COMMANDS:
        importlib.import_module(RUN_COMMANDS[args[0]]).main(args[1:])
    elif args[:1] == ["evaluate"] and option_value(args, "--samples"):  # images from anywhere: no model
        importlib.import_module("lightning_gen.metrics.sample_files").main(args[1:])
    else:
        args = resolve_config_options(args)
        checkpoint = command_checkpoint(args)  # the command's one read of its --ckpt_path
        args = args_from_checkpoint(args, checkpoint)
        # args may be sys.argv completed from a checkpoint, on purpose: not the mistake Lightning warns of
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        LightningGenCLI(args=args, checkpoint=checkpoint)


def main(args: list[str] | None = None) -> None:
    """Errors a user can fix print one line (``lightning-gen: error: ...``) and exit non-zero; with
    ``--debug`` (anywhere on the command line) or ``LIGHTNING_GEN_DEBUG=1`` they show their traceback."""
    args = sys.argv[1:] if args is None else list(args)
    with debugging("--debug" in args):
        args = [arg for arg in args if arg != "--debug"]
        try:
            _run(args)
            sys.stdout.flush()  # output still buffered meets a closed pipe here, not in Python's exit
        except BrokenPipeError:
            # the reader of the output went away (`lightning-gen configs | head -3`): stop quietly, as `yes | head`
            # does; what is still buffered goes nowhere instead of failing again when Python flushes at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(128 + 13) from None
        except SIGTERMException:
            # Lightning's own SIGTERM stop (end of an epoch, inside validation) is a SystemExit with code 0:
            # a run that did not finish must not look like one that did
            print(f"lightning-gen: {GracefulStop.last_stop_message or 'stopped by SIGTERM'}", file=sys.stderr)
            raise SystemExit(128 + 15) from None
        except Exception as error:
            fixable = fixable_error(error)
            if fixable is None or debug_requested():
                raise
            prefix = "lightning-gen:" if isinstance(fixable, TrainingStopped) else "lightning-gen: error:"
            print(f"{prefix} {fixable}", file=sys.stderr)
            raise SystemExit(fixable.exit_code) from None


if __name__ == "__main__":
    main()
