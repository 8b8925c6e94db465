import threading

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


def test_concurrent_writers(tmp_path):
    s = Store(tmp_path / "s.sqlite")
    threads = [threading.Thread(target=lambda i=i: [s.put(gen(f"{i}-{j}")) for j in range(50)]) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert s.count() == 200
    s.close()


def test_not_a_database(tmp_path):
    p = tmp_path / "junk.sqlite"
    p.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ValueError, match="not a usable SQLite database"):
        Store(p)
