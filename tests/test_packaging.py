"""A built wheel imports exactly like the editable install: same packages, entry points and data."""

import shutil
import subprocess
import sys
import zipfile

from conftest import REPO


def test_wheel_contents_and_imports(tmp_path):
    # Build from a copy of the tracked files: a build/ left in the checkout could leak stale modules.
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    source = tmp_path / "source"
    for name in tracked:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = dist.glob("ensemblecert-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for expected in [
        "ensemblecert/__init__.py",
        "ensemblecert/hookspecs.py",
        "ensemblecert/defaults/digits.toml",
        "ensemblecert/plugins/cohen.py",
        "ensemblecert/plugins/models/cifar_resnet.py",
    ]:
        assert expected in names, expected
    assert not any(n.startswith(("core/", "plugins/", "tests/")) for n in names)
    # every module of the source tree is in the wheel (an installed package must not lean on the checkout)
    for root, package in (("core", "ensemblecert"), ("plugins", "ensemblecert/plugins")):
        for module in (REPO / root).rglob("*.py"):
            assert f"{package}/{module.relative_to(REPO / root).as_posix()}" in names, module
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[ensemblecert]" in text and "cohen = ensemblecert.plugins.cohen" in text
    assert "ensemblecert = ensemblecert.running.cli:main" in text

    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
    )
    probe = (
        "import ensemblecert, ensemblecert.plugins.cohen as c, ensemblecert.plugins.models as m;"
        "from ensemblecert.config import default_pipeline_text;"
        "from ensemblecert import load_registry;"
        "r = load_registry();"
        "print(ensemblecert.__file__); print(c.__file__); print(m.__file__);"
        "print(len(default_pipeline_text()) > 0, r.get('certifier', 'cohen').cls.__module__);"
        "import sys; print(sorted(n for n, m in sys.modules.items() if n.startswith('ensemblecert') and "
        "not (getattr(m, '__file__', None) or '').startswith(sys.path[1])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(site), "PATH": ""},
        check=True,
    )
    lines = out.stdout.splitlines()
    assert all(line.startswith(str(site)) for line in lines[:3]), lines
    assert lines[3] == "True ensemblecert.plugins.cohen"
    assert lines[4] == "[]", f"modules imported from outside the installed wheel: {lines[4]}"


def test_the_researchers_tools_are_extras_the_base_install_does_not_pull():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"])
    extras = project["optional-dependencies"]
    for extra, package in (("frames", "pandas"), ("tensorboard", "tensorboard"), ("slurm", "submitit")):
        assert package not in base
        assert any(d.startswith(package) for d in extras[extra]) and any(d.startswith(package) for d in extras["test"])
