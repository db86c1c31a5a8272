"""download_dataset.sh and tools/verify_data.py without the internet: --dry-run, --verify, argument
errors, and downloads from a local HTTP server standing in for Google Drive and the MNIST mirrors
(confirm form, crafted tokens, dropped connections, files that change between runs, checksums)."""

import functools
import gzip
import hashlib
import http.server
import os
import re
import struct
import subprocess
import sys
import threading
import urllib.parse

import numpy as np
import pytest

from weightsep import data
from weightsep.tasks import PAPER_TASKS, REPO_ROOT, load_task

SCRIPT = REPO_ROOT / "download_dataset.sh"
VERIFIER = REPO_ROOT / "tools" / "verify_data.py"
GDRIVE = "https://drive.usercontent.google.com/download?export=download&confirm=t&id="
HTML_PAGE = "<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head></html>"


def run_script(root, *args, cwd=None, **env_extra):
    env = {"PATH": os.environ["PATH"], "HOME": str(root), "WS_ROOT": str(root), "no_proxy": "*",
           "NO_PROXY": "*", **env_extra}
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def planned(stdout):
    """{destination: url} from the dry-run lines."""
    return dict((dest, url) for url, dest in re.findall(r"would download (\S+) -> (\S+)", stdout))


def hhar_arrays(n=6, first_label=0):
    x = np.random.default_rng(0).random((n, 20 * 120))
    y = np.zeros((n, 6))
    y[np.arange(n), (np.arange(n) + first_label) % 6] = 1
    return x, y


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
    assert "hhar_test_data.npy present and valid, skipping (6 samples, SHA-256 not recorded)" in result.stdout
    assert "hhar_test_label.npy present and valid, skipping" in result.stdout
    assert "the present file is bad and would be replaced" in result.stdout
    assert not (tmp_path / "hhar" / "SHA256SUMS").exists()  # a dry run records nothing


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


def test_unknown_task_option_and_checksum_list(tmp_path):
    result = run_script(tmp_path, "cifar10", "imagenet")
    assert result.returncode == 2
    assert "unknown task 'imagenet'" in result.stderr
    assert "cifar10 mnist fmnist gtsrb svhn obs gsc esc10 us8k hhar" in result.stderr
    assert list(tmp_path.iterdir()) == []
    assert run_script(tmp_path, "--fast").returncode == 2
    result = run_script(tmp_path, "hhar", "--checksums")
    assert result.returncode == 2 and "--checksums needs a file" in result.stderr
    result = run_script(tmp_path, "-checksums=nowhere.sha256", "hhar", cwd=tmp_path)
    assert result.returncode == 2
    assert f"the checksum list {tmp_path}/nowhere.sha256 is not a readable file" in result.stderr
    (tmp_path / "bad.sha256").write_text("d41d8cd98f00b204e9800998ecf8427e  hhar/hhar_test_data.npy\n")  # MD5
    result = run_script(tmp_path, "--verify", "hhar", "--checksums", "bad.sha256", cwd=tmp_path)
    assert result.returncode == 2
    assert f"error: {tmp_path}/bad.sha256, line 1: expected '<64 hex digits>" in result.stderr


# --- downloading, from a local server ------------------------------------------------------

HHAR_IDS = {"hhar_train_data.npy": "1xeu2y6mHIK0YxVVy-epSR9OIHYwHmiGO",
            "hhar_train_label.npy": "1Q_6UpDrE_BHZLXlziykQtcxqStw1WeJE",
            "hhar_test_data.npy": "1u5VK6Nf-B9tZTcMtJ3eMpjf5VpLwQY7e",
            "hhar_test_label.npy": "17TL4Kmf3lozB7pniBDaE4Melz1VkTxo2"}
UUID = "0a1b2c3d-4e5f_6a7b"
CONFIRM_FORM = ('<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>'
                '<form id="download-form" action="/confirm" method="get">'
                '<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="{uuid}">'
                '</form></body></html>')


class Server:
    """What the local server serves and what it was asked for."""

    def __init__(self, served, url):
        self.served, self.url = served, url
        self.requests = []      # request paths, in order
        self.uuid = UUID        # the token of the confirm form
        self.cut = set()        # file ids whose transfer drops after 100 of 1000 bytes


