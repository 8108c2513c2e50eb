"""The skip policy itself: a kernel test that skips under KESTREL_REQUIRE_KERNEL=1 must fail the run."""
import os
import subprocess
import sys
import textwrap


def _run(tmp_path, body: str, require: bool):
    (tmp_path / "test_x.py").write_text(textwrap.dedent(body))
    conftest = os.path.join(os.path.dirname(__file__), "conftest.py")
    (tmp_path / "conftest.py").write_text(open(conftest).read())
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KESTREL_REQUIRE_KERNEL="1" if require else "0",
               PYTHONPATH=os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "no:trio", str(tmp_path)],
        env=env, capture_output=True, text=True, cwd=tmp_path,
    )


SKIPPING = """
    import pytest
    @pytest.mark.kernel
    def test_k():
        pytest.skip("bpftool missing")
"""

LACKS = """
    import pytest
    from conftest import kernel_lacks
    @pytest.mark.kernel
    def test_k():
        kernel_lacks("no group_dead field before 6.18")
"""


def test_skip_of_kernel_test_fails_when_required(tmp_path):
    r = _run(tmp_path, SKIPPING, require=True)
    assert r.returncode == 1, r.stdout
    assert "KESTREL_REQUIRE_KERNEL=1 forbids skipping it" in r.stdout


def test_skip_of_kernel_test_allowed_when_not_required(tmp_path):
    r = _run(tmp_path, SKIPPING, require=False)
    assert r.returncode == 0, r.stdout
    assert "1 skipped" in r.stdout


def test_kernel_lacks_is_a_visible_skip_even_when_required(tmp_path):
    r = _run(tmp_path, LACKS, require=True)
    assert r.returncode == 0, r.stdout
    assert "kernel lacks: no group_dead field before 6.18" in r.stdout
