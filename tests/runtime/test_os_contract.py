"""The file-operations contract (runtime/fileops), run by every backend: Linux, macOS and Windows.

Each backend runs with the real system calls on its own system (CI: .github/workflows/os-contract.yml runs
this file on ubuntu, macos and windows). On the other systems the macOS and Windows backends run with
their OS calls (``backend.OS``) replaced by recorded behaviour of those calls, emulated on the local file
system, error paths included (EEXIST, ENOTSUP, EPERM; WinError 5, 32, 80, 183). What only the real system
can show (leases, sharing violations, F_FULLFSYNC reaching the drive) is marked and runs where it can.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import pytest

from dermsort.runtime import fileops
from dermsort.runtime.fileops import _shared, darwin, linux, windows

BACKENDS = {"linux": linux, "darwin": darwin, "windows": windows}
#: what every backend module provides (the facade re-exports these)
CONTRACT = ("NAME", "remove", "input_name_problem", "CASE_INSENSITIVE", "READ_FLAGS", "CREATE_FLAGS", "pread", "fsync_file", "fsync_dir", "open_input",
            "link", "link_open_file", "rename_no_replace", "lock_exclusive", "is_transient", "portable_name",
            "name_key", "WriteGuard")
NATIVE = fileops.NAME


def winerror(code: int, exc_type: type[OSError] = PermissionError) -> OSError:
    exc = exc_type(errno.EACCES, f"WinError {code}")
    exc.winerror = code
    return exc


class FakeMac:
    """macOS calls as recorded there, emulated on this file system. ``renamex_errno`` forces an answer
    (ENOTSUP: FAT/exFAT/SMB); ``link_errno`` makes links fail (EPERM: no hard links)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.renamex_errno = 0
        self.link_errno = 0
        self.fullfsync_errno = 0
        self.paths: dict[int, str] = {}  # what F_GETPATH answers per descriptor

    def fcntl(self, fd, cmd, arg=0):
        self.calls.append(("fcntl", cmd))
        if cmd == darwin.F_FULLFSYNC:
            if self.fullfsync_errno:
                raise OSError(self.fullfsync_errno, os.strerror(self.fullfsync_errno))
            os.fsync(fd)
            return 0
        if cmd == darwin.F_GETPATH:
            return os.fsencode(self.paths.get(fd) or os.readlink(f"/proc/self/fd/{fd}")).ljust(len(arg), b"\0")
        raise AssertionError(cmd)

    def renamex_np(self, source: bytes, target: bytes, flags: int) -> int:
        self.calls.append(("renamex_np", flags))
        assert flags == darwin.RENAME_EXCL
        if self.renamex_errno:
            return self.renamex_errno
        if os.path.lexists(target):
            return errno.EEXIST
        os.rename(source, target)
        return 0

    def link(self, source, target):
        self.calls.append(("link",))
        if self.link_errno:
            raise OSError(self.link_errno, os.strerror(self.link_errno))
        os.link(source, target, follow_symlinks=False)

    lexists = staticmethod(os.path.lexists)
    unlink = staticmethod(os.unlink)
    fstat = staticmethod(os.fstat)
    stat = staticmethod(lambda path: os.stat(path, follow_symlinks=False))
    fsync = staticmethod(os.fsync)

    def rename(self, source, target):
        self.calls.append(("rename",))
        os.rename(source, target)


