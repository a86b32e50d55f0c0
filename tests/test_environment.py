from course_lib.environment import check_environment, missing, pinned_requirements
from course_lib.models import REPO_ROOT


def test_pins_are_read_from_requirements():
    pins = pinned_requirements()
    assert pins["torch"] == "2.13.0" and "trl" in pins and "transformers" in pins


def test_everything_needed_is_installed_here():
    table = check_environment()
    assert missing(table) == []
    assert set(table["status"]) <= {"ok", "MISSING", "optional"}


def test_missing_package_is_reported(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("torch==2.13.0\nsurely-not-installed-pkg==1.0\n")
    table = check_environment(req)
    assert missing(table) == ["surely-not-installed-pkg"]
    detail = table.set_index("component").loc["surely-not-installed-pkg", "detail"]
    assert "pip install surely-not-installed-pkg==1.0" in detail


def test_gpu_requirements_respect_unsloth_caps():
    gpu = pinned_requirements(REPO_ROOT / "requirements-gpu.txt")
    cpu = pinned_requirements()
    version = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert gpu["unsloth"] and version(gpu["trl"]) <= (1, 15, 0) < version(cpu["trl"])
    assert version(cpu["transformers"]) <= (5, 17, 0)
    assert int(cpu["datasets"].split(".")[0]) < 5
    shared = set(gpu) & set(cpu) - {"trl"}
    assert all(gpu[n] == cpu[n] for n in shared), "GPU and CPU sets differ only in trl"


def test_python_versions_compare_as_numbers():
    from course_lib.environment import python_supported

    assert python_supported((3, 11)) and python_supported((3, 12)) and python_supported((4, 0))
    assert not python_supported((3, 10)) and not python_supported((3, 9))  # "3.9" > "3.10" as strings
