import subprocess
import sys

import pytest

from symoe.store import Generation, Store, generation_key


def gen(key, text="t"):
    return Generation(key, "m", "q1", "expert", 0, "{}", text, 10, 5, "stop")


def test_key_depends_on_everything():
    base = generation_key("m", {"messages": [{"role": "user", "content": "x"}]}, {"seed": 1}, "expert", 0)
    assert base == generation_key("m", {"messages": [{"role": "user", "content": "x"}]}, {"seed": 1}, "expert", 0)
    assert base != generation_key("m2", {"messages": [{"role": "user", "content": "x"}]}, {"seed": 1}, "expert", 0)
    assert base != generation_key("m", {"messages": [{"role": "user", "content": "y"}]}, {"seed": 1}, "expert", 0)
    assert base != generation_key("m", {"messages": [{"role": "user", "content": "x"}]}, {"seed": 2}, "expert", 0)
    assert base != generation_key("m", {"messages": [{"role": "user", "content": "x"}]}, {"seed": 1}, "expert", 1)


def test_put_is_durable_and_never_overwrites(tmp_path):
    with Store(tmp_path / "s.sqlite") as s:
        assert s.put(gen("a", "first"))
        assert not s.put(gen("a", "second"))
    with Store(tmp_path / "s.sqlite") as s:  # a new connection sees the committed row
        assert s.get("a").text == "first"
        assert s.existing(["a", "b"]) == {"a"}
        assert s.count() == 1


WRITER = """
import sys
from symoe.store import Generation, Store
i, path = sys.argv[1], sys.argv[2]
with Store(path) as s:  # a connection of its own, in a process of its own
    for j in range(50):
        assert s.put(Generation(f"{i}-{j}", "m", "q1", "expert", 0, "{}", "t", 10, 5, "stop"))
"""


def test_concurrent_writers(tmp_path):
    # Four processes, each with its own connection, commit at once: SQLite's locking, not a shared
    # Python lock, keeps every row.
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(i), str(tmp_path / "s.sqlite")]) for i in range(4)]
    assert [p.wait(120) for p in procs] == [0, 0, 0, 0]
    with Store(tmp_path / "s.sqlite") as s:
        assert s.count() == 200 and len(s.existing([f"{i}-{j}" for i in range(4) for j in range(50)])) == 200


CLAIMANT = """
import sys
from symoe.store import Store
with Store(sys.argv[1]) as s:
    print(len(s.claim(["a", "b"], "run-1")), flush=True)
    sys.stdin.read()  # holds its claims until told to go
"""


def forge_start_time(s, key):
    """Make ``key``'s claim name another process under the same pid: one started a minute earlier
    (a store from before claims kept start times has no column for it: the pid alone decided)."""
    if "started" in {r[1] for r in s._db.execute("PRAGMA table_info(claims)")}:
        s._db.execute("UPDATE claims SET started = started - 6000 WHERE key = ?", (key,))


def test_claims_name_their_process_by_pid_and_start_time(tmp_path):
    path = tmp_path / "s.sqlite"
    Store(path).close()
    holder = subprocess.Popen([sys.executable, "-c", CLAIMANT, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "0"
        with Store(path) as s:
            assert s.claim(["a", "b", "c"], "run-2") == {"a", "b"}  # a live run in another process holds them
            # The holder's pid, live, but with another start time: what a dead run's claim looks like once
            # the system has given its pid to another process. It is stale and taken over.
            forge_start_time(s, "a")
            assert s.claim(["a", "b"], "run-2") == {"b"}
            assert s._db.execute("SELECT owner FROM claims WHERE key = 'a'").fetchone()[0] == "run-2"
    finally:
        holder.communicate("", timeout=60)
    with Store(path) as s:  # the holder has exited: its claims are stale
        assert s.claim(["b"], "run-3") == set()


def test_not_a_database(tmp_path):
    p = tmp_path / "junk.sqlite"
    p.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ValueError, match="not a usable SQLite database"):
        Store(p)