@pytest.fixture
def server(tmp_path):
    """A local HTTP server for tmp_path/served (no Range support: resuming must fall back).

    /gd/<id> and /mnist/...: the files in served/; /confirm?id=<id>: Google Drive's virus-scan
    form, then the file once the form is submitted (&confirm=...&uuid=...); /cut/<id>: a
    connection that drops mid-file for ids in Server.cut, else 404.
    """
    served = tmp_path / "served"
    served.mkdir()
    state = None

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            state.requests.append(self.path)
            parts = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(parts.query)
            if parts.path == "/confirm":
                if "uuid" not in query:
                    return self._send(CONFIRM_FORM.format(uuid=state.uuid).encode(), "text/html")
                self.path = "/gd/" + query["id"][0]
            elif parts.path.startswith("/cut/"):
                if parts.path[5:] not in state.cut:
                    return self.send_error(404)
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b"\x93NUMPY" + bytes(94))
                self.close_connection = True
                return
            super().do_GET()

        def _send(self, body, kind):
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    state = Server(served, f"http://127.0.0.1:{httpd.server_address[1]}")
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


def serve_hhar(served, first_label=0):
    (served / "gd").mkdir(exist_ok=True)
    x, y = hhar_arrays(first_label=first_label)
    for name, file_id in HHAR_IDS.items():
        with open(served / "gd" / file_id, "wb") as f:
            np.save(f, y if "label" in name else x)


def download(root, server, *args, **env):
    """The script against the local server (plain http allowed, as only the tests may)."""
    return run_script(root, *args, WS_TEST_ALLOW_HTTP="1", WS_GDRIVE_URL=f"{server.url}/confirm?id=", **env)


def test_download_confirms_verifies_records_and_skips(tmp_path, server):
    serve_hhar(server.served)
    root = tmp_path / "root"
    # A partial file from an interrupted run: the server cannot resume, so it is fetched again.
    (root / "hhar").mkdir(parents=True)
    (root / "hhar/hhar_test_data.npy.part").write_bytes(
        (server.served / "gd" / HHAR_IDS["hhar_test_data.npy"]).read_bytes()[:100])
    result = download(root, server, "hhar")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[1/1] hhar: downloading hhar_train_data.npy" in result.stdout
    assert "done: 4 downloaded, 0 present and valid, 0 failed" in result.stdout
    manifest = root / "hhar" / "SHA256SUMS"
    assert f"hhar_train_data.npy ok (6 samples, SHA-256 recorded in {manifest})" in result.stdout
    assert sorted(p.name for p in (root / "hhar").iterdir()) == sorted([*HHAR_IDS, "SHA256SUMS"])
    for name, file_id in HHAR_IDS.items():
        assert (root / "hhar" / name).read_bytes() == (server.served / "gd" / file_id).read_bytes()
    # The confirm form was submitted with its tokens, once per file.
    file_id = HHAR_IDS["hhar_train_label.npy"]
    assert [r for r in server.requests if file_id in r] == [
        f"/confirm?id={file_id}", f"/confirm?id={file_id}&confirm=t&uuid={UUID}"]
    # The manifest, in sha256sum format relative to the root, holds the served files' sums.
    assert manifest.read_text() == "".join(
        f"{sha256(server.served / 'gd' / HHAR_IDS[name])}  hhar/{name}\n" for name in sorted(HHAR_IDS))
    stamp = manifest.stat().st_mtime_ns
    again = download(root, server, "hhar")
    assert again.returncode == 0 and "done: 0 downloaded, 4 present and valid, 0 failed" in again.stdout
    assert f"hhar_test_label.npy present and valid, skipping (6 samples, SHA-256 as in {manifest})" in again.stdout
    assert manifest.stat().st_mtime_ns == stamp