class FakeWin:
    """Windows calls as recorded there, emulated on this file system: MoveFileEx without REPLACE_EXISTING
    fails with 183 on an existing target; an open denying writers fails with 32 while a writer holds the
    file (``writers``); ``fail`` queues Win32 errors for the next calls of one kind (antivirus: 5, 32)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.writers: set[str] = set()
        self.fail: dict[str, list[int]] = {}
        self.final: dict[int, str] = {}
        self.readonly: set[str] = set()  # files with FILE_ATTRIBUTE_READONLY

    def _strip(self, path) -> str:
        path = os.fspath(path)
        self.calls.append(("path", path))
        if path.startswith("\\\\?\\"):  # the extended form of a local path (here: a POSIX one)
            return path[4:].replace("\\", "/")
        return path

    def _queued(self, kind: str) -> int:
        queue = self.fail.get(kind)
        return queue.pop(0) if queue else 0

    def open_deny_write(self, path):
        path = self._strip(path)
        err = self._queued("open")
        if err:
            return None, err
        if path in self.writers:
            return None, windows.ERROR_SHARING_VIOLATION
        if not os.path.exists(path):
            return None, windows.ERROR_FILE_NOT_FOUND
        return os.open(path, os.O_RDONLY), 0  # here the "handle" is already a descriptor

    def fd_of(self, handle):
        return handle

    def close_handle(self, handle):
        os.close(handle)

    def move_file(self, source, target, flags):
        source, target = self._strip(source), self._strip(target)
        self.calls.append(("move_file", flags))
        err = self._queued("move")
        if err:
            return None, err
        if os.path.lexists(target):
            return None, windows.ERROR_ALREADY_EXISTS
        os.rename(source, target)
        return True, 0

    def final_path(self, fd):
        return "\\\\?\\" + (self.final.get(fd) or os.readlink(f"/proc/self/fd/{fd}")), 0

    def link(self, source, target):
        source, target = self._strip(source), self._strip(target)
        err = self._queued("link")
        if err:
            raise winerror(err, OSError)
        os.link(source, target)

    fstat = staticmethod(os.fstat)
    stat = staticmethod(lambda path: os.stat(path, follow_symlinks=False))

    def lstat(self, path):
        path = self._strip(path)
        st = os.lstat(path)
        return SimpleNamespace(st_mode=st.st_mode, st_file_attributes=1 if path in self.readonly else 0)

    def unlink(self, path):
        path = self._strip(path)
        err = self._queued("unlink")
        if err or path in self.readonly:
            raise winerror(err or 5)
        os.unlink(path)

    def chmod(self, path, mode):
        path = self._strip(path)
        self.calls.append(("chmod", mode))
        if mode & stat.S_IWRITE:
            self.readonly.discard(path)
        else:
            self.readonly.add(path)


@pytest.fixture(params=list(BACKENDS))
def backend(request, monkeypatch):
    """(backend module, its OS-call recorder or None where the real calls run)."""
    name = request.param
    module = BACKENDS[name]
    if name == NATIVE:
        return module, None
    if name == "linux":
        pytest.skip("the Linux backend needs Linux (renameat2, /proc, leases)")
    if sys.platform != "linux":
        pytest.skip("the recorded macOS/Windows calls are emulated with /proc/self/fd: Linux only")
    fake = FakeMac() if name == "darwin" else FakeWin()
    monkeypatch.setattr(module, "OS", fake)
    monkeypatch.setattr(_shared.time, "sleep", lambda s: fake.calls.append(("sleep", s)))
    return module, fake


def _no_sleep(monkeypatch):
    monkeypatch.setattr(_shared, "RETRY_DELAYS", (0.0,) * len(_shared.RETRY_DELAYS))


# ---------------------------------------------------------------- the contract itself
def test_every_backend_provides_the_whole_contract_and_the_facade_picks_by_platform():
    for name, module in BACKENDS.items():
        missing = [attr for attr in CONTRACT if not hasattr(module, attr)]
        assert not missing, f"{name} lacks {missing}"
        assert module.NAME == name
    assert fileops._select("win32") is windows and fileops._select("darwin") is darwin
    assert fileops._select("linux") is linux and fileops._select("freebsd14") is linux
    assert all(hasattr(fileops, attr) for attr in CONTRACT)


# ---------------------------------------------------------------- no-replace rename
def test_rename_no_replace_never_replaces(backend, tmp_path):
    module, fake = backend
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.write_bytes(b"A")
    b.write_bytes(b"B")
    with pytest.raises(FileExistsError):
        module.rename_no_replace(a, b)
    assert a.read_bytes() == b"A" and b.read_bytes() == b"B"
    module.rename_no_replace(a, tmp_path / "c.jpg")
    assert not a.exists() and (tmp_path / "c.jpg").read_bytes() == b"A"
    if isinstance(fake, FakeWin):
        assert ("move_file", windows.MOVEFILE_WRITE_THROUGH) in fake.calls  # durable when it returns


@pytest.mark.parametrize("medium", ["enotsup-links", "enotsup-no-links"])
def test_macos_rename_falls_back_to_link_unlink_then_to_a_checked_rename(medium, tmp_path, monkeypatch):
    """renamex_np answers ENOTSUP on FAT/exFAT/SMB: link + unlink; where links fail too (FAT), a rename after
    an existence check (under the output lock). Never a replacement either way."""
    fake = FakeMac()
    monkeypatch.setattr(darwin, "OS", fake)
    fake.renamex_errno = errno.ENOTSUP
    if medium == "enotsup-no-links":
        fake.link_errno = errno.EPERM
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.write_bytes(b"A")
    b.write_bytes(b"B")
    with pytest.raises(FileExistsError):
        darwin.rename_no_replace(a, b)
    assert a.read_bytes() == b"A" and b.read_bytes() == b"B"
    darwin.rename_no_replace(a, tmp_path / "c.jpg")
    assert not a.exists() and (tmp_path / "c.jpg").read_bytes() == b"A"
    kinds = [c[0] for c in fake.calls]
    assert kinds.count("renamex_np") == 2 and "link" in kinds
    assert ("rename" in kinds) == (medium == "enotsup-no-links")


def test_macos_rename_error_other_than_enotsup_propagates(tmp_path, monkeypatch):
    fake = FakeMac()
    monkeypatch.setattr(darwin, "OS", fake)
    fake.renamex_errno = errno.EACCES
    (tmp_path / "a").write_bytes(b"A")
    with pytest.raises(PermissionError):
        darwin.rename_no_replace(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---------------------------------------------------------------- transient errors (antivirus, indexers)
@pytest.mark.parametrize("code", [5, 32])
def test_windows_transient_errors_are_retried_with_backoff_then_reported(code, tmp_path, monkeypatch):
    fake = FakeWin()
    monkeypatch.setattr(windows, "OS", fake)
    slept: list[float] = []
    monkeypatch.setattr(_shared.time, "sleep", slept.append)
    a = tmp_path / "a.jpg"
    a.write_bytes(b"A")
    fake.fail["move"] = [code, code]  # an antivirus holds it for two tries
    windows.rename_no_replace(a, tmp_path / "b.jpg")
    assert (tmp_path / "b.jpg").read_bytes() == b"A" and slept == list(_shared.RETRY_DELAYS[:2])
    slept.clear()
    fake.fail["move"] = [code] * 50  # it never lets go: the error comes out, the file stays where it was
    with pytest.raises(PermissionError) as caught:
        windows.rename_no_replace(tmp_path / "b.jpg", tmp_path / "c.jpg")
    assert caught.value.winerror == code and (tmp_path / "b.jpg").exists() and not (tmp_path / "c.jpg").exists()
    assert slept == list(_shared.RETRY_DELAYS), "backoff, then give up"


def test_transient_means_only_winerror_5_32_33_and_never_off_windows(backend):
    module, _ = backend
    plain = PermissionError(errno.EACCES, "denied")
    assert not module.is_transient(plain)
    for code in (5, 32, 33):
        assert module.is_transient(winerror(code)) == (module is windows)
    assert not module.is_transient(winerror(183, FileExistsError))


def test_retry_transient_passes_a_lasting_error_through_unchanged():
    tries = []

    def op():
        tries.append(1)
        raise winerror(5)

    with pytest.raises(PermissionError):
        _shared.retry_transient(op, is_transient=windows.is_transient, delays=(0, 0), sleep=lambda s: None)
    assert len(tries) == 3
    tries.clear()
    with pytest.raises(PermissionError):
        _shared.retry_transient(op, is_transient=linux.is_transient, delays=(0, 0), sleep=lambda s: None)
    assert len(tries) == 1


def test_removing_a_sorted_source_works_through_read_only_and_antivirus(backend, tmp_path, monkeypatch):
    """A verified source is removed like on Linux even with Windows' read-only attribute (cameras set it), and
    through an antivirus' brief hold; a lasting refusal comes out (placement keeps the source and lists it)."""
    module, fake = backend
    _no_sleep(monkeypatch)
    path = tmp_path / "IMG_0001.JPG"
    path.write_bytes(b"x")
    os.chmod(path, stat.S_IREAD)
    if isinstance(fake, FakeWin):
        fake.readonly.add(str(path))
        fake.fail["unlink"] = [32]
    module.remove(path) if fake is None else fileops._retry(module.remove, path, is_transient=module.is_transient)
    assert not path.exists()
    if isinstance(fake, FakeWin):
        path.write_bytes(b"y")
        fake.fail["unlink"] = [5] * 50
        with pytest.raises(PermissionError):
            fileops._retry(module.remove, path, is_transient=module.is_transient)
        assert path.exists()


