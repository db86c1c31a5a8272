"""download_dataset.sh without the internet: --dry-run, --verify, argument errors, and the
download path against a local HTTP server standing in for Google Drive and the MNIST mirror."""

import functools
import gzip
import http.server
import os
import re
import struct
import subprocess
import threading

import numpy as np
import pytest

from weightsep import data
from weightsep.tasks import PAPER_TASKS, REPO_ROOT, load_task

SCRIPT = REPO_ROOT / "download_dataset.sh"
GDRIVE = "https://drive.usercontent.google.com/download?export=download&confirm=t&id="
HTML_PAGE = "<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head></html>"


def run_script(root, *args, **env_extra):
    env = {"PATH": os.environ["PATH"], "HOME": str(root), "WS_ROOT": str(root), "no_proxy": "*",
           "NO_PROXY": "*", **env_extra}
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120)


def planned(stdout):
    """{destination: url} from the dry-run lines."""
    return dict((dest, url) for url, dest in re.findall(r"would download (\S+) -> (\S+)", stdout))


def hhar_arrays(n=6):
    x = np.random.default_rng(0).random((n, 20 * 120))
    y = np.zeros((n, 6))
    y[np.arange(n), np.arange(n) % 6] = 1
    return x, y


# --- --dry-run -----------------------------------------------------------------------------


def test_dry_run_one_task_lists_urls_and_destinations(tmp_path):
    result = run_script(tmp_path, "--dry-run", "svhn")
    assert result.returncode == 0, result.stderr
    plan = planned(result.stdout)
    task = load_task("svhn")
    assert set(plan) == {str(tmp_path / "svhn" / f) for f in data.data_files(task)}
    # Google Drive ids of the authors' files (from the original download script).
    assert plan[str(tmp_path / "svhn" / "svhn_train_data.npy")] == GDRIVE + "1BxFLHEy8_hCmAK9QXcvcHLcpDVR2P0t5"
    assert plan[str(tmp_path / "svhn" / "svhn_test_label.npy")] == GDRIVE + "1NYuPreAb-1wxzYwi5WcnWq4S8rEXe8Sk"
    assert "[1/1] svhn: would download" in result.stdout
    assert list(tmp_path.iterdir()) == []  # nothing fetched, nothing created


def test_dry_run_all_tasks_matches_the_task_specs(tmp_path):
    result = run_script(tmp_path, "--dry-run")
    assert result.returncode == 0, result.stderr
    plan = planned(result.stdout)
    expected = {str(tmp_path / t / f) for t in PAPER_TASKS for f in data.data_files(load_task(t))}
    assert set(plan) == expected and len(expected) == 46
    assert plan[str(tmp_path / "mnist/MNIST_data/t10k-labels-idx1-ubyte.gz")] == \
        "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz"
    assert plan[str(tmp_path / "cifar10/cifar10_test_data.npy")] == GDRIVE + "1y92NkPwfKGlH6QvaRd1AH5HsuXxS_VTq"
    assert sum(url.startswith(GDRIVE) for url in plan.values()) == 42
    assert "[10/10] hhar:" in result.stdout


def test_dry_run_skips_present_valid_files(tmp_path):
    (tmp_path / "hhar").mkdir()
    x, y = hhar_arrays()
    np.save(tmp_path / "hhar/hhar_test_data.npy", x)
    np.save(tmp_path / "hhar/hhar_test_label.npy", y)
    (tmp_path / "hhar/hhar_train_data.npy").write_text(HTML_PAGE)
    result = run_script(tmp_path, "--dry-run", "hhar")
    assert result.returncode == 0, result.stderr
    plan = planned(result.stdout)
    assert set(plan) == {str(tmp_path / "hhar" / f) for f in ("hhar_train_data.npy", "hhar_train_label.npy")}
    assert "hhar_test_data.npy present and valid, skipping" in result.stdout
    assert "hhar_test_label.npy present and valid, skipping" in result.stdout
    assert "the present file is bad and would be replaced" in result.stdout


# --- --verify ------------------------------------------------------------------------------


def test_verify_reports_ok_missing_and_bad(tmp_path):
    (tmp_path / "hhar").mkdir()
    x, y = hhar_arrays()
    np.save(tmp_path / "hhar/hhar_train_data.npy", x)
    np.save(tmp_path / "hhar/hhar_train_label.npy", y)
    np.save(tmp_path / "hhar/hhar_test_data.npy", x[:, :100])  # wrong sample shape
    (tmp_path / "hhar/hhar_test_label.npy").write_text(HTML_PAGE)
    result = run_script(tmp_path, "--verify", "hhar", "esc10")
    assert result.returncode == 1
    out = result.stdout
    assert re.search(r"ok\s+hhar/hhar_train_data.npy\s+6 samples", out)
    assert re.search(r"ok\s+hhar/hhar_train_label.npy", out)
    assert re.search(r"bad\s+hhar/hhar_test_data.npy .*samples have shape \(100,\)", out)
    assert re.search(r"bad\s+hhar/hhar_test_label.npy .*HTML page", out)
    assert re.search(r"missing\s+esc10/esc10_train_data.npy", out)
    assert "verify: 2 ok, 4 missing, 2 bad" in out
    assert "./download_dataset.sh hhar esc10" in out
    assert sorted(p.name for p in (tmp_path / "hhar").iterdir()) == sorted(  # --verify changes nothing
        ["hhar_train_data.npy", "hhar_train_label.npy", "hhar_test_data.npy", "hhar_test_label.npy"])


