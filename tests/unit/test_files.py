"""atomic_write: the one whole-or-absent file write behind checkpoints, pictures, cached features and records."""

import pytest

from lightning_gen.files import atomic_write


def test_a_failed_write_leaves_the_previous_file_and_no_partial(tmp_path):
    target = tmp_path / "run" / "run.json"
    atomic_write(target, lambda partial: partial.write_text("first"))
    assert target.read_text() == "first"

    def torn(partial):
        partial.write_text("half of the sec")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, torn)
    assert target.read_text() == "first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["run.json"]


def test_the_writer_sees_a_hidden_sibling_never_the_target(tmp_path):
    target = tmp_path / "last.ckpt"
    seen = []
    atomic_write(target, lambda partial: (seen.append(partial), partial.write_bytes(b"x")), fsync=True)
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".last.ckpt.partial-")
    assert target.read_bytes() == b"x" and not seen[0].exists()