def test_files_that_change_after_their_sum_was_recorded(tmp_path, server):
    # The state after a first complete download: the files and their manifest.
    serve_hhar(server.served)
    root = tmp_path / "root"
    (root / "hhar").mkdir(parents=True)
    for name, file_id in HHAR_IDS.items():
        (root / "hhar" / name).write_bytes((server.served / "gd" / file_id).read_bytes())
    manifest = root / "hhar" / "SHA256SUMS"
    recorded = {name: sha256(root / "hhar" / name) for name in HHAR_IDS}
    manifest.write_text("".join(f"{recorded[n]}  hhar/{n}\n" for n in sorted(HHAR_IDS)))
    # The present test labels are replaced by other valid labels; the train labels are gone and
    # the server now sends other (valid) train labels.
    label = root / "hhar" / "hhar_test_label.npy"
    np.save(label, hhar_arrays(first_label=1)[1])
    changed = label.read_bytes()
    (root / "hhar" / "hhar_train_label.npy").unlink()
    serve_hhar(server.served, first_label=2)
    served_now = sha256(server.served / "gd" / HHAR_IDS["hhar_train_label.npy"])

    result = download(root, server, "hhar")
    out = result.stdout
    assert result.returncode == 1
    # The present file: reported with both sums, kept untouched, not downloaded again.
    assert (f"SHA-256 mismatch: {label} has {sha256(label)}, but {manifest} expects "
            f"{recorded['hhar_test_label.npy']}") in out
    assert "keeping hhar_test_label.npy untouched" in out and f"delete its line from {manifest}" in out
    assert label.read_bytes() == changed
    assert not any(HHAR_IDS["hhar_test_label.npy"] in r for r in server.requests)
    # The download: deleted, with both sums.
    assert (f"SHA-256 mismatch: {root}/hhar/hhar_train_label.npy.part has {served_now}, but {manifest} "
            f"expects {recorded['hhar_train_label.npy']}") in out
    assert "deleting the download of hhar_train_label.npy" in out
    assert not (root / "hhar/hhar_train_label.npy").exists()
    assert not (root / "hhar/hhar_train_label.npy.part").exists()
    assert "done: 0 downloaded, 2 present and valid, 2 failed" in out
    assert manifest.read_text() == "".join(f"{recorded[n]}  hhar/{n}\n" for n in sorted(HHAR_IDS))

    verify = run_script(root, "--verify", "hhar")
    assert verify.returncode == 1
    assert re.search(r"bad\s+hhar/hhar_test_label.npy\s+SHA-256 mismatch", verify.stdout)
    assert "verify: 2 ok, 1 missing, 1 bad" in verify.stdout