# ---------------------------------------------------------------- a file still being written
def test_a_file_open_for_writing_is_seen(backend, tmp_path):
    """Linux: the lease is refused. Windows: the deny-write open fails (32) -> Busy. macOS: quiescence (the file
    changed within QUIET_S)."""
    module, fake = backend
    path = tmp_path / "busy.jpg"
    path.write_bytes(b"x" * 100)
    with open(path, "ab") as writer:
        writer.write(b"more")
        writer.flush()
        if isinstance(fake, FakeWin):
            fake.writers.add(str(path))
        try:
            fd = module.open_input(path)
        except _shared.Busy:
            assert module is windows
            return
        try:
            assert module.WriteGuard(fd).writer_present()
        finally:
            os.close(fd)


def test_a_writer_that_starts_after_the_read_is_seen_or_kept_out(backend, tmp_path):
    module, fake = backend
    path = tmp_path / "img.jpg"
    path.write_bytes(b"x" * 100)
    old = time.time() - 60
    os.utime(path, (old, old))
    fd = module.open_input(path)
    try:
        guard = module.WriteGuard(fd)
        if module is darwin and fake is not None:
            guard._clock = lambda: time.time() + 2 * darwin.QUIET_S  # ctime (now) is old enough then
        assert not guard.writer_present()
        assert guard.intact()
        if module is windows:
            assert guard.leased  # no writer can open it while we hold it (WinError 32 for them)
            return
        with open(path, "ab") as writer:
            writer.write(b"y")
            writer.flush()
            if module is linux and guard.leased:
                return  # a leased file: the writer is made to wait (lease break); covered by tests/runtime/test_concurrent_writers.py
            assert not guard.intact()
        guard.release()
    finally:
        os.close(fd)


