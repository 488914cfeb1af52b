"""The README's main job and every command that uses its run directory, run at a small size: a file of its own,
so that test workers run the README's command groups side by side (tests/test_readme.py)."""
import pytest

from test_readme import run_readme_commands, runnable_commands


@pytest.mark.slow
def test_readme_main_job_and_the_commands_on_its_run_directory_run_at_a_small_size(tmp_path, real_data):
    run_readme_commands(runnable_commands()["main"], tmp_path, real_data)
    assert (tmp_path / "runs" / "quick" / "model.onnx").is_file()
