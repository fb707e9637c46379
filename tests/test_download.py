"""download_files.py / challenges.download against a local HTTP server (127.0.0.1 only)."""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import pytest
import requests

import download_files
from challenges import download
from tests.conftest import run_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIOS = ["cifar10_inf", "cifar10_hi", "cifar10_lo"]


# ---------------------------------------------------------------------------------------------
# Local HTTP server with Range support, a one-shot connection cut and a switch to ignore Range
# ---------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        srv = self.server
        srv.seen.append((self.path, self.headers.get("Range")))
        body = srv.files.get(urlparse(self.path).path)
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and not srv.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        payload = body[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        cut, srv.cut_after = srv.cut_after, None  # one-shot
        if cut is not None:
            self.wfile.write(payload[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(payload)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """A client that hangs up (the download stopped on a full disk) is expected here; the base
        class would print a traceback to stderr, where the tests look for the script's one line."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Server:
    def __init__(self):
        self.httpd = _QuietServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.files, self.httpd.seen = {}, []
        self.httpd.cut_after, self.httpd.ignore_range = None, False
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def add(self, path: str, body: bytes) -> str:
        self.httpd.files[path] = body
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    @property
    def seen(self):
        return self.httpd.seen

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def closed_port_url():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/mico/cifar10.zip"


# ---------------------------------------------------------------------------------------------
# Fake archives
# ---------------------------------------------------------------------------------------------


def fake_tree(scenarios=SCENARIOS, model_bytes=4096) -> dict[str, bytes]:
    """A tiny MICO tree: relative path -> content."""
    rnd = random.Random(0)
    files = {}
    for s in scenarios:
        for phase, mid in (("train", 0), ("dev", 2), ("final", 3)):
            d = f"{s}/{phase}/model_{mid}"
            files[f"{d}/model.pt"] = rnd.randbytes(model_bytes)
            files[f"{d}/seed_challenge"] = str(rnd.randrange(2**31)).encode()
            if phase == "train":
                files[f"{d}/seed_training"] = b"12"
                files[f"{d}/seed_membership"] = b"13"
                files[f"{d}/solution.csv"] = b"1,0,1,0"
    return files


def make_zip(files: dict[str, bytes], prefix: str = "", extra=()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(prefix + name, data)
        for zi, data in extra:
            zf.writestr(zi, data)
    return buf.getvalue()


def make_tar(files: dict[str, bytes], extra=()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        for ti in extra:
            tf.addfile(ti)
    return buf.getvalue()


def fake_cifar() -> bytes:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    return make_tar({f"cifar-10-batches-py/{n}": n.encode() * 10 for n in names})


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def tree_of(root: str) -> dict[str, bytes]:
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root).replace(os.sep, "/")] = f.read()
    return out


def run_cli(argv, capsys):
    rc = download_files.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def placed(tdir: str) -> list[str]:
    return sorted(s for s in SCENARIOS if os.path.exists(os.path.join(tdir, s)))


def error_line(err: str) -> str:
    """The error line of stderr (progress bars may precede it); asserts there is exactly one."""
    lines = [ln for ln in re.split(r"[\r\n]+", err) if "error:" in ln]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Archive path (--url)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["cifar10/", ""])
def test_archive_download_extract_and_dataset(server, tmp_path, capsys, prefix):
    files = fake_tree()
    archive = make_zip(files, prefix)
    url = server.add("/mico/challenge.zip", archive)
    cifar = fake_cifar()
    durl = server.add("/kriz/fake-cifar.tar.gz", cifar)
    rc, out, err = run_cli(
        [
            "--challenge",
            "cifar10",
            "--data-dir",
            str(tmp_path),
            "--url",
            url,
            "--md5",
            md5(archive),
            "--dataset-url",
            durl,
            "--dataset-md5",
            md5(cifar),
        ],
        capsys,
    )
    assert rc == 0, err
    tdir = tmp_path / "cifar10"
    assert tree_of(str(tdir)) == {
        **files,
        **{
            f"cifar-10-batches-py/{n}": n.encode() * 10
            for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
        },
    }
    # archives deleted, no staging or part files left
    assert sorted(os.listdir(tdir)) == sorted(SCENARIOS + ["cifar-10-batches-py"])

    # rerun: nothing fetched, quickly
    server.seen.clear()
    rc, out, err = run_cli(
        ["--challenge", "cifar10", "--data-dir", str(tmp_path), "--url", url, "--dataset-url", durl], capsys
    )
    assert rc == 0 and server.seen == []
    assert "nothing to fetch" in out


def test_keep_archives_and_scenario_subset(server, tmp_path, capsys):
    archive = make_zip(fake_tree(), "cifar10/")
    url = server.add("/challenge.zip", archive)
    rc, _, err = run_cli(
        [
            "--challenge",
            "cifar10",
            "--data-dir",
            str(tmp_path),
            "--url",
            url,
            "--scenario",
            "cifar10_lo",
            "--no-dataset",
            "--keep-archives",
        ],
        capsys,
    )
    assert rc == 0, err
    tdir = tmp_path / "cifar10"
    assert placed(str(tdir)) == ["cifar10_lo"]
    assert (tdir / "challenge.zip").read_bytes() == archive
    # the kept archive is reused: no request for the other scenarios
    server.seen.clear()
    rc, _, err = run_cli(["--challenge", "cifar10", "--data-dir", str(tmp_path), "--url", url, "--no-dataset"], capsys)
    assert rc == 0, err
    assert server.seen == [] and placed(str(tdir)) == sorted(SCENARIOS)


def test_purchase_dataset_file(server, tmp_path, capsys):
    csv = b"1," + b",".join([b"0"] * 600) + b"\n"
    tgz = make_tar({"dataset_purchase": csv})
    durl = server.add("/privacytrustlab/dataset_purchase.tgz", tgz)
    path = download.fetch_dataset(str(tmp_path), "purchase100", durl, progress=False)
    assert path == str(tmp_path / "purchase100" / "dataset_purchase")
    assert (tmp_path / "purchase100" / "dataset_purchase").read_bytes() == csv
    assert os.listdir(tmp_path / "purchase100") == ["dataset_purchase"]
    server.seen.clear()
    assert download.fetch_dataset(str(tmp_path), "purchase100", durl, progress=False) is None
    assert server.seen == []


def test_resume_after_cut(server, tmp_path, capsys):
    files = fake_tree(model_bytes=20000)
    archive = make_zip(files, "cifar10/")
    url = server.add("/mico/challenge.zip", archive)
    server.httpd.cut_after = 50000
    argv = ["--challenge", "cifar10", "--data-dir", str(tmp_path), "--url", url, "--md5", md5(archive), "--no-dataset"]
    rc, _, err = run_cli(argv, capsys)
    assert rc == 1
    line = error_line(err)
    assert url in line and "--synthetic" in line and "resume" in line
    tdir = tmp_path / "cifar10"
    part = tdir / "challenge.zip.part"
    assert part.stat().st_size == 50000 and placed(str(tdir)) == []

    server.seen.clear()
    rc, _, err = run_cli(argv, capsys)
    assert rc == 0, err
    assert server.seen == [("/mico/challenge.zip", "bytes=50000-")]
    assert tree_of(str(tdir)) == files
    assert not part.exists()


def test_server_ignoring_range_restarts(server, tmp_path):
    body = random.Random(1).randbytes(100_000)
    url = server.add("/f.bin", body)
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(b"garbage!" * 100)  # would corrupt the file if appended to
    server.httpd.ignore_range = True
    download.download_file(url, str(dest), md5(body), progress=False)
    assert dest.read_bytes() == body
    assert server.seen == [("/f.bin", "bytes=800-")]


def test_416_with_complete_part(server, tmp_path):
    body = b"x" * 5000
    url = server.add("/f.bin", body)
    (tmp_path / "f.bin.part").write_bytes(body)
    download.download_file(url, str(tmp_path / "f.bin"), md5(body), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == body and not (tmp_path / "f.bin.part").exists()


def test_416_with_oversized_part_restarts(server, tmp_path):
    body = b"y" * 5000
    url = server.add("/f.bin", body)
    (tmp_path / "f.bin.part").write_bytes(b"z" * 6000)
    download.download_file(url, str(tmp_path / "f.bin"), None, progress=False)
    assert (tmp_path / "f.bin").read_bytes() == body


def test_bad_checksum_with_known_md5(server, tmp_path, capsys):
    # the file name cifar10.zip brings the known md5 of the real archive, which the fake fails
    archive = make_zip(fake_tree(), "cifar10/")
    url = server.add("/mico/cifar10.zip", archive)
    rc, _, err = run_cli(["--challenge", "cifar10", "--data-dir", str(tmp_path), "--url", url, "--no-dataset"], capsys)
    assert rc == 1
    line = error_line(err)
    assert url in line and download.KNOWN_MD5["cifar10.zip"] in line and md5(archive) in line
    tdir = tmp_path / "cifar10"
    assert not tdir.exists()  # no part, no archive, no scenario, and no empty track folder


def test_bad_checksum_explicit(server, tmp_path):
    url = server.add("/f.bin", b"abc")
    with pytest.raises(download.ChecksumError, match=re.escape(url)):
        download.download_file(url, str(tmp_path / "f.bin"), "0" * 32, progress=False)
    assert os.listdir(tmp_path) == []


def test_http_error(server, tmp_path, capsys):
    url = server.add("/exists.zip", b"")  # register the server; ask for another path
    missing = url.replace("exists", "missing")
    rc, _, err = run_cli(
        ["--challenge", "cifar10", "--data-dir", str(tmp_path), "--url", missing, "--no-dataset"], capsys
    )
    assert rc == 1
    line = error_line(err)
    assert missing in line and "404" in line and "--synthetic" in line


# ---------------------------------------------------------------------------------------------
# Unsafe archives
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["../evil", "/abs", "cifar10/cifar10_inf/../../../evil", "C:/evil"])
def test_zip_traversal_rejected(server, tmp_path, capsys, bad):
    data_dir = tmp_path / "data"
    archive = make_zip(fake_tree(), "cifar10/", extra=[(bad, b"pwned")])
    url = server.add("/x.zip", archive)
    rc, _, err = run_cli(["--challenge", "cifar10", "--data-dir", str(data_dir), "--url", url, "--no-dataset"], capsys)
    assert rc == 1
    line = error_line(err)
    assert repr(bad) in line and "x.zip" in line
    assert not (data_dir / "cifar10").exists()  # nothing in place; the archive was deleted
    assert not (tmp_path / "evil").exists() and not os.path.exists("/abs")


@pytest.mark.parametrize("bad", ["../evil", "/abs/evil"])
def test_tar_traversal_rejected(tmp_path, bad):
    path = tmp_path / "a.tar.gz"
    path.write_bytes(make_tar({"ok/file": b"1", bad: b"pwned"}))
    dest = tmp_path / "out" / "stage"
    with pytest.raises(download.UnsafeArchiveError, match=re.escape(repr(bad))) as ei:
        download.safe_extract(str(path), str(dest))
    assert str(path) in str(ei.value)
    assert not (tmp_path / "out" / "evil").exists() and not (dest / "ok").exists()


def _tar_link(name, target, kind):
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = kind, target
    return ti


@pytest.mark.parametrize(
    "name,target,kind",
    [
        ("d/link", "../../outside", tarfile.SYMTYPE),
        ("d/link", "/etc/passwd", tarfile.SYMTYPE),
        ("hard", "../outside", tarfile.LNKTYPE),
    ],
)
def test_tar_link_outside_rejected(tmp_path, name, target, kind):
    path = tmp_path / "a.tar.gz"
    path.write_bytes(make_tar({"d/file": b"1"}, extra=[_tar_link(name, target, kind)]))
    with pytest.raises(download.UnsafeArchiveError, match=re.escape(repr(name))):
        download.safe_extract(str(path), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "d").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_tar_link_inside_rejected(tmp_path, kind):
    # MICO's archives hold no links: even one that resolves inside is refused, before anything is written
    path = tmp_path / "a.tar.gz"
    path.write_bytes(
        make_tar({"d/file": b"1"}, extra=[_tar_link("d/link", "file" if kind == tarfile.SYMTYPE else "d/file", kind)])
    )
    with pytest.raises(download.UnsafeArchiveError, match="'d/link' is a link"):
        download.safe_extract(str(path), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "d").exists()


def test_tar_device_rejected(tmp_path):
    path = tmp_path / "a.tar.gz"
    dev = tarfile.TarInfo("dev/null")
    dev.type = tarfile.CHRTYPE
    path.write_bytes(make_tar({"ok": b"1"}, extra=[dev]))
    with pytest.raises(download.UnsafeArchiveError, match="dev/null"):
        download.safe_extract(str(path), str(tmp_path / "out"))


def test_zip_symlink_outside_rejected(server, tmp_path, capsys):
    zi = zipfile.ZipInfo("cifar10/cifar10_inf/link")
    zi.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = make_zip(fake_tree(), "cifar10/", extra=[(zi, b"../../../outside")])
    url = server.add("/x.zip", archive)
    data_dir = tmp_path / "data"
    rc, _, err = run_cli(["--challenge", "cifar10", "--data-dir", str(data_dir), "--url", url, "--no-dataset"], capsys)
    assert rc == 1
    assert "'cifar10/cifar10_inf/link'" in error_line(err)
    assert not (data_dir / "cifar10").exists()


def test_archive_without_scenarios(server, tmp_path, capsys):
    url = server.add("/other.zip", make_zip({"readme.txt": b"hi"}))
    rc, _, err = run_cli(["--challenge", "cifar10", "--data-dir", str(tmp_path), "--url", url, "--no-dataset"], capsys)
    assert rc == 1 and "cifar10_inf" in error_line(err)
    assert not (tmp_path / "cifar10").exists()


# ---------------------------------------------------------------------------------------------
# Offline
# ---------------------------------------------------------------------------------------------


def test_offline_cli_one_line(tmp_path, closed_port_url, capsys):
    argv = ["--challenge", "cifar10", "--data-dir", str(tmp_path), "--url", closed_port_url, "--no-dataset"]
    code, lines = run_script(download_files.main, "download_files.py", argv, capsys)
    assert code != 0
    assert len(lines) == 1, lines
    assert closed_port_url in lines[0] and "--synthetic" in lines[0]
    assert str(tmp_path / "cifar10" / "cifar10.zip") in lines[0]  # where to copy it
    assert placed(str(tmp_path / "cifar10")) == []


def test_offline_real_hub_client(tmp_path, closed_port_url):
    """The real huggingface_hub call, pointed at a closed local port: its errors become one line."""
    endpoint = closed_port_url.split("/mico/")[0]
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "download_files.py"),
            "--challenge",
            "cifar10",
            "--data-dir",
            str(tmp_path / "data"),
            "--scenario",
            "cifar10_lo",
            "--no-dataset",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env=env,
    )
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert f"{endpoint}/datasets/szanella/MICO-CIFAR10" in lines[0] and "--synthetic" in lines[0]
    assert not (tmp_path / "data" / "cifar10").exists()


def test_url_original_keyword(tmp_path, monkeypatch):
    seen = []

    def fake_download(url, dest, md5=None, **kw):
        seen.append((url, dest, md5))
        raise download.FetchError(url, "offline")

    monkeypatch.setattr(download, "download_file", fake_download)
    with pytest.raises(download.FetchError, match="--synthetic"):
        download.fetch_challenge_archive(str(tmp_path), "purchase100", "original")
    assert seen == [
        (
            download.CHALLENGE_URLS["purchase100"],
            str(tmp_path / "purchase100" / "purchase100.zip"),
            "67eba1f88d112932fe722fef85fb95fd",
        )
    ]


def test_offline_dataset(tmp_path, capsys, closed_port_url):
    url = closed_port_url.replace("mico/cifar10.zip", "cifar-10-python.tar.gz")
    (tmp_path / "cifar10").mkdir()
    for s in SCENARIOS:
        (tmp_path / "cifar10" / s).mkdir()
    rc, _, err = run_cli(["--challenge", "cifar10", "--data-dir", str(tmp_path), "--dataset-url", url], capsys)
    assert rc == 1
    line = error_line(err)
    assert url in line and "--synthetic" in line and str(tmp_path / "cifar10" / "cifar-10-batches-py") in line


# ---------------------------------------------------------------------------------------------
# Hugging Face path (stand-in for snapshot_download)
# ---------------------------------------------------------------------------------------------


class FakeHub:
    def __init__(self, files=None, fail_after=None, exc=None):
        self.files = files if files is not None else fake_tree()
        self.fail_after, self.exc = fail_after, exc
        self.calls = []

    def __call__(self, *, repo_id, repo_type, allow_patterns, local_dir, revision=None):
        self.calls.append(
            dict(
                repo_id=repo_id,
                repo_type=repo_type,
                allow_patterns=list(allow_patterns),
                local_dir=local_dir,
                revision=revision,
            )
        )
        prefixes = [p[:-1] for p in allow_patterns]
        assert all(p.endswith("*") for p in allow_patterns)
        written = 0
        for name, data in self.files.items():
            if not any(name.startswith(p) for p in prefixes):
                continue
            if self.fail_after is not None and written >= self.fail_after:
                raise self.exc
            path = os.path.join(local_dir, *name.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
            written += 1
        os.makedirs(os.path.join(local_dir, ".cache", "huggingface"), exist_ok=True)
        return local_dir


def test_hub_scenario_then_rest(tmp_path, capsys, monkeypatch):
    hub = FakeHub()
    monkeypatch.setattr(download, "HUB_DOWNLOAD", hub)
    tdir = tmp_path / "cifar10"
    rc, _, err = run_cli(
        ["--challenge", "cifar10", "--data-dir", str(tmp_path), "--scenario", "cifar10_hi", "--no-dataset"], capsys
    )
    assert rc == 0, err
    assert hub.calls == [
        dict(
            repo_id="szanella/MICO-CIFAR10",
            repo_type="dataset",
            allow_patterns=["cifar10_hi/*"],
            local_dir=str(tdir / ".staging"),
            revision=None,
        )
    ]
    assert sorted(os.listdir(tdir)) == ["cifar10_hi"]
    assert tree_of(str(tdir)) == {k: v for k, v in fake_tree().items() if k.startswith("cifar10_hi/")}
    assert (tdir / "cifar10_hi/train/model_0/solution.csv").exists()
    assert (tdir / "cifar10_hi/final/model_3/seed_challenge").exists()

    rc, _, err = run_cli(["--challenge", "cifar10", "--data-dir", str(tmp_path), "--no-dataset"], capsys)
    assert rc == 0, err
    assert hub.calls[1]["allow_patterns"] == ["cifar10_inf/*", "cifar10_lo/*"]
    assert tree_of(str(tdir)) == fake_tree()

    rc, out, _ = run_cli(["--challenge", "cifar10", "--data-dir", str(tmp_path), "--no-dataset"], capsys)
    assert rc == 0 and len(hub.calls) == 2 and "nothing to fetch" in out


def test_hub_purchase_repo(tmp_path, monkeypatch):
    hub = FakeHub(files=fake_tree(["purchase100_inf"]))
    placed_now = download.fetch_challenge_hub(str(tmp_path), "purchase100", ["purchase100_inf"], snapshot_download=hub)
    assert placed_now == ["purchase100_inf"] and hub.calls[0]["repo_id"] == "szanella/MICO-purchase100"
    assert (tmp_path / "purchase100/purchase100_inf/train/model_0/model.pt").exists()


@pytest.mark.parametrize(
    "exc", [OSError("disk went away"), requests.ConnectionError("[Errno 111] Connection refused"), "hf_offline"]
)
def test_hub_failure_leaves_nothing_in_place(tmp_path, capsys, monkeypatch, exc):
    if exc == "hf_offline":
        from huggingface_hub.errors import LocalEntryNotFoundError

        exc = LocalEntryNotFoundError(
            "An error happened while trying to locate the files on the Hub\nand we cannot find them in the local cache."
        )
    hub = FakeHub(fail_after=7, exc=exc)
    monkeypatch.setattr(download, "HUB_DOWNLOAD", hub)
    rc, _, err = run_cli(["--challenge", "cifar10", "--data-dir", str(tmp_path), "--no-dataset"], capsys)
    assert rc == 1
    line = error_line(err)
    assert "https://huggingface.co/datasets/szanella/MICO-CIFAR10" in line and "--synthetic" in line
    assert str(tmp_path / "cifar10") in line
    assert placed(str(tmp_path / "cifar10")) == []
    # the partial tree waits in staging for the hub to resume
    assert (tmp_path / "cifar10" / ".staging" / "cifar10_inf").is_dir()

    monkeypatch.setattr(download, "HUB_DOWNLOAD", FakeHub())
    rc, _, err = run_cli(["--challenge", "cifar10", "--data-dir", str(tmp_path), "--no-dataset"], capsys)
    assert rc == 0, err
    assert tree_of(str(tmp_path / "cifar10")) == fake_tree()


def test_hub_missing_scenario(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(download, "HUB_DOWNLOAD", FakeHub(files=fake_tree(["cifar10_inf"])))
    rc, _, err = run_cli(["--challenge", "cifar10", "--data-dir", str(tmp_path), "--no-dataset"], capsys)
    assert rc == 1 and "cifar10_hi" in error_line(err)
    assert placed(str(tmp_path / "cifar10")) == []


def test_synthetic_tree_is_not_mixed(tmp_path, capsys, monkeypatch):
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "challenge.json").write_text(
        '{"track": "cifar10", "n_points": 400, "len_training": 250, "len_challenge": 100, '
        '"dataset": "cifar-10-batches-py", "synthetic": true, "seed": 0}'
    )
    monkeypatch.setattr(download, "HUB_DOWNLOAD", FakeHub())
    rc, _, err = run_cli(["--challenge", "cifar10", "--data-dir", str(tmp_path), "--no-dataset"], capsys)
    assert rc == 1 and "synthetic" in error_line(err)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def test_help(capsys):
    """In-process (the cold start of a script is covered by tests/test_pipeline.py::test_cold_start_help)."""
    with pytest.raises(SystemExit) as e:
        download_files.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in [
        "--challenge",
        "--data-dir",
        "--scenario",
        "--url",
        "--md5",
        "--hub-repo",
        "--revision",
        "--no-dataset",
        "--dataset-url",
        "--dataset-md5",
        "--keep-archives",
        "--synthetic",
        "--n-points",
        "--n-train",
        "--n-dev",
        "--n-final",
        "--seed",
        "--device",
        "--epochs",
    ]:
        assert flag in out
    for action in download_files.build_parser()._actions:
        assert action.help and "\n" not in action.help


@pytest.mark.parametrize(
    "argv",
    [
        ["--challenge", "cifar10", "--scenario", "purchase100_hi"],
        ["--challenge", "cifar10", "--md5", "abc"],
        ["--challenge", "cifar10", "--n-train", "3"],
    ],
)
def test_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as ei:
        download_files.main(argv)
    assert ei.value.code == 2


def _zip_link(name):
    zi = zipfile.ZipInfo(name)
    zi.external_attr = (stat.S_IFLNK | 0o777) << 16
    return zi


def test_zip_link_chain_escape_rejected(tmp_path):
    # each link is lexically inside, but x -> y/.. with y -> . resolves to the parent of the root
    path = tmp_path / "a.zip"
    path.write_bytes(
        make_zip({}, extra=[(_zip_link("y"), b"."), (_zip_link("x"), b"y/.."), ("x/stage/evil", b"pwned")])
    )
    dest = tmp_path / "stage"
    with pytest.raises(download.UnsafeArchiveError, match="'y' is a link"):
        download.safe_extract(str(path), str(dest))
    assert not (tmp_path / "stage" / "evil").exists() and not (tmp_path / "evil").exists()


def test_tar_link_chain_escape_rejected(tmp_path):
    path = tmp_path / "a.tar.gz"
    links = [_tar_link("y", ".", tarfile.SYMTYPE), _tar_link("x", "y/..", tarfile.SYMTYPE)]
    path.write_bytes(make_tar({}, extra=links))
    with pytest.raises(download.UnsafeArchiveError, match="'y' is a link"):
        download.safe_extract(str(path), str(tmp_path / "stage"))


# ---------------------------------------------------------------------------------------------
# Nothing left behind, no links placed, a full disk named
# ---------------------------------------------------------------------------------------------


def test_offline_run_leaves_no_empty_folders(tmp_path, capsys, closed_port_url):
    data_dir = tmp_path / "new" / "data"
    rc, _, err = run_cli(["--challenge", "cifar10", "--data-dir", str(data_dir), "--url", closed_port_url], capsys)
    assert rc == 1 and closed_port_url in error_line(err)
    assert os.listdir(tmp_path) == []  # neither data/cifar10 nor the data folder this run created


def test_offline_run_keeps_folders_it_did_not_create(tmp_path, capsys, closed_port_url):
    (tmp_path / "cifar10").mkdir()
    rc, _, _ = run_cli(
        ["--challenge", "cifar10", "--data-dir", str(tmp_path), "--url", closed_port_url, "--no-dataset"], capsys
    )
    assert rc == 1 and os.listdir(tmp_path / "cifar10") == []


class LinkingHub(FakeHub):
    """A snapshot whose tree holds a symbolic link leading out of the track folder."""

    def __call__(self, **kwargs):
        out = super().__call__(**kwargs)
        os.symlink("../../../../outside", os.path.join(kwargs["local_dir"], "cifar10_inf", "train", "link"))
        return out


def test_hub_snapshot_with_a_link_is_not_placed(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(download, "HUB_DOWNLOAD", LinkingHub())
    rc, _, err = run_cli(["--challenge", "cifar10", "--data-dir", str(tmp_path), "--no-dataset"], capsys)
    assert rc == 1
    line = error_line(err)
    assert os.path.join(str(tmp_path), "cifar10", ".staging", "cifar10_inf", "train", "link") in line
    assert "'../../../../outside'" in line and "delete" in line
    assert placed(str(tmp_path / "cifar10")) == []


def _full_disk_open(real_open):
    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(28, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    return lambda path, mode="r", *a, **k: (
        Full(real_open(path, mode, *a, **k)) if "w" in mode or "a" in mode else real_open(path, mode, *a, **k)
    )


def test_disk_full_while_downloading_names_the_file(server, tmp_path, capsys, monkeypatch):
    url = server.add("/x.zip", make_zip(fake_tree()))
    monkeypatch.setattr(download, "open", _full_disk_open(open), raising=False)
    rc, _, err = run_cli(["--challenge", "cifar10", "--data-dir", str(tmp_path), "--url", url, "--no-dataset"], capsys)
    assert rc == 1
    line = error_line(err)
    assert str(tmp_path / "cifar10" / "x.zip.part") in line and "No space left on device" in line
    assert "free some space" in line


def test_disk_full_while_extracting_names_the_folder(tmp_path, monkeypatch):
    archive = tmp_path / "a.zip"
    archive.write_bytes(make_zip({"d/file": b"1" * 100}))
    monkeypatch.setattr(download, "open", _full_disk_open(open), raising=False)
    with pytest.raises(download.DownloadError) as ei:
        download.safe_extract(str(archive), str(tmp_path / "out"))
    msg = str(ei.value)
    assert str(tmp_path / "out") in msg and str(archive) in msg and "No space left on device" in msg