def test_windows_open_retries_an_antivirus_then_reads_and_refuses_symlinks(tmp_path, monkeypatch):
    fake = FakeWin()
    monkeypatch.setattr(windows, "OS", fake)
    monkeypatch.setattr(_shared.time, "sleep", lambda s: None)
    path = tmp_path / "img.jpg"
    path.write_bytes(b"\r\n\x1a bytes")  # CRLF and Ctrl-Z: a text-mode descriptor would change them
    fake.fail["open"] = [5, 32]
    fd = windows.open_input(path)
    try:
        assert windows.pread(fd, 100, 0) == b"\r\n\x1a bytes" and windows.pread(fd, 3, 2) == b"\x1a b"
    finally:
        os.close(fd)
    fake.fail["open"] = [32] * 50
    with pytest.raises(_shared.Busy):
        windows.open_input(path)
    (tmp_path / "link.jpg").symlink_to(path)
    with pytest.raises(OSError) as caught:
        windows.open_input(tmp_path / "link.jpg")
    assert caught.value.errno == errno.ELOOP
    assert windows.READ_FLAGS & windows._O_BINARY and windows.CREATE_FLAGS & windows._O_BINARY


def test_macos_quiescence_window(tmp_path, monkeypatch):
    fake = FakeMac()
    monkeypatch.setattr(darwin, "OS", fake)
    path = tmp_path / "img.jpg"
    path.write_bytes(b"x")
    fd = os.open(path, os.O_RDONLY)
    try:
        now = os.fstat(fd).st_ctime_ns / 1e9
        assert darwin.WriteGuard(fd, clock=lambda: now + darwin.QUIET_S / 2).writer_present()
        guard = darwin.WriteGuard(fd, clock=lambda: now + darwin.QUIET_S + 0.1)
        assert not guard.writer_present() and guard.intact() and not guard.leased
    finally:
        os.close(fd)


