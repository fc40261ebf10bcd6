"""``docs/adding_a_model.md`` keeps its promise: its worked example, taken from the page itself (the model
file and the config), passes the shared contract and works with ``fit``, ``test``, ``evaluate``, ``sample``
and ``compare`` without an edit anywhere else in the package.

The model file is written to a temporary folder on ``sys.path`` as ``independent.py`` (not into the package),
so the config's class path becomes ``independent.IndependentPixels``.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from lightning_gen.models import VAE
from tests.support.contract import GenerativeModelContract, one_torch_thread, quick_config, run_command
from tests.support.paths import REPO

PAGE = (REPO / "docs" / "adding_a_model.md").read_text()
DOC_CLASS_PATH = "lightning_gen.models.independent.IndependentPixels"


def _block_after(marker: str, language: str) -> str:
    """The first fenced ``language`` block after ``marker`` on the page."""
    start = PAGE.index(marker)
    return re.search(rf"```{language}\n(.*?)```", PAGE[start:], re.S)[1]


EXAMPLE = Path(tempfile.mkdtemp(prefix="lightning_gen_doc_example_"))
(EXAMPLE / "independent.py").write_text(_block_after("`lightning_gen/models/independent.py`:", "python"))
_config = yaml.safe_load(_block_after("`configs/independent_fmnist.yaml`", "yaml"))
assert _config["model"]["class_path"] == DOC_CLASS_PATH, "the page's config names another class"
_config["model"]["class_path"] = "independent.IndependentPixels"
CONFIG = EXAMPLE / "independent_fmnist.yaml"
CONFIG.write_text(yaml.safe_dump(_config))
sys.path.insert(0, str(EXAMPLE))

from independent import IndependentPixels  # noqa: E402  (the page's code, written just above)


class TestIndependentPixelsFromTheDocs(GenerativeModelContract):
    other_model_class = VAE
    config, test_metrics, predictions = str(CONFIG), ("test/nll_bpd",), ()

    def make_model(self):
        return IndependentPixels(data_shape=(1, 28, 28))


def test_the_untrained_example_is_uniform_over_the_256_levels():  # the control for the learning test below
    x = torch.randint(0, 256, (4, 1, 28, 28)) / 255
    bits_per_dim = -IndependentPixels().log_likelihood(x) / (28 * 28 * np.log(2))
    assert torch.allclose(bits_per_dim, torch.full((4,), 8.0), atol=1e-4)


def test_evaluate_sample_and_compare_work_on_the_example_unchanged(in_tmp_dir, monkeypatch, capsys):
    monkeypatch.setenv("LIGHTNING_GEN_CACHE", str(in_tmp_dir / "cache"))
    quick = ["--data.init_args.subset", "256", "--data.init_args.batch_size", "32", "--trainer.max_epochs", "1",
             "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
             "--trainer.num_sanity_val_steps", "0"]
    with one_torch_thread():
        run_command(capsys, "fit", "--config", str(quick_config(str(CONFIG), in_tmp_dir)), *quick)
        (run,) = in_tmp_dir.glob("runs/independent_fmnist/version_0")
        ckpt = run / "checkpoints" / "last.ckpt"
        # no config: the checkpoint says which model and which data
        run_command(capsys, "evaluate", "--ckpt_path", str(ckpt), "--metrics", "nll_bpd,fid", "--num_samples", "64",
                    "--max_real", "64", "--batch_size", "64", "--trainer.enable_progress_bar", "false")
        run_command(capsys, "sample", "--ckpt_path", str(ckpt), "--num_samples", "8", "--out", "samples",
                    "--trainer.enable_progress_bar", "false")
        run_command(capsys, "compare", str(run), "--out", "comparison", "--metrics", "fid,nll_bpd",
                    "--num_samples", "64", "--max_real", "64", "--device", "cpu")
    (record,) = json.loads((ckpt.parent / "metrics.json").read_text()).values()
    results = {result["name"]: result["value"] for result in record["results"]}
    # learnt: clearly below the 8 bits/dim of the untrained (uniform) model after 7 steps (7.46 measured)
    assert results["nll_bpd"] < 7.75, results
    assert np.isfinite(results["fid_fmnist_clf"]) and results["fid_fmnist_clf"] > 0
    samples = np.load(in_tmp_dir / "samples" / "samples.npz")["images"]
    assert samples.shape == (8, 1, 28, 28) and samples.dtype == np.uint8
    compared = json.loads((in_tmp_dir / "comparison" / "comparison.json").read_text())
    assert "independent_fmnist/version_0" in json.dumps(compared)