def test_user_checksums_and_paths_relative_to_the_caller(tmp_path, server):
    serve_hhar(server.served)
    sums = {name: sha256(server.served / "gd" / file_id) for name, file_id in HHAR_IDS.items()}
    sums["hhar_test_label.npy"] = "f" * 64  # the user expects another file
    (tmp_path / "mine.sha256").write_text("".join(f"{s}  hhar/{n}\n" for n, s in sums.items()))
    result = download("root", server, "-checksums", "mine.sha256", "hhar", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    root = tmp_path / "root"
    actual = sha256(server.served / "gd" / HHAR_IDS["hhar_test_label.npy"])
    assert (f"SHA-256 mismatch: {root}/hhar/hhar_test_label.npy.part has {actual}, but "
            f"{tmp_path}/mine.sha256 expects {'f' * 64}") in result.stdout
    assert f"hhar_train_data.npy ok (6 samples, SHA-256 as in {tmp_path}/mine.sha256, recorded in" in result.stdout
    assert sorted(p.name for p in (root / "hhar").iterdir()) == sorted(
        ["hhar_train_data.npy", "hhar_train_label.npy", "hhar_test_data.npy", "SHA256SUMS"])
    assert (root / "hhar/SHA256SUMS").read_text().count("\n") == 3


def test_https_only_unless_the_tests_allow_http(tmp_path, server):
    serve_hhar(server.served)
    result = run_script(tmp_path / "root", "hhar", WS_GDRIVE_URL=f"{server.url}/gd/")
    assert result.returncode == 1
    assert server.requests == []
    assert 'Protocol "http" not supported or disabled' in result.stderr
    assert "hhar/hhar_train_data.npy: download failed (nothing received)" in result.stdout


def test_crafted_confirm_token_and_url_are_not_globbed(tmp_path, server):
    serve_hhar(server.served)
    server.uuid = "{a,b,c}[1-3]"
    root = tmp_path / "root"
    result = run_script(root, "hhar", WS_TEST_ALLOW_HTTP="1", WS_GDRIVE_URL=f"{server.url}/confirm?x=[1-3]&id=")
    assert result.returncode == 1
    assert "the confirm page for hhar_train_data.npy holds a malformed token" in result.stdout
    # One request per file, its URL taken literally; the token was never followed.
    assert server.requests == [f"/confirm?x=[1-3]&id={file_id}" for file_id in HHAR_IDS.values()]
    assert "done: 0 downloaded, 0 present and valid, 4 failed" in result.stdout
    assert sorted(p.name for p in (root / "hhar").iterdir()) == []


def test_download_of_an_html_page_is_reported_and_deleted(tmp_path, server):
    serve_hhar(server.served)
    (server.served / "gd" / HHAR_IDS["hhar_test_label.npy"]).write_text(HTML_PAGE)
    root = tmp_path / "root"
    result = run_script(root, "hhar", WS_TEST_ALLOW_HTTP="1", WS_GDRIVE_URL=f"{server.url}/gd/")
    assert result.returncode == 1
    assert re.search(r"bad\s+hhar/hhar_test_label.npy .*HTML page", result.stdout)
    assert "sent a web page instead of hhar_test_label.npy" in result.stdout
    assert "done: 3 downloaded, 0 present and valid, 1 failed" in result.stdout
    assert not (root / "hhar/hhar_test_label.npy").exists()
    assert not (root / "hhar/hhar_test_label.npy.part").exists()


def test_failed_downloads_say_whether_data_was_kept(tmp_path, server):
    server.cut.add(HHAR_IDS["hhar_train_data.npy"])
    root = tmp_path / "root"
    result = run_script(root, "hhar", WS_TEST_ALLOW_HTTP="1", WS_GDRIVE_URL=f"{server.url}/cut/")
    assert result.returncode == 1
    assert "done: 0 downloaded, 0 present and valid, 4 failed" in result.stdout
    part = root / "hhar/hhar_train_data.npy.part"
    assert (f"hhar/hhar_train_data.npy: download failed (partial data kept in {part}; run again to resume)"
            in result.stdout)
    assert part.stat().st_size == 100
    assert "hhar/hhar_test_data.npy: download failed (nothing received)" in result.stdout
    assert result.stdout.count("partial data kept") == 1
    assert sorted(p.name for p in (root / "hhar").iterdir()) == ["hhar_train_data.npy.part"]


def write_idx(path, array, magic):
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_falls_back_to_the_second_mirror(tmp_path, server):
    (server.served / "mnist").mkdir()
    for prefix, n in (("train", 10), ("t10k", 4)):
        write_idx(server.served / "mnist" / f"{prefix}-images-idx3-ubyte.gz", np.zeros((n, 28, 28)), 2051)
        write_idx(server.served / "mnist" / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10, 2049)
    root = tmp_path / "root"
    result = run_script(root, "mnist", WS_TEST_ALLOW_HTTP="1",
                        WS_MNIST_MIRRORS=f"{server.url}/missing/ {server.url}/mnist/")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"could not fetch {server.url}/missing/train-images-idx3-ubyte.gz" in result.stdout
    assert len(list((root / "mnist/MNIST_data").iterdir())) == 4
    assert "  mnist/MNIST_data/t10k-labels-idx1-ubyte.gz\n" in (root / "mnist/SHA256SUMS").read_text()


# --- tools/verify_data.py ------------------------------------------------------------------


def run_verifier(*args, cwd=None):
    return subprocess.run([sys.executable, "-X", "importtime", str(VERIFIER), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_verifier_lines_exit_status_and_no_tensorflow(tmp_path):
    (tmp_path / "hhar").mkdir()
    x, y = hhar_arrays()
    np.save(tmp_path / "elsewhere.npy", x)
    np.save(tmp_path / "hhar/hhar_test_label.npy", y)
    result = run_verifier(f"--root={tmp_path}", "--task=hhar",
                          f"--file=hhar_test_data.npy={tmp_path}/elsewhere.npy",
                          "--file=hhar_test_label.npy", "--file=hhar_train_data.npy")
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"ok       hhar/hhar_test_data.npy  6 samples, SHA-256 not recorded (checked {tmp_path}/elsewhere.npy)",
        "ok       hhar/hhar_test_label.npy  6 samples, SHA-256 not recorded",
        f"missing  hhar/hhar_train_data.npy  missing data file {tmp_path}/hhar/hhar_train_data.npy; "
        f"run WS_ROOT={tmp_path} ./download_dataset.sh hhar (or use -data=synthetic)"]
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert errors == ["error: 1 of 3 files of task hhar are not ok (hhar_train_data.npy missing); "
                      "run ./download_dataset.sh hhar"]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "weightsep.data" in imported and "numpy" in imported
    assert not {m for m in imported if m.split(".")[0] in ("tensorflow", "keras")}

    listed = run_verifier("--task=mnist", "--list")
    assert listed.returncode == 0 and listed.stdout.splitlines() == data.data_files(load_task("mnist"))
    unknown = run_verifier("--task=../hhar")
    assert unknown.returncode == 1 and "error: unknown task '../hhar'; known tasks: cifar10" in unknown.stderr
