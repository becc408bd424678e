"""The named-link bus API against a real emulated device."""

import threading

import pytest

from socs_tcp import ConnectFailedError, LinkTimeoutError, cmd_tcp


@pytest.fixture
def link_id(emulator):
    cmd_tcp.init_tcp("dev", f"host=127.0.0.1,port={emulator.port},timeout=2")
    try:
        yield "dev"
    finally:
        if "dev" in cmd_tcp.links():
            cmd_tcp.deinit_tcp("dev")


def test_every_operation(link_id, emulator):
    assert cmd_tcp.wrnrd_until_tcp(link_id, "*IDN?\n", "\\n") == "ACME,MODEL1,42,1.0"
    assert cmd_tcp.write_tcp(link_id, "abc\n") == 4
    assert cmd_tcp.read_until_tcp(link_id, "\\n") == "echo:abc"
    assert cmd_tcp.write_bin_tcp(link_id, "78790a") == 3
    assert cmd_tcp.read_bin_until_tcp(link_id, "\\n", timeout=1) == "6563686f3a7879"
    assert cmd_tcp.wrnrd_tcp(link_id, "q\n", 7) == "echo:q\n"
    assert cmd_tcp.wrnrd_bin_tcp(link_id, "710a", 2) == "6563"
    assert cmd_tcp.read_tcp(link_id, 5) == "ho:q\n"
    assert cmd_tcp.wrnrd_bin_until_tcp(link_id, "710a", "\\x3a") == "6563686f"
    assert cmd_tcp.read_bin_tcp(link_id, 2, timeout="undef") == "710a"
    cmd_tcp.write_tcp(link_id, "pattern\n")
    assert cmd_tcp.expect_tcp(link_id, "pat+ern\\n", timeout=1.0) == "echo:pattern\n"


def test_init_only_registers_config_connects_inval_closes(link_id, emulator):
    link = cmd_tcp.get_link(link_id)
    assert link.comm is None and emulator.connections == 0
    cmd_tcp.config_tcp(link_id)
    assert link.comm is not None
    cmd_tcp.inval_tcp(link_id)
    assert link.comm is None
    assert cmd_tcp.wrnrd_until_tcp(link_id, "x\n", "\\n") == "echo:x"  # lazily reconnects
    assert emulator.connections == 2


def test_timeout_argument(link_id, emulator):
    emulator.go_silent()
    with pytest.raises(LinkTimeoutError):
        cmd_tcp.wrnrd_until_tcp(link_id, "x\n", "\\n", timeout=0.1)
    for bad, exc in (("soon", ValueError), (-1, ValueError), (True, TypeError), ([0.1], TypeError)):
        with pytest.raises(exc, match="timeout must be"):
            cmd_tcp.read_tcp(link_id, 1, timeout=bad)


@pytest.mark.parametrize("conf, needle", [
    ("host=127.0.0.1", "'port'"), ("port=1", "'host'"), ("host=1.2.3.4,port=99999", "'99999'"),
    ("hots=1.2.3.4,port=1", "unknown key 'hots'"), ("host=1.2.3.4,port=1,timeout=x", "'x'"),
])
def test_bad_conf_string_registers_nothing(conf, needle):
    with pytest.raises(ValueError, match=needle):
        cmd_tcp.init_tcp("bad", conf)
    assert "bad" not in cmd_tcp.links()


def test_unknown_and_duplicate_ids(link_id):
    with pytest.raises(ValueError, match="unknown TCP link id 'nope'; initialised links: dev"):
        cmd_tcp.write_tcp("nope", "x")
    with pytest.raises(ValueError, match="'dev' is already initialised"):
        cmd_tcp.init_tcp("dev", "host=127.0.0.1,port=1")
    with pytest.raises(TypeError, match="tcp_id"):
        cmd_tcp.read_tcp(None, 1)
    cmd_tcp.deinit_tcp(link_id)
    with pytest.raises(ValueError, match="unknown TCP link id 'dev'"):
        cmd_tcp.config_tcp(link_id)


def test_config_of_unreachable_device():
    cmd_tcp.init_tcp("gone", "host=127.0.0.1,port=1,timeout=0.5")
    try:
        with pytest.raises(ConnectFailedError):
            cmd_tcp.config_tcp("gone")
    finally:
        cmd_tcp.deinit_tcp("gone")


def test_registry_is_thread_safe(emulator):
    errors = []

    def worker(n):
        try:
            tcp_id = f"t{n}"
            cmd_tcp.init_tcp(tcp_id, f"host=127.0.0.1,port={emulator.port}")
            for i in range(20):
                assert cmd_tcp.wrnrd_until_tcp(tcp_id, f"{n}-{i}\n", "\\n") == f"echo:{n}-{i}"
            cmd_tcp.deinit_tcp(tcp_id)
        except Exception as e:  # collected and asserted below
            errors.append(e)
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert not [i for i in cmd_tcp.links() if i.startswith("t")]