# ---------------------------------------------------------------- durable writes
def test_durable_write_uses_the_systems_full_flush(backend, tmp_path, monkeypatch):
    module, fake = backend
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, b"data")
        module.fsync_file(fd)
        module.fsync_dir(tmp_path)
        if isinstance(fake, FakeMac):
            assert ("fcntl", darwin.F_FULLFSYNC) in fake.calls
            fake.fullfsync_errno = errno.ENOTSUP  # e.g. an SMB share: plain fsync
            module.fsync_file(fd)
    finally:
        os.close(fd)


def test_windows_flush_of_a_read_only_descriptor_is_skipped_but_a_real_failure_is_not(tmp_path, monkeypatch):
    (tmp_path / "f").write_bytes(b"x")
    ro = os.open(tmp_path / "f", os.O_RDONLY)
    rw = os.open(tmp_path / "f", os.O_RDWR)

    def refused(fd):
        raise PermissionError(errno.EACCES, "Permission denied")  # what _commit says for a read-only handle

    monkeypatch.setattr(windows.os, "fsync", refused)
    try:
        windows.fsync_file(ro)
        with pytest.raises(PermissionError):
            windows.fsync_file(rw)
    finally:
        os.close(ro)
        os.close(rw)


# ---------------------------------------------------------------- identity of the classified bytes
def test_link_open_file_names_the_classified_file_or_refuses(backend, tmp_path):
    """What is linked is the file behind our descriptor; where the OS can only give its path (macOS F_GETPATH,
    Windows GetFinalPathNameByHandle) and that path now holds another file, nothing is linked (Moved)."""
    module, fake = backend
    src = tmp_path / "in.jpg"
    src.write_bytes(b"classified")
    fd = module.open_input(src)
    try:
        try:
            module.link_open_file(fd, tmp_path / "out.jpg")
        except OSError as exc:
            if exc.errno != errno.EXDEV or module is not linux:
                raise
            pytest.skip("this kernel refuses links through /proc/self/fd (EXDEV): placement copies instead")
        assert os.stat(tmp_path / "out.jpg").st_ino == os.fstat(fd).st_ino
        with pytest.raises(FileExistsError):
            module.link_open_file(fd, tmp_path / "out.jpg")
        if fake is None:
            return
        os.rename(src, tmp_path / "aside.jpg")
        src.write_bytes(b"a different image")  # the path now holds another file
        stale = str(src)
        (fake.paths if isinstance(fake, FakeMac) else fake.final)[fd] = stale
        with pytest.raises(_shared.Moved):
            module.link_open_file(fd, tmp_path / "out2.jpg")
        assert not (tmp_path / "out2.jpg").exists()
    finally:
        os.close(fd)


def test_windows_links_report_missing_hard_links_as_enotsup(tmp_path, monkeypatch):
    """FAT/exFAT answer CreateHardLink with ERROR_INVALID_FUNCTION / NOT_SUPPORTED: placement must see 'no hard
    links' (ENOTSUP -> copy or checked rename), not EINVAL ('name not allowed'). 183 stays FileExistsError."""
    fake = FakeWin()
    monkeypatch.setattr(windows, "OS", fake)
    (tmp_path / "a").write_bytes(b"A")
    for code in (1, 50):
        fake.fail["link"] = [code]
        with pytest.raises(OSError) as caught:
            windows.link(tmp_path / "a", tmp_path / "b")
        assert caught.value.errno == errno.ENOTSUP and caught.value.errno in _shared.NO_HARD_LINKS
    fake.fail["link"] = [17]
    with pytest.raises(OSError) as caught:
        windows.link(tmp_path / "a", tmp_path / "b")
    assert caught.value.errno == errno.EXDEV
    (tmp_path / "b").write_bytes(b"B")
    with pytest.raises(FileExistsError):
        windows.link(tmp_path / "a", tmp_path / "b")


