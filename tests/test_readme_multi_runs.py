"""The README's sweeps and runs with seeds or controls, run at a small size: a file of its own, so that test workers
run the README's command groups side by side (tests/test_readme.py)."""
import pytest

from test_readme import run_readme_commands, runnable_commands


@pytest.mark.slow
def test_readme_sweep_seed_and_control_commands_run_at_a_small_size(tmp_path, real_data):
    run_readme_commands(runnable_commands()["multi"], tmp_path, real_data)
    assert (tmp_path / "runs" / "sweep1" / "pareto.png").is_file()
