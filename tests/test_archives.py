"""Safe downloads and archive extraction, against archives built here and a loopback server."""
import io
import tarfile
import zipfile

import pytest

from common.data.archives import DownloadError, UnsafeArchiveError, download_url, safe_extract


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _tar(path, members, links=()):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return path


def _left_behind(folder):
    return sorted(p.name for p in folder.iterdir())


def test_zip_and_tar_extract_into_place(tmp_path):
    z = _zip(tmp_path / "a.zip", {"top/train/x/1.jpg": b"1", "top/train/y/2.jpg": b"2"})
    t = _tar(tmp_path / "b.tgz", {"top/val/x/3.jpg": b"3"})
    assert (safe_extract(z, tmp_path / "za") / "top/train/y/2.jpg").read_bytes() == b"2"
    assert (safe_extract(t, tmp_path / "ta") / "top/val/x/3.jpg").read_bytes() == b"3"
    assert _left_behind(tmp_path) == ["a.zip", "b.tgz", "ta", "za"]  # no temporary folders


@pytest.mark.parametrize("kind,members,links", [
    ("zip", {"../evil.txt": b"x"}, ()),
    ("zip", {"/etc/evil.txt": b"x"}, ()),
    ("tar", {"ok/1.jpg": b"1", "ok/../../evil.txt": b"x"}, ()),
    ("tar", {"/abs/evil.txt": b"x"}, ()),
    ("tar", {"ok/1.jpg": b"1"}, (("ok/link", "/etc/passwd"),)),
    ("tar", {"ok/1.jpg": b"1"}, (("ok/inside", "1.jpg"),)),  # even links that stay inside
])
def test_malicious_archives_are_refused_and_leave_nothing(tmp_path, kind, members, links):
    work = tmp_path / "work"
    work.mkdir()
    archive = _zip(work / "m.zip", members) if kind == "zip" else _tar(work / "m.tgz", members, links)
    with pytest.raises(UnsafeArchiveError, match="refusing"):
        safe_extract(archive, work / "out")
    assert _left_behind(work) == [archive.name]
    assert not (tmp_path / "evil.txt").exists()


def test_zip_symlink_is_refused(tmp_path):
    info = zipfile.ZipInfo("data/link")
    info.external_attr = (0o120777 << 16)
    with zipfile.ZipFile(tmp_path / "l.zip", "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="link"):
        safe_extract(tmp_path / "l.zip", tmp_path / "out")


def test_truncated_archive_gives_a_clear_error_and_no_tree(tmp_path):
    good = _tar(tmp_path / "t.tgz", {f"d/{i}.jpg": bytes(5000) for i in range(20)})
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DownloadError, match="truncated|damaged"):
        safe_extract(cut, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_download_from_loopback(server, tmp_path):
    server.routes["/file.tgz"] = (200, "application/gzip", b"payload")
    dest = download_url(server.url + "/file.tgz", tmp_path / "dl" / "file.tgz")
    assert dest.read_bytes() == b"payload"
    download_url(server.url + "/file.tgz", dest)  # already complete: no second request
    assert len(server.requests) == 1


def test_download_errors_are_clear_and_leave_no_part_file(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_url(server.url + "/missing.tgz", tmp_path / "x.tgz")
    with pytest.raises(DownloadError, match="Could not reach"):
        download_url("http://127.0.0.1:9/none.tgz", tmp_path / "y.tgz", timeout=5)
    assert list(tmp_path.iterdir()) == []