# ---------------------------------------------------------------- names
NAME_CASES = [
    # name,          linux,          darwin,          windows
    ("CON.jpg", "CON.jpg", "CON.jpg", "_CON.jpg"),
    ("nul.JPG", "nul.JPG", "nul.JPG", "_nul.JPG"),
    ("com1.tar.gz", "com1.tar.gz", "com1.tar.gz", "_com1.tar.gz"),
    ("LPT9", "LPT9", "LPT9", "_LPT9"),
    ("console.jpg", "console.jpg", "console.jpg", "console.jpg"),
    ("mole.jpg.", "mole.jpg.", "mole.jpg.", "mole.jpg_"),
    ("mole.jpg  ", "mole.jpg  ", "mole.jpg  ", "mole.jpg__"),
    ('a:b?c*"d<e>|.jpg', 'a:b?c*"d<e>|.jpg', 'a:b?c*"d<e>|.jpg', "a_b_c__d_e__.jpg"),
    (unicodedata.normalize("NFD", "Ärm.jpg"), unicodedata.normalize("NFD", "Ärm.jpg"), "Ärm.jpg",
     unicodedata.normalize("NFD", "Ärm.jpg")),
]


@pytest.mark.parametrize("name,on_linux,on_darwin,on_windows", NAME_CASES)
def test_output_names_are_ones_the_system_stores_as_given(backend, name, on_linux, on_darwin, on_windows):
    module, _ = backend
    want = {"linux": on_linux, "darwin": on_darwin, "windows": on_windows}[module.NAME]
    assert module.portable_name(name) == want


@pytest.mark.parametrize("name", ["CON.jpg", "nul", "Com1.JPG", "mole.jpg.", "mole.jpg ", "a:b.jpg", "q?.jpg",
                                  "console.jpg", "a.jpg"])
def test_inputs_windows_cannot_open_by_name_are_listed_not_read(backend, name):
    """An input named CON.jpg (a card written by a camera or Linux) opens the console on Windows; 'mole.jpg.' opens
    mole.jpg: such inputs are left and listed there, never read (the scan asks ``input_name_problem``)."""
    module, _ = backend
    bad = module is windows and name not in ("console.jpg", "a.jpg")
    assert bool(module.input_name_problem(name)) == bad


def test_case_and_unicode_form_clashes_are_one_name_where_the_system_says_so(backend):
    module, _ = backend
    nfc, nfd = unicodedata.normalize("NFC", "benign/Ärm.jpg"), unicodedata.normalize("NFD", "benign/Ärm.jpg")
    same_case = module.name_key("benign/Lesion.JPG") == module.name_key("benign/lesion.jpg")
    same_form = module.name_key(nfc) == module.name_key(nfd)
    assert same_case == same_form == module.CASE_INSENSITIVE
    assert module.name_key("benign/a.jpg") != module.name_key("benign/b.jpg")


def test_the_placer_never_gives_two_files_one_name_on_a_case_insensitive_system(backend, tmp_path, monkeypatch):
    """Lesion.JPG and lesion.jpg (and NFD/NFC Ärm) into one folder: different names where the folder folds them."""
    from dermsort.runtime import placement
    from dermsort.runtime.journal import JournalState

    module, _ = backend
    monkeypatch.setattr(placement, "name_key", module.name_key)
    monkeypatch.setattr(placement, "portable_name", module.portable_name)
    (tmp_path / "benign").mkdir()
    journal = SimpleNamespace(state=JournalState())  # naming reads the journal's state; it records nothing
    placer = placement.Placer(tmp_path, tmp_path / "tmp", journal, move=False)
    first = placer.unique_dest("benign", "Lesion.JPG")
    second = placer.unique_dest("benign", "lesion.jpg")
    third = placer.unique_dest("benign", unicodedata.normalize("NFC", "Ärm.jpg"))
    fourth = placer.unique_dest("benign", unicodedata.normalize("NFD", "Ärm.jpg"))
    reserved = placer.unique_dest("benign", "CON.jpg")
    if module.CASE_INSENSITIVE:
        assert second == "benign/lesion__1.jpg" and module.name_key(third) != module.name_key(fourth)
    else:
        assert second == "benign/lesion.jpg" and third != fourth  # distinct names here; a folding mount says EEXIST
    assert first == "benign/Lesion.JPG"
    assert reserved == ("benign/_CON.jpg" if module is windows else "benign/CON.jpg")


