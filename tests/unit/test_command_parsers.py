"""Every subcommand parses alike (issue 34, item 5): the commands on finished runs or files (compare, dashboard,
configs, evaluate --samples) use jsonargparse as LightningCLI's subcommands do, so a mistyped option is one line
naming the closest valid one, and a YAML file of options works with --config."""

from __future__ import annotations

import pytest

from lightning_gen.cli import main

COMMANDS = {  # each with an option it has, mistyped (not a prefix of it: argparse takes an unambiguous prefix)
    "compare": (["compare", "runs/x"], "--num_sampels", "num_samples"),
    "dashboard": (["dashboard", "--entity", "me"], "--projcet", "project"),
    "configs": (["configs"], "--pahts", "paths"),
    "evaluate --samples": (["evaluate", "--samples", "x.npz", "--data", "vae_fmnist"], "--max_reel", "max_real"),
    "fit": (["fit", "--config", "vae_fmnist"], "--seed_everyting", "seed_everything"),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_mistyped_option_is_one_line_naming_the_closest_one(command, capsys, in_tmp_dir):
    args, typo, meant = COMMANDS[command]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, typo, "1"])
    err = capsys.readouterr().err
    first = err.strip().splitlines()[0]
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert first.startswith("lightning-gen: error:") and typo.lstrip("-") in first and f"'{meant}'" in first, err


def test_a_yaml_file_of_options_works_for_a_run_command(tmp_path, capsys, in_tmp_dir):
    (tmp_path / "listing.yaml").write_text("paths: true\n")
    main(["configs"])
    summaries = capsys.readouterr().out
    main(["configs", "--config", str(tmp_path / "listing.yaml")])
    with_paths = capsys.readouterr().out
    assert ".yaml" in with_paths and ".yaml" not in summaries  # the file's option took effect; the control has none