def test_verify_all_good_exits_zero_and_checks_counts(tmp_path):
    (tmp_path / "hhar").mkdir()
    x, y = hhar_arrays()
    for split in ("train", "test"):
        np.save(tmp_path / f"hhar/hhar_{split}_data.npy", x)
        np.save(tmp_path / f"hhar/hhar_{split}_label.npy", y)
    result = run_script(tmp_path, "--verify", "hhar")
    assert result.returncode == 0, result.stdout
    assert "verify: 4 ok, 0 missing, 0 bad" in result.stdout
    np.save(tmp_path / "hhar/hhar_test_label.npy", y[:5])
    result = run_script(tmp_path, "--verify", "hhar")
    assert result.returncode == 1
    assert re.search(r"bad\s+hhar/hhar_test_label.npy\s+5 labels but hhar_test_data.npy has 6", result.stdout)


def test_unknown_task_and_option(tmp_path):
    result = run_script(tmp_path, "cifar10", "imagenet")
    assert result.returncode == 2
    assert "unknown task 'imagenet'" in result.stderr
    assert "cifar10 mnist fmnist gtsrb svhn obs gsc esc10 us8k hhar" in result.stderr
    assert list(tmp_path.iterdir()) == []
    assert run_script(tmp_path, "--fast").returncode == 2


# --- downloading, from a local server ------------------------------------------------------


@pytest.fixture
def server(tmp_path):
    """A local HTTP server for tmp_path/served (no Range support: resuming must fall back)."""
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


HHAR_IDS = {"hhar_train_data.npy": "1xeu2y6mHIK0YxVVy-epSR9OIHYwHmiGO",
            "hhar_train_label.npy": "1Q_6UpDrE_BHZLXlziykQtcxqStw1WeJE",
            "hhar_test_data.npy": "1u5VK6Nf-B9tZTcMtJ3eMpjf5VpLwQY7e",
            "hhar_test_label.npy": "17TL4Kmf3lozB7pniBDaE4Melz1VkTxo2"}


def serve_hhar(served):
    (served / "gd").mkdir()
    x, y = hhar_arrays()
    for name, file_id in HHAR_IDS.items():
        np.save(served / "gd" / f"{file_id}.npy", y if "label" in name else x)
        os.rename(served / "gd" / f"{file_id}.npy", served / "gd" / file_id)


def test_download_verifies_renames_and_skips(tmp_path, server):
    served, url = server
    serve_hhar(served)
    root = tmp_path / "root"
    # A partial file from an interrupted run: the server cannot resume, so it is fetched again.
    (root / "hhar").mkdir(parents=True)
    (root / "hhar/hhar_test_data.npy.part").write_bytes((served / "gd" / HHAR_IDS["hhar_test_data.npy"]).read_bytes()[:100])
    result = run_script(root, "hhar", WS_GDRIVE_URL=f"{url}/gd/")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[1/1] hhar: downloading hhar_train_data.npy" in result.stdout
    assert "done: 4 downloaded, 0 present and valid, 0 failed" in result.stdout
    assert sorted(p.name for p in (root / "hhar").iterdir()) == sorted(HHAR_IDS)
    for name, file_id in HHAR_IDS.items():
        assert (root / "hhar" / name).read_bytes() == (served / "gd" / file_id).read_bytes()
    again = run_script(root, "hhar", WS_GDRIVE_URL=f"{url}/gd/")
    assert again.returncode == 0 and "done: 0 downloaded, 4 present and valid, 0 failed" in again.stdout


def test_download_of_an_html_page_is_reported_and_deleted(tmp_path, server):
    served, url = server
    serve_hhar(served)
    (served / "gd" / HHAR_IDS["hhar_test_label.npy"]).write_text(HTML_PAGE)
    root = tmp_path / "root"
    result = run_script(root, "hhar", WS_GDRIVE_URL=f"{url}/gd/")
    assert result.returncode == 1
    assert re.search(r"bad\s+hhar/hhar_test_label.npy .*HTML page", result.stdout)
    assert "sent a web page instead of hhar_test_label.npy" in result.stdout
    assert "done: 3 downloaded, 0 present and valid, 1 failed" in result.stdout
    assert not (root / "hhar/hhar_test_label.npy").exists()
    assert not (root / "hhar/hhar_test_label.npy.part").exists()


def test_download_failure_keeps_partial_file(tmp_path, server):
    served, url = server
    root = tmp_path / "root"
    result = run_script(root, "hhar", WS_GDRIVE_URL=f"{url}/nothing-here/")
    assert result.returncode == 1
    assert "done: 0 downloaded, 0 present and valid, 4 failed" in result.stdout
    assert "hhar/hhar_train_data.npy: download failed" in result.stdout


def write_idx(path, array, magic):
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_falls_back_to_the_second_mirror(tmp_path, server):
    served, url = server
    (served / "mnist").mkdir()
    for prefix, n in (("train", 10), ("t10k", 4)):
        write_idx(served / "mnist" / f"{prefix}-images-idx3-ubyte.gz", np.zeros((n, 28, 28)), 2051)
        write_idx(served / "mnist" / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10, 2049)
    root = tmp_path / "root"
    result = run_script(root, "mnist", WS_MNIST_MIRRORS=f"{url}/missing/ {url}/mnist/")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"could not fetch {url}/missing/train-images-idx3-ubyte.gz" in result.stdout
    assert len(list((root / "mnist/MNIST_data").iterdir())) == 4