# ---------------------------------------------------------------- long paths
def test_paths_over_260_characters(backend, tmp_path):
    """Windows: the backend's own calls get the \\\\?\\ form beyond MAX_PATH; elsewhere long paths just work."""
    module, fake = backend
    deep = tmp_path
    while len(str(deep)) < 300:
        deep = deep / ("d" * 40)
    deep.mkdir(parents=True)
    a, b = deep / "a.jpg", deep / "b.jpg"
    a.write_bytes(b"A")
    module.rename_no_replace(a, b)
    assert b.read_bytes() == b"A"
    fd = module.open_input(b)
    os.close(fd)
    if isinstance(fake, FakeWin):
        long_args = [p for kind, p in [c for c in fake.calls if c[0] == "path"] if len(p) > 260]
        assert long_args and all(p.startswith("\\\\?\\") for p in long_args)
        assert windows.extended("C:\\short\\a.jpg") == "C:\\short\\a.jpg"


def test_windows_extended_path_forms():
    long_dir = "C:\\" + "\\".join(["x" * 50] * 6)
    assert windows.extended(long_dir).startswith("\\\\?\\C:\\")
    assert windows.extended("\\\\server\\share\\" + "y" * 300).startswith("\\\\?\\UNC\\server\\share\\")
    assert windows.extended("\\\\?\\C:\\already") == "\\\\?\\C:\\already"
    assert windows._plain("\\\\?\\C:\\short\\a.jpg") == "C:\\short\\a.jpg"


# ---------------------------------------------------------------- one writer per output
def test_the_output_lock_admits_one_process(backend, tmp_path):
    module, fake = backend
    if module is windows and NATIVE != "windows":
        pytest.skip("msvcrt.locking exists only on Windows (runs in CI on windows-latest)")
    import subprocess

    path = tmp_path / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | fileops.OPEN_FLAGS)
    try:
        module.lock_exclusive(fd)
        code = ("import os, sys\nfrom dermsort.runtime.fileops import " + module.NAME + " as m\n"
                f"fd = os.open({str(path)!r}, os.O_RDWR)\n"
                "try:\n    m.lock_exclusive(fd)\nexcept BlockingIOError:\n    sys.exit(7)\nsys.exit(0)\n")
        assert subprocess.run([sys.executable, "-c", code]).returncode == 7
    finally:
        os.close(fd)


# ---------------------------------------------------------------- the real calls, where this is the system
@pytest.mark.skipif(sys.platform != "darwin", reason="macOS only: renamex_np, F_FULLFSYNC, F_GETPATH for real")
def test_real_macos_calls(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"A")
    b.write_bytes(b"B")
    with pytest.raises(FileExistsError):
        darwin.rename_no_replace(a, b)
    fd = os.open(a, os.O_RDWR)
    try:
        darwin.fsync_file(fd)
        darwin.link_open_file(fd, tmp_path / "c")
    finally:
        os.close(fd)
    assert (tmp_path / "c").read_bytes() == b"A"


@pytest.mark.skipif(sys.platform != "win32", reason="Windows only: sharing violation, MoveFileEx, GetFinalPathName")
def test_real_windows_calls(tmp_path):
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.write_bytes(b"A\r\n")
    b.write_bytes(b"B")
    with pytest.raises(FileExistsError) as caught:
        windows.rename_no_replace(a, b)
    assert caught.value.winerror in (80, 183)
    with open(a, "ab"):
        with pytest.raises(_shared.Busy):
            windows.open_input(a)
    fd = windows.open_input(a)
    try:
        with pytest.raises(PermissionError):
            open(a, "ab")  # denied to writers while we hold it
        windows.link_open_file(fd, tmp_path / "c.jpg")
        windows.fsync_file(fd)
        assert windows.pread(fd, 10, 0) == b"A\r\n"
    finally:
        os.close(fd)
    assert (tmp_path / "c.jpg").read_bytes() == b"A\r\n"


def test_fileops_imports_without_fcntl(monkeypatch):
    """The Windows and macOS modules import on any system, and the facade needs no fcntl off Linux."""
    import importlib

    for name in ("windows", "darwin", "_shared"):
        importlib.reload(importlib.import_module(f"dermsort.runtime.fileops.{name}"))
    src = Path(fileops.__file__).read_text() + Path(windows.__file__).read_text()
    assert "\nimport fcntl" not in src and "\nimport msvcrt" not in src
